"""Index build figures for the bundled corpus: full build, no-change update, update with one new post.

Each step runs `rag.indexer.update_index` (what `rag index` runs) in a fresh process against a temporary
index directory, so the peak RSS (getrusage of that process: torch, the embedder, SQLite, FAISS) and the
wall time (process start, imports and model load included, as a user running `rag index` sees it) are
those of that step alone.

    python bench/index_bench.py                 # about 2 minutes on 2 cores
    python bench/index_bench.py --repeat 3      # medians of 3 runs of each step

Writes bench/out/index.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
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
        load_embedder(settings.embedder, settings.device)  # cached: update_index reuses it
    t2 = time.perf_counter()
    report = update_index(settings, feed=feed, rebuild=rebuild)
    t3 = time.perf_counter()
    out = {"imports_s": t1 - t0, "embedder_load_s": t2 - t1, "update_s": t3 - t2,
           "chunks_embedded": report.chunks_embedded, "chunks_total": report.chunks_total,
           "added": len(report.added), "unchanged": len(report.unchanged), "generation": report.generation}
    gen = settings.index_dir / (report.generation or "")
    if report.generation:
        out["files_bytes"] = {f.name: f.stat().st_size for f in gen.iterdir()}
    return out


def step(name: str, index_dir: Path, feed: str | None = None, rebuild: bool = False, preload: bool = True) -> dict:
    args = [__file__, "--child", str(index_dir)] + (["--feed", feed] if feed else []) \
        + (["--rebuild"] if rebuild else []) + ([] if preload else ["--no-preload"])
    result, wall = common.run_child(args)
    result["wall_s"] = wall
    if result["chunks_embedded"]:
        result["chunks_per_s"] = result["chunks_embedded"] / result["update_s"]
    print(f"{name:28} wall {wall:6.1f}s  CPU {result['cpu_s']:6.1f}s  update_index {result['update_s']:6.1f}s  "
          f"embedded {result['chunks_embedded']:4d}/{result['chunks_total']} chunks  "
          f"peak RSS {common.mib(result['peak_rss_bytes'])} MiB", flush=True)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out", default=str(common.OUT / "index.json"))
    p.add_argument("--child", metavar="INDEX_DIR", help=argparse.SUPPRESS)
    p.add_argument("--feed", help=argparse.SUPPRESS)
    p.add_argument("--rebuild", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-preload", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if a.child:
        common.emit(child(a.child, a.feed, a.rebuild, not a.no_preload))
        return 0

    import faiss  # noqa: F401
    import torch  # noqa: F401

    results = {"machine": common.machine(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
               "runs": []}
    work = Path(tempfile.mkdtemp(prefix="rag-index-bench-"))
    try:
        new_feed = str(feed_with_new_post(work / "feed-plus-one.xml"))
        for r in range(a.repeat):
            index_dir = work / f"index-{r}"
            run = {"full_build": step("full build (bundled corpus)", index_dir),
                   "no_change_update": step("update, feed unchanged", index_dir, preload=False),
                   "one_new_post_update": step("update, 1 new post", index_dir, new_feed),
                   "rebuild_11_posts": step("rebuild (--rebuild)", index_dir, new_feed, rebuild=True)}
            results["runs"].append(run)
            shutil.rmtree(index_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(stepname, key):
        vals = [r[stepname][key] for r in results["runs"] if key in r[stepname]]
        return statistics.median(vals) if vals else None

    results["median"] = {s: {k: med(s, k) for k in ("wall_s", "cpu_s", "update_s", "chunks_per_s", "peak_rss_bytes",
                                                     "chunks_embedded", "chunks_total", "embedder_load_s")}
                         for s in results["runs"][0]}
    common.write_json(Path(a.out), results)
    print(json.dumps(results["median"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
