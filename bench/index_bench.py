"""Index build figures for the bundled corpus, against the tutorial pipeline in the same run.

Steps, each in a fresh process (so the wall time includes process start, imports and model loading, as a
user running `rag index` sees it, and the peak RSS is that step's alone):

  tutorial full build   feedparser -> BeautifulSoup text -> 1000-character RecursiveCharacterTextSplitter
                        chunks (overlap 100, as rag/eval's baseline) -> the same MiniLM through
                        sentence-transformers (torch) -> flat FAISS, written to disk
  full build            `rag.indexer.update_index` (what `rag index` runs) into an empty directory
  update, unchanged     the same feed again: nothing to embed, the embedder is not loaded
  update, 1 new post    the bundled feed plus a copy of a median-sized post (Clustering) under a new guid

The steps run in rounds (tutorial, full, unchanged, one new post; then again), so that load from other
processes on a shared machine hits them alike; the figures are the best of the rounds, and the ratios are
taken between best times of the same run.

    python bench/index_bench.py                     # 3 rounds, the configured embed backend
    python bench/index_bench.py --rounds 5 --backend torch

Writes bench/out/index.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NEW_POST_SOURCE = 3  # the new post is a copy of a median-sized post (Clustering, ~38 chunks) with a new guid
CONTENT = "{http://purl.org/rss/1.0/modules/content/}encoded"


def feed_with_new_post(path: Path) -> Path:
    """The bundled feed plus one new item of realistic size."""
    from lxml import etree

    from rag.settings import DEFAULT_FEED

    tree = etree.parse(str(DEFAULT_FEED))
    channel = tree.getroot().find("channel")
    items = channel.findall("item")
    item = copy.deepcopy(items[NEW_POST_SOURCE])
    item.find("title").text = "Clustering, revisited: Interview Questions & Answers"
    item.find("guid").text = item.find("link").text = "https://dshandbook.substack.com/p/clustering-revisited"
    item.find(CONTENT).text = ("<p>A second look at clustering, with the questions readers asked most.</p>"
                               + item.find(CONTENT).text)
    channel.insert(list(channel).index(items[0]), item)
    tree.write(str(path), xml_declaration=True, encoding="utf-8")
    return path


def child(index_dir: str, feed: str | None, rebuild: bool, preload: bool) -> dict:
    """One `rag index` run, timed in parts: imports, embedder load (when `preload`; otherwise update_index
    loads it only if it has something to embed, as the CLI does), update_index itself."""
    t0 = time.perf_counter()
    from rag.indexer import update_index
    from rag.embedder import load_embedder
    from rag.settings import load_settings

    settings = load_settings(index_dir=index_dir)
    t1 = time.perf_counter()
    if preload:
        load_embedder(settings.embedder, settings.device, settings.embed_backend)  # update_index reuses it
    t2 = time.perf_counter()
    report = update_index(settings, feed=feed, rebuild=rebuild)
    t3 = time.perf_counter()
    out = {"imports_s": t1 - t0, "embedder_load_s": t2 - t1, "update_s": t3 - t2,
           "chunks_embedded": report.chunks_embedded, "chunks_total": report.chunks_total,
           "added": len(report.added), "unchanged": len(report.unchanged), "generation": report.generation,
           "torch_imported": "torch" in sys.modules}
    gen = settings.index_dir / (report.generation or "")
    if report.generation:
        out["files_bytes"] = {f.name: f.stat().st_size for f in gen.iterdir()}
    return out


def tutorial_child(out_dir: str) -> dict:
    """The tutorial pipeline, start to finish, timed in parts."""
    t0 = time.perf_counter()
    import faiss
    import feedparser
    from bs4 import BeautifulSoup
    from langchain_text_splitters import RecursiveCharacterTextSplitter
    from sentence_transformers import SentenceTransformer

    from rag.embedder import embedder_location
    from rag.settings import DEFAULT_FEED

    t1 = time.perf_counter()
    feed = feedparser.parse(str(DEFAULT_FEED))
    docs = [BeautifulSoup(e.content[0].value, "lxml").get_text("\n") for e in feed.entries]
    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=100)
    chunks = [c for d in docs for c in splitter.split_text(d)]
    t2 = time.perf_counter()
    model = SentenceTransformer(embedder_location("sentence-transformers/all-MiniLM-L6-v2"), device="cpu")
    t3 = time.perf_counter()
    vectors = model.encode(chunks, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(out / "tutorial.faiss"))
    (out / "chunks.json").write_text(json.dumps(chunks))
    t4 = time.perf_counter()
    tokens = sum(min(len(ids), 256) for ids in model.tokenizer(chunks)["input_ids"])
    return {"imports_s": t1 - t0, "parse_split_s": t2 - t1, "embedder_load_s": t3 - t2, "embed_write_s": t4 - t3,
            "chunks_embedded": len(chunks), "chunks_total": len(chunks), "tokens_embedded": tokens}


def step(name: str, index_dir: Path, feed: str | None = None, rebuild: bool = False, preload: bool = True,
         env: dict | None = None) -> dict:
    args = [__file__, "--child", str(index_dir)] + (["--feed", feed] if feed else []) \
        + (["--rebuild"] if rebuild else []) + ([] if preload else ["--no-preload"])
    return report_step(name, *common.run_child(args, env=env))


def report_step(name: str, result: dict, wall: float) -> dict:
    result["wall_s"] = wall
    print(f"{name:28} wall {wall:6.2f}s  CPU {result['cpu_s']:6.2f}s  "
          f"embedded {result['chunks_embedded']:4d}/{result['chunks_total']} chunks  "
          f"peak RSS {common.mib(result['peak_rss_bytes'])} MiB  load {os.getloadavg()[0]:.1f}", flush=True)
    return result


STEPS = ("tutorial_full_build", "full_build", "no_change_update", "one_new_post_update")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--backend", help="embed_backend for the rag steps (default: the settings')")
    p.add_argument("--out", default=str(common.OUT / "index.json"))
    p.add_argument("--child", metavar="INDEX_DIR", help=argparse.SUPPRESS)
    p.add_argument("--tutorial-child", metavar="OUT_DIR", help=argparse.SUPPRESS)
    p.add_argument("--feed", help=argparse.SUPPRESS)
    p.add_argument("--rebuild", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-preload", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(common.ROOT))
    if a.child:
        common.emit(child(a.child, a.feed, a.rebuild, not a.no_preload))
        return 0
    if a.tutorial_child:
        common.emit(tutorial_child(a.tutorial_child))
        return 0

    from rag.settings import load_settings

    env = {"RAG_EMBED_BACKEND": a.backend} if a.backend else {}
    backend = a.backend or load_settings().embed_backend
    results = {"machine": common.machine(), "command": " ".join(["bench/index_bench.py", *sys.argv[1:]]),
               "embed_backend": backend, "runs": []}
    work = Path(tempfile.mkdtemp(prefix="rag-index-bench-"))
    try:
        new_feed = str(feed_with_new_post(work / "feed-plus-one.xml"))
        for r in range(a.rounds):
            index_dir = work / f"index-{r}"
            tutorial = common.run_child([__file__, "--tutorial-child", str(work / f"tutorial-{r}")])
            run = {"tutorial_full_build": report_step("tutorial full build", *tutorial),
                   "full_build": step("full build (bundled corpus)", index_dir, env=env),
                   "no_change_update": step("update, feed unchanged", index_dir, preload=False, env=env),
                   "one_new_post_update": step("update, 1 new post", index_dir, new_feed, env=env)}
            results["runs"].append(run)
            shutil.rmtree(index_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    best = {s: min(results["runs"], key=lambda r: r[s]["wall_s"])[s] for s in STEPS}
    results["best"] = best
    tut = best["tutorial_full_build"]["wall_s"]
    results["ratios"] = {"tutorial_full / rag_full": tut / best["full_build"]["wall_s"],
                         "tutorial_full / rag_one_new_post": tut / best["one_new_post_update"]["wall_s"],
                         "per_round_full": [r["tutorial_full_build"]["wall_s"] / r["full_build"]["wall_s"]
                                            for r in results["runs"]],
                         "per_round_one_post": [r["tutorial_full_build"]["wall_s"] / r["one_new_post_update"]["wall_s"]
                                                for r in results["runs"]]}
    common.write_json(Path(a.out), results)
    print(table(results))
    return 0


def table(results: dict) -> str:
    m = results["machine"]
    rows = [f"{m['cpu']}, {m['cores']} cores; {m['date']}; load average {m['loadavg_start'][0]:.1f} at start, "
            f"{m['loadavg_end'][0]:.1f} at end; embed backend {results['embed_backend']}; "
            f"{len(results['runs'])} rounds", "",
            "| step | chunks embedded / in index | wall s, best (each round) | CPU s (best round) | peak RSS MiB |",
            "|---|---|---|---|---|"]
    names = {"tutorial_full_build": "tutorial pipeline, full build", "full_build": "`rag index`, full build",
             "no_change_update": "`rag index`, feed unchanged", "one_new_post_update": "`rag index`, 1 new post"}
    for s in STEPS:
        b = results["best"][s]
        each = " / ".join(f"{r[s]['wall_s']:.1f}" for r in results["runs"])
        rows.append(f"| {names[s]} | {b['chunks_embedded']} / {b['chunks_total']} | **{b['wall_s']:.2f}** ({each}) | "
                    f"{b['cpu_s']:.1f} | {common.mib(b['peak_rss_bytes'])} |")
    r = results["ratios"]
    rows += ["", f"tutorial full build / rag full build: **{r['tutorial_full / rag_full']:.2f}x** "
                 f"(per round {', '.join(f'{x:.2f}' for x in r['per_round_full'])}); "
                 f"tutorial full build / rag 1-new-post update: **{r['tutorial_full / rag_one_new_post']:.2f}x** "
                 f"(per round {', '.join(f'{x:.2f}' for x in r['per_round_one_post'])})"]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
