"""`rag calibrate`: choose the "the posts cover this" threshold from labeled questions.

The chat refuses when Retrieval.confidence (the best dense or heading similarity) is below
Settings.refusal_threshold. We sweep that threshold over the labeled questions, pick the one with the best
balanced accuracy (refusing unanswerable questions vs answering the rest; among ties the lowest, which
refuses least), check it on the held-out file, and write the whole sweep and a plot so the choice can be
inspected. Retrieval only, no generator: about 20 ms per question once the embedder is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .evaluate import Evaluator, load_questions
from .report import _plt
from .settings import Settings

THRESHOLDS = np.round(np.arange(0.20, 0.701, 0.01), 2)


def confidences(ev: Evaluator, questions: list[dict]) -> list[tuple[float, bool]]:
    """(confidence, answerable) per question, from the very search call the chat makes (follow-ups included)."""
    out = []
    for q in ev._bar(questions, "retrieve"):
        history = [tuple(t) for t in q.get("history") or []] or None
        query, kw = ev.chat_search_call(q["question"], history)
        out.append((ev.retriever.search(query, None, **kw).confidence, bool(q["evidence"])))
    return out


def sweep(points: list[tuple[float, bool]], thresholds=THRESHOLDS) -> list[dict]:
    conf = np.array([c for c, _ in points])
    answerable = np.array([a for _, a in points], dtype=bool)
    rows = []
    for t in thresholds:
        refused = conf < t
        refusal_accuracy = float(refused[~answerable].mean()) if (~answerable).any() else 1.0
        false_refusal = float(refused[answerable].mean()) if answerable.any() else 0.0
        rows.append({"threshold": float(t), "refusal_accuracy": refusal_accuracy, "false_refusal": false_refusal,
                     "balanced_accuracy": (refusal_accuracy + 1 - false_refusal) / 2})
    return rows


def calibrate(settings: Settings, questions_file: str | Path, out: str | Path,
              holdout_file: str | Path | None = None, ev: Evaluator | None = None) -> dict:
    """Sweep, choose, check on the held-out file; write `out` (JSON) and a plot beside it (same name, .png)."""
    ev = ev or Evaluator(settings)
    dev = confidences(ev, load_questions(questions_file))
    rows = sweep(dev)
    best = max(rows, key=lambda r: (round(r["balanced_accuracy"], 6), -r["threshold"]))
    current = sweep(dev, [settings.refusal_threshold])[0]
    result = {"questions": str(questions_file), "chosen": best, "current": current, "sweep": rows,
              "confidences": {"dev": dev}}
    if holdout_file and Path(holdout_file).exists():
        held = confidences(ev, load_questions(holdout_file))
        result["holdout"] = {"questions": str(holdout_file), "at_chosen": sweep(held, [best["threshold"]])[0],
                             "at_current": sweep(held, [settings.refusal_threshold])[0]}
        result["confidences"]["holdout"] = held
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot(out.with_suffix(".png"), dev, rows, settings.refusal_threshold, best["threshold"])
    return result


def plot(path: Path, dev: list[tuple[float, bool]], rows: list[dict], current: float, best: float) -> None:
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for answerable, label in ((True, "answerable"), (False, "unanswerable")):
        left.hist([c for c, a in dev if a == answerable], bins=30, alpha=0.6, label=label)
    right.plot(THRESHOLDS, [r["refusal_accuracy"] for r in rows], label="refusal accuracy (unanswerable)")
    right.plot(THRESHOLDS, [r["false_refusal"] for r in rows], label="false-refusal rate (answerable)")
    right.plot(THRESHOLDS, [r["balanced_accuracy"] for r in rows], label="balanced accuracy", lw=2)
    for ax in (left, right):
        ax.axvline(current, color="k", ls="--", label=f"current {current}")
        ax.axvline(best, color="r", ls=":", label=f"best {best}")
        ax.legend(fontsize=8)
    left.set(xlabel="Retrieval.confidence", ylabel="questions", title="Confidence of labeled questions")
    right.set(xlabel="refusal threshold", ylim=(0, 1.02), title="Threshold sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
