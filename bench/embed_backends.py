"""Embedding backends for the packaged all-MiniLM-L6-v2 on this CPU: speed, start-up cost, memory, agreement,
and (with --quality) retrieval quality against chunk size and overlap.

Every figure comes from a fresh `python` process (so import and load are those a `rag index` run pays),
against the bundled corpus chunked as `rag.indexer._write` chunks it (Settings defaults) and 50 questions of
eval/dev.jsonl. The reference is sentence-transformers' torch backend, fp32, 2 threads, batch 32; every
other run is compared with it by cosine, chunk by chunk.

    python bench/embed_backends.py --runs torch:2:32 onnx:2:32 onnx-int8:2:32 openvino:2:32 --repeat 2
    python bench/embed_backends.py --chunk-sizes 128 192 256 --runs torch:2:32 openvino:2:32
    python bench/embed_backends.py --imports             # import time of each library alone
    python bench/embed_backends.py --runs '' --quality torch:256:32 openvino:256:32 openvino:192:32 openvino:256:0

A run is BACKEND:THREADS:BATCH[:FLAG]; BACKEND is torch or openvino (rag/embed_backends.py, what the
product ships) or onnx / onnx-int8 (ONNX Runtime, fp32 graph with ORT's BERT fusions, optionally with
int8 dynamically quantized MatMuls: defined here only, since they lost; they need
`pip install -e '.[bench]'`). FLAG `unsorted` (torch) feeds batches in chunk order instead of
sentence-transformers' longest-first order, `bf16` (torch) runs under bfloat16 autocast, `f32` (openvino) forces
fp32 inference where the CPU plugin would pick bfloat16. Exports go once into --cache (default bench/out/embed-cache).

A quality spec is BACKEND:MAX_CHUNK_TOKENS:OVERLAP: a fresh process builds an index of the bundled feed with
those settings in a temporary directory and runs the eval's retrieval row (rag.eval.evaluate.Evaluator,
convex fusion, every question of --questions), printing hit@1, hit@5, MRR, chunks and word pieces embedded
and the build time.

Writes bench/out/embed_backends.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

DEFAULT_RUNS = ["torch:2:32", "torch:1:32", "onnx:2:32", "onnx-int8:2:32", "openvino:2:32", "openvino:1:32"]
N_QUERIES = 50
REFERENCE = "torch:2:32"


# --------------------------------------------------------------------------------------------- ONNX Runtime
# The routes that lost to OpenVINO (docs/embedding-backends.md), kept here so the comparison can be re-run.

OPSET = 17


def _onnx_fp32(model_path: Path, out: Path) -> str:
    """BERT -> ONNX with torch's TorchScript exporter, then ORT's BERT fusions (attention, LayerNorm, GELU)."""
    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    from rag.embed_backends import encoder_module, model_facts

    facts = model_facts(model_path)
    ids = torch.ones(2, 16, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    raw = out / "model_raw.onnx"
    with torch.no_grad():
        torch.onnx.export(encoder_module(model_path), (ids, ids, torch.zeros_like(ids)), str(raw), dynamo=False,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["token_embeddings"], opset_version=OPSET,
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                                        "token_embeddings": axes})
    opt = optimize_model(str(raw), model_type="bert", num_heads=facts["num_heads"],
                         hidden_size=facts["hidden_size"], opt_level=1, use_gpu=False)
    opt.save_model_to_file(str(out / "model.onnx"))
    raw.unlink()
    return "model.onnx"


def _onnx_int8(model_path: Path, out: Path) -> str:
    """The fp32 graph with MatMul/Gemm weights quantized to int8 per channel (activations per batch)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = out / _onnx_fp32(model_path, out)
    # ORT's fused BERT ops (com.microsoft domain) have no shape inference: their outputs are fp32
    quantize_dynamic(str(fp32), str(out / "model_int8.onnx"), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gemm"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    fp32.unlink()
    return "model_int8.onnx"


def _ort_embedder(base):
    class ORTEmbedder(base):
        def __init__(self, export_dir, threads=None):
            import onnxruntime as ort

            super().__init__(export_dir, threads)
            so = ort.SessionOptions()
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(str(self.export_dir / self.info["model_file"]), so,
                                                 providers=["CPUExecutionProvider"])
            self._inputs = {i.name for i in self._session.get_inputs()}

        def _runner(self):
            return lambda feeds: self._session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]

    return ORTEmbedder


