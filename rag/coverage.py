"""Do the posts cover this question? A few signals of a retrieval, combined by a small logistic model.

One similarity threshold could not tell a near-miss ("how does AMSGrad fix Adam?" next to the posts' Adam
section) from a covered question: both score alike. Other signals can: a near-miss usually names something the
posts never mention, a word that is rare in English too ("amsgrad", "bonferroni"), while a casual covered
question's unknown words are everyday ones ("lol", "weird", "gonna"); and a near-miss's words are often missing
from the best section. English word frequencies come from `wordfreq`. The model (weights in
`Settings.coverage_model`, a JSON file written by `rag calibrate` with cross-validation on the dev questions) is
a dot product at run time, so the product needs no scikit-learn; without the file the decision falls back to
`Settings.refusal_threshold`.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import RagError
from .text import SHORTHAND, STOPWORDS, content_words, greek_names, stem, stems, words

FEATURES = ("dense", "heading", "sentence", "dense_gap", "top_term_share", "log_words", "rare_unknown",
            "rare_share")
# "log_words" counts at least this many words: the dev questions the model is fit on have three or more, and
# below that the fit would extrapolate a penalty to "what is bagging" (heading cosine 0.78, refused)
MIN_WORDS = 3
# the decision looks at this many of the best sections whatever k the user asked for, so that asking for fewer
# sections does not change whether a question is covered
DECISION_SECTIONS = 5
# "sentence" looks for one sentence that matches the question in this many of the best sections: a near-miss
# matches a section's topic, a covered question also matches the sentence that answers it
SENTENCE_SECTIONS = 3
# Zipf frequency (log10 per billion words) under which an English word counts as rare: everyday words such as
# "weird" (4.8) or "choke" (3.7) lie above it, technical terms such as "lstm" (1.7) or "hashing" (2.6) below.
RARE_ZIPF = 3.5
# English derivational affixes (Vocabulary.derived); a suffix comes with what its word ended in before it:
# "costlier" <- "costly"
PREFIXES = ("un", "re", "pre", "mis", "non", "over", "under", "de")
SUFFIXES = (("ly", ""), ("ier", "y"), ("ness", ""), ("able", ""))
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_SPELLED_OUT = re.compile(r"([A-Za-z0-9]+) \((?=[^()]*\))")


@lru_cache(maxsize=65536)
def english_zipf(word: str) -> float:
    from wordfreq import zipf_frequency

    return zipf_frequency(word, "en")


class Vocabulary:
    """The words of the index's sections: which question words the posts use at all, and how often (document
    frequency of stems, for IDF weights). Hyphenated terms also count joined up ("k-means" -> "kmeans")."""

    def __init__(self, section_texts: list[str]):
        self.sections = max(len(section_texts), 1)
        self.df = Counter(s for text in section_texts for s in stems(text))
        self.words: Counter = Counter()
        self.hyphenated: dict[str, str] = {}  # "kmeans" -> "k-means": how the posts write a joined-up term
        for text in section_texts:
            found = set(_WORD.findall(greek_names(text.lower())))
            joined = {w.replace("-", ""): w for w in found if "-" in w}
            self.words.update(found | set(joined) | {part for w in found if "-" in w for part in w.split("-")})
            for short, full in joined.items():
                self.hyphenated.setdefault(short, full)

    def idf(self, stem_: str) -> float:
        return math.log((1 + self.sections) / (1 + self.df.get(stem_, 0))) + 1.0

    def known(self, word: str) -> bool:
        return word in self.words or stem(word) in self.df or (word.endswith("s") and word[:-1] in self.words)

    def spelled_out(self, word: str) -> str | None:
        """How the posts write a word of a question they would not match as typed: a joined-up hyphenated
        term ("kmeans" -> "k-means"), a clipped one ("vocab" -> "vocabulary") or a misspelling ("xaiver" ->
        "xavier")."""
        word = word.lower()
        if word in self.hyphenated and word not in self.df:
            return self.hyphenated[word]
        return self.completion(word) or self.correction(word)

    def completion(self, word: str) -> str | None:
        """A clipped word's full form in the posts ("vocab" -> "vocabulary", "distrib" -> "distribution"): the
        word the posts use most among those it begins, when nearly all of those share one stem, for words of five
        letters or more that are neither in the posts nor common English. Chat clips long terms, and a clipped
        word is no misspelling (too many edits away): without this "vocab" counted as an unknown rare term."""
        if len(word) < 5 or not word.isalpha() or self.known(word) or english_zipf(word) >= RARE_ZIPF:
            return None  # four letters are too few to guess from: "mish" (an activation) begins "mishandled"
        stem_ = word[:-1] if word.endswith("s") and len(word) > 5 else word  # "params" -> "param..."
        longer = [(n, w) for w, n in self.words.items() if w.startswith(stem_) and len(w) >= len(stem_) + 2
                  and w.isalpha()]
        by_stem = Counter()
        for n, w in longer:
            by_stem[stem(w)] += n
        if not by_stem:
            return None
        top, uses = by_stem.most_common(1)[0]
        # only an unambiguous clip: "conv" begins "convolution" and "convergence", "dist" begins "distance"
        # and "distribution"; a guess between them would add a wrong word to the search
        if uses < 0.9 * sum(by_stem.values()):
            return None
        return max((n, w) for n, w in longer if stem(w) == top)[1]

    def rare_unknown(self, text: str) -> list[str]:
        """Content words of `text` that the posts never use and that are rare in English: the names of the
        things a question asks about that the posts do not cover. A word already spelled out next to it
        ("lgbm (LightGBM)", rag.retrieve.spell_out), or half of a term the posts write joined up ("rms" of
        "rms norm", RMSNorm), does not count."""
        halves = {w for pair in self.joined_pairs(text) for w in pair[:2]}
        # a note rag.retrieve.spell_out wrote, not the user's own "(...)": "DoRA (weight-decomposed low-rank
        # adaptation)" still names something the posts never mention
        text = _SPELLED_OUT.sub(lambda m: "" if self.noted(m.group(1)) else m.group(0), text)
        own = content_words(text)
        return [w for w in dict.fromkeys(words(text)) if w in own and w not in halves and not w.isdigit()
                and not self.known(w) and not self.derived(w) and english_zipf(w) < RARE_ZIPF]

    def noted(self, word: str) -> bool:
        """Whether rag.retrieve.spell_out writes its spelling next to `word`."""
        return word.lower() in SHORTHAND or self.spelled_out(word) is not None

    def derived(self, word: str) -> bool:
        """An English derivation of a word the posts use: a prefix ("unspecified", "precompute", "mislabeling") or
        a suffix ("cheaply", "costlier") on a known word of at least five letters (four before a suffix). Such a
        word says how, not what: it names nothing the posts lack."""
        return (any(word.startswith(p) and len(word) - len(p) >= 5 and self.known(word[len(p):]) for p in PREFIXES)
                or any(word.endswith(s) and len(word) - len(s) >= 4 and self.known(word[:-len(s)] + back)
                       for s, back in SUFFIXES))

    def joined_pairs(self, text: str) -> list[tuple[str, str, str]]:
        """Two words of `text` that the posts write as one word: "layer norm" -> ("layer", "norm", "layernorm").
        Not a pair the posts hyphenate ("cross-validation", "per-parameter"): the search and the word counts split
        those anyway, so the note would only count the same words twice. Stop words never pair."""
        out = []
        tokens = re.findall(r"[a-z0-9]+|[^a-z0-9\s]+", text.lower())  # "cross-validation" is no pair: a, "-", b
        for a, b in zip(tokens, tokens[1:]):
            joined = a + b
            if (a.isalnum() and b.isalnum() and a not in STOPWORDS and b not in STOPWORDS and len(a) > 1
                    and len(b) > 1 and joined in self.words and joined not in self.hyphenated):
                out.append((a, b, joined))
        return out

    def correction(self, word: str) -> str | None:
        """A misspelt word's spelling in the posts ("xaiver" -> "xavier"): one edit (transpositions count one),
        not of the first letter, from a word the posts use at least twice, for words of five letters or more that
        are neither in the posts nor common English."""
        if len(word) < 5 or not word.isalpha() or self.known(word) or english_zipf(word) >= RARE_ZIPF:
            return None
        from rapidfuzz import process
        from rapidfuzz.distance import OSA

        # with its first letter: people rarely mistype it, and a word one letter longer or different at the start
        # is mostly another term ("qlora", "nadam", "vprediction": not "lora", "adam", "prediction")
        hit = process.extractOne(word, self._frequent().get(word[0], []), scorer=OSA.distance, score_cutoff=1)
        return hit[0] if hit else None

    def _frequent(self) -> dict[str, list[str]]:
        """The words the posts use at least twice, by first letter."""
        if not hasattr(self, "_frequent_words"):
            self._frequent_words: dict[str, list[str]] = {}
            for w, n in self.words.items():
                if n >= 2 and len(w) >= 4 and w.isalpha():
                    self._frequent_words.setdefault(w[0], []).append(w)
        return self._frequent_words


def features(question: str, passages: list, vocab: Vocabulary, sentence: float) -> dict[str, float]:
    """The signals the decision is made on; `passages` in rank order (rag.retrieve.Passage), at least
    DECISION_SECTIONS of them when the index has that many; `sentence` is the
    best cosine of the question with a standalone sentence of the first SENTENCE_SECTIONS passages."""
    question_stems = stems(question)
    dense = [p.dense for p in passages] or [0.0]
    known = [w for w in question_stems if w in vocab.df]
    top = stems(f"{passages[0].section} {passages[0].text}") if passages else set()
    weight = sum(vocab.idf(w) for w in known)
    rare = vocab.rare_unknown(question)
    return {
        "dense": max(dense),
        "heading": max((p.heading for p in passages), default=0.0),
        "sentence": sentence,
        "dense_gap": dense[0] - (float(np.mean(dense[1:])) if len(dense) > 1 else 0.0),
        "top_term_share": sum(vocab.idf(w) for w in known if w in top) / weight if weight else 0.0,
        "log_words": math.log1p(max(len(question_stems), MIN_WORDS)),
        "rare_unknown": float(len(rare)),
        "rare_share": len(rare) / max(len(content_words(question)), 1),
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
        try:
            data = json.loads(Path(path).read_text())
            model = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except (ValueError, TypeError) as e:
            raise RagError(f"coverage model {path} is unreadable ({e}); run `rag calibrate` to fit it again") from e
        unknown = [f for f in model.features if f not in FEATURES]
        if unknown:
            raise RagError(f"coverage model {path} uses signals this version does not compute ({', '.join(unknown)}); "
                           f"run `rag calibrate` to fit it again")
        return model

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")
