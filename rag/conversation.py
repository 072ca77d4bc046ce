"""What the user typed: a question checked and bounded, earlier turns validated, and the decision whether a
question is a follow-up of the previous one. Shared by the CLI, the app and the eval; no heavy imports."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import RagError
from .text import content_words, words

# Openings that only make sense after another question. "why", "so", "then", "or" and "but" open complete
# questions just as often: counting them joined many standalone dev questions to an unrelated earlier turn
# (docs/eval.md, "after an unrelated turn").
FOLLOWUP_START = re.compile(r"^(and|also|what about|how about|what if|same for|and for|and what|and how|and why)\b",
                            re.I)
# words that carry a conversation on: a question with one may depend on the answer before it, and is joined to it
# only when alone it is not covered (they open complete questions too, so they are no FOLLOWUP_START)
GOES_ON = re.compile(r"^\W*(?:(?:ok|okay)\W+)?(so|then|but)\b|\b(though|tho|then|too|instead)\W*$", re.I)
# "why?", "how so?", "why not?", "how come?": a question that is only that asks about the answer before it
# ("who are you?" has no content word either, and is no follow-up)
BARE_WHY = re.compile(r"^\W*(why|how)(\s+(so|not|exactly|come|then))?\W*$", re.I)
# a request for more of the answer before, or for an example of it: answered from the same sections, leaving out
# what was already said ("tell me more" searched on its own was refused)
MORE = re.compile(r"^\W*(?:tell me more|more|go on|continue|keep going|elaborate|say more|more (?:details?|info)|"
                  r"anything else|what else|(?:can|could|would) you (?:elaborate|expand|say more|go deeper|"
                  r"explain more|tell me more)(?: on (?:that|it|this))?)\W*(?:please\W*)?$", re.I)
EXAMPLE = re.compile(r"^\W*(?:(?:(?:can|could) you )?(?:give|show)(?: me)?(?: an?| some| another)? examples?"
                     r"(?: of (?:it|that|this|those|them))?|(?:any |an |another )?examples?|for (?:example|instance))"
                     r"\W*(?:please\W*)?$", re.I)  # not "give me an example of a proper scoring rule": a question
# a request for the answer before in short ("tl;dr", "summarize that"): its best sentences again, fewer of them
SHORTER = re.compile(r"^\W*(?:(?:can|could) you\s+)?(?:summari[sz]e|sum (?:it |that )?up|tl\s?;?\s?dr|shorter|"
                     r"in short|short version|briefly|make it shorter|in a nutshell|(?:give me )?the gist)"
                     r"(?:\s+(?:that|it|this|please|for me))*\W*$", re.I)
PRONOUNS = re.compile(r"\b(it|its|it's|this|that|these|those|they|them|their|he|she|one|ones)\b", re.I)
# where a question's second clause starts: a pronoun after it refers inside the question ("what is the unit of
# prediction and why does it matter?"), not to the turn before
_SECOND_CLAUSE = re.compile(r"\band\b|[,;:—–]")
# what people type to be polite or to acknowledge an answer: not a question about the previous turn (joined to
# it, "thanks!" found the closing "Thanks for reading" section of the post just discussed)
SOCIAL = frozenset("thanks thank thx ty ok okay cool nice great awesome perfect lol haha hi hello hey bye got sure "
                   "yes yeah yep no nope wow".split())
GREETINGS = frozenset("hi hello hey".split())
# the polite words a message opens with, before what it asks ("ok and gmm?", "thanks! what about DBSCAN")
POLITE_OPENING = re.compile(r"^\W*(?:(?:%s)\b\W*)+" % "|".join(sorted(SOCIAL | {"thank you", "got it"}, key=len,
                                                                           reverse=True)), re.I)
# a message that asks something, even when it opens politely ("thanks! and how about DBSCAN")
ASKING = re.compile(r"\?|\b(what|whats|why|how|when|which|who|where|can|could|should|would|does|do|is|are)\b", re.I)
# the most content words a question with a pronoun may have and still be taken for a possible follow-up; on dev
# five kept every follow-up's figures and joined fewer standalone questions to an unrelated turn (docs/eval.md)
PRONOUN_WORDS = 5
MAX_K = 20  # sections a question may ask for: more only slows the answer and floods the Sources panel


def has_pronoun(question: str) -> bool:
    """A pronoun in the question's first clause, which may point to an earlier turn."""
    stripped = question.strip()
    m = _SECOND_CLAUSE.search(stripped, 1)
    return bool(PRONOUNS.search(stripped[:m.start()] if m else stripped))