BENCH_CONVERTERS = {"onnx": _onnx_fp32, "onnx-int8": _onnx_int8}


def bench_export(model_path, backend, cache):
    from rag.embed_backends import export

    return export(model_path, backend, cache, converters=BENCH_CONVERTERS)


def load_bench_embedder(model_path, backend, cache, threads):
    from rag.embed_backends import FastEmbedder, load_fast_embedder

    if backend in BENCH_CONVERTERS:
        return _ort_embedder(FastEmbedder)(bench_export(model_path, backend, cache), threads)
    return load_fast_embedder(model_path, backend, cache, threads=threads)


# --------------------------------------------------------------------------------------------- quality

def quality_child(spec: str, questions: str) -> dict:
    """Build an index with BACKEND:MAX_TOKENS:OVERLAP (from the environment the parent set) and score retrieval."""
    import tempfile

    from rag.eval.evaluate import Evaluator, load_questions
    from rag.eval.metrics import aggregate
    from rag.indexer import update_index
    from rag.settings import load_settings

    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="rag-quality-") as d:
        settings = settings.replace(index_dir=Path(d) / "index")
        t = time.perf_counter()
        report = update_index(settings)
        build_s = time.perf_counter() - t
        from rag.chunking import Chunker
        from rag.embedder import chunk_tokenizer, load_embedder
        from rag.index import Index

        count = Chunker(chunk_tokenizer(load_embedder(settings.embedder, settings.device,
                                                      settings.embed_backend))).count
        index = Index.open(settings)
        pieces = sum(min(count(c.embed_text), 256) for c in index.all_chunks())  # the model reads at most 256
        index.close()
        qs = load_questions(questions)
        t = time.perf_counter()
        m = aggregate(Evaluator(settings, progress=False).retrieval_row(qs, "convex"))
        return {"spec": spec, "chunks": report.chunks_total, "word_pieces": pieces, "build_s": build_s,
                "retrieval_s": time.perf_counter() - t, "questions": len(qs),
                **{k: m[k] for k in ("hit@1", "hit@3", "hit@5", "mrr", "ndcg@10", "evidence_recall@5")}}


def run_quality(specs: list[str], questions: str) -> list[dict]:
    rows = []
    for spec in specs:
        backend, size, overlap = spec.split(":")
        env = {"RAG_EMBED_BACKEND": backend, "RAG_MAX_CHUNK_TOKENS": size, "RAG_CHUNK_OVERLAP_TOKENS": overlap}
        res, wall = common.run_child([__file__, "--quality-child", spec, "--questions", questions], env=env)
        res["wall_s"] = wall
        rows.append(res)
        print(f"quality {spec:20} chunks {res['chunks']:4d}  word pieces {res['word_pieces']:6d}  "
              f"build {res['build_s']:5.1f}s  hit@1 {res['hit@1']:.3f}  hit@5 {res['hit@5']:.3f}  "
              f"mrr {res['mrr']:.3f}  ndcg@10 {res['ndcg@10']:.3f}  ({res['questions']} questions)", flush=True)
    return rows


def quality_table(rows: list[dict]) -> str:
    out = ["| backend:max tokens:overlap | chunks | word pieces embedded | build s | hit@1 | hit@3 | hit@5 | MRR "
           "| nDCG@10 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['spec']} | {r['chunks']} | {r['word_pieces']} | {r['build_s']:.1f} | {r['hit@1']:.3f} | "
                   f"{r['hit@3']:.3f} | {r['hit@5']:.3f} | {r['mrr']:.3f} | {r['ndcg@10']:.3f} |")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- children

