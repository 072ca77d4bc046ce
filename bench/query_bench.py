"""Query-time figures on the bundled corpus: retrieval latency per fusion, first token and tokens/s per
answer mode, end-to-end latency in the default mode.

    python bench/query_bench.py                          # all eval questions end to end (slow: ~10 s each)
    python bench/query_bench.py --limit 40               # end to end on the first 40 questions only
    python bench/query_bench.py --answer-questions 10 --modes extractive,generate

Uses --index DIR (default: bench/out/index, built from the bundled feed when missing or out of date). Models are loaded
and warmed up before anything is timed; model load times are reported separately.
Writes bench/out/query.json.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

FUSIONS = ("dense", "bm25", "convex", "rrf")  # the order they are interleaved in; all of rag.fusion.FUSIONS
MODES = ("extractive", "generate", "free")


def spread(items: list, n: int) -> list:
    """n items evenly spread over the list (the eval file is grouped by post, so the first n would be one post)."""
    if n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def history_of(q: dict):
    h = q.get("history")
    return [tuple(t) for t in h] if h else None


def bench_retrieval(chat, questions: list[dict]) -> dict:
    """The chat's own search (Chat.plan + Chat.retrieve, follow-ups included), per fusion."""
    from rag.embedder import embed

    plans = [chat.plan(q["question"], history_of(q)) for q in questions]
    for plan in plans[:3]:  # warm up: first calls pay for lazy initialisation
        chat.retrieve(plan)
    # Interleaved: each question goes through every fusion (in rotating order) before the next question,
    # so that load from other processes on a shared machine hits all fusions alike.
    # CPU time (all threads of this process) is reported beside wall time: other processes' load inflates
    # wall time but barely CPU time.
    embed_s, embed_cpu = [], []
    times, cpu = {f: [] for f in FUSIONS}, {f: [] for f in FUSIONS}
    for n, plan in enumerate(plans):
        t, c = time.perf_counter(), time.process_time()
        embed(chat.retriever.model, [plan.question])
        embed_s.append(time.perf_counter() - t)
        embed_cpu.append(time.process_time() - c)
        for fusion in FUSIONS[n % len(FUSIONS):] + FUSIONS[: n % len(FUSIONS)]:
            t, c = time.perf_counter(), time.process_time()
            chat.retrieve(plan, fusion=fusion)
            times[fusion].append(time.perf_counter() - t)
            cpu[fusion].append(time.process_time() - c)
    out = {"embed_query_ms": common.summary(embed_s, 1000, 2), "embed_query_cpu_ms": common.summary(embed_cpu, 1000, 2)}
    for fusion in FUSIONS:
        out[fusion] = common.summary(times[fusion], 1000, 2)
        out[f"{fusion}_cpu"] = common.summary(cpu[fusion], 1000, 2)
        print(f"retrieval {fusion:7} p50 {out[fusion]['p50']:7.1f} ms  p95 {out[fusion]['p95']:7.1f} ms  "
              f"CPU p50 {out[f'{fusion}_cpu']['p50']:6.1f} ms  (n={len(times[fusion])})", flush=True)
    print(f"query embedding p50 {out['embed_query_ms']['p50']:.1f} ms (CPU {out['embed_query_cpu_ms']['p50']:.1f} ms)",
          flush=True)
    return out


def strip_markers(text: str) -> str:
    return re.sub(r"\s*\[\d+\]", "", text)


def timed_stream(chat, q: dict, mode: str | None) -> dict:
    """One question through Chat.stream: time to the first answer text, to the end, and the answer."""
    start, cpu_start = time.perf_counter(), time.process_time()
    first = last_text = None
    answer = None
    for answer in chat.stream(q["question"], history_of(q), mode=mode):
        now = time.perf_counter()
        if answer.answer and not answer.done:
            first = first or now
            last_text = now
    end = time.perf_counter()
    return {"id": q.get("id"), "answer": answer.answer, "refused": bool(answer.refused),
            "cpu_s": time.process_time() - cpu_start,
            "retrieve_s": answer.timings.get("retrieve"), "first_s": (first or end) - start,
            "last_token_s": (last_text or end) - start, "total_s": end - start, "timings": answer.timings}