class QuestionError(RagError):
    """The question (or its history, or k) cannot be answered as given; the message says why."""


def clean(text: str) -> str:
    """One line of text; lone surrogates (undecodable bytes in argv, "\\ud800" in JSON) would crash tokenizers."""
    return " ".join((text or "").encode("utf-8", "ignore").decode("utf-8").split())


def check_question(question: str, max_chars: int) -> str:
    if not isinstance(question, str):
        raise QuestionError("The question must be text.")
    text = clean(question)
    if not text:
        raise QuestionError("Please type a question.")
    if len(text) > max_chars:
        raise QuestionError(f"The question is {len(text):,} characters long; please keep it under {max_chars:,}.")
    return text


def check_history(history, max_chars: int, where: str = "history") -> list[tuple[str, str]]:
    """Earlier turns as a list of (question, answer) pairs of strings. Each earlier question obeys the same
    length limit as a new one; answers are clipped (only their start matters for a follow-up)."""
    if history is None:
        return []
    if not isinstance(history, (list, tuple)) or not all(
            isinstance(t, (list, tuple)) and len(t) == 2 and all(isinstance(x, str) for x in t) for t in history):
        raise QuestionError(f"{where} must be a JSON list of [question, answer] pairs of strings")
    turns = []
    for n, (q, a) in enumerate(history, 1):
        q = clean(q)
        if len(q) > max_chars:
            raise QuestionError(f"{where}: turn {n}'s question is {len(q):,} characters long; "
                                f"the limit is {max_chars:,}")
        turns.append((q, clean(a)[: 4 * max_chars]))
    return turns


def check_k(k, default: int) -> int:
    if k in (None, 0):
        return default
    if isinstance(k, float) and k.is_integer():  # a JSON or Gradio number
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise QuestionError(f"k (sections to retrieve) must be a whole number from 1 to {MAX_K}, not {k!r}")
    return k


@dataclass(frozen=True)
class FollowUp:
    previous: str | None  # the earlier question this one may depend on
    explicit: bool  # it starts like a follow-up ("and for DBSCAN?", "what about ..."): always joined to it
    more: bool = False  # it asks for more of the answer before ("tell me more"): the previous question again
    example: bool = False  # it asks for an example of it ("can you give an example?"), also a request for more
    said: str = ""  # for "more" or an example: the answers given since `previous`, not to be quoted again
    brief: bool = False  # it asks for the answer before in short ("tl;dr"): `previous` again, fewer sentences


def follow_up(question: str, history: list[tuple[str, str]]) -> FollowUp | None:
    """Whether a question may depend on the previous turn. A question that starts like a follow-up does; one
    with three content words or fewer may ("how do I pick k for k-means?" is short but complete), and so may one
    with a pronoun and at most PRONOUN_WORDS of them ("is it expensive?", but not "my model looks great offline
    but acts weird in prod, what's that called": a question that long says what it is about). The chat searches
    it alone first and joins it to the previous question only if alone it is not covered; a bare "why?" or
    "how so?" (BARE_WHY) can only be one. "thanks!" or "ok cool" is never a follow-up, and a follow-up
    refers to the last question that was more than that."""
    previous = _subject(history)
    if previous is None:
        return None
    if wants_more(question):
        example = bool(EXAMPLE.match(_unpolite(question)))
        return FollowUp(previous, True, more=True, example=example, said=_said(history))
    if wants_shorter(question):
        return FollowUp(previous, True, more=True, brief=True)
    if _asks_on(question):
        return FollowUp(previous, True)
    if social(question):
        return None
    return FollowUp(previous, False) if _may_follow(question) else None


