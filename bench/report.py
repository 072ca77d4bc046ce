"""Print the Markdown tables of docs/benchmarks.md from the JSON the benchmark scripts wrote.

    python bench/report.py            # reads bench/out/{index,query,scale,scale-storage-1m}.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def load(name: str) -> dict | None:
    path = common.OUT / name
    return json.loads(path.read_text()) if path.exists() else None


def table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(m: dict) -> str:
    return (f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; {m['date']}; load average "
            f"{m['loadavg_start'][0]:.1f} at start, {m.get('loadavg_end', [float('nan')])[0]:.1f} at end")


def index_section(r: dict) -> str:
    if "best" in r:  # bench/index_bench.py's current format: the tutorial pipeline in the same run
        import index_bench

        return index_bench.table(r)
    rows = []
    names = {"full_build": "full build (10 posts)", "no_change_update": "update, feed unchanged",
             "one_new_post_update": "update, 1 new post", "rebuild_11_posts": "`--rebuild` (11 posts)"}
    for step, label in names.items():
        runs = [run[step] for run in r["runs"]]
        med = r["median"][step]
        rows.append([label, f"{med['chunks_embedded']:.0f} / {med['chunks_total']:.0f}",
                     " / ".join(f"{x['wall_s']:.1f}" for x in runs), f"{med['cpu_s']:.1f}" if med.get("cpu_s") else "-",
                     f"{med['update_s']:.1f}", f"{med['chunks_per_s']:.1f}" if med.get("chunks_per_s") else "-",
                     f"{common.mib(med['peak_rss_bytes']):.0f}"])
    return (f"{machine_line(r['machine'])}\n\n"
            + table(["step", "chunks embedded / in index", "wall s (each run)", "CPU s (median)",
                     "update_index s (median)", "chunks/s", "peak RSS MiB"], rows))


def query_section(r: dict) -> str:
    out = [machine_line(r["machine"]), ""]
    ret = r.get("retrieval_ms")
    if ret:
        rows = [[f, ret[f]["p50"], ret[f]["p95"], ret[f"{f}_cpu"]["p50"] if f"{f}_cpu" in ret else "-", ret[f]["n"]]
                for f in ("dense", "bm25", "convex", "rrf")]
        rows.append(["(query embedding alone)", ret["embed_query_ms"]["p50"], ret["embed_query_ms"]["p95"],
                     ret.get("embed_query_cpu_ms", {}).get("p50", "-"), ret["embed_query_ms"]["n"]])
        out += ["Retrieval (`Retriever.search`, query embedding included), ms:", "",
                table(["fusion", "p50", "p95", "CPU p50", "questions"], rows), ""]
    modes = r.get("modes")
    if modes:
        rows = []
        for m, v in modes.items():
            ft, tot = v["first_token_s"], v["total_s"]
            generated = m != "extractive"  # extractive picks sentences: no language model, no decoding rate
            rows.append([m, f"{v['questions'] - v['refused']} / {v['refused']}", ft.get("p50", "-"), ft.get("p95", "-"),
                         tot.get("p50", "-"), tot.get("p95", "-"), v.get("cpu_s", {}).get("p50", "-"),
                         v["tokens"].get("p50", "-"),
                         round(v["tokens_per_s"], 1) if v["tokens_per_s"] and generated else "n/a",
                         v["decode_tokens_per_s"].get("p50", "-") if generated else "n/a"])
        out += ["Answer modes (`Chat.stream`, models loaded and warm), seconds:", "",
                table(["mode", "answered / refused", "first token p50", "first token p95", "total p50", "total p95",
                       "CPU s p50", "answer tokens p50", "tokens/s (gen.)", "decode tokens/s p50"], rows), ""]
    e2e = r.get("end_to_end")
    if e2e:
        out += [f"End to end, default mode ({r['settings']['answer_mode']}), {e2e['questions']} questions "
                f"({e2e['refused']} refused), seconds:", "",
                table(["", "p50", "p95"], [["total", e2e["total_s"]["p50"], e2e["total_s"]["p95"]],
                                           ["first token", e2e["first_token_s"]["p50"], e2e["first_token_s"]["p95"]],
                                           ["retrieval", e2e["retrieve_s"]["p50"], e2e["retrieve_s"]["p95"]],
                                           ["CPU time", e2e.get("cpu_s", {}).get("p50", "-"),
                                            e2e.get("cpu_s", {}).get("p95", "-")]]), ""]
    out.append(f"Model load: embedder {r.get('embedder_load_s', 0):.1f} s, generator {r.get('generator_load_s', 0):.1f} s.")
    return "\n".join(out)


def scale_section(r: dict, storage_1m: dict | None) -> str:
    return "\n\n".join(x for x in (scale_vectors(r), scale_uniform(r), scale_storage(r, storage_1m)) if x)


def scale_vectors(r: dict) -> str:
    build = {(b["n"], b["index"]): b for b in r["build"] if b["dist"] == "latent"}
    rows = []
    for s in sorted(r["serve"], key=lambda s: (s["n"], s["index"])):
        b = build[(s["n"], s["index"])]
        l1, l2 = s["latency_ms_1thread"], s["latency_ms_default_threads"]
        param = f"nprobe {s['nprobe']}" if "nprobe" in s else f"efSearch {s['efSearch']}" if "efSearch" in s else ""
        rows.append([f"{s['n']:,}", b["kind"] if s["index"] != "hnsw" else f"{b['kind']} ({param})",
                     round(b["build_s"], 2), common.mib(b["file_bytes"]), common.mib(s["rss_index_bytes"]),
                     l1["p50"], l1["p95"], l2["p50"], round(s["recall_at_10"], 3)])
    out = [machine_line(r["machine"]), "",
           table(["chunks", "index", "build s", "file MiB", "RSS MiB (loaded)", "p50 ms 1 thread", "p95 ms 1 thread",
                  f"p50 ms {r['serve'][0]['default_threads']} threads", "recall@10"], rows)]
    return "\n".join(out)


def scale_uniform(r: dict) -> str:
    out = []
    if r.get("uniform"):
        rows = []
        for u in r["uniform"]:
            sweep = ", ".join(f"{p}: {v['recall']:.2f}" for p, v in u["nprobe_sweep"].items())
            rows.append([f"{u['n']:,}", u["nlist"], sweep, round(u["top1_cos"], 2), round(u["top10_cos"], 2),
                         u["auto_kind_at_threshold_0"]])
        out += ["Uniformly random unit vectors (worst case): IVF recall@10 by nprobe, and what the switch chose:", "",
                table(["chunks", "nlist", "recall@10 by nprobe", "1st-neighbour cos", "10th-neighbour cos",
                       "build_vector_index chose"], rows)]
    return "\n".join(out)


def scale_storage(r: dict, storage_1m: dict | None) -> str:
    out = []
    storage = list(zip(r.get("storage", []), r.get("storage_serve", [])))
    if storage_1m:
        storage += list(zip(storage_1m.get("storage", []), storage_1m.get("storage_serve", [])))
    if storage:
        rows = []
        for s, v in storage:
            rows.append([f"{s['n']:,}", round(s["insert_s"], 1), round(s["commit_s"], 1), round(s["write_total_s"], 1),
                         round(s["cpu_s"], 1) if "cpu_s" in s else "-",
                         common.mib(s["peak_rss_bytes"]), common.mib(s["sqlite_bytes"]), common.mib(s["faiss_bytes"]),
                         s["manifest_kind"], common.mib(v["rss_open_bytes"]), v["keyword_ms"]["p50"],
                         v["keyword_ms"]["p95"], v["dense_ms"]["p50"], v["dense_ms"]["p95"]])
        out += ["The project's own storage (`GenerationWriter` then `Index.open`), synthetic 160-word chunks:", "",
                table(["chunks", "insert s", "commit s", "write total s", "process CPU s", "write peak RSS MiB", "chunks.sqlite MiB",
                       "vectors.faiss MiB", "kind", "Index.open RSS MiB", "FTS5 p50 ms", "FTS5 p95 ms",
                       "dense_search p50 ms", "dense_search p95 ms"], rows)]
    return "\n".join(out)


def main() -> int:
    for name, fn in (("index.json", index_section), ("query.json", query_section)):
        r = load(name)
        if r:
            print(f"## {name}\n\n{fn(r)}\n")
    r = load("query-default-threads.json")
    if r and r.get("retrieval_ms"):
        print(f"## query-default-threads.json (torch {r['settings']['torch_threads']}, FAISS "
              f"{r['settings'].get('faiss_threads')} threads)\n\n{query_section(r)}\n")
    r = load("scale.json")
    if r:
        print(f"## scale.json\n\n{scale_section(r, load('scale-storage-1m.json'))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
