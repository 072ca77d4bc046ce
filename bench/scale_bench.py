"""How the index scales: synthetic corpora of 1k to 1M chunks (d=384).

For each size, each step runs in its own process so that its memory is its own:
  build   flat / IVF (rag.vectors, nprobe auto-tuned) / HNSW32 (comparison): build time, peak RSS, file size
  serve   read the index back, RSS it adds, single-query search latency p50/p95 at 1 thread and at the
          default thread count, recall@10 of held-out queries against flat
  uniform (<= --uniform-max) the worst case for approximate search: uniformly random unit vectors
  storage (--storage-sizes) the real write path, rag.index.GenerationWriter with synthetic chunks (SQLite
          rows + FTS5 + vectors + VACUUM + FAISS + fsync), then Index.open and FTS5 keyword / dense search

    python bench/scale_bench.py                        # 1k, 10k, 100k, 1M; 7.5 minutes on 2 busy cores
    python bench/scale_bench.py --sizes 1000,10000     # quick
    # the SQLite write path at 1M (21 minutes, 13 GB of disk); the plot picks it up when run first:
    python bench/scale_bench.py --sizes '' --storage-sizes 1000000 --out bench/out/scale-storage-1m.json

Writes bench/out/scale.json and docs/scale.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import synth  # noqa: E402

HNSW_M, HNSW_EF_CONSTRUCTION = 32, 40
RECALL_GOAL = 0.95


# ------------------------------------------------------------------ children


def child_build(a) -> dict:
    import faiss

    from rag.settings import Settings
    from rag.vectors import build_ivf, build_vector_index

    x, _ = synth.vectors(a.dist, a.n, a.queries)
    rss_data = common.rss_bytes()
    start = time.perf_counter()
    info: dict = {}
    if a.kind == "flat":
        index, kind = build_vector_index(x, synth.D, Settings(ann_threshold=10**12))
    elif a.kind == "ivf":
        built = build_ivf(x, synth.D)
        index, kind = built if built else (None, "flat (IVF would not pay)")
    else:
        index = faiss.IndexHNSWFlat(synth.D, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(x)
        kind = f"hnsw{HNSW_M}"
    info["build_s"] = time.perf_counter() - start
    info.update(kind=kind, n=a.n, dist=a.dist, index=a.kind, rss_data_bytes=rss_data)
    if index is not None:
        path = Path(a.workdir) / f"{a.kind}-{a.dist}-{a.n}.faiss"
        faiss.write_index(index, str(path))
        info["file_bytes"] = path.stat().st_size
    return info


def _latency(index, queries: np.ndarray, threads: int) -> dict:
    import faiss

    faiss.omp_set_num_threads(threads)
    for q in queries[:5]:
        index.search(q[None, :], 10)
    times = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None, :], 10)
        times.append(time.perf_counter() - t)
    return common.summary(times, 1000, 4)


def child_serve(a) -> dict:
    import faiss

    from rag.vectors import recall_at_k

    default_threads = faiss.omp_get_max_threads()
    _, queries = synth.vectors(a.dist, a.n, a.queries, data=False)
    workdir = Path(a.workdir)
    path = workdir / f"{a.kind}-{a.dist}-{a.n}.faiss"
    rss0 = common.rss_bytes()
    start = time.perf_counter()
    index = faiss.read_index(str(path))
    load_s = time.perf_counter() - start
    out = {"n": a.n, "dist": a.dist, "index": a.kind, "load_s": load_s, "rss_index_bytes": common.rss_bytes() - rss0}
    gt_path = workdir / f"gt-{a.dist}-{a.n}.npz"
    if a.kind == "flat":
        scores, ids = index.search(queries, 10)
        np.savez(gt_path, scores=scores, ids=ids)
    gt = np.load(gt_path)

    def recall() -> float:
        faiss.omp_set_num_threads(default_threads)
        scores, ids = index.search(queries, 10)
        return recall_at_k(np.full(len(queries), -1), gt["ids"], gt["scores"], ids, scores)

    if a.kind == "hnsw":
        sweep = {}
        for ef in (16, 32, 64, 128, 256, 512, 1024):
            index.hnsw.efSearch = ef
            sweep[ef] = recall()
            if sweep[ef] >= RECALL_GOAL:
                break
        out["ef_sweep_recall"] = sweep
        out["efSearch"] = index.hnsw.efSearch
    if a.kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        tuned = ivf.nprobe
        sweep = {}
        for p in (1, 2, 4, 8, 16, 32, 64):
            if p <= ivf.nlist:
                ivf.nprobe = p
                sweep[p] = recall()
        ivf.nprobe = tuned
        out.update(nprobe=tuned, nlist=ivf.nlist, nprobe_sweep_recall=sweep)
    out["recall_at_10"] = recall()
    out["latency_ms_1thread"] = _latency(index, queries, 1)
    out["latency_ms_default_threads"] = _latency(index, queries, default_threads)
    out["default_threads"] = default_threads
    return out


def child_uniform(a) -> dict:
    """Uniformly random unit vectors: what IVF would need for the recall goal, and what rag picks."""
    import faiss

    from rag.settings import Settings
    from rag.vectors import build_ivf, build_vector_index, recall_at_k

    x, queries = synth.uniform_vectors(a.n, a.queries)
    scores, ids = faiss.knn(queries, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    index, _ = build_ivf(x, synth.D, target=0.0)  # nprobe=1 index, to sweep by hand
    sweep = {}
    for p in (1, 4, 16, 64, 256, 1024):
        if p > index.nlist:
            break
        index.nprobe = p
        t = time.perf_counter()
        s, i = index.search(queries, 10)
        sweep[p] = {"recall": recall_at_k(np.full(len(queries), -1), ids, scores, i, s),
                    "ms_per_query": 1000 * (time.perf_counter() - t) / len(queries)}
    flat = faiss.IndexFlatIP(synth.D)
    flat.add(x)
    t = time.perf_counter()
    flat.search(queries, 10)
    flat_ms = 1000 * (time.perf_counter() - t) / len(queries)
    _, kind = build_vector_index(x, synth.D, Settings(ann_threshold=0))
    return {"n": a.n, "nlist": index.nlist, "nprobe_sweep": sweep, "flat_ms_per_query": flat_ms,
            "top1_cos": float(scores[:, 0].mean()), "top10_cos": float(scores[:, 9].mean()),
            "auto_kind_at_threshold_0": kind}


def child_storage(a) -> dict:
    """The project's own write path at scale, with synthetic chunks and vectors."""
    from rag.chunking import Chunk
    from rag.feed import Post
    from rag.index import GenerationWriter
    from rag.settings import load_settings

    settings = load_settings(config="/nonexistent", index_dir=Path(a.workdir) / f"index-{a.n}")
    x, _ = synth.latent_vectors(a.n, 0)
    gen = synth.TextGenerator()
    per_post = 50
    posts = (a.n + per_post - 1) // per_post
    start = time.perf_counter()
    writer = GenerationWriter(settings, synth.D)
    text_s = 0.0
    for p in range(posts):
        guid = f"https://example.com/p/{p}"
        lo, hi = p * per_post, min(a.n, (p + 1) * per_post)
        writer.add_post(Post(guid, f"Post {p}", guid, "2025-01-01T00:00:00Z", "bench", "x"))
        t = time.perf_counter()
        texts = gen.chunks(hi - lo)
        text_s += time.perf_counter() - t
        chunks = [Chunk(guid, f"Post {p}", f"Post {p} > Section {(i - lo) // 5}", (i - lo) // 5, guid,
                        texts[i - lo], i - lo) for i in range(lo, hi)]
        writer.add_chunks(chunks, x[lo:hi])
    inserted = time.perf_counter()
    name = writer.commit()
    done = time.perf_counter()
    gen_dir = settings.index_dir / name
    return {"n": a.n, "insert_s": inserted - start - text_s, "commit_s": done - inserted,
            "write_total_s": done - start - text_s,
            "sqlite_bytes": (gen_dir / "chunks.sqlite").stat().st_size,
            "faiss_bytes": (gen_dir / "vectors.faiss").stat().st_size,
            "manifest_kind": json.loads((gen_dir / "manifest.json").read_text())["faiss_index"]}


