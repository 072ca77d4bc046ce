"""Sentence-level support: is an answer sentence backed by a passage? Used to cite and to measure."""

from __future__ import annotations

import re

from .index import STOPWORDS

SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[$*])|\n+")
CITATION = re.compile(r"\s*\[\d+\]")


LIST_MARKER = re.compile(r"^\s*(?:[-*+>•]|\d+[.)])\s+")
PSEUDO_HEADING = re.compile(r"^\s*\*\*[^*]+\*\*:?\s*$")  # a bold line that labels what follows


def sentences(text: str) -> list[str]:
    """Sentences and list items of a passage or an answer, citation markers and bold-line labels removed."""
    parts = (LIST_MARKER.sub("", CITATION.sub("", s)).strip() for s in SENTENCE_SPLIT.split(text))
    return [p for p in parts if (len(p.split()) >= 3 or "$$" in p) and not PSEUDO_HEADING.match(p)]


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS and len(w) > 1}


def overlap(sentence: str, passage: str) -> float:
    """Share of the sentence's content words that the passage contains."""
    words = content_words(sentence)
    return len(words & content_words(passage)) / len(words) if words else 0.0


SUPPORT_THRESHOLD = 0.7  # of a sentence's content words present in the cited passage


def supported(sentence: str, passage: str) -> bool:
    """The support test: a sentence is grounded when at least 70% of its content words (lower-cased,
    stop words removed) occur in the passage it cites. Copied sentences score 1.0; invented ones rarely pass."""
    return overlap(sentence, passage) >= SUPPORT_THRESHOLD


def best_support(sentence: str, passages: list[str]) -> tuple[int | None, float]:
    scores = [overlap(sentence, p) for p in passages]
    if not scores:
        return None, 0.0
    best = max(range(len(scores)), key=scores.__getitem__)
    return best, scores[best]
