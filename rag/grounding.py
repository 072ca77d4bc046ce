"""Sentence-level support: is an answer sentence backed by the passage it cites? The chat uses it to keep a
model's sentence and its citation; the eval has its own, stricter test (rag/eval/metrics.py)."""

from __future__ import annotations

import re

from .text import stems, words

SUPPORT_THRESHOLD = 0.6  # of a sentence's content-word stems present in the cited passage
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# a named method or term: an acronym (OOB, GELU) or a word with an inner capital (LayerNorm, XGBoost)
NAMED = re.compile(r"\b(?:[A-Z]{2,}[a-z]*s?|[A-Za-z]+[A-Z][A-Za-z]*)\b")


def overlap(sentence: str, passage: str) -> float:
    """Share of the sentence's content-word stems that the passage contains ("normalizes" meets
    "normalization")."""
    own = stems(sentence)
    return len(own & stems(passage)) / len(own) if own else 0.0


def names_and_numbers_in(sentence: str, passage: str) -> bool:
    """Every number and every named term of the sentence occurs in the passage: the details a small model
    gets wrong while the other words still match."""
    low = passage.lower()
    return (all(n in passage for n in _NUMBER.findall(sentence))
            and all(t.lower() in low for t in NAMED.findall(sentence)))


def supported(sentence: str, passage: str) -> bool:
    """A sentence is backed by a passage when most of its content-word stems (60%) and all its numbers and
    named terms occur in it. Copied sentences always pass; invented ones rarely do."""
    return overlap(sentence, passage) >= SUPPORT_THRESHOLD and names_and_numbers_in(sentence, passage)


NEGATIONS = frozenset({"not", "no", "never", "without", "cannot", "nor", "none", "neither"})


def negated(text: str) -> bool:
    lower = text.lower()
    return bool(set(words(lower)) & NEGATIONS) or "n't" in lower or "n’t" in lower


def backs(source: str, sentence: str) -> bool:
    """The chat's check that a sentence a model wrote from a passage sentence still says what the source says:
    supported by it (above) and negated exactly when the source is ("is not always the best choice" must not
    come back as "is always the best choice")."""
    return supported(sentence, source) and negated(sentence) == negated(source)


def best_support(sentence: str, passages: list[str]) -> tuple[int | None, float]:
    scores = [overlap(sentence, p) for p in passages]
    if not scores:
        return None, 0.0
    best = max(range(len(scores)), key=scores.__getitem__)
    return best, scores[best]
