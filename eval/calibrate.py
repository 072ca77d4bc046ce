"""Calibrate the "the posts cover this" decision: sweep Settings.refusal_threshold over the retrieval
confidence (Retrieval.confidence, the score the "covered" decision is made on) and show refusal accuracy on unanswerable
questions against the false-refusal rate on answerable ones.

    python eval/calibrate.py [--questions eval/questions.jsonl] [--holdout eval/questions_holdout.jsonl]
                             [--out eval/runs/calibrate]

Retrieval only (no generator), so it takes about a second per question. It picks the threshold that
maximises balanced accuracy on the first file and reports the same threshold on the held-out file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rag.evaluate import Evaluator, _plt, load_questions  # noqa: E402
from rag.settings import load_settings  # noqa: E402


def confidences(ev: Evaluator, questions: list[dict]) -> list[tuple[float, bool]]:
    """(confidence, answerable) per question, from the same search call the chat makes."""
    out = []
    for q in ev._bar(questions, "retrieve"):
        history = [tuple(t) for t in q.get("history") or []] or None
        query, kw = ev.chat_search_call(q["question"], history)
        out.append((ev.retriever.search(query, None, **kw).confidence, bool(q["evidence"])))
    return out


def sweep(points: list[tuple[float, bool]], thresholds: np.ndarray) -> list[dict]:
    conf = np.array([c for c, _ in points])
    answerable = np.array([a for _, a in points])
    rows = []
    for t in thresholds:
        refused = conf < t
        ra = float(refused[~answerable].mean()) if (~answerable).any() else float("nan")
        fr = float(refused[answerable].mean()) if answerable.any() else float("nan")
        rows.append({"threshold": round(float(t), 3), "refusal_accuracy": ra, "false_refusal_rate": fr,
                     "balanced_accuracy": (ra + 1 - fr) / 2})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", default="eval/questions.jsonl")
    p.add_argument("--holdout", default="eval/questions_holdout.jsonl")
    p.add_argument("--out", default="eval/runs/calibrate")
    p.add_argument("--index", help="index directory")
    args = p.parse_args(argv)
    settings = load_settings(index_dir=args.index)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ev = Evaluator(settings)
    thresholds = np.round(np.arange(0.20, 0.701, 0.01), 3)
    dev = confidences(ev, load_questions(args.questions))
    dev_rows = sweep(dev, thresholds)
    best = max(dev_rows, key=lambda r: (r["balanced_accuracy"], -abs(r["threshold"] - settings.refusal_threshold)))
    current = min(dev_rows, key=lambda r: abs(r["threshold"] - settings.refusal_threshold))
    report = {"current": current, "best_on_dev": best, "dev": dev_rows}
    hold = None
    if args.holdout and Path(args.holdout).exists():
        hold = confidences(ev, load_questions(args.holdout))
        report["holdout_at_current"] = sweep(hold, np.array([settings.refusal_threshold]))[0]
        report["holdout_at_best"] = sweep(hold, np.array([best["threshold"]]))[0]
    report["confidences"] = {"dev": dev, "holdout": hold}
    (out / "calibrate.json").write_text(json.dumps(report, indent=2))

    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for answerable, label in ((True, "answerable"), (False, "unanswerable")):
        a1.hist([c for c, a in dev if a == answerable], bins=30, alpha=0.6, label=f"{label} (dev)")
    a1.axvline(settings.refusal_threshold, color="k", ls="--", label=f"current {settings.refusal_threshold}")
    a1.axvline(best["threshold"], color="r", ls=":", label=f"best on dev {best['threshold']}")
    a1.set(xlabel="Retrieval.confidence", ylabel="questions", title="Confidence by kind")
    a1.legend(fontsize=8)
    a2.plot(thresholds, [r["refusal_accuracy"] for r in dev_rows], label="refusal accuracy (unanswerable)")
    a2.plot(thresholds, [r["false_refusal_rate"] for r in dev_rows], label="false-refusal rate (answerable)")
    a2.plot(thresholds, [r["balanced_accuracy"] for r in dev_rows], label="balanced accuracy", lw=2)
    a2.axvline(settings.refusal_threshold, color="k", ls="--")
    a2.set(xlabel="refusal threshold", ylim=(0, 1.02), title="Threshold sweep (dev)")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "calibrate.png", dpi=110)

    print(f"current threshold {current['threshold']}: refusal acc {current['refusal_accuracy']:.3f}, "
          f"false refusals {current['false_refusal_rate']:.3f}")
    print(f"best on dev {best['threshold']}: refusal acc {best['refusal_accuracy']:.3f}, "
          f"false refusals {best['false_refusal_rate']:.3f}, balanced {best['balanced_accuracy']:.3f}")
    for key in ("holdout_at_current", "holdout_at_best"):
        if key in report:
            r = report[key]
            print(f"{key}: threshold {r['threshold']}: refusal acc {r['refusal_accuracy']:.3f}, "
                  f"false refusals {r['false_refusal_rate']:.3f}")
    print(f"written: {out / 'calibrate.json'}, {out / 'calibrate.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
