"""Question (+ conversation) -> a short answer grounded in the posts, with citations, or an honest refusal.

The flow is three public steps, so the app, the CLI, the eval and the benchmarks all see the same thing:
    plan = chat.plan(question, history, post=..., mode=..., k=...)   # checked question, standalone query
    retrieval = chat.retrieve(plan)                                   # sections + the covered decision
    for answer in chat.stream_plan(plan, retrieval): ...              # the growing Answer
`chat.stream(question, ...)` and `chat.ask(question, ...)` do all three.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from typing import Iterator

from .catalog import PostOutline, asks_by_number, catalog_reply, numbered_question, post_outlines
from .conversation import (FollowUp, check_history, check_k, check_question, follow_up, has_pronoun, opens_on,
                           polite_reply, social)
from .coverage import DECISION_SECTIONS
from .errors import RagError
from .grounding import best_support, supported
from .modes import Pending, get_mode, trimmed
from .retrieve import Passage, Retrieval, Retriever
from .settings import Settings
from .text import cited_sentences, stems

log = logging.getLogger(__name__)

NOT_COVERED = "The posts don't cover this."
# the second look's sketch: the model's own one-line answer, used only as search words (Chat.second_look)
SKETCH_PROMPT = ("You are an expert in machine learning. Answer the interview question in one short sentence, "
                 "using the standard technical terms.")
SKETCH_TOKENS = 40


@dataclass
class Citation:
    n: int
    post_title: str
    url: str
    section: str
    text: str
    date: str = ""
    supporting: list[str] = field(default_factory=list)  # answer sentences this passage supports


@dataclass(frozen=True)
class Plan:
    """How a question will be answered, before anything is searched."""
    question: str  # as typed, checked and cleaned
    previous: str | None  # the earlier question it may depend on; None for a standalone question
    explicit: bool  # it starts like a follow-up, so it is always searched together with `previous`
    post: str | None  # search only this post (guid)
    k: int  # sections to retrieve
    fusion: str
    mode: str
    more: bool = False  # it asks for more of the previous answer ("tell me more"): `previous` is searched as asked
    said: str = ""  # what the previous answers said, which this one does not repeat ("tell me more", an example)
    example: bool = False  # it asks for an example ("can you give an example?"): sentences that give one first
    brief: bool = False  # it asks for the answer before in short ("tl;dr"): the best two sentences


@dataclass
class Answer:
    question: str
    query: str  # the standalone question used for retrieval
    answer: str = ""
    refused: bool = False
    citations: list[Citation] = field(default_factory=list)
    passages: list[Passage] = field(default_factory=list)  # retrieved, in rank order
    suggestions: list[str] = field(default_factory=list)  # nearest covered sections, for a refusal
    timings: dict = field(default_factory=dict)
    mode: str = ""
    generator: str | None = None  # the model that wrote the answer; None when no model did
    draft: str = ""  # what the model wrote before its sentences were checked (generate mode)
    pending: str = ""  # the sentence the model is still writing, not checked yet (shown apart, then replaced)
    done: bool = False

    def to_json(self) -> dict:
        return {"answer": self.answer, "refused": self.refused,
                "citations": [{k: v for k, v in asdict(c).items() if k in ("n", "post_title", "url", "section",
                                                                               "text")} for c in self.citations],
                "timings": {k: round(v, 4) for k, v in self.timings.items()},
                "query": self.query, "mode": self.mode, "generator": self.generator, "draft": self.draft or None,
                "suggestions": self.suggestions,
                "retrieved": [{"post_title": p.post_title, "section": p.section, "text": p.text}
                              for p in self.passages]}


class Chat:
    """Keeps the models loaded; see the module docstring for the three steps."""

    def __init__(self, settings: Settings, retriever: Retriever | None = None):
        self.settings = settings
        self.retriever = retriever or Retriever(settings)
        self._generator = None
        # greedy decoding gives a query the same sketch every time: a repeat (the eval, a regenerate) is free
        self._sketch = functools.lru_cache(maxsize=256)(self._write_sketch)
        self._outlines: tuple[str, list[PostOutline]] = ("", [])

    def outlines(self) -> list[PostOutline]:
        """The posts of the index being served, with their questions (rebuilt when `rag index` switches it)."""
        index = self.retriever.index
        if self._outlines[0] != index.generation:
            self._outlines = (index.generation, post_outlines(index))
        return self._outlines[1]

    @property
    def generator(self):
        if self._generator is None:
            from .generate import load_generator

            s = self.settings
            self._generator = load_generator(s.generator, dtype=s.generator_dtype, threads=s.generator_threads or None,
                                             serialize=s.generator_serial)
        return self._generator

    @property
    def generator_ready(self) -> bool:
        return self._generator is not None

    def load_generator_in_background(self) -> threading.Thread:
        """Start loading the generator now (the app does at start-up), so the first question does not wait
        for it silently; a load error is logged and raised again by the first answer that needs the model."""
        def load():
            try:
                _ = self.generator
            except Exception:  # noqa: BLE001 - reported where the model is next needed
                log.exception("loading the generator %s failed", self.settings.generator)

        thread = threading.Thread(target=load, name="load-generator", daemon=True)
        thread.start()
        return thread

    def plan(self, question: str, history=None, post: str | None = None, mode: str | None = None,
             k: int | None = None, fusion: str | None = None) -> Plan:
        """Check the question, its history and options (QuestionError says what is wrong) and decide
        whether it depends on the previous turn."""
        max_chars = self.settings.max_question_chars
        question = check_question(question, max_chars)
        turns = check_history(history, max_chars)
        mode = get_mode(mode or self.settings.answer_mode).name
        follow = follow_up(question, turns) or FollowUp(None, False)  # a standalone question follows nothing
        previous, post = follow.previous, post or None
        if previous and asks_by_number(previous):  # after "what's Q3 in ...": that question, as the post asks it
            numbered = numbered_question(previous, self.outlines(), post)
            previous = numbered[1] if numbered else previous
        return Plan(question, previous, follow.explicit, post, check_k(k, self.settings.top_k),
                    fusion or self.settings.fusion, mode, follow.more, follow.said, follow.example, follow.brief)

    def retrieve(self, plan: Plan, k: int | None = None, fusion: str | None = None) -> Retrieval:
        """The plan's search (`search`), and a second look when the posts seem not to cover it but retrieval is
        unsure (`second_look`)."""
        retrieval = self.search(plan, k, fusion)
        if retrieval.covered or not self.unsure(retrieval):
            return retrieval
        return self.second_look(plan, retrieval, k, fusion)

    @property
    def takes_second_looks(self) -> bool:
        """The second look is on, and a coverage model gives the probability its floor is set in."""
        return self.settings.second_look and self.retriever.coverage is not None

    def unsure(self, retrieval: Retrieval) -> bool:
        # a word the posts never use makes a question no near miss
        return (self.takes_second_looks and bool(retrieval.passages)
                and retrieval.confidence >= self.settings.second_look_floor
                and not retrieval.signals.get("rare_unknown"))

    def second_look(self, plan: Plan, retrieval: Retrieval, k: int | None = None,
                    fusion: str | None = None) -> Retrieval:
        """HyDE for an unsure refusal (`look_again`): the first look stands unless the second finds the question
        covered. Casual phrasing ("knn with thousands of features = bad? why tho") is where the first look
        fails; docs/eval.md has the measurements."""
        start = time.perf_counter()
        try:
            again = self.look_again(plan, retrieval, k, fusion)
        except RagError as e:  # no model here: the first look stands
            log.warning("second look skipped: %s", e)
            return retrieval
        seconds = retrieval.seconds + time.perf_counter() - start
        if not again.covered:
            return replace(retrieval, seconds=seconds, sketch=again.sketch)
        return replace(again, seconds=seconds)

    def look_again(self, plan: Plan, retrieval: Retrieval, k: int | None = None,
                   fusion: str | None = None) -> Retrieval:
        """The model answers the question in one sentence from what it knows, the question plus that sketch is
        searched again, and the covered decision is made again on the question with the sections found. The
        sketch only steers the search: an answer is still made of the posts' sentences, picked for the
        question as asked. `rag calibrate` also calls this, to fit the threshold the two looks share."""
        sketch = self._sketch(retrieval.query)
        k, fusion = k or plan.k, fusion or plan.fusion
        # decided on as many sections as the first look was, whatever k asks for (DECISION_SECTIONS)
        again = self.retriever.search(f"{retrieval.query} {sketch}", max(k, DECISION_SECTIONS), post=plan.post,
                                      fusion=fusion)
        covered, confidence, signals = self.retriever.decide(self.retriever.index, retrieval.query,
                                                             retrieval.query_vector, again.passages)
        return replace(again, query=retrieval.query, query_vector=retrieval.query_vector, covered=covered,
                       confidence=confidence, signals=signals, joined=retrieval.joined, sketch=sketch,
                       passages=again.passages[:k])

    def _write_sketch(self, query: str) -> str:
        messages = [{"role": "system", "content": SKETCH_PROMPT}, {"role": "user", "content": query}]
        return "".join(self.generator.generate(messages, SKETCH_TOKENS, stop_strings=("\n",))).strip()

    def search(self, plan: Plan, k: int | None = None, fusion: str | None = None) -> Retrieval:
        """The plan's search; the eval repeats it with another k or fusion. A question that may be a
        follow-up is searched alone and joined to the previous question; it is taken as joined only if it
        names nothing the posts never mention ("how do I bake sourdough?" after an optimizer question stays
        alone), it has a pronoun or is not covered alone ("why not just init everything to zero?" after a Xavier
        question stays alone), it has a pronoun or joined its best section has one of its words ("tell me a
        joke" stays alone), joined it is likelier covered than alone (by `followup_margin`), and, without a pronoun,
        its best section is one of the previous question's (`_near_previous`), so a complete question is not mixed
        with an unrelated previous one. An explicit follow-up is covered if it is covered
        joined or, failing that, alone. Which earlier question counts as "previous" is rag.conversation's
        decision."""
        k, fusion = k or plan.k, fusion or plan.fusion
        if not plan.previous:
            return self.retriever.search(plan.question, k, post=plan.post, fusion=fusion)
        if plan.more:  # "tell me more": the question before, asked again (the answer leaves out what was said)
            return replace(self.retriever.search(plan.previous, k, post=plan.post, fusion=fusion), joined=True)
        if plan.explicit:  # "and what are DBSCAN's weaknesses?": joined first, alone if joined it is not covered
            joined = self.retriever.search(plan.question, k, post=plan.post, fusion=fusion, context=plan.previous)
            if joined.covered:
                return joined
            alone = self.retriever.search(plan.question, k, post=plan.post, fusion=fusion)
            return alone if alone.covered else joined
        alone = self.retriever.search(plan.question, k, post=plan.post, fusion=fusion)
        if alone.signals.get("rare_unknown"):
            return alone  # it names something the posts never mention: not a follow-up
        if alone.covered and not (has_pronoun(plan.question) or opens_on(plan.question)):
            # short, but nothing points back and the posts answer it as asked: "why not just init everything to
            # zero" after a Xavier question has its own section, and joined it was answered about Xavier
            return alone
        joined = self.retriever.search(plan.question, k, post=plan.post, fusion=fusion, context=plan.previous)
        # joined, "tell me a joke" or "group norm vs instance norm?" find the previous question's section; a
        # follow-up shares at least one word with the section it is about ("is that expensive?") or points back
        # with a pronoun ("what are its weaknesses?" after DBSCAN, whose section never says "weakness"). A vague
        # follow-up can also look covered alone, in some other section: the likelier of the two decides, and
        # a tie goes to the question as asked ("why is my random forest overfitting?" after a bagging question
        # was joined at 0.94 vs 0.94 and answered about bagging).
        pronoun = has_pronoun(plan.question)
        if (pronoun or stems(plan.question) & _section_stems(joined)) \
                and joined.confidence > alone.confidence + self.settings.followup_margin \
                and (pronoun or self._near_previous(joined, plan, fusion)):
            return joined
        return alone

    def _near_previous(self, joined: Retrieval, plan: Plan, fusion: str) -> bool:
        """Whether joined, the question is answered from one of the previous question's own best sections. A
        follow-up without a pronoun asks on about what was just answered; a complete question mixed with an
        unrelated turn can still gain confidence from that turn's words ("how do I pick k for k-means?" after a
        positional-encoding question). With a pronoun the user points back, and may move on: "how is it different
        from random forest?" after "explain gradient boosting" is about a section neither top five holds."""
        if not joined.passages:
            return False
        before = self.retriever.search(plan.previous, DECISION_SECTIONS, post=plan.post, fusion=fusion)
        top = joined.passages[0]
        return (top.post_guid, top.section) in {(p.post_guid, p.section) for p in before.passages}

    def ask(self, question: str, history=None, **kw) -> Answer:
        answer = None
        for answer in self.stream(question, history, **kw):
            pass
        return answer

    def stream(self, question: str, history=None, **kw) -> Iterator[Answer]:
        start = time.perf_counter()
        plan = self.plan(question, history, **kw)
        yield from self.stream_plan(plan, start=start)

    def stream_plan(self, plan: Plan, retrieval: Retrieval | None = None,
                    start: float | None = None) -> Iterator[Answer]:
        """Yields the growing Answer; the last one has done=True and its citations checked."""
        start = start or time.perf_counter()
        lead, asked = "", plan.question  # the answer keeps the question as typed, whatever it is searched as
        if retrieval is None:
            direct = self._without_search(plan, start)
            if direct is not None:
                yield direct
                return
            numbered = numbered_question(plan.question, self.outlines(), plan.post)
            if numbered:  # "explain Q7 of the random forest post": that question of that post, in its own words
                outline, heading = numbered
                plan = replace(plan, question=heading, post=outline.guid, previous=None, explicit=False, more=False,
                               said="", example=False, brief=False)
                lead = f"*{heading}*\n\n"
        retrieval = retrieval or self.retrieve(plan)
        mode = get_mode(plan.mode)
        answer = Answer(asked, retrieval.query, passages=retrieval.passages, mode=mode.name)
        answer.timings["retrieve"] = retrieval.seconds
        if not retrieval.covered or not retrieval.passages:
            if retrieval.joined:  # the nearest sections for the question asked, not for the one before it
                retrieval = self.retriever.search(plan.question, plan.k, post=plan.post, fusion=plan.fusion)
            yield self._refuse(answer, retrieval, start)
            return
        context = self._context(retrieval.passages)
        if mode.uses_generator:
            answer.generator = self.generator.name
        answer.answer = lead  # the question a numbered one stands for, before its answer
        with closing(mode.write(self, plan, retrieval, context)) as pieces:  # a consumer that leaves stops it
            for piece in pieces:
                answer.timings.setdefault("first_token", time.perf_counter() - start)
                if isinstance(piece, Pending):
                    answer.pending, answer.draft = piece.text, piece.draft
                else:
                    answer.answer += piece
                yield answer
        if mode.uses_generator and not answer.answer[len(lead):].strip():
            # nothing the model wrote passed the check: the extractive answer, which no model wrote
            answer.answer = lead + "".join(get_mode("extractive").write(self, plan, retrieval, context))
            answer.generator = None
        self._finish(answer, context, start)
        yield answer

    # -- pieces ---------------------------------------------------------------------------------

    def _without_search(self, plan: Plan, start: float) -> Answer | None:
        """The reply to a message that asks nothing of the posts' sections: a polite one ("thanks, that helps"),
        or one about the posts themselves ("what topics do you cover?", "summarize the clustering post")."""
        answer = Answer(plan.question, plan.question, mode=plan.mode)
        if social(plan.question):
            return self._reply_politely(answer, start)
        if plan.more:  # "tell me more", "tl;dr": about the answer before, not about the posts
            return None
        reply = catalog_reply(plan.question, self.outlines(), plan.post, plan.previous)
        return self._describe_posts(answer, reply, start) if reply else None

    def _context(self, passages: list[Passage]) -> list[Passage]:
        """The passages for the answer: the best few that fit the context budget (in generator-ish
        tokens, estimated as words * 1.4 so the extractive mode needs no generator)."""
        budget, chosen = self.settings.context_tokens, []
        for p in passages[:3]:
            cost = int(len(p.context.split()) * 1.4)
            if chosen and cost > budget:
                break
            chosen.append(p if cost <= budget else trimmed(p, budget))
            budget -= cost
        return chosen

    def _finish(self, answer: Answer, context: list[Passage], start: float) -> None:
        """Cite each sentence: keep its [n] when the passage supports it, else the best supporting passage."""
        answer.answer = answer.answer.strip()
        if not answer.answer or NOT_COVERED.lower() in answer.answer.lower():
            answer.refused = True
            answer.answer = NOT_COVERED
            answer.suggestions = _suggestions(answer.passages)
        texts = [p.context for p in context]
        cited: dict[int, list[str]] = {}
        for sentence, marks in cited_sentences(answer.answer):
            n, _ = best_support(sentence, texts)
            for m in [x - 1 for x in marks if 0 < x <= len(texts)] or ([n] if n is not None else []):
                if supported(sentence, texts[m]):
                    cited.setdefault(m, []).append(sentence)
        if not answer.refused and not re.search(r"\[\d+\]", answer.answer) and cited:
            answer.answer += " " + " ".join(f"[{m + 1}]" for m in sorted(cited))
        answer.citations = [Citation(m + 1, context[m].post_title, context[m].url, context[m].section,
                                     context[m].text, context[m].date, sents) for m, sents in sorted(cited.items())]
        answer.timings["total"] = time.perf_counter() - start
        answer.timings.setdefault("first_token", answer.timings["total"])
        answer.done = True

    def _reply_politely(self, answer: Answer, start: float) -> Answer:
        """A polite message gets a polite line, not "The posts don't cover this." (no sources; still a refusal
        to the eval and the API: no section answers it)."""
        answer.refused = True
        answer.answer = polite_reply(answer.question)
        answer.timings["retrieve"] = 0.0
        answer.timings["first_token"] = answer.timings["total"] = time.perf_counter() - start
        answer.done = True
        return answer

    def _describe_posts(self, answer: Answer, reply, start: float) -> Answer:
        """The posts' titles or one post's questions, each post cited by its opening section (no model)."""
        answer.answer = reply.text
        answer.citations = [Citation(n, o.title, o.url, o.opening, o.opening_text, o.date)
                            for n, o in enumerate(reply.cited, 1)]
        answer.timings["retrieve"] = 0.0
        answer.timings["first_token"] = answer.timings["total"] = time.perf_counter() - start
        answer.done = True
        return answer

    def _refuse(self, answer: Answer, retrieval: Retrieval, start: float) -> Answer:
        """The fixed refusal, no model. The nearest sections are offered only when they are near at all: for
        "how do I bake sourdough?" a fraud-detection section is no suggestion."""
        answer.refused = True
        answer.answer = NOT_COVERED
        near = max(retrieval.signals.get("dense", 0.0), retrieval.signals.get("heading", 0.0))
        answer.suggestions = _suggestions(retrieval.passages) if near >= self.settings.suggest_similarity else []
        answer.timings["first_token"] = answer.timings["total"] = time.perf_counter() - start
        answer.done = True
        return answer


def _section_stems(retrieval: Retrieval) -> set[str]:
    top = retrieval.passages[0] if retrieval.passages else None
    return stems(f"{top.section} {top.text}") if top else set()


def _suggestions(passages: list[Passage]) -> list[str]:
    """Headings of the nearest sections, phrased as questions one can click."""
    out = []
    for p in passages[:3]:
        path = [re.sub(r"^Q\d+[.:]\s*", "", h).strip().rstrip(":").strip() for h in p.section.split(" > ")]
        # a heading that is not a question ("LightGBM") is asked together with its parent question
        heading = f"{path[-1]}: {path[-2]}" if len(path) > 1 and path[-2].endswith("?") else path[-1]
        if heading and heading not in out:
            out.append(heading)
    return out
