"""Do the posts cover this question? A few signals of a retrieval, combined by a small logistic model.

One similarity threshold could not tell a near-miss ("how does ALiBi work?" next to the posts' positional
encodings) from a covered question: both score alike. Other signals can: a near-miss's rare words often occur
nowhere in the posts, or not in the best section. The model (weights in `Settings.coverage_model`, a JSON file
written by `rag calibrate` with cross-validation on the dev questions) is a dot product at run time, so the
product needs no scikit-learn; without the file the decision falls back to `Settings.refusal_threshold`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .text import stems

FEATURES = ("dense", "heading", "dense_gap", "unknown_share", "top_term_share", "log_words")


class Vocabulary:
    """Document frequency of stems over the index's sections: which question words the posts use at all."""

    def __init__(self, section_texts: list[str]):
        self.sections = max(len(section_texts), 1)
        self.df = Counter(s for text in section_texts for s in stems(text))

    def idf(self, stem: str) -> float:
        return math.log((1 + self.sections) / (1 + self.df.get(stem, 0))) + 1.0


def features(question: str, passages: list, vocab: Vocabulary) -> dict[str, float]:
    """The signals the decision is made on; `passages` in rank order (rag.retrieve.Passage)."""
    words = stems(question)
    dense = [p.dense for p in passages] or [0.0]
    known = [w for w in words if w in vocab.df]
    top = stems(f"{passages[0].section} {passages[0].text}") if passages else set()
    weight = sum(vocab.idf(w) for w in known)
    return {
        "dense": max(dense),
        "heading": max((p.heading for p in passages), default=0.0),
        "dense_gap": dense[0] - (float(np.mean(dense[1:])) if len(dense) > 1 else 0.0),
        # misspellings land here too; the model weighs this against the similarities
        "unknown_share": 1 - len(known) / len(words) if words else 1.0,
        "top_term_share": sum(vocab.idf(w) for w in known if w in top) / weight if weight else 0.0,
        "log_words": math.log1p(len(words)),
    }


@dataclass
class CoverageModel:
    """Logistic regression over standardised FEATURES; covered when the probability reaches `threshold`."""
    features: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    threshold: float
    fitted_on: str = ""

    def probability(self, f: dict[str, float]) -> float:
        x = (np.array([f[name] for name in self.features]) - self.mean) / self.scale
        return float(1 / (1 + np.exp(-(x @ np.array(self.coef) + self.intercept))))

    @classmethod
    def load(cls, path: Path | str | None) -> "CoverageModel | None":
        if not path or not Path(path).is_file():
            return None
        data = json.loads(Path(path).read_text())
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")
