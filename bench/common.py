"""Helpers shared by the benchmark scripts: machine description, percentiles, memory, JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def machine() -> dict:
    """What the figures were taken on, including the load average: the machine may be shared."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    versions = {}
    for mod in ("faiss", "numpy", "torch", "transformers", "sentence_transformers"):
        if mod in sys.modules:
            versions[mod] = getattr(sys.modules[mod], "__version__", "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg_start": os.getloadavg(),
            "versions": versions}


def pct(values, q: float) -> float:
    """Percentile q (0-100) by linear interpolation; nan for no values."""
    values = sorted(values)
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    pos = (len(values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def summary(values, scale: float = 1.0, digits: int = 3) -> dict:
    """p50/p95/mean/min/max/n of a list of seconds (scale=1000 gives milliseconds)."""
    v = [x * scale for x in values]
    if not v:
        return {"n": 0}
    return {"p50": round(pct(v, 50), digits), "p95": round(pct(v, 95), digits),
            "mean": round(statistics.fmean(v), digits), "min": round(min(v), digits),
            "max": round(max(v), digits), "n": len(v)}


def rss_bytes() -> int:
    """Current resident set size of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(args: list[str], env: dict | None = None, timeout: float | None = None) -> tuple[dict, float]:
    """Run `python <args>` in a fresh process and return (the JSON object its last stdout line holds, wall
    seconds). Children report their own peak RSS (`peak_rss_bytes`, from getrusage), so the figure covers
    everything that child loaded (torch, models, FAISS) and nothing of this process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], stdout=subprocess.PIPE, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"child {' '.join(args)} failed with exit code {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return (json.loads(lines[-1]) if lines else {}), wall


def emit(result: dict) -> None:
    """A child's last act: print its result, with its peak RSS, as one JSON line."""
    result["peak_rss_bytes"] = peak_rss_bytes()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = usage.ru_utime + usage.ru_stime  # all threads; unlike wall time, barely moved by others' load
    print(json.dumps(result, default=str), flush=True)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data.setdefault("machine", {})["loadavg_end"] = os.getloadavg()
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"wrote {path}")


def mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)