def bench_modes(chat, tokenizer, questions: list[dict], modes: list[str]) -> dict:
    out = {}
    by_mode = {m: [] for m in modes}
    for n, q in enumerate(questions):  # interleaved, rotating order: shared-machine load hits all modes alike
        for mode in modes[n % len(modes):] + modes[: n % len(modes)]:
            r = timed_stream(chat, q, mode)
            r["tokens"] = len(tokenizer(strip_markers(r["answer"]), add_special_tokens=False)["input_ids"])
            by_mode[mode].append(r)
    for mode, rows in by_mode.items():
        answered = [r for r in rows if not r["refused"]]
        gen_s = [r["total_s"] - (r["retrieve_s"] or 0) for r in answered]
        decode = [(r["tokens"] - 1) / (r["last_token_s"] - r["first_s"]) for r in answered
                  if r["tokens"] > 1 and r["last_token_s"] > r["first_s"]]
        out[mode] = {
            "questions": len(rows), "refused": len(rows) - len(answered),
            "first_token_s": common.summary([r["first_s"] for r in answered], 1, 3),
            "first_token_s_all": common.summary([r["first_s"] for r in rows], 1, 3),
            "total_s": common.summary([r["total_s"] for r in answered], 1, 3),
            "cpu_s": common.summary([r["cpu_s"] for r in answered], 1, 3),
            "tokens": common.summary([r["tokens"] for r in answered], 1, 1),
            # generated tokens / generation time (after retrieval: prompt reading + decoding)
            "tokens_per_s": sum(r["tokens"] for r in answered) / sum(gen_s) if sum(gen_s) > 0 else None,
            # decoding only: tokens after the first / time from the first to the last token
            "decode_tokens_per_s": common.summary(decode, 1, 1),
            "rows": rows,
        }
        m = out[mode]
        print(f"mode {mode:10} first token p50 {m['first_token_s'].get('p50', float('nan')):6.2f}s  "
              f"total p50 {m['total_s'].get('p50', float('nan')):6.2f}s  "
              f"tokens/s {m['tokens_per_s'] or float('nan'):5.1f}  refused {m['refused']}/{m['questions']}", flush=True)
    return out


def bench_end_to_end(chat, questions: list[dict]) -> dict:
    rows = [timed_stream(chat, q, None) for q in questions]
    out = {"questions": len(rows), "refused": sum(r["refused"] for r in rows),
           "total_s": common.summary([r["total_s"] for r in rows], 1, 3),
           "cpu_s": common.summary([r["cpu_s"] for r in rows], 1, 3),
           "first_token_s": common.summary([r["first_s"] for r in rows], 1, 3),
           "retrieve_s": common.summary([r["retrieve_s"] or 0 for r in rows], 1, 3),
           "rows": [{k: v for k, v in r.items() if k != "timings"} for r in rows]}
    print(f"end to end ({chat.settings.answer_mode}) p50 {out['total_s']['p50']:.2f}s  p95 {out['total_s']['p95']:.2f}s  "
          f"first token p50 {out['first_token_s']['p50']:.2f}s  (n={len(rows)}, refused {out['refused']})", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", default=str(common.OUT / "index"))
    p.add_argument("--questions", default=str(common.ROOT / "eval" / "dev.jsonl"))
    p.add_argument("--answer-questions", type=int, default=15, help="questions per answer mode")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--limit", type=int, help="end-to-end: only the first N questions (0 skips it)")
    p.add_argument("--skip-retrieval", action="store_true")
    p.add_argument("--torch-threads", type=int, help="torch intra-op threads (default: torch's, = cores)")
    p.add_argument("--faiss-threads", type=int, help="FAISS OpenMP threads (default: FAISS's, = cores)")
    p.add_argument("--out", default=str(common.OUT / "query.json"))
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import faiss
    import torch

    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    if a.faiss_threads:
        faiss.omp_set_num_threads(a.faiss_threads)

    from rag.answer import Chat
    from rag.index import Index, IndexUnavailable
    from rag.indexer import update_index
    from rag.retrieve import Retriever
    from rag.settings import load_settings

    settings = load_settings(index_dir=a.index)
    try:
        Index.open(settings)
    except IndexUnavailable as e:  # missing, or built by other code: the bench measures the current code
        print(f"building {settings.index_dir} from the bundled feed ({e})", flush=True)
        update_index(settings, rebuild=True)
    from rag.eval.evaluate import load_questions

    questions = load_questions(a.questions)
    results = {"machine": common.machine(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
               "settings": {"fusion": settings.fusion, "answer_mode": settings.answer_mode, "top_k": settings.top_k,
                            "max_new_tokens": settings.max_new_tokens, "generator": settings.generator,
                            "torch_threads": torch.get_num_threads(), "faiss_threads": faiss.omp_get_max_threads()}}
    out = Path(a.out)
    t = time.perf_counter()
    retriever = Retriever(settings)
    results["embedder_load_s"] = time.perf_counter() - t
    chat = Chat(settings, retriever=retriever)
    modes = [m for m in a.modes.split(",") if m]
    if not a.skip_retrieval:
        results["retrieval_ms"] = bench_retrieval(chat, questions)
        common.write_json(out, results)  # after each phase, so a long run that is stopped keeps what it has
    if modes or a.limit != 0:
        from rag.generate import load_generator

        t = time.perf_counter()
        gen = load_generator(settings.generator)
        results["generator_load_s"] = time.perf_counter() - t
        timed_stream(chat, questions[0], "generate")  # warm-up: loads the model and its prompt-head cache
    if modes:
        results["modes"] = bench_modes(chat, gen.tokenizer, spread(questions, a.answer_questions), modes)
        common.write_json(out, results)
    if a.limit != 0:
        results["end_to_end"] = bench_end_to_end(chat, questions[: a.limit] if a.limit else questions)
    common.write_json(out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
