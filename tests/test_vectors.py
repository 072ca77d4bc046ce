"""The FAISS index choice (rag/vectors.py): exact below settings.ann_threshold, IVF with a tuned nprobe above it.
No models needed: random vectors with and without neighbourhood structure."""

import json

import faiss
import numpy as np
import pytest

from rag.chunking import Chunk
from rag.feed import Post
from rag.index import GenerationWriter, Index
from rag.settings import Settings
from rag.vectors import MIN_ANN_VECTORS, build_vector_index, describe, ivf_lists, recall_at_k

D = 384


def unit(a):
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype("float32")


def embedding_like(n, queries=0, seed=0, rank=32):
    """Random unit vectors with the low-dimensional topic structure real sentence embeddings have
    (same recipe as bench/synth.py): a common direction + a 32-d Gaussian-mixture point mapped to 384-d + noise."""
    rng = np.random.default_rng(seed)
    m = unit(rng.standard_normal((1, D)))[0]
    basis = np.linalg.qr(rng.standard_normal((D, rank)))[0]
    centres = rng.standard_normal((max(8, int(np.sqrt(n) / 2)), rank))
    z = centres[rng.integers(0, len(centres), n + queries)] + 0.6 * rng.standard_normal((n + queries, rank))
    v = 0.5 * m + np.sqrt(1 - 0.5**2 - 0.45**2) * unit(z @ basis.T) \
        + 0.45 * unit(rng.standard_normal((n + queries, D)))
    v = unit(v)
    return v[:n], v[n:]


def exact(x, q, k=10):
    return faiss.knn(q, x, k, metric=faiss.METRIC_INNER_PRODUCT)


def recall(index, x, q, k=10):
    e_scores, e_ids = exact(x, q, k)
    scores, ids = index.search(q, k)
    return recall_at_k(np.full(len(q), -1), e_ids, e_scores, ids, scores, k)


@pytest.fixture(scope="module")
def ann():
    settings = Settings(ann_threshold=2000)
    x, q = embedding_like(5000, 300)
    index, kind = build_vector_index(x, D, settings)
    return x, q, index, kind


def test_above_the_threshold_the_index_is_approximate_with_recall_at_least_095(ann):
    x, q, index, kind = ann
    assert kind.startswith("ivf") and isinstance(index, faiss.IndexIVFFlat)
    params = describe(kind)
    assert params["type"] == "ivf" and params["nlist"] == index.nlist and params["nprobe"] == index.nprobe
    assert index.nprobe < index.nlist  # it really is approximate
    assert index.ntotal == len(x)
    assert recall(index, x, q) >= 0.95  # held-out queries, not the calibration sample


def test_scores_are_cosines_and_reconstruct_works(ann):
    x, q, index, _ = ann
    scores, ids = index.search(q[:5], 3)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q[:5], x[ids]), rtol=1e-5, atol=1e-5)
    ids = np.array([0, 17, 4999, 2500], dtype="int64")
    np.testing.assert_array_equal(index.reconstruct_batch(ids), x[ids])
    np.testing.assert_array_equal(index.reconstruct(42), x[42])


def test_round_trip_through_write_and_read_keeps_nprobe_and_results(ann, tmp_path):
    x, q, index, kind = ann
    path = str(tmp_path / "vectors.faiss")
    faiss.write_index(index, path)
    back = faiss.read_index(path)
    assert isinstance(back, faiss.IndexIVFFlat)
    assert (back.nlist, back.nprobe, back.ntotal) == (index.nlist, index.nprobe, index.ntotal)
    assert back.nprobe == describe(kind)["nprobe"]
    s1, i1 = index.search(q, 10)
    s2, i2 = back.search(q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2)
    ids = np.arange(0, 5000, 97, dtype="int64")
    np.testing.assert_array_equal(back.reconstruct_batch(ids), x[ids])  # the direct map is saved too


def test_below_the_threshold_the_index_is_flat_and_exact():
    x, q = embedding_like(3000, 50, seed=1)
    index, kind = build_vector_index(x, D, Settings())  # default threshold 200,000
    assert kind == "flat" and isinstance(index, faiss.IndexFlatIP)
    scores, ids = index.search(q, 10)
    e_scores, e_ids = exact(x, q)
    np.testing.assert_array_equal(ids, e_ids)


def test_tiny_and_empty_inputs_stay_flat():
    settings = Settings(ann_threshold=0)
    index, kind = build_vector_index(np.zeros((0, D), dtype="float32"), D, settings)
    assert kind == "flat" and index.ntotal == 0
    x, _ = embedding_like(MIN_ANN_VECTORS - 1)
    assert build_vector_index(x, D, settings)[1] == "flat"


def test_structureless_vectors_keep_the_exact_index():
    """Uniformly random unit vectors in 384-d have no neighbourhoods worth indexing: IVF would have to scan
    most lists for recall 0.95, so the switch keeps flat rather than return a slow or inaccurate index."""
    rng = np.random.default_rng(3)
    x = unit(rng.standard_normal((4000, D)))
    q = unit(rng.standard_normal((100, D)))
    index, kind = build_vector_index(x, D, Settings(ann_threshold=2000))
    assert kind == "flat"
    assert recall(index, x, q) == 1.0


def test_duplicate_vectors_do_not_break_the_build():
    x, q = embedding_like(1500, 50, seed=2)
    x = np.concatenate([x, x, x])  # the same chunk three times (boilerplate sections repeat)
    index, kind = build_vector_index(x, D, Settings(ann_threshold=2000))
    assert kind.startswith("ivf")
    assert recall(index, x, q) >= 0.95  # ties count: any copy of a neighbour is a correct answer


def test_ivf_lists():
    assert [ivf_lists(n) for n in (1024, 5000, 200_000, 1_000_000)] == [16, 64, 1024, 2048]
    for n in (1024, 3000, 10_000, 123_456, 10**7):
        assert ivf_lists(n) * 40 <= n and ivf_lists(n) & (ivf_lists(n) - 1) == 0


def test_the_manifest_records_the_kind_and_the_index_serves(tmp_path):
    """Through the real writer and reader: the approximate index is what Index.open loads and searches."""
    settings = Settings(index_dir=tmp_path / "index", ann_threshold=2000)
    x, q = embedding_like(3000, 20, seed=4)
    writer = GenerationWriter(settings, D)
    for p in range(30):
        guid = f"https://example.com/{p}"
        writer.add_post(Post(guid, f"Post {p}", guid, "2025-01-01T00:00:00Z", "a", "text"))
        chunks = [Chunk(guid, f"Post {p}", "S", i // 10, guid, f"chunk {p} {i} words", i) for i in range(100)]
        writer.add_chunks(chunks, x[p * 100:(p + 1) * 100])
    writer.commit()
    index = Index.open(settings)
    manifest = json.loads((index.path / "manifest.json").read_text())
    assert manifest["faiss_index"].startswith("ivf") and manifest["faiss_index"] == index.manifest["faiss_index"]
    assert index.vectors.nprobe == describe(manifest["faiss_index"])["nprobe"]
    hits = index.dense_search(q[:1], 10)
    assert len(hits) == 10
    ids = np.array([i for i, _ in hits], dtype="int64")
    np.testing.assert_allclose(index.vectors.reconstruct_batch(ids) @ q[0], [s for _, s in hits], rtol=1e-5)
    assert recall(index.vectors, x, q) >= 0.95
    index.close()
