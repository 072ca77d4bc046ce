"""Question -> the few post sections that answer it: dense (FAISS) and keyword (FTS5 BM25) search, fused,
grouped into sections, with a calibrated "the posts cover this" decision."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import faiss
import numpy as np

from .coverage import DECISION_SECTIONS, SENTENCE_SECTIONS, CoverageModel, Vocabulary, features
from .embedder import embed, load_embedder
from .fusion import get_fusion, minmax
from .index import Index, LiveIndex
from .settings import Settings
from .text import SHORTHAND, labelled_sentences


@dataclass
class Passage:
    """One post section: the unit of context and of citation."""
    post_guid: str
    post_title: str
    section: str
    url: str
    date: str
    text: str  # the section's text (chunks joined), as shown to the user
    context: str  # the best-matching part of the section, as given to the generator
    score: float  # fused score of the section's best chunk
    dense: float  # cosine similarity of the section's best chunk to the query
    heading: float = 0.0  # cosine similarity of the section's heading to the query
    chunk_ids: list[int] = field(default_factory=list)


@dataclass
class Retrieval:
    query: str
    passages: list[Passage]
    covered: bool
    confidence: float  # the score the "covered" decision is made on
    seconds: float
    query_vector: np.ndarray | None = None  # the embedding of `query`, so answering need not embed it again
    # what the answer's sentences are ranked by: `query_vector`, or for a follow-up mostly its own words
    answer_vector: np.ndarray | None = None
    signals: dict = field(default_factory=dict)  # what the covered decision was made on (rag.coverage)
    joined: bool = False  # searched together with the previous question (a follow-up)
    sketch: str = ""  # the model's one-line sketch answer, when the decision took a second look (rag.answer)


def join_overlapping(texts: list[str]) -> str:
    """Join consecutive chunks of a section, dropping the overlap the splitter repeated."""
    out = texts[0] if texts else ""
    for t in texts[1:]:
        overlap = next((n for n in range(min(len(out), len(t), 400), 10, -1) if out.endswith(t[:n])), 0)
        out += t[overlap:] if overlap else "\n\n" + t
    return out


def _heading(section: str) -> str:
    """The last two levels of a heading path: "Q2. How is missing data handled? > Naive Bayes"."""
    return " > ".join(section.split(" > ")[-2:])


def _heading_variants(section: str) -> list[str]:
    """The heading with its parent, and each question of a heading that asks several
    ("Q21. How does CLIP work? How does InfoNCE align them?"), so a short question can match one."""
    leaf = section.split(" > ")[-1]
    questions = [q.strip() + "?" for q in leaf.split("?")[:-1] if len(q.split()) >= 3]
    return [_heading(section), *questions] if len(questions) > 1 else [_heading(section)]


# headings of the parts of a post that are about the post rather than a topic
ASIDE_HEADINGS = re.compile(r"(introduction|conclusions?|summary|overview|final thoughts|closing thoughts|wrapping up"
                            r"|wrap-up|key takeaways|takeaways|tl;?dr)[.:!]?", re.I)


# a question about a post itself ("what does the optimizers post cover?", "summarize the random forest post"): the
# opening and closing sections are what answers it
ABOUT_A_POST = re.compile(r"\bsummar(?:y|ize|ise)\b"
                          r"|\b(?:post|blog|article)s?\b(?!-)(?:\s+(?:talk|go|is|all))?"
                          r"\s+(?:about|covers?|discuss(?:es)?)\b", re.I)


def is_aside(section: str, post_title: str) -> bool:
    """A post's untitled opening (its section path is the title) or its introduction or conclusion: a heading of
    its own, not a parent of questions ("Introduction > Q1. ..." is a question)."""
    return section.strip() == post_title.strip() or bool(ASIDE_HEADINGS.fullmatch(section.strip()))


def _section_text(members: list, section_no: int, max_words: int) -> str:
    """A section's own text, then its subsections (with their headings) while they fit in max_words:
    an answer often sits in a sub-part of the question whose heading the user's words match."""
    own = join_overlapping([c.text for _, c in members if c.section_no == section_no])
    words = len(own.split())
    parts, current = [own], None
    for _, c in members:
        if c.section_no == section_no:
            continue
        words += len(c.text.split())
        if words > max_words:
            break
        if c.section_no != current:
            current = c.section_no
            parts.append(f"**{c.section.split(' > ')[-1]}**")
        parts.append(c.text)
    return join_overlapping(parts) if len(parts) > 1 else own


_SHORTHAND = re.compile(r"\b(" + "|".join(sorted(map(re.escape, SHORTHAND), key=len, reverse=True)) + r")\b", re.I)
_QUERY_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")


def expand_shorthand(text: str) -> str:
    """ "lgbm on a tiny dataset" -> "lgbm (LightGBM) on a tiny dataset": the original word stays for BM25."""
    return _SHORTHAND.sub(lambda m: f"{m.group(0)} ({SHORTHAND[m.group(0).lower()]})", text)


