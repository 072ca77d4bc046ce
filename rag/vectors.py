"""The FAISS index over chunk vectors (unit length, inner product = cosine).

Below `settings.ann_threshold` vectors the index is exact (flat): at blog scale it is both exact and the
fastest (docs/benchmarks.md). From the threshold on, flat search time grows linearly (about 0.1 ms per
1,000 vectors on one core) and an IVF index replaces it:

- `nlist` = the power of two nearest to 2*sqrt(n) (k-means, spherical, trained on a fixed-seed sample of
  40 points per list, so builds are deterministic; a 1M-vector build took 103 s on 2 busy cores);
- `nprobe` is tuned at build time on the data itself: CALIBRATION_QUERIES stored vectors (fixed seed) are
  searched exactly and approximately, excluding themselves, and nprobe doubles until recall@10 reaches
  RECALL_TARGET (a margin over the 0.95 we promise);
- if the data has so little neighbourhood structure that IVF would need to scan more than
  MAX_PROBE_FRACTION of the lists (uniformly random vectors do), IVF would not be faster: flat is kept.

nprobe and the direct map (needed by `reconstruct_batch`, which the retriever calls) are saved by
`faiss.write_index` and restored by `read_index` (checked by tests/test_vectors.py); the kind string
`ivf<nlist>,flat,nprobe=<nprobe>` that the manifest records also carries nprobe, so a reader could
re-apply it with `faiss.extract_index_ivf(index).nprobe = ...` should a FAISS version not persist it.
"""

from __future__ import annotations

import logging
import math
import re

import faiss
import numpy as np

from .settings import Settings

log = logging.getLogger(__name__)

RECALL_TARGET = 0.97
MAX_PROBE_FRACTION = 1 / 8
CALIBRATION_QUERIES = 256
TRAIN_POINTS_PER_LIST = 40  # FAISS warns below 39
MIN_ANN_VECTORS = 1024  # below this an IVF index cannot be trained sensibly (and flat takes microseconds)
SEED = 1234


def ivf_lists(n: int) -> int:
    """Number of inverted lists for n vectors: the power of two nearest to 2*sqrt(n), at most n/40."""
    nlist = 2 ** round(math.log2(max(2 * math.sqrt(max(n, 1)), 1)))
    while nlist > 16 and nlist * TRAIN_POINTS_PER_LIST > n:
        nlist //= 2
    return int(nlist)


def build_vector_index(vectors: np.ndarray, dimension: int, settings: Settings) -> tuple[faiss.Index, str]:
    """The index for these vectors and its kind ("flat" or "ivf<nlist>,flat,nprobe=<p>"), for the manifest."""
    vectors = np.ascontiguousarray(vectors, dtype="float32").reshape(-1, dimension)
    n = len(vectors)
    if n >= max(settings.ann_threshold, MIN_ANN_VECTORS):
        built = build_ivf(vectors, dimension)
        if built is not None:
            return built
    return flat_index(vectors, dimension), "flat"


def flat_index(vectors: np.ndarray, dimension: int) -> faiss.Index:
    index = faiss.IndexFlatIP(dimension)
    index.add(vectors)
    return index


def build_ivf(vectors: np.ndarray, dimension: int, nlist: int | None = None,
              target: float = RECALL_TARGET) -> tuple[faiss.Index, str] | None:
    """An IVF-Flat index with nprobe tuned to `target` recall@10 on the data, or None if IVF would not pay."""
    n = len(vectors)
    nlist = nlist or ivf_lists(n)
    rng = np.random.default_rng(SEED)
    train = vectors[np.sort(rng.choice(n, min(n, nlist * TRAIN_POINTS_PER_LIST), replace=False))]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dimension), dimension, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = SEED
    index.train(train)
    del train
    index.add(vectors)
    index.make_direct_map()  # reconstruct / reconstruct_batch by id

    probe, recall = tune_nprobe(index, vectors, target, max(1, int(nlist * MAX_PROBE_FRACTION)))
    if probe is None:
        log.warning("IVF over %d vectors reaches recall@10 %.3f only when scanning more than %.0f%% of the "
                    "lists; keeping the exact flat index", n, recall, 100 * MAX_PROBE_FRACTION)
        return None
    index.nprobe = probe
    log.info("IVF index: %d vectors, nlist %d, nprobe %d, calibrated recall@10 %.3f", n, nlist, probe, recall)
    return index, f"ivf{nlist},flat,nprobe={probe}"


def tune_nprobe(index: faiss.Index, vectors: np.ndarray, target: float, max_probe: int,
                queries: int = CALIBRATION_QUERIES, k: int = 10) -> tuple[int | None, float]:
    """The smallest power-of-two nprobe <= max_probe with recall@k >= target on stored vectors used as
    queries (each excluding itself), and the recall reached (the last one tried when none suffices)."""
    n = len(vectors)
    rng = np.random.default_rng(SEED + 1)
    ids = rng.choice(n, min(n, queries), replace=False)
    q = np.ascontiguousarray(vectors[ids])
    exact_scores, exact_ids = faiss.knn(q, vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    probe, recall = 1, 0.0
    while probe <= max_probe:
        index.nprobe = probe
        scores, found = index.search(q, k + 1)
        recall = recall_at_k(ids, exact_ids, exact_scores, found, scores, k)
        if recall >= target:
            return probe, recall
        probe *= 2
    return None, recall


def recall_at_k(query_ids, exact_ids, exact_scores, found_ids, found_scores, k: int = 10) -> float:
    """Recall@k of approximate results, each query's own id excluded; a result tied in score with the
    k-th exact neighbour counts as found (duplicate vectors make the exact ids ambiguous)."""
    hits = total = 0
    for qid, e_ids, e_sc, f_ids, f_sc in zip(query_ids, exact_ids, exact_scores, found_ids, found_scores):
        keep = e_ids != qid
        e_ids, e_sc = e_ids[keep][:k], e_sc[keep][:k]
        keep = (f_ids != qid) & (f_ids >= 0)
        f_ids, f_sc = f_ids[keep][:k], f_sc[keep][:k]
        if len(e_ids) == 0:
            continue
        total += len(e_ids)
        kth = e_sc[-1] - 1e-5
        gold = set(e_ids.tolist())
        hits += sum(1 for i, s in zip(f_ids.tolist(), f_sc.tolist()) if i in gold or s >= kth)
    return hits / total if total else 1.0


def describe(kind: str) -> dict:
    """Parse a kind string back into its parameters, e.g. {"type": "ivf", "nlist": 1024, "nprobe": 16}."""
    m = re.fullmatch(r"ivf(\d+),flat,nprobe=(\d+)", kind or "")
    if m:
        return {"type": "ivf", "nlist": int(m.group(1)), "nprobe": int(m.group(2))}
    return {"type": kind or "flat"}