def _subject(history: list[tuple[str, str]]) -> str | None:
    """The question a follow-up refers to: the last one that was more than polite, together with the one
    before it when it pointed back to that one ("and its weaknesses?" after "is it slow on big data?"
    after "how does DBSCAN work?" is about DBSCAN). One step back only: a long chat of short questions would
    otherwise drag every earlier subject along."""
    asked = [q for q, _ in history if not _about_the_answer(q)]
    if not asked:
        return None
    if len(asked) > 1 and _points_back(asked[-1]):
        return f"{asked[-1]} {asked[-2]}"
    return asked[-1]


def _unpolite(question: str) -> str:
    """The question without the polite words it opens with ("ok and gmm" -> "and gmm")."""
    return POLITE_OPENING.sub("", question.strip())


def wants_more(question: str) -> bool:
    """Asks for more of the answer before, or an example of it ("tell me more", "ok, give me an example")."""
    asked = _unpolite(question)
    return bool(MORE.match(asked) or EXAMPLE.match(asked))


def wants_shorter(question: str) -> bool:
    """Asks for the answer before in short ("tl;dr", "ok, summarize that")."""
    return bool(SHORTER.match(_unpolite(question)))


def _about_the_answer(question: str) -> bool:
    """Polite, or about the answer before ("tell me more", "tl;dr"): no subject of its own for a follow-up."""
    return social(question) or wants_more(question) or wants_shorter(question)


def _said(history: list[tuple[str, str]]) -> str:
    """The answers of the turns since the last real question (a second "tell me more" skips both answers)."""
    said = []
    for q, a in reversed(history):
        said.append(a)
        if not _about_the_answer(q):
            break
    return " ".join(reversed(said))


def _asks_on(question: str) -> bool:
    """Can only be a follow-up: it opens like one ("and for DBSCAN?", "ok and gmm") or is a bare "why?"."""
    asked = _unpolite(question)  # "ok and gmm" asks on as "and gmm" does
    return bool(FOLLOWUP_START.match(asked) or BARE_WHY.match(asked))


def _points_back(question: str) -> bool:
    """Refers to an earlier turn in so many words: it asks on (_asks_on), or has a pronoun in a short question (a
    short question alone may be complete: "how do I pick k for k-means?")."""
    return _asks_on(question) or (len(content_words(question)) <= PRONOUN_WORDS and has_pronoun(question))


def goes_on(question: str) -> bool:
    """Worded to go on from the answer before: "so which init should i use then?", "but why though?"."""
    return bool(GOES_ON.search(question))


def opens_on(question: str) -> bool:
    """Opens by going on from the answer before: "so which init should i use then?", "but is it slower?"."""
    m = GOES_ON.search(question)
    return bool(m and m.group(1))


def _may_follow(question: str) -> bool:
    """Worded like a possible follow-up: it points back, it goes on from the answer before ("so i can skip a
    validation set?", "how's fan-in computed for conv layers though?"), or it has three content words or fewer."""
    return _points_back(question) or goes_on(question) or len(content_words(question)) <= 3


def social(text: str) -> bool:
    """Only polite words ("thanks!", "ok cool"), or a polite opening and no question ("thanks, that helps"): no
    question, and no subject for a follow-up to refer to (after "how does DBSCAN work?" and "thanks, that
    helps", "is it slow?" is about DBSCAN)."""
    if wants_more(text) or wants_shorter(text):  # "thanks! tell me more", "ok tl;dr"
        return False
    own = content_words(text)
    if own and own <= SOCIAL:
        return True
    first = words(text)[:1]
    return bool(first) and first[0] in SOCIAL and not ASKING.search(text) and not _asks_on(text)


def polite_reply(text: str) -> str:
    """What the chat says to a polite message instead of searching the posts for it."""
    first = words(text)[:1]
    if first and first[0] in GREETINGS:
        return "Hi! Ask me any interview question about the posts."
    return "Glad to help. Ask me anything else about the posts."