def child_storage_serve(a) -> dict:
    from rag.index import Index
    from rag.settings import load_settings

    settings = load_settings(config="/nonexistent", index_dir=Path(a.workdir) / f"index-{a.n}")
    _, qvecs = synth.latent_vectors(a.n, a.queries, data=False)
    texts = synth.TextGenerator(seed=11).queries(a.queries)
    rss0 = common.rss_bytes()
    t = time.perf_counter()
    index = Index.open(settings)
    open_s = time.perf_counter() - t
    rss_open = common.rss_bytes() - rss0

    def timed(fn, items):
        fn(items[0])
        out = []
        for item in items:
            t = time.perf_counter()
            fn(item)
            out.append(time.perf_counter() - t)
        return common.summary(out, 1000, 3)

    kw = timed(lambda q: index.keyword_search(q, 30), texts)
    dense = timed(lambda q: index.dense_search(q[None, :], 30), qvecs)
    ids = [i for i, _ in index.keyword_search(texts[0], 30)] or list(range(30))
    fetch = timed(lambda _: index.chunks(ids), list(range(50)))
    hits = sum(1 for q in texts[:50] if index.keyword_search(q, 30))
    return {"n": a.n, "open_s": open_s, "rss_open_bytes": rss_open, "rss_after_queries_bytes": common.rss_bytes() - rss0,
            "keyword_ms": kw, "dense_ms": dense, "fetch_30_chunks_ms": fetch, "keyword_queries_with_hits": hits / 50}


