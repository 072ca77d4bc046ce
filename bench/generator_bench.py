"""Generator figures on this machine: load time, first-token latency and tokens/s per dtype, torch threads
and concurrency; yes_probability latency; copy-constrained decoding with our loop vs model.generate.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/generator_bench.py                       # all dtypes, 1 and 2 threads
    HF_HUB_OFFLINE=1 .venv/bin/python bench/generator_bench.py --dtypes int8 --threads 1 --repeat 3
    HF_HUB_OFFLINE=1 .venv/bin/python bench/generator_bench.py --load-only            # load times only

Every figure is a median over --repeat runs. The prompt is a real ~300-token RAG prompt (system message,
one passage from the posts, a question). "first" is the time from the call to the first streamed text,
"tok/s" the decode rate after it (tokens counted by re-tokenizing the streamed text). For 2 concurrent
requests two threads call `generate` at once; "serial" is the default (forward passes take turns per
step), "parallel" lets both run at once (each on the process's torch threads). The load average is
printed with each row: on a shared machine, figures taken under load are slower.

Load times: "cached" loads the converted copy from the model cache (the normal start); pass
--cold-cache DIR to time the first start (join, hash, dequantize, save) into an empty cache DIR.
Writes bench/out/generator.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rag.generate import CopyConstraint, Generator  # noqa: E402

MODEL = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
SYSTEM = ("You answer machine-learning interview questions using only the numbered passages from a blog. "
          "Answer in at most three sentences, in the passages' own words.")
PASSAGE = (
    "[1] Random Forests — Q3: What is Out-of-Bag (OOB) error? How is it computed and why is it useful?\n"
    "Because of bootstrapping, each tree sees about 63.2% of the unique samples; the remaining ~36.8% are "
    "out-of-bag for that tree. How OOB error is computed: for each training sample, collect predictions only "
    "from the trees where the sample was out-of-bag, aggregate those predictions, and compare them with the "
    "true label. The OOB error is the average of these errors over all training samples. Why it is useful: "
    "it acts like free cross-validation, no separate validation set is needed, and it is very close to the "
    "test error in practice. Bagging provides data diversity and feature subsampling provides model "
    "diversity; together they decorrelate the trees, which is why averaging them reduces variance. The "
    "number of trees can be chosen by watching the OOB error level off as trees are added, and feature "
    "importance can be measured by permuting a feature in the out-of-bag samples and measuring how much the "
    "OOB error grows. Because each tree is fit on a bootstrap sample, a random forest rarely needs a "
    "separate hold-out set for tuning the number of trees or the number of features tried at each split, "
    "although a final test set is still needed to report performance honestly.")
QUESTION = "What is out-of-bag error, how is it computed, and why is it useful? Explain in detail."


def messages(question: str = QUESTION) -> list[dict]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Passages:\n\n{PASSAGE}\n\nQuestion: {question}\nAnswer:"}]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def one_request(gen: Generator, max_new: int, out: list, barrier: threading.Barrier | None = None) -> None:
    if barrier is not None:
        barrier.wait()
    start = time.perf_counter()
    first, text = None, ""
    for piece in gen.generate(messages(), max_new_tokens=max_new):
        if first is None:
            first = time.perf_counter() - start
        text += piece
    total = time.perf_counter() - start
    tokens = gen.count(text)
    out.append({"first": first, "total": total, "tokens": tokens,
                "tok_s": (tokens - 1) / (total - first) if tokens > 1 and total > first else float("nan"),
                "text": text})


def run_concurrent(gen: Generator, n: int, max_new: int) -> dict:
    out: list = []
    barrier = threading.Barrier(n)
    threads = [threading.Thread(target=one_request, args=(gen, max_new, out, barrier)) for _ in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"first": statistics.mean(r["first"] for r in out), "first_max": max(r["first"] for r in out),
            "tok_s": statistics.mean(r["tok_s"] for r in out),  # per request
            "aggregate_tok_s": sum(r["tokens"] for r in out) / wall, "wall": wall,
            "text": out[0]["text"]}


def median_of(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float))]
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {"text": runs[-1].get("text", "")}


def bench_yes(gen: Generator, repeat: int) -> dict:
    judge = [{"role": "system", "content": "You judge whether a passage answers a question. Reply Yes or No."},
             {"role": "user", "content": f"Passage:\n{PASSAGE}\n\nQuestion: What is out-of-bag error?\n"
                                         f"Does the passage answer the question? Answer Yes or No."}]
    gen.yes_probability(judge)
    times, p = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        p = gen.yes_probability(judge)
        times.append(time.perf_counter() - t)
    return {"seconds": statistics.median(times), "prompt_tokens": int(gen.prompt_ids(judge).shape[1]), "p_yes": p}


def bench_constrained(gen: Generator, max_new: int) -> dict:
    """The grounded mode's copy constraint: our loop (forced runs in one forward pass) vs the same
    constraint as a LogitsProcessor inside model.generate (one forward pass per token)."""
    from transformers import GenerationConfig, LogitsProcessorList

    sentences = [s.strip() + "." for s in PASSAGE.split("\n", 1)[1].split(". ") if len(s.split()) > 5]
    result = {}
    t = time.perf_counter()
    c = CopyConstraint.build(gen.tokenizer, [sentences])
    toks = list(gen.stream(messages(), max_new, c))
    result["stream_loop"] = {"seconds": time.perf_counter() - t, "tokens": len(toks),
                             "text": "".join(x.text for x in toks).strip()}

    # The same constraint inside model.generate; it may stop only after as many sentences as our loop
    # copied, so both produce the same answer and the times compare like for like.
    target = sum(1 for x in toks if x.sentence_done)

    class Processor:
        def __init__(self, constraint, prompt_len):
            self.c, self.n = constraint, prompt_len

        def __call__(self, input_ids, scores):
            if input_ids.shape[1] > self.n:
                self.c.advance(int(input_ids[0, -1]))
            if self.c.finished:
                scores[:] = float("-inf")
                scores[0, min(gen.eos_ids)] = 0
                return scores
            scores[0] = self.c.mask(scores[0], gen.eos_ids if self.c.sentences >= target else set())
            return scores

    ids = gen.prompt_ids(messages())
    c = CopyConstraint.build(gen.tokenizer, [sentences])
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new, eos_token_id=sorted(gen.eos_ids),
                              pad_token_id=gen.pad_id)
    t = time.perf_counter()
    with torch.inference_mode():
        out = gen.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                 logits_processor=LogitsProcessorList([Processor(c, ids.shape[1])]))
    new = out[0, ids.shape[1]:]
    result["logits_processor"] = {"seconds": time.perf_counter() - t, "tokens": int(len(new)),
                                  "text": gen.tokenizer.decode(new, skip_special_tokens=True).strip()}
    result["same_text"] = result["stream_loop"]["text"] == result["logits_processor"]["text"]
    return result


def time_load(dtype: str, cache: str | None) -> tuple[float, float]:
    """(imports, load) seconds in a fresh process, as a user's start sees them: importing torch and
    transformers, then `Generator(...)` (join/verify/convert if needed, read the cache, build the model)."""
    code = (f"import time,os; os.environ['HF_HUB_OFFLINE']='1'; t=time.perf_counter(); import torch; "
            f"import transformers; from transformers import AutoModelForCausalLM, AutoTokenizer; "
            f"from rag.generate import Generator; i=time.perf_counter()-t; "
            f"t=time.perf_counter(); Generator({MODEL!r}, dtype={dtype!r}, cache_dir={cache!r}, progress=False); "
            f"print(i, time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    imports, load = out.stdout.strip().splitlines()[-1].split()
    return float(imports), float(load)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default="bfloat16,float32,int8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--concurrency", default="1,2")
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--load-only", action="store_true")
    ap.add_argument("--cold-cache", help="an empty directory: also time the first start (join+convert) there")
    ap.add_argument("--no-constrained", action="store_true", help="skip the copy-constraint comparison")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "generator.json"))
    a = ap.parse_args()
    dtypes, threads = a.dtypes.split(","), [int(x) for x in a.threads.split(",")]
    conc = [int(x) for x in a.concurrency.split(",")]
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  nproc={os.cpu_count()}  load={loadavg()}  "
          f"torch {torch.__version__}  {platform.processor() or platform.machine()}")
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "nproc": os.cpu_count(), "loads": {}, "rows": []}

    if a.cold_cache:
        for dt in dtypes:
            imports, t = time_load(dt, a.cold_cache)
            report["loads"][f"{dt} first start"] = t
            print(f"first start {dt} (empty cache {a.cold_cache}): {t:.1f}s (+{imports:.1f}s imports)  load={loadavg()}")
    for dt in dtypes:
        runs = [time_load(dt, None) for _ in range(a.repeat)]
        t, imports = statistics.median(r[1] for r in runs), statistics.median(r[0] for r in runs)
        report["loads"][dt] = t
        print(f"cached load {dt}: {t:.1f}s (+{imports:.1f}s importing torch/transformers)  load={loadavg()}")
    if a.load_only:
        return

    print(f"\n| dtype | threads | requests | mode | first token s | tok/s per request | tok/s total | load |")
    print("|---|---|---|---|---|---|---|---|")
    for dt in dtypes:
        gen = Generator(MODEL, dtype=dt, progress=False)
        prompt_tokens = int(gen.prompt_ids(messages()).shape[1])
        for th in threads:
            torch.set_num_threads(th)
            one_request(gen, 4, [])  # warm-up
            for n in conc:
                for serialize in ([True, False] if n > 1 else [True]):
                    gen.serialize = serialize
                    runs = [run_concurrent(gen, n, a.max_new) for _ in range(a.repeat)]
                    m = median_of(runs)
                    mode = "-" if n == 1 else ("serial" if serialize else "parallel")
                    row = {"dtype": dt, "threads": th, "requests": n, "mode": mode, "prompt_tokens": prompt_tokens,
                           **{k: round(v, 3) for k, v in m.items() if k != "text"}, "loadavg": loadavg()}
                    report["rows"].append(row | {"sample": m["text"][:200]})
                    print(f"| {dt} | {th} | {n} | {mode} | {m['first']:.2f} (max {m['first_max']:.2f}) | "
                          f"{m['tok_s']:.1f} | {m['aggregate_tok_s']:.1f} | {row['loadavg']} |", flush=True)
            gen.serialize = True
            yes = bench_yes(gen, a.repeat)
            report["rows"].append({"dtype": dt, "threads": th, "yes_probability": yes})
            print(f"|   yes_probability {dt} {th} thread(s): {yes['seconds']:.2f}s for {yes['prompt_tokens']} tokens, "
                  f"p(yes)={yes['p_yes']:.3f} | load {loadavg()}", flush=True)
        print(f"sample ({dt}): {m['text'][:160]!r}")
        if not a.no_constrained:
            torch.set_num_threads(threads[0])
            c = bench_constrained(gen, a.max_new)
            report["rows"].append({"dtype": dt, "constrained": c})
            for k, v in c.items():
                if k == "same_text":
                    print(f"constrained {dt}: same text from both: {v}")
                    continue
                print(f"constrained {dt} {k}: {v['seconds']:.2f}s, {v['tokens']} tokens: {v['text'][:100]!r}")
        del gen
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1))
    print(f"\nwrote {a.out}; end load={loadavg()}")


if __name__ == "__main__":
    main()
