"""Generator figures on this machine: load time, first-token latency and tokens/s per dtype, torch threads
and concurrency, with the generate mode's real prompt, and what the reused prompt-head cache saves.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/generator_bench.py                       # all dtypes, 1 and 2 threads
    HF_HUB_OFFLINE=1 .venv/bin/python bench/generator_bench.py --dtypes bfloat16 --threads 1,2 --repeat 3
    HF_HUB_OFFLINE=1 .venv/bin/python bench/generator_bench.py --load-only            # load times only

Every figure is a median over --repeat runs. The prompt is the generate mode's (rag.modes.Generate.messages:
instructions, the worked example, a question and four passage sentences from the posts). "first" is the time
from the call to the first streamed text, "tok/s" the decode rate after it (tokens counted by re-tokenizing the
streamed text). "head cache" reuses the key/value cache of the instructions and example (as the chat does);
"no cache" reads the whole prompt every time. For 2 concurrent requests two threads call `generate` at once;
"serial" is the default (forward passes take turns per step), "parallel" lets both run at once (each on the
process's torch threads). The load average is printed with each row: on a shared machine, figures taken
under load are slower.

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

from rag.generate import Generator  # noqa: E402
from rag.modes import WRITER_EXAMPLE, Generate  # noqa: E402

MODEL = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
QUESTION = "what is out of bag error and why is it useful?"
SOURCES = [(0, "Because of bootstrapping, each tree sees about 63.2% of the unique samples."),
           (0, "The remaining ~36.8% are out-of-bag for that tree."),
           (0, "For each training sample, collect predictions only from the trees where the sample was OOB."),
           (0, "It acts like free cross-validation, and it is very close to the test error in practice.")]
HEAD = 1 + len(WRITER_EXAMPLE)  # the messages the chat reuses the cache of


def messages() -> list[dict]:
    return Generate().messages(QUESTION, SOURCES)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def one_request(gen: Generator, max_new: int, out: list, barrier: threading.Barrier | None = None,
                prefix: int = HEAD) -> None:
    if barrier is not None:
        barrier.wait()
    start = time.perf_counter()
    first, text = None, ""
    for piece in gen.generate(messages(), max_new_tokens=max_new, prefix=prefix):
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


def bench_head_cache(gen: Generator, max_new: int, repeat: int) -> dict:
    """First token and total with and without the reused prompt-head cache (one request)."""
    result = {}
    for name, prefix in (("no cache", 0), ("head cache", HEAD)):
        runs = []
        for _ in range(repeat):
            out: list = []
            one_request(gen, max_new, out, prefix=prefix)
            runs.append(out[0])
        result[name] = median_of(runs)
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

    print("\n| dtype | threads | requests | mode | first token s | tok/s per request | tok/s total | load |")
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
            cache = bench_head_cache(gen, a.max_new, a.repeat)
            report["rows"].append({"dtype": dt, "threads": th, "head_cache": cache, "loadavg": loadavg()})
            print(f"|   {dt}, {th} thread(s), one request: first token {cache['no cache']['first']:.2f}s without the "
                  f"head cache, {cache['head cache']['first']:.2f}s with it | load {loadavg()}", flush=True)
        print(f"sample ({dt}): {m['text'][:160]!r}")
        del gen
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1))
    print(f"\nwrote {a.out}; end load={loadavg()}")


if __name__ == "__main__":
    main()
