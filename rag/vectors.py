"""The FAISS index over chunk vectors (unit length, inner product = cosine)."""

from __future__ import annotations

import faiss
import numpy as np

from .settings import Settings


def build_vector_index(vectors: np.ndarray, dimension: int, settings: Settings) -> tuple[faiss.Index, str]:
    """Exact inner-product search; at blog scale flat is both exact and the fastest."""
    index = faiss.IndexFlatIP(dimension)
    index.add(vectors)
    return index, "flat"