def make_texts(path: Path, sizes: list[int]) -> None:
    """Chunk the bundled feed as the indexer does, with the tokenizer sentence-transformers loads."""
    from sentence_transformers import SentenceTransformer

    from rag.chunking import Chunker
    from rag.embedder import embedder_location
    from rag.feed import read_feed
    from rag.settings import load_settings

    s = load_settings()
    location = embedder_location(s.embedder)
    tok = SentenceTransformer(location, device="cpu").tokenizer
    posts = read_feed(s.feed)
    out = {"model_path": location, "chunks": {}, "tokens": {}}
    for size in sizes:
        chunker = Chunker(tok, size, s.chunk_overlap_tokens, s.min_chunk_tokens)
        texts = [c.embed_text for p in posts for c in chunker.chunk(p)]
        out["chunks"][str(size)] = texts
        out["tokens"][str(size)] = [min(len(tok(t)["input_ids"]), 256) for t in texts]
    questions = [json.loads(line)["question"] for line in (common.ROOT / "eval" / "dev.jsonl").open()]
    out["queries"] = questions[:N_QUERIES]
    path.write_text(json.dumps(out))


def child(spec: str, texts_file: Path, size: str, vectors_out: Path, cache: Path, warm: int) -> dict:
    t0 = time.perf_counter()
    backend, threads, batch, *flags = spec.split(":")
    threads, batch = int(threads), int(batch)
    data = json.loads(texts_file.read_text())
    texts, queries = data["chunks"][size], data["queries"]
    t_imp = time.perf_counter()
    import numpy as np

    if backend == "torch":
        import sentence_transformers  # noqa: F401
        import torch

        torch.set_num_threads(threads)
    elif backend == "openvino":
        from rag.embed_backends import import_openvino

        import_openvino()
    else:
        import onnxruntime  # noqa: F401
    t1 = time.perf_counter()
    export_s = None
    if backend != "torch":  # export (only the first time for this cache) is reported apart from loading
        marker = time.perf_counter()
        bench_export(data["model_path"], backend, cache)
        export_s = time.perf_counter() - marker
    t2 = time.perf_counter()
    model = load_bench_embedder(data["model_path"], backend, cache, threads=threads)
    if "f32" in flags and backend == "openvino":  # OpenVINO's CPU plugin picks bf16 where the CPU has it
        from rag.embed_backends import import_openvino

        model._compiled = import_openvino().Core().compile_model(
            str(model.export_dir / model.info["model_file"]), "CPU",
            {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    t3 = time.perf_counter()

    def run(items):
        if "bf16" in flags and backend == "torch":  # torch's own bfloat16 path, for comparison
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model.encode(items, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True,
                                    show_progress_bar=False)
        if "unsorted" in flags:  # one encode per slice: sentence-transformers sorts only inside a slice
            return np.concatenate([model.encode(items[i:i + batch], batch_size=batch, normalize_embeddings=True,
                                                convert_to_numpy=True, show_progress_bar=False)
                                   for i in range(0, len(items), batch)])
        return model.encode(items, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)

    vecs = run(texts)
    t4 = time.perf_counter()
    warm_s = []
    for _ in range(warm):
        a = time.perf_counter()
        run(texts)
        warm_s.append(time.perf_counter() - a)
    qlat = []
    qvecs = []
    for q in queries:  # one query at a time, as the chat app embeds them
        a = time.perf_counter()
        qvecs.append(model.encode([q], batch_size=1, normalize_embeddings=True, convert_to_numpy=True,
                                  show_progress_bar=False)[0])
        qlat.append(time.perf_counter() - a)
    np.save(vectors_out, np.asarray(vecs, dtype=np.float32))
    np.save(vectors_out.with_suffix(".q.npy"), np.asarray(qvecs, dtype=np.float32))
    return {"spec": spec, "size": size, "n": len(texts), "import_s": t1 - t_imp, "export_s": export_s,
            "load_s": t3 - t2, "first_embed_s": t4 - t3, "warm_embed_s": min(warm_s) if warm_s else None,
            "query_p50_ms": 1000 * common.pct(qlat[1:], 50), "query_p95_ms": 1000 * common.pct(qlat[1:], 95),
            "torch_imported": "torch" in sys.modules, "transformers_imported": "transformers" in sys.modules,
            "in_child_s": time.perf_counter() - t0, "rss_after_bytes": common.rss_bytes()}


def import_child(module: str) -> dict:
    t = time.perf_counter()
    __import__(module)
    return {"module": module, "import_s": time.perf_counter() - t, "torch_imported": "torch" in sys.modules}


# --------------------------------------------------------------------------------------------- parent

def cosines(a, b):
    import numpy as np

    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    c = (a * b).sum(axis=1)
    return float(c.mean()), float(c.min())


def run_spec(spec, size, texts_file, out_dir, cache, warm, repeat):
    best = None
    for _ in range(repeat):
        vec = out_dir / f"vec-{spec.replace(':', '_')}-{size}.npy"
        res, wall = common.run_child([__file__, "--child", spec, "--texts", str(texts_file), "--size", size,
                                      "--vectors", str(vec), "--cache", str(cache), "--warm", str(warm)])
        res["wall_s"] = wall
        res["vectors"] = str(vec)
        if res.get("export_s") and res["export_s"] > 1:  # that run exported: its wall time is not a load's
            print(f"  {spec}: exported in {res['export_s']:.1f}s (once; rerunning for the load figure)", flush=True)
            res, wall = common.run_child([__file__, "--child", spec, "--texts", str(texts_file), "--size", size,
                                          "--vectors", str(vec), "--cache", str(cache), "--warm", str(warm)])
            res["wall_s"] = wall
            res["vectors"] = str(vec)
        if best is None or res["wall_s"] < best["wall_s"]:
            best = res
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="*", default=DEFAULT_RUNS)
    p.add_argument("--chunk-sizes", nargs="*", type=int, default=[256],
                   help="max_chunk_tokens values; the runs are repeated for each (256 is the default setting)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--warm", type=int, default=2, help="warm re-embeds per run, fastest kept")
    p.add_argument("--imports", action="store_true", help="also time importing each library alone")
    p.add_argument("--cache", default=str(common.OUT / "embed-cache"))
    p.add_argument("--out", default=str(common.OUT / "embed_backends.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--import-child", help=argparse.SUPPRESS)
    p.add_argument("--texts", help=argparse.SUPPRESS)
    p.add_argument("--size", default="256", help=argparse.SUPPRESS)
    p.add_argument("--vectors", help=argparse.SUPPRESS)
    p.add_argument("--make-texts", help=argparse.SUPPRESS)
    p.add_argument("--quality", nargs="*", default=[], metavar="BACKEND:MAX_TOKENS:OVERLAP",
                   help="build an index per spec and score retrieval on --questions")
    p.add_argument("--questions", default="eval/dev.jsonl")
    p.add_argument("--quality-child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(common.ROOT))
    if a.child:
        common.emit(child(a.child, Path(a.texts), a.size, Path(a.vectors), Path(a.cache), a.warm))
        return 0
    if a.quality_child:
        common.emit(quality_child(a.quality_child, a.questions))
        return 0
    if a.import_child:
        common.emit(import_child(a.import_child))
        return 0
    if a.make_texts:
        make_texts(Path(a.make_texts), [int(x) for x in a.size.split(",")])
        common.emit({})
        return 0

    import numpy as np

    results = {"machine": common.machine(), "command": " ".join(["bench/embed_backends.py", *sys.argv[1:]]),
               "runs": [], "imports": []}
    results["machine"]["cpu_flags"] = sorted({f for f in Path("/proc/cpuinfo").read_text().split()
                                              if f.startswith(("avx", "fma", "amx")) or "vnni" in f})
    out_dir = Path(a.out).parent / "embed-vectors"
    out_dir.mkdir(parents=True, exist_ok=True)
    texts_file = out_dir / "texts.json"
    sizes = sorted(set(a.chunk_sizes) | {256})
    if any(a.runs):
        common.run_child([__file__, "--make-texts", str(texts_file), "--size", ",".join(map(str, sizes))])
        data = json.loads(texts_file.read_text())
    for size in sizes if any(a.runs) else ():
        toks = data["tokens"][str(size)]
        print(f"max_chunk_tokens {size}: {len(toks)} chunks, {sum(toks)} word pieces, "
              f"mean {statistics.fmean(toks):.0f}, p50 {common.pct(toks, 50):.0f}, max {max(toks)}", flush=True)

    if a.imports:
        for module in ("numpy", "tokenizers", "onnxruntime", "openvino", "transformers", "torch",
                       "sentence_transformers", "rag.embed_backends"):
            try:
                res, wall = common.run_child([__file__, "--import-child", module])
            except RuntimeError as e:
                print(f"import {module}: {e}")
                continue
            res["wall_s"] = wall
            results["imports"].append(res)
            print(f"import {module:24} {res['import_s']:6.2f}s  (process wall {wall:5.2f}s, "
                  f"peak RSS {common.mib(res['peak_rss_bytes'])} MiB, torch imported: {res['torch_imported']})",
                  flush=True)

    refs = {}
    specs = [REFERENCE] + [s for s in a.runs if s and s != REFERENCE] if any(a.runs) else []
    for size in sizes if specs else ():
        for spec in specs:
            try:
                res = run_spec(spec, str(size), texts_file, out_dir, Path(a.cache), a.warm, a.repeat)
            except RuntimeError as e:
                print(f"{spec} ({size}): {e}", flush=True)
                continue
            vec = np.load(res["vectors"])
            qv = np.load(Path(res["vectors"]).with_suffix(".q.npy"))
            if spec == REFERENCE:
                refs[size] = (vec, qv)
            ref_vec, ref_q = refs[size]
            res["chunk_cos_mean"], res["chunk_cos_min"] = cosines(vec, ref_vec)
            res["query_cos_mean"], res["query_cos_min"] = cosines(qv, ref_q)
            res["chunks_per_s_warm"] = res["n"] / res["warm_embed_s"] if res["warm_embed_s"] else None
            results["runs"].append(res)
            print(f"{spec:22} {size:4}  wall {res['wall_s']:5.2f}s  import {res['import_s']:5.2f}  "
                  f"load {res['load_s']:5.2f}  embed {res['first_embed_s']:5.2f} (warm {res['warm_embed_s']:5.2f}, "
                  f"{res['chunks_per_s_warm']:5.0f}/s)  query p50 {res['query_p50_ms']:5.1f} ms  "
                  f"cos {res['chunk_cos_mean']:.5f}/{res['chunk_cos_min']:.5f} q {res['query_cos_mean']:.5f}/"
                  f"{res['query_cos_min']:.5f}  RSS {common.mib(res['peak_rss_bytes'])} MiB  "
                  f"CPU {res['cpu_s']:5.1f}s  torch {'yes' if res['torch_imported'] else 'no'}", flush=True)

    if a.quality:
        results["quality"] = run_quality(a.quality, a.questions)
    common.write_json(Path(a.out), results)
    print()
    if results["runs"]:
        print(table(results))
    if a.quality:
        print(quality_table(results["quality"]))
    return 0


def table(results: dict) -> str:
    """The markdown table docs/embedding-backends.md carries."""
    rows = ["| run (backend:threads:batch) | max tokens | fresh-process wall s | import s | load s | embed 421 s "
            "(first) | warm embed s | chunks/s (warm) | query p50 ms | cos mean / min (chunks) "
            "| cos mean / min (queries) | peak RSS MiB | CPU s | torch imported |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|"]
    for r in results["runs"]:
        rows.append(f"| {r['spec']} | {r['size']} | {r['wall_s']:.2f} | {r['import_s']:.2f} | {r['load_s']:.2f} | "
                    f"{r['first_embed_s']:.2f} | {r['warm_embed_s']:.2f} | {r['chunks_per_s_warm']:.0f} | "
                    f"{r['query_p50_ms']:.1f} | {r['chunk_cos_mean']:.5f} / {r['chunk_cos_min']:.5f} | "
                    f"{r['query_cos_mean']:.5f} / {r['query_cos_min']:.5f} | {common.mib(r['peak_rss_bytes'])} | "
                    f"{r['cpu_s']:.1f} | {'yes' if r['torch_imported'] else 'no'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
