"""Synthetic corpora for the scale benchmark: unit vectors (d=384) and chunk-like text.

Two kinds of vectors:

- "embedding-like" (`latent_vectors`): a common direction (sentence embeddings are anisotropic) plus a
  point of a 32-dimensional Gaussian-mixture "topic space" mapped into 384-d, plus isotropic noise. Tuned so
  that the statistics resemble all-MiniLM-L6-v2 on the bundled corpus (mean pairwise cosine 0.27 there,
  0.25 here; 1st/10th neighbour cosine 0.80/0.61 there, 0.74/0.71 here). Used for recall: approximate indexes work
  because real embeddings have this kind of low-dimensional neighbourhood structure.
- "uniform" (`uniform_vectors`): uniformly random unit vectors. In 384 dimensions every point is almost
  equally far from every other (nearest cosine 0.22, 10th nearest 0.19), the known worst case where no
  approximate index beats exhaustive search at high recall. Used to show that the auto-switch then
  keeps the exact index. Latency and memory of flat search do not depend on the distribution.

Everything is generated from a seed, in blocks, so a 1M x 384 corpus (1.5 GB) costs no more than the array.
"""

from __future__ import annotations

import numpy as np

D = 384
BLOCK = 100_000


def _unit(a: np.ndarray) -> np.ndarray:
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    return a


class _Latent:
    """The structure of an embedding-like corpus of about n vectors (depends on n and the seed only)."""

    def __init__(self, n: int, seed: int, rank: int = 32, spread: float = 0.6, noise: float = 0.45,
                 common: float = 0.5):
        rng = np.random.default_rng(seed)
        self.m = _unit(rng.standard_normal((1, D), dtype="float32"))[0]
        basis = np.linalg.qr(rng.standard_normal((D, rank)))[0].astype("float32")
        self.basis = basis - np.outer(self.m, self.m @ basis)  # topic space orthogonal to the common direction
        self.centres = rng.standard_normal((max(8, int(np.sqrt(max(n, 1)) / 2)), rank)).astype("float32")
        self.rank, self.spread, self.noise, self.common = rank, spread, noise, common
        self.semantic = np.float32(np.sqrt(1 - common**2 - noise**2))

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((count, D), dtype="float32")
        for start in range(0, count, BLOCK):
            k = min(count, start + BLOCK) - start
            z = self.centres[rng.integers(0, len(self.centres), k)] \
                + self.spread * rng.standard_normal((k, self.rank), dtype="float32")
            v = self.common * self.m + self.semantic * _unit(z @ self.basis.T) \
                + self.noise * _unit(rng.standard_normal((k, D), dtype="float32"))
            out[start:start + k] = _unit(v)
        return out


def latent_vectors(n: int, queries: int = 0, seed: int = 0, data: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """n embedding-like unit vectors and `queries` held-out ones from the same distribution (drawn from
    their own stream, so a process that only searches can make the queries without the data)."""
    shape = _Latent(n, seed)
    x = shape.sample(n, np.random.default_rng(seed + 1)) if data else np.empty((0, D), dtype="float32")
    return x, shape.sample(queries, np.random.default_rng(seed + 2))


def uniform_vectors(n: int, queries: int = 0, seed: int = 0, data: bool = True) -> tuple[np.ndarray, np.ndarray]:
    def sample(count, rng):
        out = np.empty((count, D), dtype="float32")
        for start in range(0, count, BLOCK):
            k = min(count, start + BLOCK) - start
            out[start:start + k] = _unit(rng.standard_normal((k, D), dtype="float32"))
        return out
    x = sample(n, np.random.default_rng(seed + 1)) if data else np.empty((0, D), dtype="float32")
    return x, sample(queries, np.random.default_rng(seed + 2))


def vectors(kind: str, n: int, queries: int = 0, seed: int = 0, data: bool = True):
    return (latent_vectors if kind == "latent" else uniform_vectors)(n, queries, seed, data)


# ------------------------------------------------------------------ text

_SYLLABLES = [c + v for c in "bcdfghklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


def vocabulary(size: int = 30_000, seed: int = 7) -> list[str]:
    """Pronounceable pseudo-words (2-4 syllables), distinct, so FTS5 sees a realistic vocabulary."""
    rng = np.random.default_rng(seed)
    words: dict[str, None] = {}
    while len(words) < size:
        parts = rng.integers(0, len(_SYLLABLES), (size, 4))
        lengths = rng.integers(2, 5, size)
        for row, length in zip(parts, lengths):
            words["".join(_SYLLABLES[i] for i in row[:length])] = None
            if len(words) >= size:
                break
    return list(words)


class TextGenerator:
    """Chunk-like text: Zipf-distributed words (a real corpus's word frequencies follow Zipf's law), about
    `words` per chunk (a 256-token chunk holds about 150-190 words), sentences of 8-20 words."""

    def __init__(self, vocab_size: int = 30_000, seed: int = 7, exponent: float = 1.07):
        self.vocab = np.array(vocabulary(vocab_size, seed))
        ranks = np.arange(1, vocab_size + 1)
        p = 1.0 / ranks**exponent
        self.p = p / p.sum()
        self.rng = np.random.default_rng(seed + 1)

    def chunks(self, n: int, words: int = 160) -> list[str]:
        ids = self.rng.choice(len(self.vocab), size=(n, words), p=self.p)
        texts = []
        for row in self.vocab[ids]:
            out, i = [], 0
            while i < len(row):
                j = i + int(self.rng.integers(8, 21))
                out.append(" ".join(row[i:j]).capitalize() + ".")
                i = j
            texts.append(" ".join(out))
        return texts

    def queries(self, n: int, words: int = 5) -> list[str]:
        """Question-like keyword sets: mid-frequency words (ranks 50-5000), as a question's content words are."""
        return [" ".join(self.vocab[self.rng.integers(50, 5000, words)]) for _ in range(n)]
