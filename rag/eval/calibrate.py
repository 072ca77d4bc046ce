"""`rag calibrate`: fit the "the posts cover this" decision on the dev questions, check it on test.

For every labeled question the chat's own retrieval (Chat.plan + Chat.retrieve, follow-ups included) gives the
coverage signals of rag.coverage. A logistic regression over them is fit with stratified 5-fold
cross-validation on dev: the out-of-fold probabilities choose the threshold (best balanced accuracy) and give
the cross-validated figures; the model refit on all of dev is written to `Settings.coverage_model`. The test
split is only scored, never used to choose anything. The single-cosine rule it replaces is reported beside it.
Retrieval only, no generator.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..coverage import FEATURES, CoverageModel
from ..settings import Settings
from .evaluate import Evaluator, load_questions
from .report import _plt

THRESHOLDS = np.round(np.arange(0.02, 0.981, 0.01), 2)
COSINES = np.round(np.arange(0.20, 0.701, 0.01), 2)
SEED = 20261204


def signals(ev: Evaluator, questions: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(feature matrix, answerable labels, the old single-cosine confidence) per question."""
    rows, labels, cosine = [], [], []
    for q in ev._bar(questions, "retrieve"):
        r = ev.chat.retrieve(ev.plan(q))
        rows.append([r.signals[f] for f in FEATURES])
        labels.append(bool(q["evidence"]))
        cosine.append(max(r.signals["dense"], r.signals["heading"]))
    return np.array(rows), np.array(labels), np.array(cosine)


def rates(score: np.ndarray, answerable: np.ndarray, threshold: float) -> dict:
    """Refusal of uncovered questions and false refusal of covered ones at `threshold`, with 95% Wilson
    intervals (scipy)."""
    from scipy.stats import binomtest

    refused = score < threshold
    out = {"threshold": float(threshold)}
    for name, mask, hits in (("refusal", ~answerable, refused), ("false_refusal", answerable, refused)):
        n, k = int(mask.sum()), int(hits[mask].sum())
        ci = binomtest(k, n).proportion_ci(method="wilson") if n else None
        out[name] = k / n if n else None
        out[f"{name}_ci"] = [round(float(ci.low), 3), round(float(ci.high), 3)] if ci else None
        out[f"{name}_n"] = n
    r, f = out["refusal"] or 0.0, out["false_refusal"] or 0.0
    out["balanced_accuracy"] = (r + 1 - f) / 2
    return out


def best_threshold(score: np.ndarray, answerable: np.ndarray, grid) -> dict:
    """The best balanced accuracy; among ties the lowest threshold (it refuses least)."""
    return max((rates(score, answerable, t) for t in grid), key=lambda r: (round(r["balanced_accuracy"], 6),
                                                                           -r["threshold"]))


def cross_validated(x: np.ndarray, y: np.ndarray, folds: int = 5) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    oof = np.zeros(len(y))
    for train, held in StratifiedKFold(folds, shuffle=True, random_state=SEED).split(x, y):
        oof[held] = fit(x[train], y[train]).predict_proba(x[held])[:, 1]
    return oof


def fit(x: np.ndarray, y: np.ndarray):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", C=1.0)).fit(x, y)


def to_model(pipeline, threshold: float, questions: str) -> CoverageModel:
    scaler, logistic = pipeline[0], pipeline[1]
    return CoverageModel(list(FEATURES), scaler.mean_.tolist(), scaler.scale_.tolist(), logistic.coef_[0].tolist(),
                         float(logistic.intercept_[0]), threshold, questions)


def calibrate(settings: Settings, dev_file: str | Path, out: str | Path, test_file: str | Path | None = None,
              model_path: str | Path | None = None, ev: Evaluator | None = None) -> dict:
    """Fit on dev (cross-validated), write the model and `out` (JSON) with a plot beside it (.png)."""
    ev = ev or Evaluator(settings.replace(second_look=False))  # fit on the first look's signals: what it decides on
    x, y, cosine = signals(ev, load_questions(dev_file))
    oof = cross_validated(x, y)
    chosen = best_threshold(oof, y, THRESHOLDS)
    model = to_model(fit(x, y), chosen["threshold"], str(dev_file))
    single = best_threshold(cosine, y, COSINES)
    result = {"dev": str(dev_file), "features": list(FEATURES), "model": model.__dict__,
              "cross_validated": chosen, "single_cosine_cross_dev": single,
              "single_cosine_at_setting": rates(cosine, y, settings.refusal_threshold)}
    if test_file and Path(test_file).exists():
        tx, ty, tcos = signals(ev, load_questions(test_file))
        probs = np.array([model.probability(dict(zip(FEATURES, row))) for row in tx])
        result["test"] = {"questions": str(test_file), "model": rates(probs, ty, model.threshold),
                          "single_cosine": rates(tcos, ty, single["threshold"])}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    model.save(model_path or settings.coverage_model)
    plot(out.with_suffix(".png"), oof, cosine, y, chosen["threshold"])
    return result


def plot(path: Path, oof: np.ndarray, cosine: np.ndarray, y: np.ndarray, threshold: float) -> None:
    """The trade-off: refusal of uncovered against false refusal of covered questions, per threshold."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for score, grid, label in ((oof, THRESHOLDS, "coverage model (cross-validated)"),
                               (cosine, COSINES, "single cosine threshold")):
        pts = [rates(score, y, t) for t in grid]
        right.plot([p["false_refusal"] for p in pts], [p["refusal"] for p in pts], marker=".", label=label)
    right.set(xlabel="false refusal (covered questions refused)", ylabel="refusal of uncovered questions",
              xlim=(0, 0.5), ylim=(0, 1.02), title="Trade-off on dev")
    right.legend(fontsize=8)
    for answerable, label in ((True, "covered"), (False, "not covered")):
        left.hist(oof[y == answerable], bins=30, alpha=0.6, label=label)
    left.axvline(threshold, color="r", ls=":", label=f"threshold {threshold}")
    left.set(xlabel="P(covered), out of fold", ylabel="questions", title="Dev questions")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