CHILDREN = {"build": child_build, "serve": child_serve, "uniform": child_uniform, "storage": child_storage,
            "storage-serve": child_storage_serve}


# ------------------------------------------------------------------ orchestration


def run(job: str, **kw) -> dict:
    args = [__file__, "--child", job] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    result, wall = common.run_child(args)
    result["child_wall_s"] = wall
    print(f"  {job:13} {json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, default=str)[:300]}",
          flush=True)
    return result


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    styles = {"flat": ("flat (exact)", "tab:blue"), "ivf": ("IVF, nprobe auto-tuned", "tab:green"),
              "hnsw": (f"HNSW{HNSW_M}, efSearch for recall {RECALL_GOAL}", "tab:orange")}
    serve = [r for r in results["serve"] if r["dist"] == "latent"]
    build = [r for r in results["build"] if r["dist"] == "latent" and "file_bytes" in r]
    for kind, (label, color) in styles.items():
        rows = sorted((r for r in serve if r["index"] == kind), key=lambda r: r["n"])
        if not rows:
            continue
        ns = [r["n"] for r in rows]
        axes[0].plot(ns, [r["latency_ms_1thread"]["p50"] for r in rows], "o-", color=color, label=f"{label} p50")
        axes[0].plot(ns, [r["latency_ms_1thread"]["p95"] for r in rows], "x--", color=color, alpha=0.6,
                     label=f"{label} p95")
        if kind == "flat":
            axes[0].plot(ns, [r["latency_ms_default_threads"]["p50"] for r in rows], "^:", color=color,
                         label=f"flat p50 at {rows[0]['default_threads']} threads (FAISS default)")
        axes[1].plot(ns, [common.mib(r["rss_index_bytes"]) for r in rows], "o-", color=color,
                     label=f"{label}: RSS of the loaded index")
        b = sorted((r for r in build if r["index"] == kind), key=lambda r: r["n"])
        axes[2].plot([r["n"] for r in b], [r["build_s"] for r in b], "o-", color=color, label=label)
    extra = common.OUT / "scale-storage-1m.json"  # the slow 1M write path, when it was run separately
    storage = results.get("storage", []) + (json.loads(extra.read_text()).get("storage", []) if extra.exists() else [])
    storage = sorted({r["n"]: r for r in storage}.values(), key=lambda r: r["n"])
    if storage:
        axes[1].plot([r["n"] for r in storage], [common.mib(r["sqlite_bytes"]) for r in storage], "s:", color="tab:red",
                     label="chunks.sqlite on disk (text, FTS5, vectors)")
        axes[2].plot([r["n"] for r in storage], [r["write_total_s"] for r in storage], "s:", color="tab:red",
                     label="whole generation write (GenerationWriter)")
        axes[0].plot([r["n"] for r in storage], [r["keyword_ms"]["p50"] for r in storage], "s:", color="tab:red",
                     label="FTS5 keyword search p50")
    axes[0].set(title="Single-query search latency (k=10; 1 thread unless noted)", ylabel="ms")
    axes[1].set(title="Memory and disk", ylabel="MiB")
    axes[2].set(title="Build time (2 cores)", ylabel="s")
    for ax in axes:
        ax.set(xscale="log", yscale="log", xlabel="chunks (vectors, d=384)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    m = results["machine"]
    fig.suptitle(f"rag index at scale - synthetic embedding-like vectors - {m['cpu']}, {m['cores']} cores, "
                 f"{m['date'][:10]} (shared machine, preliminary)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,100000,1000000")
    p.add_argument("--queries", type=int, default=200, help="held-out queries per size")
    p.add_argument("--hnsw-max", type=int, default=100_000, help="largest size to build HNSW at (slow to build)")
    p.add_argument("--uniform-max", type=int, default=100_000, help="largest size for the uniform worst case")
    p.add_argument("--storage-sizes", default="1000,10000,100000", help="sizes for the SQLite/FTS5 write path")
    p.add_argument("--out", default=str(common.OUT / "scale.json"))
    p.add_argument("--plot", default=str(common.ROOT / "docs" / "scale.png"))
    p.add_argument("--workdir", help="where indexes are written (default: a temporary directory, removed)")
    p.add_argument("--plot-only", action="store_true", help="redraw the plot from --out")
    # child arguments
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    p.add_argument("--dist", default="latent", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if a.child:
        common.emit(CHILDREN[a.child](a))
        return 0
    if a.plot_only:
        plot(json.loads(Path(a.out).read_text()), Path(a.plot))
        return 0

    import faiss  # noqa: F401  (for the version in machine())

    sizes = [int(s) for s in a.sizes.split(",") if s]
    results = {"machine": common.machine(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
               "hnsw": {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}, "build": [], "serve": [],
               "uniform": [], "storage": [], "storage_serve": []}
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="rag-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        for n in sizes:
            print(f"n = {n:,}", flush=True)
            kinds = ["flat", "ivf"] + (["hnsw"] if n <= a.hnsw_max else [])
            for kind in kinds:
                b = run("build", kind=kind, n=n, workdir=workdir, queries=a.queries)
                results["build"].append(b)
                if "file_bytes" in b:
                    results["serve"].append(run("serve", kind=kind, n=n, workdir=workdir, queries=a.queries))
            for f in workdir.glob(f"*-{n}.faiss"):
                f.unlink()
            if n <= a.uniform_max:
                results["uniform"].append(run("uniform", n=n, workdir=workdir, queries=a.queries))
        for n in [int(s) for s in a.storage_sizes.split(",") if s]:
            print(f"storage n = {n:,}", flush=True)
            results["storage"].append(run("storage", n=n, workdir=workdir, queries=a.queries))
            results["storage_serve"].append(run("storage-serve", n=n, workdir=workdir, queries=a.queries))
            shutil.rmtree(workdir / f"index-{n}", ignore_errors=True)
    finally:
        if not a.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    results["total_s"] = time.perf_counter() - started
    # the storage figures go on the plot beside the vector figures
    for s, serve in zip(results["storage"], results["storage_serve"]):
        s["keyword_ms"] = serve["keyword_ms"]  # the plot shows them beside the vector figures
    common.write_json(Path(a.out), results)
    if results["serve"]:
        plot(results, Path(a.plot))
    print(f"total {results['total_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
