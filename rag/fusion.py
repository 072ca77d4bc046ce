"""Ways to fuse the dense and keyword scores of candidate chunks: small named strategies in one registry.

Each takes {chunk id: cosine} for the dense candidates, {chunk id: BM25} for the keyword candidates and
{chunk id: cosine} for every candidate, and returns {chunk id: fused score}, higher is better.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import RagError


def minmax(scores: dict) -> dict:
    """Scale to [0, 1]; a single score (or all equal) becomes 1."""
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    return {i: (s - lo) / (hi - lo) if hi > lo else 1.0 for i, s in scores.items()}


def ranks(scores: dict) -> dict:
    """0 for the best score, 1 for the next..."""
    return {i: r for r, i in enumerate(sorted(scores, key=lambda i: -scores[i]))}


@dataclass(frozen=True)
class Convex:
    """A convex combination of min-max normalised cosine and BM25 (Bruch et al., 2022)."""
    name: str = "convex"
    description: str = "hybrid: convex combination of min-max normalised dense cosine and BM25"
    needs_keyword: bool = True

    def fuse(self, dense: dict, keyword: dict, cos: dict, settings) -> dict:
        d, b, w = minmax(cos), minmax(keyword), settings.dense_weight
        return {i: w * d[i] + (1 - w) * b.get(i, 0.0) for i in cos}


@dataclass(frozen=True)
class Reciprocal:
    """Reciprocal rank fusion: 1 / (k + rank) summed over the two rankings."""
    name: str = "rrf"
    description: str = "hybrid: reciprocal rank fusion"
    needs_keyword: bool = True

    def fuse(self, dense: dict, keyword: dict, cos: dict, settings) -> dict:
        k, rd, rk = settings.rrf_k, ranks(dense), ranks(keyword)
        return {i: (1 / (k + rd[i]) if i in rd else 0.0) + (1 / (k + rk[i]) if i in rk else 0.0) for i in cos}


@dataclass(frozen=True)
class DenseOnly:
    name: str = "dense"
    description: str = "FAISS cosine only"
    needs_keyword: bool = False

    def fuse(self, dense: dict, keyword: dict, cos: dict, settings) -> dict:
        return dict(dense)


@dataclass(frozen=True)
class KeywordOnly:
    name: str = "bm25"
    description: str = "SQLite FTS5 BM25 only"
    needs_keyword: bool = True

    def fuse(self, dense: dict, keyword: dict, cos: dict, settings) -> dict:
        return dict(keyword)


FUSIONS = {f.name: f for f in (Convex(), Reciprocal(), DenseOnly(), KeywordOnly())}


def get_fusion(name: str):
    try:
        return FUSIONS[name]
    except KeyError:
        raise RagError(f"unknown fusion {name!r}; one of {', '.join(FUSIONS)}") from None
