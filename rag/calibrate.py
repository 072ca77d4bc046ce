"""`rag calibrate`: choose the "the posts cover this" threshold from labeled questions.

The decision is a threshold on the best cosine similarity between the question and a retrieved chunk.
We pick the threshold with the best balanced accuracy (refusing unanswerable questions vs answering the
rest) on the labeled set, and write the whole sweep so that the choice can be inspected.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .answer import condense
from .retrieve import Retriever
from .settings import Settings


def confidences(settings: Settings, questions: list[dict]) -> list[tuple[float, bool]]:
    retriever = Retriever(settings)
    out = []
    for q in tqdm(questions, desc="retrieving", unit="q"):
        r = retriever.search(q["question"], context=condense(q["question"], q.get("history")))
        out.append((r.confidence, bool(q["evidence"])))
    return out


def sweep(points: list[tuple[float, bool]]) -> list[dict]:
    scores = np.array([s for s, _ in points])
    covered = np.array([c for _, c in points])
    rows = []
    for t in np.round(np.arange(0.20, 0.70, 0.01), 2):
        refusal_accuracy = float(np.mean(scores[~covered] < t)) if (~covered).any() else 1.0
        false_refusal = float(np.mean(scores[covered] < t)) if covered.any() else 0.0
        rows.append({"threshold": float(t), "refusal_accuracy": refusal_accuracy, "false_refusal": false_refusal,
                     "balanced_accuracy": (refusal_accuracy + 1 - false_refusal) / 2})
    return rows


def calibrate(settings: Settings, questions_file: str | Path, out: str | Path) -> dict:
    questions = [json.loads(line) for line in Path(questions_file).read_text().splitlines() if line.strip()]
    rows = sweep(confidences(settings, questions))
    # best balanced accuracy; among ties the lowest threshold, which refuses least
    best = max(rows, key=lambda r: (round(r["balanced_accuracy"], 6), -r["threshold"]))
    result = {"questions": str(questions_file), "chosen": best, "sweep": rows}
    Path(out).write_text(json.dumps(result, indent=2))
    return result