def spell_out(text: str, vocab: Vocabulary) -> str:
    """Shorthand expanded, and each word or pair of words the posts write differently followed by their
    spelling: "xaiver init for kmeans" -> "xaiver (xavier) init (initialization) for kmeans (k-means)", "rms
    norm" -> "rms norm (rmsnorm)"."""
    text = expand_shorthand(text)
    for a, b, spelled in vocab.joined_pairs(text):
        text = re.sub(rf"\b{a}\s+{b}\b(?! \()", lambda m: f"{m.group(0)} ({spelled})", text, flags=re.I)

    def note(m: re.Match) -> str:
        if text[m.end():m.end() + 2] == " (":  # spelled out already ("init (initialization)")
            return m.group(0)
        spelled = vocab.spelled_out(m.group(0))
        return f"{m.group(0)} ({spelled})" if spelled else m.group(0)

    return _QUERY_WORD.sub(note, text)


class Retriever:
    """Shared by the app, the CLI and the eval: `search(query, k, post=None)`."""

    def __init__(self, settings: Settings, index: Index | LiveIndex | None = None):
        self.settings = settings
        self.live = index if index is not None else LiveIndex(settings)
        self.model = load_embedder(settings.embedder, settings.device, settings.embed_backend)
        faiss.omp_set_num_threads(1)  # one query at a time: threads only add contention (docs/benchmarks.md)
        self._headings: dict[str, np.ndarray] = {}  # heading -> vector, filled lazily
        self._sentences: dict[str, np.ndarray] = {}  # passage sentence -> vector, filled lazily
        self.coverage = CoverageModel.load(settings.coverage_model)
        self._vocabulary: tuple[str, Vocabulary] | None = None  # (generation, its vocabulary)

    @property
    def index(self) -> Index:
        return self.live.get() if isinstance(self.live, LiveIndex) else self.live

    def score_chunks(self, index: Index, query: str, qvec: np.ndarray, post: str | None,
                     fusion: str) -> tuple[dict[int, float], dict[int, float]]:
        """Fused and dense scores of the candidate chunks."""
        n = self.settings.candidates
        if post:  # exact scores over the post's own chunks: an approximate index could miss them
            own = index.post_chunk_ids(post)
            scores = index.vectors.reconstruct_batch(np.array(own, dtype="int64")) @ qvec[0] if own else []
            dense = dict(sorted(zip(own, map(float, scores)), key=lambda kv: -kv[1])[:n])
        else:
            dense = dict(index.dense_search(qvec, n))
        strategy = get_fusion(fusion)
        keyword = dict(index.keyword_search(query, n, post)) if strategy.needs_keyword else {}
        ids = list(dict.fromkeys([*dense, *keyword]))
        # exact cosine for every candidate, so keyword-only hits are comparable on the dense scale too
        cos = dict(zip(ids, (index.vectors.reconstruct_batch(np.array(ids, dtype="int64")) @ qvec[0]).tolist())) \
            if ids else {}
        fused = strategy.fuse(dense, keyword, cos, self.settings)
        return fused, cos

    def search(self, query: str, k: int | None = None, post: str | None = None,
               fusion: str | None = None, context: str | None = None) -> Retrieval:
        """Top-k sections for `query`. `context` (the previous question of a follow-up) is searched
        together with the query and averaged with the query alone, so "and for DBSCAN?" keeps the
        earlier subject without drowning its own words."""
        start = time.perf_counter()
        k = k or self.settings.top_k
        fusion = fusion or self.settings.fusion
        index = self.index
        vocab = self.vocabulary(index)
        query, context = spell_out(query, vocab), context and spell_out(context, vocab)
        queries = [query] if not context else [query, f"{query} {context}"]
        vectors = embed(self.model, queries)
        scored = [self.score_chunks(index, q, v[None], post, fusion) for q, v in zip(queries, vectors)]
        weights = [1.0] if not context else [self.settings.followup_weight, 1 - self.settings.followup_weight]
        fused = {i: sum(w * f.get(i, 0.0) for w, (f, _) in zip(weights, scored)) for f, _ in scored for i in f}
        cos = {i: max(c.get(i, -1.0) for _, c in scored) for _, c in scored for i in c}
        qvec = vectors.mean(axis=0, keepdims=True)
        qvec /= np.linalg.norm(qvec)
        passages = self._sections(index, fused, cos, max(k, DECISION_SECTIONS), qvec, query)
        covered, confidence, signals = self.decide(index, queries[-1], vectors[-1:], passages)
        return Retrieval(queries[-1], passages[:k], covered, confidence, time.perf_counter() - start, vectors[-1:],
                         self._answer_vector(vectors), signals, bool(context))

    def _answer_vector(self, vectors: np.ndarray) -> np.ndarray:
        """The question's vector, or for a follow-up (its own words, then joined) a blend leaning to its own
        words: the joined text chose the section, and ranking its sentences by it too quotes what the previous
        answer said. Not its own words alone: "why?" says nothing by itself."""
        if len(vectors) == 1:
            return vectors
        w = self.settings.followup_sentence_weight
        blend = w * vectors[0] + (1 - w) * vectors[1]
        return (blend / np.linalg.norm(blend))[None].astype(vectors.dtype)

    def decide(self, index: Index, query: str, qvec: np.ndarray,
               passages: list[Passage]) -> tuple[bool, float, dict]:
        """Covered or not, the confidence it was decided on, and the signals (rag.coverage)."""
        sentences = [said for p in passages[:SENTENCE_SECTIONS] for _, said in labelled_sentences(p.text)]
        best_sentence = float((self.sentence_vectors(sentences) @ qvec[0]).max()) if sentences else 0.0
        signals = features(query, passages, self.vocabulary(index), best_sentence)
        if self.coverage is not None:
            p = self.coverage.probability(signals)
            return p >= self.coverage.threshold, p, signals
        # a short question can match its section's heading far better than the section's long text
        confidence = max(signals["dense"], signals["heading"])
        return confidence >= self.settings.refusal_threshold, confidence, signals

    def vocabulary(self, index: Index) -> Vocabulary:
        if self._vocabulary is None or self._vocabulary[0] != index.generation:
            sections: dict[tuple[str, int], list[str]] = {}
            for c in index.all_chunks():
                sections.setdefault((c.post_guid, c.section_no), [c.section]).append(c.text)
            self._vocabulary = (index.generation, Vocabulary([" ".join(t) for t in sections.values()]))
        return self._vocabulary[1]

    def sentence_vectors(self, sentences: list[str]) -> np.ndarray:
        """Vectors of passage sentences, each embedded once: the covered decision and the extractive answer
        both compare the question with the sentences of the same few sections."""
        return self._embedded(self._sentences, sentences)

    def heading_similarity(self, qvec: np.ndarray, headings: list[str]) -> np.ndarray:
        """Cosine of the query with section headings, which in this blog are mostly the interview questions."""
        if any(h not in self._headings for h in headings):
            # every heading of the index in one batch (about a second for this blog), paid by the warm-up
            # query, instead of a few per query that slowed the first hundred questions 3-10x
            everything = [v for _, section in self.index.sections() for v in _heading_variants(section)]
            self._embedded(self._headings, headings + everything)
        return self._embedded(self._headings, headings) @ qvec[0] if headings else np.zeros(0)

    def _embedded(self, cache: dict[str, np.ndarray], texts: list[str]) -> np.ndarray:
        """The vectors of `texts`, embedding in one batch only those `cache` does not hold yet."""
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            cache.update(zip(missing, embed(self.model, missing)))
        return np.array([cache[t] for t in texts])

    def _sections(self, index: Index, fused: dict[int, float], cos: dict[int, float], k: int,
                  qvec: np.ndarray, query: str = "") -> list[Passage]:
        ranked = sorted(fused, key=lambda i: -fused[i])
        chunks = index.chunks(ranked)
        groups: dict[tuple[str, int], list[int]] = {}
        for i in ranked:
            groups.setdefault((chunks[i].post_guid, chunks[i].section_no), []).append(i)
        keys = list(groups)
        heads = np.array([self.heading_similarity(qvec, _heading_variants(chunks[groups[key][0]].section)).max()
                          for key in keys])
        w = self.settings.heading_weight
        top = minmax({key: fused[ids[0]] for key, ids in groups.items()})
        heading = dict(zip(keys, heads.tolist()))
        penalty = 0.0 if ABOUT_A_POST.search(query) else self.settings.aside_penalty
        aside = {key: is_aside(chunks[groups[key][0]].section, chunks[groups[key][0]].post_title) for key in keys}
        score = {key: top[key] + w * heading[key] - penalty * aside[key] for key in keys}
        best = {key: groups[key] for key in sorted(keys, key=lambda key: -score[key])[:k]}
        dates = index.post_dates()
        passages = []
        for (guid, section_no), hit_ids in best.items():
            members = index.section_chunks(guid, section_no)
            top = chunks[hit_ids[0]]
            hits = set(hit_ids)
            passages.append(Passage(
                post_guid=guid, post_title=top.post_title, section=top.section, url=top.url,
                date=dates.get(guid, ""), text=_section_text(members, section_no, self.settings.section_words),
                context=join_overlapping([c.text for i, c in members if i in hits]),
                score=score[(guid, section_no)], dense=max(cos.get(i, 0.0) for i in hit_ids),
                heading=heading[(guid, section_no)], chunk_ids=hit_ids))
        return passages
