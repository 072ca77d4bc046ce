"""Practice mode: ask one of the posts' interview questions, grade the user's answer against the post's
answer, and ask again later what they keep missing (Leitner boxes).

    questions   every section whose heading is an interview question ("Q3: What is Out-of-Bag (OOB)
                error?") is one question and its text (with its sub-sections) the reference answer; other
                content sections get one ("Explain Business Objective (Start by Clarifying the Problem).")
    key points  the sentences of the reference that carry its content (no headings, lead-ins, questions,
                code or examples), at most MAX_KEY_POINTS, salient and unlike each other, chosen once per
                index generation and stored with their vectors
    grading     each key point against the answer: MiniLM cosine with the answer's sentences and the
                share of the point's own terms (not the question's) the answer uses; a score 0-100 from
                the mean coverage; an answer that covers another question of the post better than this one
                is capped (it answers that question); "I don't know" scores 0. Weights are chosen on the
                dev split of eval/practice_grades.jsonl (rag/eval/grading.py, docs/practice.md); a judge
                (ModelJudge: a small LLM's yes/no) can be blended in, and was measured not to help
    progress    rag/progress.py (SQLite): attempts, the Leitner card of each question, the key points

Public API (the CLI and the app's Practice tab use only this):

    p = Practice(settings)              # or Practice(settings, db_path=..., index=LiveIndex(...))
    q = p.next_question(post=None)      # -> PracticeQuestion (due / failed first, then new ones)
    g = p.grade(q.id, "my answer")      # -> Grade (score, covered, missed, reference, citations)
    p.stats()                           # -> list[PostStats]
    p.questions(), p.key_points(q)      # every question; the key points a question is graded on

Invalid answers (empty, over MAX_ANSWER_CHARS, no words, the question pasted back) and unknown question ids
or posts raise PracticeError, a RagError, before anything is written.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .chunking import Chunk, anchor, section_title
from .embedder import embed, load_embedder
from .errors import ModelError, RagError
from .index import Index, LiveIndex
from .progress import Attempt, ProgressStore
try:
    from .retrieve import join_overlapping
except ImportError:  # the name before retrieve.py made it public
    from .retrieve import _join_overlapping as join_overlapping
from .settings import Settings
from .text import content_words, stems

log = logging.getLogger(__name__)

__all__ = ["Practice", "PracticeQuestion", "KeyPoint", "Grade", "Attempt", "PostStats", "PracticeError",
           "GradingWeights", "Section", "build_questions", "index_sections", "select_key_points", "choose_key_points", "measure", "combine", "coverage_of",
           "Evidence", "Rival", "LikelihoodJudge", "JUDGE_MODEL", "JUDGED_WEIGHTS",
           "default_weights"]

# ---------------------------------------------------------------------------------------------- limits

PASS_SCORE = 60  # a grade at or above this moves the question up one Leitner box
MAX_ANSWER_CHARS = 5000  # ~800 words: longer is not an interview answer, and embedding it would take long
MAX_ANSWER_UNITS = 48  # sentences and sentence pairs of an answer that are embedded (bounded time)
MAX_KEY_POINTS = 6
MIN_QUESTION_WORDS = 20  # a section shorter than this has too little to grade against
MAX_QUESTION_WORDS = 600  # a question whose sub-sections are longer is asked one sub-section at a time,
MAX_SUBSECTIONS = 8  # and so is one with more sub-sections than this (parallel entries, one per algorithm)
KEY_POINT_VERSION = 2  # bump when choose_key_points changes: cached key points of older code are ignored
KEY_POINT_DIVERSITY = 0.5  # how much a candidate's likeness to a point already chosen counts against it

# Leitner boxes: a failed question goes back to box 1 and returns within the session; each pass moves it
# up one box and further out. Box 4 and 5 count as mastered.
BOX_INTERVALS = {1: 10 * 60, 2: 86400, 3: 3 * 86400, 4: 7 * 86400, 5: 21 * 86400}
BOXES = max(BOX_INTERVALS)
MASTERED_BOX = 4


class PracticeError(RagError):
    """Bad practice input (empty or oversized answer, unknown question or post); nothing was recorded."""


def split_sentences(text: str) -> list[str]:
    """The one place practice mode splits sentences (rag.text is being reorganised: repoint it here)."""
    from .text import sentences

    return sentences(text)


# ---------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Part:
    """One stretch of a reference answer: a section's text, or a sub-section's."""
    section: str  # heading path
    url: str  # link to the post with that heading's anchor
    text: str


@dataclass(frozen=True)
class PracticeQuestion:
    id: str  # stable across index rebuilds: a hash of the post guid and the heading path
    question: str
    post_guid: str
    post_title: str
    section: str  # heading path of the question's section
    url: str
    parts: tuple[Part, ...] = field(repr=False, default=())

    @property
    def reference(self) -> str:
        """The post's answer: the section's own text, then its sub-sections with their headings."""
        out = []
        for p in self.parts:
            if p.section != self.section:
                out.append(f"**{p.section.split(' > ')[-1]}**")
            out.append(p.text)
        return "\n\n".join(out)

    @property
    def heading(self) -> str:
        return section_title(self.section)

    def to_json(self) -> dict:
        return {"id": self.id, "question": self.question, "post_title": self.post_title,
                "section": self.section, "url": self.url, "post_guid": self.post_guid}


@dataclass(frozen=True)
class KeyPoint:
    n: int  # 1-based, in reading order: the citation number
    text: str  # a sentence of the post, verbatim
    section: str
    url: str
    weight: float = 1.0


@dataclass
class Grade:
    question: PracticeQuestion
    answer: str
    score: int  # 0-100
    passed: bool
    points: list[KeyPoint]
    coverage: list[float]  # per key point, 0..1: how much of it the answer states
    note: str | None = None  # why a score was capped ("your answer repeats the question")
    recorded: bool = False
    box: int | None = None  # the question's Leitner box after this attempt
    due_at: float | None = None

    @property
    def covered(self) -> list[KeyPoint]:
        return [p for p, c in zip(self.points, self.coverage) if c >= 0.5]

    @property
    def missed(self) -> list[KeyPoint]:
        return [p for p, c in zip(self.points, self.coverage) if c < 0.5]

    @property
    def reference(self) -> str:
        return self.question.reference

    def citations(self) -> list[dict]:
        return [{"n": p.n, "post_title": self.question.post_title, "url": p.url, "section": p.section,
                 "text": p.text} for p in self.points]

    def to_json(self) -> dict:
        return {"id": self.question.id, "question": self.question.question, "score": self.score,
                "passed": self.passed, "covered": [p.text for p in self.covered],
                "missed": [p.text for p in self.missed], "reference": self.reference,
                "citations": self.citations(),
                "points": [{"n": p.n, "text": p.text, "coverage": round(c, 3), "covered": c >= 0.5}
                           for p, c in zip(self.points, self.coverage)],
                "note": self.note, "recorded": self.recorded, "box": self.box,
                "due": _iso(self.due_at) if self.due_at else None,
                "post_title": self.question.post_title, "url": self.question.url}


@dataclass(frozen=True)
class PostStats:
    post_guid: str
    post_title: str
    questions: int
    attempted: int
    mastered: int  # in box MASTERED_BOX or higher
    due: int  # attempted and due now
    attempts: int
    mean_score: float | None  # mean of each attempted question's last score
    last_practiced: str | None


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


# ---------------------------------------------------------------------------------------------- questions

_Q_PREFIX = re.compile(r"^\s*(?:Q\s?\d+|\d+)\s*[.:)]\s*", re.I)
_IMPERATIVE = re.compile(r"(?:^|,\s*)(?:compare|explain|derive|describe|implement|write|design|discuss|"
                         r"define|contrast|list|walk)\b", re.I)
_INTERROGATIVE = re.compile(r"^(?:what|why|how|when|which|where|who|can|could|does|do|is|are|should|would|"
                            r"will)\b", re.I)
_NOT_CONTENT = {"introduction", "conclusion", "summary", "final thoughts", "thanks for reading", "references",
                "further reading", "key takeaways", "takeaways", "wrap up", "wrapping up"}


def is_question_heading(heading: str) -> bool:
    """Interview-question headings: "Q3: What is ...?", "Why does AdamW exist?", "Derive the gradient ..."."""
    h = heading.strip()
    return h.endswith("?") or bool(re.match(r"^\s*Q\s?\d+\b", h)) or bool(_IMPERATIVE.search(_Q_PREFIX.sub("", h)))


def _norm(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", heading.lower().replace("*", "")).strip()


_ASKED = re.compile(r"^\W*question\W*:?\**\s*(.+\?)", re.I)  # "**Question:** Which optimizer would you choose?"


def question_text(path: Sequence[str], post_title: str, text: str = "") -> str:
    """What the bot asks for the section at `path` (a question section, or one sub-section of one)."""
    q = _deepest_question(path)
    topic = post_title.split(":")[0].strip()
    if q is None:  # a content section without a question heading gets one
        leaf = path[-1].strip().rstrip(".:")
        asked = _ASKED.match(text.strip().splitlines()[0]) if text.strip() else None
        if leaf.lower().startswith("case:"):
            leaf = leaf[5:].strip()
            return f"{leaf}: {asked.group(1).strip()}" if asked else f"{leaf}: what is going on, and what would you do?"
        if asked:
            return f"{leaf}: {asked.group(1).strip()}"
        return f"Explain {leaf} ({path[-2].strip() if len(path) > 1 else topic})."
    asked = _Q_PREFIX.sub("", path[q]).strip()
    if _INTERROGATIVE.match(asked) and not asked.endswith("?"):
        asked = asked.rstrip(".:") + "?"  # "Q16. What is the time complexity of common clustering algorithms"
    elif not (asked.endswith("?") or _IMPERATIVE.search(asked)):
        asked = f"Explain {asked.rstrip('.:')}."
    if len(path) - 1 > q:  # one sub-section of a long question
        asked = f"{asked} — {path[-1].strip().rstrip('.:')}"
    return asked


def question_id(post_guid: str, section: str) -> str:
    """Stable across rebuilds of the same feed (chunk row ids are not): post guid + heading path."""
    return hashlib.sha1(f"{post_guid}\n{section}".encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Section:
    """One section of a post as the chunker parses it: heading path and its own text."""
    post_guid: str
    post_title: str
    post_url: str
    path: tuple[str, ...]
    text: str

    @property
    def url(self) -> str:
        """The chunker's link for the section (rag.chunking.Chunker.chunk), so citations match the chat's."""
        return self.post_url if self.path == (self.post_title,) else f"{self.post_url}#{anchor(self.path[-1])}"


def _deepest_question(path: Sequence[str]) -> int | None:
    return next((i for i in range(len(path) - 1, -1, -1) if is_question_heading(path[i])), None)


def build_questions(sections: list[Section]) -> list[PracticeQuestion]:
    """Every practice question, in post and reading order. A section belongs to the deepest question
    heading on its path (sub-sections are parts of that question's answer); a content section under no
    question heading is a question of its own; a question too long to answer in one go (or a list of
    many parallel sub-sections: "Q2. How does the algorithm handle missing data?" for each of twelve
    algorithms) is asked one sub-section at a time."""
    out: list[PracticeQuestion] = []
    units: dict[tuple[str, tuple[str, ...]], list[Section]] = {}
    parents = {(s.post_guid, s.path[:i]) for s in sections for i in range(1, len(s.path))}
    for s in sections:
        q = _deepest_question(s.path)
        if q is None and (_norm(s.path[-1]) in _NOT_CONTENT or s.path[-1] == s.post_title
                          or (s.post_guid, s.path) in parents):
            continue  # introductions, conclusions and the lead-in of a part with sub-sections answer nothing
        units.setdefault((s.post_guid, s.path if q is None else s.path[: q + 1]), []).append(s)
    for (_, path), members in units.items():
        words = sum(len(m.text.split()) for m in members)
        if len(members) > 1 and (words > MAX_QUESTION_WORDS or len(members) > MAX_SUBSECTIONS):
            groups: dict[tuple[str, ...], list[Section]] = {}
            for m in members:
                groups.setdefault(m.path, []).append(m)
            out += [q for sub, g in groups.items() if (q := _question(sub, g))]
        elif q := _question(path, members):
            out.append(q)
    return out


def _question(path: tuple[str, ...], members: list[Section]) -> PracticeQuestion | None:
    if sum(len(m.text.split()) for m in members) < MIN_QUESTION_WORDS:
        return None
    first = members[0]
    section = " > ".join(path)
    parts = tuple(Part(" > ".join(m.path), m.url, m.text) for m in members)
    url = first.post_url if path == (first.post_title,) else f"{first.post_url}#{anchor(path[-1])}"
    q = PracticeQuestion(question_id(first.post_guid, section), question_text(path, first.post_title, first.text),
                         first.post_guid, first.post_title, section, url, parts)
    return q if len(_candidates(q)) >= 2 else None


# ---------------------------------------------------------------------------------------------- key points

_CODE = re.compile(r"```.*?(?:```|$)", re.S)
_FORMULA = re.compile(r"\$\$.*?\$\$|\$[^$]+\$", re.S)
_EXAMPLE = re.compile(r"^(?:for example|for instance|e\.g\.|example|imagine|suppose|consider|say you|"
                      r"let'?s say)\b", re.I)
_MARKUP = re.compile(r"\*\*|__|`")


def plain(text: str) -> str:
    """A sentence without Markdown emphasis, as it is embedded and shown in a terminal."""
    return _MARKUP.sub("", text).replace("*", "").strip()


def _candidates(q: PracticeQuestion) -> list[tuple[Part, str]]:
    """Sentences of the reference that can be key points: not headings (the chunker leaves merged-in ones
    as plain lines), not lead-ins ending in ':', not code, not formula-only; not examples, and not
    questions (a rhetorical one states nothing), unless the section has nothing else (a checklist of
    questions to ask is the answer)."""
    headings = {_norm(h) for p in q.parts for h in p.section.split(" > ")} | {_norm(q.post_title)}
    out, examples, asked = [], [], []
    for part in q.parts:
        for s in split_sentences(_CODE.sub("", part.text)):
            words = re.findall(r"[^\W\d_]{2,}", _FORMULA.sub(" ", plain(s)))  # words, not symbols or formulas
            if _norm(s) in headings or len(words) < 3 or s.rstrip().endswith(":") or _ASKED.match(s):
                continue
            if s.rstrip(" *_\"'”’)").endswith("?"):
                asked.append((part, s))
            else:
                (examples if _EXAMPLE.match(plain(s)) else out).append((part, s))
    unique: dict[str, tuple[Part, str]] = {}
    for part, s in out or examples or asked:
        unique.setdefault(_norm(s), (part, s))
    return list(unique.values())


def choose_key_points(questions: Sequence[PracticeQuestion], model, diversity: float = KEY_POINT_DIVERSITY
                      ) -> dict[str, tuple[list[KeyPoint], np.ndarray]]:
    """Key points and their unit vectors for several questions, with one embedding batch for all.

    Per question: the sentences that carry the answer's content, in reading order, at most MAX_KEY_POINTS.
    When there are more candidates, they are picked greedily by salience (closeness to the question and to
    the section's centroid: the answer's core rather than its asides) minus `diversity` times the
    similarity to a point already picked, so that a long answer's points come from its different parts
    (maximal marginal relevance). Deterministic for the same text and embedder."""
    cands = {q.id: _candidates(q) for q in questions}
    texts = [q.question for q in questions] + [plain(s) for q in questions for _, s in cands[q.id]]
    vecs = embed(model, texts) if texts else np.zeros((0, 0), np.float32)
    out, offset = {}, len(questions)
    for i, q in enumerate(questions):
        c = cands[q.id]
        cv = vecs[offset: offset + len(c)]
        offset += len(c)
        keep = list(range(len(c)))
        if len(c) > MAX_KEY_POINTS:
            centroid = cv.mean(axis=0)
            centroid /= np.linalg.norm(centroid) or 1.0
            salience = (cv @ vecs[i] + cv @ centroid) / 2
            keep = []
            while len(keep) < MAX_KEY_POINTS:
                redundancy = (cv @ cv[keep].T).max(axis=1) if keep else np.zeros(len(c))
                gain = salience - diversity * redundancy
                gain[keep] = -np.inf
                keep.append(int(np.argmax(gain)))
            keep.sort()
        points = [KeyPoint(n, s, part.section, part.url) for n, (part, s) in enumerate((c[k] for k in keep), 1)]
        out[q.id] = (points, np.asarray(cv[keep], dtype=np.float32).reshape(len(keep), -1))
    return out


def select_key_points(q: PracticeQuestion, model) -> list[KeyPoint]:
    """The key points of one question (see choose_key_points)."""
    return choose_key_points([q], model)[q.id][0]


# ---------------------------------------------------------------------------------------------- grading


@dataclass(frozen=True)
class GradingWeights:
    """How coverage of a key point is measured and turned into a score; chosen on the dev split of
    eval/practice_grades.jsonl only (`python -m rag.eval.grading --tune`, docs/practice.md)."""
    dense: float = 0.7  # weight of embedding similarity against term overlap
    low: float = 0.4  # combined similarity at which a key point starts to count ...
    high: float = 0.65  # ... and at which it counts fully
    target: float = 0.7  # mean coverage of the key points that earns 100: nobody says every sentence
    curve: float = 1.0  # score = 100 * (coverage / target) ** curve: below 1 credits a first point more
    rival_margin: float = 0.0  # an answer that covers another question of the post this much better ...
    rival_cap: int = 30  # ... answers that question, not this one: its score is capped here
    judge: float = 0.0  # weight of a judge's verdict on the answer, when a judge is given ...
    judge_low: float = 0.0  # ... whose value counts from here (0) ...
    judge_high: float = 1.5  # ... to here (1)


# The weights used with a LikelihoodJudge (chosen with it on dev; docs/practice.md)
JUDGED_WEIGHTS = GradingWeights(dense=0.6, low=0.4, high=0.7, target=0.8, curve=0.8, rival_margin=0.0,
                                judge=0.25, judge_low=0.25, judge_high=1.0)


def default_weights(judged: bool) -> GradingWeights:
    return JUDGED_WEIGHTS if judged else GradingWeights()


# A judge scores an answer to a question whose key points are given (LikelihoodJudge: nats per token), or
# returns None to abstain; GradingWeights maps its value to 0..1 and blends it in.
Judge = Callable[["PracticeQuestion", Sequence["KeyPoint"], str], "float | None"]

JUDGE_MODEL = "Qwen/Qwen2.5-Coder-0.5B-Instruct"


class LikelihoodJudge:
    """How much the post's answer makes the user's answer more likely under a small local LM: the mean
    gain in log-probability per answer token when the model has read the post's answer first, against
    when it has only read the question (one forward pass each). A paraphrase gains (the notes predict
    its content), an answer to another question gains little, and a fluent wrong answer gains less
    than a right one because the notes predict other facts than the ones it states. Returns nats per
    token; GradingWeights.judge_low/high map it to 0..1. The model is loaded on first use and shared
    with the chat (rag.generate.load_generator)."""

    SYSTEM = "You are a candidate in a machine learning interview."

    def __init__(self, model: str = JUDGE_MODEL, threads: int | None = 1, max_reference_words: int = 300,
                 max_answer_words: int = 200):
        self.name, self.threads = model, threads
        self.max_reference_words, self.max_answer_words = max_reference_words, max_answer_words
        self._generator = None

    @property
    def generator(self):
        if self._generator is None:
            from .generate import load_generator

            self._generator = load_generator(self.name, threads=self.threads)
        return self._generator

    def __call__(self, q: PracticeQuestion, points: Sequence[KeyPoint], answer: str) -> float:
        notes = " ".join(plain(q.reference).split()[: self.max_reference_words])
        answer = " ".join(answer.split()[: self.max_answer_words])  # bounded time for a long answer
        read = self._logprobs(f"Course notes:\n{notes}\n\nInterview question: {q.question}\n"
                              "Answer in your own words, consistently with the notes.", answer)
        unread = self._logprobs(f"Interview question: {q.question}\nAnswer in your own words.", answer)
        return float((read - unread).mean())

    def _logprobs(self, prompt: str, answer: str) -> np.ndarray:
        """Log-probability of each token of `answer` as the assistant's reply to `prompt`."""
        import torch

        g = self.generator
        head = g.prompt_ids([{"role": "system", "content": self.SYSTEM}, {"role": "user", "content": prompt}])
        tail = g.tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            logits = g.model(torch.cat([head, tail], dim=1), use_cache=False).logits[0, head.shape[1] - 1:-1]
            logp = torch.log_softmax(logits.float(), dim=-1).gather(1, tail[0][:, None])[:, 0]
        return logp.numpy()


_DONT_KNOW = re.compile(r"^\W*(?:i\s+(?:really\s+)?(?:do\s*n[o']?t|dunno|have\s+no)\s*(?:know|idea|clue)?|"
                        r"no\s+idea|not\s+sure|idk|pass|skip|no\s+clue|\?+)\W*$", re.I)


def answer_units(answer: str) -> list[str]:
    """What of an answer is compared with key points: its sentences and pairs of neighbouring sentences
    (a point is often spread over two), plus the whole answer while it is short; bounded in number."""
    sents = [plain(s) for s in split_sentences(answer)] or [plain(answer)]
    units = sents + [f"{a} {b}" for a, b in zip(sents, sents[1:])]
    if len(sents) > 2 and len(answer) < 1200:
        units.append(plain(answer))
    return units[:MAX_ANSWER_UNITS]


def validate_answer(answer: str) -> str:
    """The answer as graded, or a PracticeError that says what is wrong (nothing is recorded then)."""
    if answer is None or not answer.strip():
        raise PracticeError("the answer is empty: type what you would say in the interview")
    if len(answer) > MAX_ANSWER_CHARS:
        raise PracticeError(f"the answer is {len(answer):,} characters long; keep it under "
                            f"{MAX_ANSWER_CHARS:,} (about 800 words), as you would in an interview")
    if not re.search(r"[^\W\d_]", answer):
        raise PracticeError("the answer has no words in it")
    return answer.strip()


@dataclass(frozen=True)
class Rival:
    """What an answer shows of another question's key points (the other questions of the same post)."""
    question: str
    dense: np.ndarray
    terms: np.ndarray


@dataclass(frozen=True)
class Evidence:
    """What an answer shows of each key point, before weights turn it into a score (so the eval can
    sweep weights without embedding again)."""
    dense: np.ndarray  # per key point: best cosine with one of the answer's units
    terms: np.ndarray  # per key point: share of its own terms (not the question's) that the answer uses
    empty: bool = False  # "I don't know", or no content words at all
    echo: bool = False  # the question pasted back, or little more
    rivals: tuple[Rival, ...] = ()


def _point_evidence(question_stems: set[str], point_texts: Sequence[str], point_vectors: np.ndarray,
                    unit_vectors: np.ndarray, answer_stems: set[str]) -> tuple[np.ndarray, np.ndarray]:
    dense = (point_vectors @ unit_vectors.T).max(axis=1) if len(point_texts) else np.zeros(0)
    terms = []
    for text in point_texts:
        own = stems(text) - question_stems or stems(text)
        terms.append(len(own & answer_stems) / len(own) if own else 0.0)
    return dense.astype("float64"), np.array(terms, dtype="float64")


def measure(question: str, point_texts: list[str], point_vectors: np.ndarray, answer: str, model,
            rivals: Sequence[tuple[str, list[str], np.ndarray]] = ()) -> Evidence:
    """Compare an already validated answer with each key point, and with the key points of `rivals`
    (question, point texts, point vectors: the other questions of the post)."""
    n = len(point_texts)
    answer_stems, question_stems = stems(answer), stems(question)
    if _DONT_KNOW.match(answer) or not content_words(answer):
        return Evidence(np.zeros(n), np.zeros(n), empty=True)
    if echoes(question, answer):
        return Evidence(np.zeros(n), np.zeros(n), echo=True)
    units = embed(model, answer_units(answer))
    dense, terms = _point_evidence(question_stems, point_texts, point_vectors, units, answer_stems)
    others = tuple(Rival(rq, *_point_evidence(stems(rq), texts, vectors, units, answer_stems))
                   for rq, texts, vectors in rivals if len(texts))
    return Evidence(dense, terms, rivals=others)


def echoes(question: str, answer: str) -> bool:
    """The question pasted back, or little more: its terms are free for the asking, so it states nothing.
    (A short answer in words of its own, "It just picks one of them.", is graded, not refused.)"""
    answer_stems, question_stems = stems(answer), stems(question)
    new_terms = answer_stems - question_stems
    return (len(answer_stems & question_stems) >= min(2, len(question_stems))
            and len(new_terms) <= max(1, 0.2 * len(answer_stems)))


def coverage_of(dense: np.ndarray, terms: np.ndarray, weights: GradingWeights) -> np.ndarray:
    """How much of each key point (0..1) an answer states, from its similarity and term overlap."""
    c = weights.dense * dense + (1 - weights.dense) * terms
    return np.clip((c - weights.low) / (weights.high - weights.low), 0.0, 1.0)


def combine(evidence: Evidence, weights: GradingWeights = GradingWeights(), verdict: float | None = None,
            point_weights: Sequence[float] | None = None) -> tuple[int, list[float], str | None]:
    """(score 0-100, coverage of each key point 0..1, note) from the evidence."""
    n = len(evidence.dense)
    if evidence.empty:
        return 0, [0.0] * n, "no answer to grade: here is what the post says"
    coverage = coverage_of(evidence.dense, evidence.terms, weights)
    w = np.asarray(point_weights if point_weights is not None else np.ones(n), float)
    own = float((w * coverage).sum() / w.sum()) if n and w.sum() else 0.0
    mean = own
    if verdict is not None and weights.judge:
        mean = (1 - weights.judge) * own + weights.judge * judged(verdict, weights) * weights.target
    score = int(round(100 * min(1.0, mean / weights.target) ** weights.curve))
    if evidence.echo:
        return min(score, 10), np.minimum(coverage, 0.49).tolist(), ECHO_NOTE
    rival, best = max(((float(coverage_of(r.dense, r.terms, weights).mean()), r) for r in evidence.rivals),
                      key=lambda x: x[0], default=(0.0, None))
    if best is not None and rival - own > weights.rival_margin and score > weights.rival_cap:
        return weights.rival_cap, coverage.tolist(), f"your answer fits another question better: {best.question}"
    return score, coverage.tolist(), None


ECHO_NOTE = "your answer repeats the question: say what you know"


def judged(verdict, weights: GradingWeights):
    """A judge's raw value mapped to 0..1 (works on arrays too, for the eval's weight grid)."""
    return np.clip((np.asarray(verdict, float) - weights.judge_low) / (weights.judge_high - weights.judge_low), 0, 1)


# ---------------------------------------------------------------------------------------------- the session


class Practice:
    """Questions from the index, grading with the packaged embedder, progress in SQLite. Thread-safe enough
    for the app: the index is read-only and the store opens a connection per call."""

    def __init__(self, settings: Settings, db_path: str | Path | None = None,
                 index: Index | LiveIndex | None = None, judge: Judge | None = None,
                 weights: GradingWeights | None = None, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.live = index if index is not None else LiveIndex(settings)
        path = db_path or getattr(settings, "practice_db", None) or settings.index_dir / "practice.sqlite"
        self.store = ProgressStore(path)
        self.judge, self.weights, self.clock = judge, weights or default_weights(judge is not None), clock
        self._model = None
        self._questions: tuple[str, list[PracticeQuestion]] | None = None
        self._points: dict[tuple[str, str], tuple[list[KeyPoint], np.ndarray]] = {}

    # -- index and model

    @property
    def index(self) -> Index:
        return self.live.get() if isinstance(self.live, LiveIndex) else self.live

    @property
    def model(self):
        if self._model is None:
            self._model = load_embedder(self.settings.embedder, self.settings.device, self.settings.embed_backend)
        return self._model

    def questions(self) -> list[PracticeQuestion]:
        """All questions of the generation being served (rebuilt when `rag index` switches it)."""
        index = self.index
        if self._questions is None or self._questions[0] != index.generation:
            self._questions = (index.generation, build_questions(index_sections(index)))
            self._points.clear()
        return self._questions[1]

    def question(self, question_id: str) -> PracticeQuestion:
        q = next((q for q in self.questions() if q.id == str(question_id).strip()), None)
        if q is None:
            raise PracticeError(f"unknown question id {question_id!r}: get one from `rag practice --json`")
        return q

    def key_points(self, q: PracticeQuestion) -> list[KeyPoint]:
        return self._key_points([q])[q.id][0]

    def _key_points(self, questions: Sequence[PracticeQuestion]) -> dict[str, tuple[list[KeyPoint], np.ndarray]]:
        """Key points and their vectors: from memory, else from the store, else chosen now for all missing
        questions in one embedding batch and stored (once per index generation)."""
        generation = self.index.generation
        missing = [q.id for q in questions if (generation, q.id) not in self._points]
        if missing:
            for qid, (points, vectors) in self.store.key_points(generation, missing, KEY_POINT_VERSION).items():
                self._points[generation, qid] = ([KeyPoint(**p) for p in points], vectors)
            fresh = [q for q in questions if (generation, q.id) not in self._points]
            if fresh:
                chosen = choose_key_points(fresh, self.model)
                self.store.save_key_points(generation, KEY_POINT_VERSION, {
                    qid: ([asdict(p) for p in points], vectors) for qid, (points, vectors) in chosen.items()})
                self._points.update({(generation, qid): v for qid, v in chosen.items()})
        return {q.id: self._points[generation, q.id] for q in questions}

    def rivals(self, q: PracticeQuestion) -> list[PracticeQuestion]:
        """The questions an answer to `q` is compared with besides `q`: the other questions of its post
        (answers to those share its words; answers from other posts are far apart anyway)."""
        return [o for o in self.questions() if o.post_guid == q.post_guid and o.id != q.id]

    # -- picking

    def posts(self) -> list[tuple[str, str]]:
        """(guid, title) of the posts that have practice questions, in index order."""
        return list(dict.fromkeys((q.post_guid, q.post_title) for q in self.questions()))

    def find_post(self, post: str) -> str:
        """A post guid from a guid or a case-insensitive title substring."""
        posts = self.posts()
        if any(g == post for g, _ in posts):
            return post
        hits = [(g, t) for g, t in posts if post.lower().strip() in t.lower()] if post.strip() else []
        if len(hits) == 1:
            return hits[0][0]
        titles = "; ".join(t for _, t in (hits or posts))
        raise PracticeError(f"{'several' if hits else 'no'} posts match {post!r}: {titles}")

    def next_question(self, post: str | None = None, exclude: Sequence[str] = ()) -> PracticeQuestion:
        """What the user needs most: due questions they failed or barely know first (lowest box, then the
        longest overdue), then questions never asked (one per post in turn), then the next to come due."""
        guid = self.find_post(post) if post else None
        pool = [q for q in self.questions() if guid is None or q.post_guid == guid]
        if not pool:
            raise PracticeError("the index has no practice questions")
        candidates = [q for q in pool if q.id not in set(exclude)] or pool
        cards, now = self.store.cards(), self.clock()
        due = sorted((q for q in candidates if q.id in cards and cards[q.id].due_at <= now),
                     key=lambda q: (cards[q.id].box, cards[q.id].due_at, cards[q.id].last_score))
        if due:
            return due[0]
        new = [q for q in candidates if q.id not in cards]
        if new:
            turn, taken = {}, {}  # the k-th new question of each post gets turn k: posts take turns
            for q in new:
                turn[q.id] = taken.get(q.post_guid, 0)
                taken[q.post_guid] = turn[q.id] + 1
            posts = list(taken)
            return min(new, key=lambda q: (turn[q.id], posts.index(q.post_guid)))
        return min(candidates, key=lambda q: (cards[q.id].due_at, cards[q.id].box))

    # -- grading

    def evidence(self, question_id: str, answer: str) -> tuple[PracticeQuestion, list[KeyPoint], Evidence]:
        """The question, its key points and what the answer shows of each (validates the answer)."""
        q = self.question(question_id)
        answer = validate_answer(answer)
        rivals = self.rivals(q)
        points = self._key_points([q, *rivals])
        own, vectors = points[q.id]
        others = [(o.question, [p.text for p in points[o.id][0]], points[o.id][1]) for o in rivals]
        return q, own, measure(q.question, [p.text for p in own], vectors, answer, self.model, others)

    def grade(self, question_id: str, answer: str, record: bool = True) -> Grade:
        """Grade an answer; with `record`, store the attempt and move the question between Leitner boxes.
        Bad input (empty, oversized, no words, the question pasted back, an unknown id) raises
        PracticeError before anything is written."""
        q = self.question(question_id)
        answer = validate_answer(answer)
        if echoes(q.question, answer):  # refused before any model runs
            raise PracticeError(f"{ECHO_NOTE} (the answer is little more than the question)")
        q, points, evidence = self.evidence(q.id, answer)
        verdict = self._verdict(q, points, answer) if self.judge and not evidence.empty else None
        score, coverage, note = combine(evidence, self.weights, verdict, [p.weight for p in points])
        grade = Grade(q, answer, score, score >= PASS_SCORE, points, coverage, note)
        if record:
            now = self.clock()
            card = self.store.card(q.id)
            box = min((card.box if card else 1) + 1, BOXES) if grade.passed else 1
            due_at = now + BOX_INTERVALS[box]
            self.store.record(Attempt(q.id, q.post_guid, now, score, grade.passed, answer), box, due_at)
            grade.recorded, grade.box, grade.due_at = True, box, due_at
        return grade

    def _verdict(self, q: PracticeQuestion, points: list[KeyPoint], answer: str) -> float | None:
        """The judge's value; if its model cannot be loaded, grading goes on without it (and says so once)."""
        try:
            return self.judge(q, points, answer)
        except ModelError as e:
            log.warning("grading without the judge: %s", e)
            if self.weights == default_weights(True):
                self.weights = default_weights(False)
            self.judge = None
            return None

    # -- progress

    def stats(self) -> list[PostStats]:
        cards, now = self.store.cards(), self.clock()
        out = []
        for guid, title in self.posts():
            mine = [cards[q.id] for q in self.questions() if q.post_guid == guid and q.id in cards]
            total = sum(1 for q in self.questions() if q.post_guid == guid)
            out.append(PostStats(
                guid, title, total, len(mine), sum(c.box >= MASTERED_BOX for c in mine),
                sum(c.due_at <= now for c in mine), sum(c.attempts for c in mine),
                round(sum(c.last_score for c in mine) / len(mine), 1) if mine else None,
                _iso(max(c.last_at for c in mine)) if mine else None))
        return out


def index_sections(index: Index) -> list[Section]:
    """Every section of the served posts, in post and reading order: the one read practice mode makes of
    the index. Sections come from each post's stored Markdown, parsed as the chunker parses it, so that a
    question's reference is exactly its section (the chunker merges short sections into neighbouring
    chunks, which would mix one question's answer into another's); when the Markdown cannot be read, from
    the chunks."""
    from .chunking import sections as parse_sections
    from .index import read_posts

    try:
        markdown = {p.guid: p.markdown for p in read_posts(index.path.parent)}
    except RagError:
        markdown = {}
    out: list[Section] = []
    chunks: dict[str, list[Chunk]] | None = None
    for post in index.posts():
        if post.guid in markdown:
            for path, body in parse_sections(markdown[post.guid]):
                if body.strip():
                    out.append(Section(post.guid, post.title, post.url, tuple(path or [post.title]), body.strip()))
            continue
        if chunks is None:
            chunks = {}
            for c in index.all_chunks():
                chunks.setdefault(c.post_guid, []).append(c)
        by_section: dict[int, list[Chunk]] = {}
        for c in sorted(chunks.get(post.guid, []), key=lambda c: c.position):
            by_section.setdefault(c.section_no, []).append(c)
        for members in by_section.values():
            text = join_overlapping([c.text for c in members])
            out.append(Section(post.guid, post.title, post.url, tuple(members[0].section.split(" > ")), text))
    return out


# ---------------------------------------------------------------------------------------------- terminal


def format_question(q: PracticeQuestion) -> str:
    return f"\n{q.question}\n  ({q.post_title} — {q.heading})\n  {q.url}"


def highlighted(g: Grade, color: bool = False) -> str:
    """The post's answer as plain text with each key point marked where it stands: [n+] covered, [n-]
    missed (green and red on a terminal)."""
    text = plain(g.reference)
    for p, c in zip(g.points, g.coverage):
        mark = f"[{p.n}{'+' if c >= 0.5 else '-'}]"
        if color:
            mark = f"\033[{'32' if c >= 0.5 else '31'}m{mark}\033[0m"
        text = text.replace(plain(p.text), f"{plain(p.text)} {mark}", 1)
    return text


def format_grade(g: Grade, color: bool = False) -> str:
    lines = [f"\nScore {g.score}/100 — {'pass' if g.passed else 'not yet'}" + (f" ({g.note})" if g.note else "")]
    for title, points in (("You covered", g.covered), ("You missed", g.missed)):
        if points:
            lines.append(f"{title}:")
            lines += [f"  [{p.n}] {plain(p.text)}" for p in points]
    lines.append("The post's answer ([n+] covered, [n-] missed):")
    lines += ["  " + line if line.strip() else "" for line in highlighted(g, color).splitlines()]
    lines.append(f"Sources ({g.question.post_title}):")
    by_url: dict[str, list[int]] = {}
    for p in g.points:
        by_url.setdefault(p.url, []).append(p.n)
    lines += [f"  {''.join(f'[{n}]' for n in ns)} {url}" for url, ns in by_url.items()] or [f"  {g.question.url}"]
    if g.recorded and g.due_at:
        lines.append(f"  (box {g.box} of {BOXES}; asked again from {_iso(g.due_at)})")
    return "\n".join(lines)


def format_stats(stats: list[PostStats]) -> str:
    head = f"{'post':<52} {'questions':>9} {'tried':>5} {'mastered':>8} {'due':>4} {'attempts':>8} {'mean':>5}  last"
    rows = [head]
    for s in stats:
        mean = f"{s.mean_score:.0f}" if s.mean_score is not None else "-"
        rows.append(f"{s.post_title[:52]:<52} {s.questions:>9} {s.attempted:>5} {s.mastered:>8} {s.due:>4} "
                    f"{s.attempts:>8} {mean:>5}  {s.last_practiced or '-'}")
    total = sum(s.attempts for s in stats)
    rows.append(f"{total} attempts in all; mastered = box {MASTERED_BOX}+ of {BOXES}")
    return "\n".join(rows)


def session(practice: Practice, post: str | None = None, read: Callable[[str], str] = input,
            write: Callable[[str], None] = print, color: bool = False) -> int:
    """The terminal drill: ask, read one line, grade, show, next; an empty line or end of input quits."""
    last: list[str] = []
    write("Answer in your own words on one line; an empty line quits.")
    while True:
        q = practice.next_question(post, exclude=last)
        write(format_question(q))
        while True:
            try:
                answer = read("> ")
            except EOFError:
                write("")
                return 0
            if not answer.strip():
                return 0
            try:
                write(format_grade(practice.grade(q.id, answer), color=color))
                break
            except PracticeError as e:  # too long, no words: say so and let them answer again
                write(f"  {e}")
        last = [q.id]
