"""What the posts are: their titles and interview questions, for a question about the posts themselves.

"what topics do you cover?" or "summarize the random forest post" asks for no section's content, so searching
the sections for it finds nothing to answer with (both were refused). Such a question is answered from the
index's own list of posts and their headings instead:

    outlines = post_outlines(index)                 # every post, its link, opening text and questions
    reply = catalog_reply(question, outlines, post)  # a Reply, or None: search the posts as usual

A question that names a post *and* something else ("does the random forest post cover boosting?") is about
content, and is searched as usual.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .practice import is_question_heading
from .retrieve import is_aside
from .text import SHORTHAND, content_words, stem, stems

# the most questions one post's outline lists: more is a page, not a chat answer (the post's link has the rest)
OUTLINE_QUESTIONS = 12
# a closing line the posts give a heading of its own ("THANKS FOR READING…"): no part of the post's outline
_CLOSING = re.compile(r"\s*thanks for reading\W*$", re.I)
# words that leave a heading to its post ("How does DPO fix this?", "How does the algorithm handle missing
# data?"): such a question is no example to show apart from it
VAGUE = re.compile(r"\b(?:we|our|us|you|your|it|its|this|these|they|the (?:algorithm|model|method|approach|"
                   r"problem|system|data|above|following))\b", re.I)
# the most posts the overview lists (a feed of hundreds would fill the chat); the newest first
OVERVIEW_POSTS = 20
# the longest question an overview quotes as a post's example (a longer one makes the list hard to scan)
EXAMPLE_CHARS = 70

# a question about the collection as a whole, and nothing else (anchored at both ends: "what do you know
# about dropout" asks about dropout)
_ABOUT_THE_POSTS = re.compile(r"""^(?:please\s+)?(?:
      (?:so\s+)?what\s+(?:topics|subjects|posts|articles|areas|questions|things|stuff
                          |kind\s+of\s+(?:questions|topics|things))
          \s+(?:do|can|does)\s+(?:you|the\s+(?:posts|blog|bot))
          \s+(?:cover|know|have|answer|handle|discuss|include)(?:\s+about)?
    | what\s+(?:can|could|should)\s+i\s+ask(?:\s+you)?(?:\s+about)?
    | what\s+(?:can|do)\s+you\s+(?:do|cover|know|answer|help(?:\s+me)?\s+with)
    | what\s+(?:do|does)\s+(?:the\s+)?(?:posts|blog|handbook)\s+cover
    | what\s+is\s+(?:covered|in\s+the\s+(?:posts|blog|index))
    | (?:which|what)\s+(?:posts|articles|topics)\s+(?:are\s+there|do\s+you\s+have|are\s+(?:available|indexed|covered))
    | (?:list|show)(?:\s+me)?\s+(?:all\s+)?(?:the\s+|your\s+)?(?:posts|topics|articles)
    | what\s+is\s+(?:this|the)\s+(?:blog|bot|chatbot|handbook|site|app)\s+(?:about|for)
    | help
    )$""", re.X)
# a request to be asked questions: practice mode does that, and grades the answers
_QUIZ = re.compile(r"^(?:(?:can|could) you\s+|please\s+|let's\s+)?(?:quiz|test|drill|grill)\s+me"
                   r"(?:\s+(?:on|about)\s+(?P<topic>.+))?$"
                   r"|^(?:(?:can|could) you\s+)?(?:ask|give)\s+me\s+(?:an?\s+|some\s+)?(?:interview\s+|practice\s+)?"
                   r"questions?(?:\s+(?:on|about)\s+(?P<topic2>.+))?$")
# which interview questions there are on a topic ("what questions do interviewers ask about random forests")
_QUESTIONS_ON = re.compile(r"^(?:so\s+)?what\s+(?:kind\s+of\s+|sort\s+of\s+|typical\s+|common\s+)?(?:interview\s+)?"
                           r"questions\s+(?:do|does|would|will|should|might|are|can|could|get|is)\b.*?"
                           r"\b(?:about|on|for|in)\s+(?:the\s+)?(?P<topic>[^?]+?)(?:\s+interviews?)?$")
# how the posts number their questions ("Q3:", "Q7.", "8.")
_NUMBER = re.compile(r"^\s*(?:Q\s?(\d+)|(\d+))\s*[.:)]\s*")
# a question asked by its number in a post: "q7", "question 7", "#7"
_ASKED_NUMBER = re.compile(r"(?:\bq\s?|\bquestion\s+(?:no\.?\s*|number\s+)?|#)(\d{1,3})\b")
# "and the random forest one?", "what about rf": another post, after a question about one
_ANOTHER_POST = re.compile(r"^(?:and|what about|how about|same for|and for)\s+(?:the\s+)?(.+?)(?:\s+ones?)?$")
# a question about one post: its name is whatever else it says ("summarize the clustering post")
_ABOUT_A_POST = re.compile(r"^(?:summar(?:y|ize|ise)|overview|outline|tl\s?;?\s?dr)\b"
                           r"|\b(?:post|article)\b(?!-)", re.I)  # not "post-LN"
_OUTLINE_WORDS = re.compile(r"\b(?:summar\w*|overview|outline|tl\s?;?\s?dr|what\s+is\s+in|cover\w*|about|questions?|"
                            r"contain\w*|discuss\w*|go(?:es)?\s+over|topics?|ask(?:s|ed)?|list)\b")
# words of a question about a post that do not name it
_META = frozenset(stem(w) for w in """post posts article articles blog summary summarize summarise summarized
    overview outline tldr tl dr cover covers covered covering question questions interview topic topics discuss
    discusses contain contains talk talks go goes say says list give quick short brief ask asks asked""".split())


@dataclass(frozen=True)
class PostOutline:
    guid: str
    title: str
    url: str
    date: str
    opening: str  # heading path of the post's first section (what a citation of the post points to)
    opening_text: str  # that section's text
    headings: tuple[str, ...]  # what the post is made of: its interview questions, or its headings where it has none
    questions: int  # how many of the headings are interview questions
    numbers: tuple[int | None, ...] = ()  # the number each heading has in the post ("Q3: ..." -> 3), if any


@dataclass(frozen=True)
class Reply:
    text: str  # Markdown, with [n] marks for `cited`
    cited: tuple[PostOutline, ...]


def post_outlines(index) -> list[PostOutline]:
    """Every post of the index, newest first, with the headings it is made of: for each section, the first
    interview question on its heading path, else its top heading (introductions and conclusions left out)."""
    headings: dict[str, list[str]] = {}
    for guid, section in index.sections():
        headings.setdefault(guid, []).append(section)
    first = index.openings()
    out = []
    for p in index.posts():
        paths = headings.get(p.guid, [])
        shown: dict[str, tuple[bool, int | None]] = {}  # heading -> (an interview question?, its number)
        for section in paths:
            path = section.split(" > ")
            asked = next((h for h in path if is_question_heading(h)), None)
            heading = asked or path[0]
            if not (is_aside(heading, p.title) or _CLOSING.match(heading)):
                number = _NUMBER.match(heading)
                shown.setdefault(_plain_heading(heading),
                                 (asked is not None, int(number.group(1) or number.group(2)) if number else None))
        c = first.get(p.guid)
        out.append(PostOutline(p.guid, p.title, p.url, p.date, c.section if c else p.title, c.text if c else "",
                               tuple(shown), sum(q for q, _ in shown.values()), tuple(n for _, n in shown.values())))
    return out


def _plain_heading(heading: str) -> str:
    """ "Q3: What is Out-of-Bag (OOB) error?" -> "What is Out-of-Bag (OOB) error?" """
    return _NUMBER.sub("", heading).strip()


def asks_by_number(question: str) -> bool:
    """Whether a question asks for a question by its number ("Q7", "question 3"): cheap, no index read."""
    return bool(_ASKED_NUMBER.search(_normal(question)))


def numbered_question(question: str, outlines: list[PostOutline], post: str | None = None
                      ) -> tuple[PostOutline, str] | None:
    """ "explain Q7 of the random forest post", "what's question 3 in this post?" (with a post chosen): the post
    and the heading it numbers so (where the post numbers none, the n-th of its outline's list), or None."""
    found = _numbered(_normal(question), outlines, post)
    return (found[0], found[2]) if found and found[2] else None


def _numbered(q: str, outlines: list[PostOutline], post: str | None) -> tuple[PostOutline, int, str | None] | None:
    """The post a question names together with a question number, the number, and that question if it has it."""
    asked = _ASKED_NUMBER.search(q)
    if not asked:
        return None
    topic = _topic(q[:asked.start()] + " " + q[asked.end():])
    chosen = _named_post(topic, outlines) if topic else _filtered_post(outlines, post)
    if chosen is None or not (_ABOUT_A_POST.search(q) or post):
        return None
    n = int(asked.group(1))
    if any(chosen.numbers):
        heading = next((h for h, m in zip(chosen.headings, chosen.numbers) if m == n), None)
    else:  # the n-th of the outline's list (`outline`)
        heading = chosen.headings[n - 1] if 0 < n <= len(chosen.headings) else None
    return chosen, n, heading


def _normal(question: str) -> str:
    q = question.lower().replace("’", "'").replace("‘", "'")
    q = re.sub(r"\bwhat(?:'s|s)\b", "what is", q)
    return " ".join(re.sub(r"[^\w';\s-]", " ", q).split()).strip(" '")


def catalog_reply(question: str, outlines: list[PostOutline], post: str | None = None,
                  previous: str | None = None) -> Reply | None:
    """The reply to a question about the posts themselves, or None for any other question. `post`: the
    post the chat is filtered to ("what does this post cover?" is about it); `previous`: the question a
    follow-up refers to ("and the random forest one?" after "what's in the clustering post?" asks for a post)."""
    if not outlines:
        return None
    q = _normal(question)
    if previous and _ANOTHER_POST.match(q):
        earlier = catalog_reply(previous, outlines, post)
        if earlier is not None and len(earlier.cited) == 1:
            return catalog_reply(f"what is in the {_ANOTHER_POST.match(q).group(1)} post", outlines, post)
    if _ABOUT_THE_POSTS.match(q):
        return overview(outlines)
    numbered = _numbered(q, outlines, post)
    if numbered:  # a question the chat answers (numbered_question), unless the post has no such number
        return outline(numbered[0], f"It has no question {numbered[1]}. ") if numbered[2] is None else None
    quiz = _QUIZ.match(q)
    if quiz:
        return practice_hint(quiz.group("topic") or quiz.group("topic2") or "", outlines, post)
    asked_about = _QUESTIONS_ON.match(q)
    if asked_about:  # "what questions do interviewers ask about random forests?": a post's questions, if one is
        named = _named_post(_topic(asked_about.group("topic")), outlines)
        return outline(named) if named else None
    if not (_ABOUT_A_POST.search(q) and _OUTLINE_WORDS.search(q)):
        return None
    topic = _topic(q)
    if not topic:  # "summarize this post": the one the chat is filtered to, else say which there are
        chosen = _filtered_post(outlines, post)
        return outline(chosen) if chosen else overview(outlines)
    named = _named_post(topic, outlines)
    return outline(named) if named else None


def _named_post(topic: set[str], outlines: list[PostOutline]) -> PostOutline | None:
    """The one post whose title has every word of `topic` ("rf" -> Random Forest); None for none or several."""
    named = [o for o in outlines if topic and topic <= stems(o.title)]
    return named[0] if len(named) == 1 else None


def _filtered_post(outlines: list[PostOutline], post: str | None) -> PostOutline | None:
    """The post the chat is filtered to ("this post"), if any."""
    return next((o for o in outlines if o.guid == post), None)


def practice_hint(topic: str, outlines: list[PostOutline], post: str | None = None) -> Reply | None:
    """ "quiz me on random forests": practice mode is what grades answers, so the reply points to it with one of
    the posts' questions on that topic (a post whose title names it, else the heading sharing most of its
    words). None when no question is about it: the chat searches the posts as usual."""
    words = _topic(topic)
    named = _named_post(words, outlines) or _filtered_post(outlines, post)
    if named or not words:
        o = named or random.choice(outlines)
        asked = [h for h in o.headings if h.endswith("?") and not VAGUE.search(h)] or list(o.headings)
        pick = (o, random.choice(asked)) if asked else None
    else:
        scored = [(len(words & stems(h)), o, h) for o in outlines for h in o.headings]
        best = max((t[0] for t in scored), default=0)
        pick = random.choice([(o, h) for n, o, h in scored if n == best]) if best else None
    if pick is None:
        return None
    o, asked = pick
    return Reply(f"The **Practice** tab asks the posts' interview questions and grades your answers (choose *{o.title}* "
                 f"under “Questions from”; in a terminal: `rag practice`). One from that post [1]:\n\n> {asked}\n\n"
                 f"Ask me for the post's answer once you have tried it.", (o,))


def _topic(q: str) -> set[str]:
    """The stems that name a post: the question's content words but the meta ones, shorthand spelled out."""
    out = set()
    for w in content_words(q):
        out |= stems(SHORTHAND[w]) if w in SHORTHAND else {stem(w)}
    return out - _META


def overview(outlines: list[PostOutline]) -> Reply:
    shown = outlines[:OVERVIEW_POSTS]  # newest first
    lines = [f"The posts cover {len(outlines)} topics{' (the newest first)' if len(outlines) > len(shown) else ''}:"]
    for n, o in enumerate(shown, 1):
        example = next((f", e.g. “{q}”" for h in o.headings if "?" in h
                        and len(q := h[:h.index("?") + 1]) <= EXAMPLE_CHARS and not VAGUE.search(q)), "")
        lines.append(f"- **{o.title}** ({_count(o)}{example}) [{n}]")
    if len(outlines) > len(shown):
        lines.append(f"- … and {len(outlines) - len(shown)} older posts")
    lines.append("\nAsk about any of them, or name a post (“what's in the clustering post?”) to see its questions.")
    return Reply("\n".join(lines), tuple(shown))


def outline(o: PostOutline, note: str = "") -> Reply:
    # "… and 2 more" would say less than the two questions themselves
    shown = o.headings if len(o.headings) <= OUTLINE_QUESTIONS + 4 else o.headings[:OUTLINE_QUESTIONS]
    lines = [f"{note}**{o.title}** ({o.date[:10]}) has {_count(o)} [1]:"]
    if any(o.numbers):  # the post's own numbers, which "explain Q7 of ..." refers to (some posts skip one)
        lines += [f"- **Q{m}.** {q}" if m else f"- {q}" for q, m in zip(shown, o.numbers)]
    else:
        lines += [f"{n}. {q}" for n, q in enumerate(shown, 1)]
    if len(o.headings) > len(shown):
        lines.append(f"\n… and {len(o.headings) - len(shown)} more in the post.")
    lines.append("\nAsk about any of them, or practise them in the Practice tab.")
    return Reply("\n".join(lines), (o,))


def _count(o: PostOutline) -> str:
    n = len(o.headings)
    return f"{n} interview question{'s' * (n != 1)}" if o.questions == n else f"{n} parts"
