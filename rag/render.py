"""What the app shows, as pure functions of plain records: answers as Markdown with citation links, the
Sources panel as HTML (the posts' Markdown rendered, formulas as MathML, supporting sentences marked), a
conversation exported as Markdown, and a practice grade. No Gradio here, so all of it is testable alone.

A *turn* is the JSON-able record of one question and its answer (`turn_record`); the app keeps a list of
them per conversation, stores it in the browser and renders everything from it.
"""

from __future__ import annotations

import html
import logging
import re
import time
from dataclasses import asdict
from functools import lru_cache

from markdown_it import MarkdownIt

from .answer import NOT_COVERED
from .catalog import VAGUE
from .chunking import section_title
from .grounding import overlap
from .text import FORMULA
from .text import sentences as split_sentences

log = logging.getLogger(__name__)

CITATION_MARK = re.compile(r"\[(\d+)\]")
# a display formula and the citation links (answer_markdown's) that follow it
FORMULA_THEN_LINKS = re.compile(r'(\$\$[^$]+\$\$)\s*((?:\[\\\[\d+\\\]\]\(#source-[^\s)]+ "[^"]*"\)\s*)+)')
# Private-use characters the posts never contain: where a highlight starts (one per class) and ends, and
# where a formula sits while the Markdown around it is rendered.
_END, _FORMULA_OPEN, _FORMULA_CLOSE = "\ue001", "\ue002", "\ue003"
_START = 0xE100  # + the mark's number: chr(_START + k) opens mark k
_STARTS = "[\ue100-\ue1ff]"
MAX_MARKS = 256
_LINE_START = re.compile(r"(?m)^[ \t]*(?:[-*+>]|\d+[.)]|#{1,6})[ \t]+")
_TAG_OR_TEXT = re.compile(r"(<math\b.*?</math>|<[^>]+>)", re.S)
# TeX commands latex2mathml does not know, spelled in ones it does
_TEX_FIXES = ((re.compile(r"\\arg(?![a-zA-Z])"), r"\\operatorname{arg}"),)
_MATHML_UNSAFE = re.compile(r"\s(?:href|src|on\w+)\s*=", re.I)


def escape(text: str) -> str:
    """Markdown may stay Markdown, but no HTML tag from a post or a question reaches the page."""
    return html.escape(readable(text), quote=False)


def readable(text: str) -> str:
    """The invisible "function application" character that the posts' inline maths left behind ("log\u2061k")
    shown as the space it stands for, one character for one, so positions in the text stay valid."""
    return (text or "").replace("\u2061", " ")


# ------------------------------------------------------------------ turns


def turn_record(answer, *, turn_id: str, post: str | None = None, post_title: str = "",
                elsewhere: list[dict] | None = None) -> dict:
    """The plain record of one answered question (from a `rag.answer.Answer`), as stored and rendered."""
    return {"turn_id": turn_id, "question": answer.question, "answer": answer.answer, "refused": answer.refused,
            "mode": answer.mode, "generator": answer.generator, "done": answer.done,
            "pending": "" if answer.done else answer.pending,
            "post": post, "post_title": post_title,
            "citations": [asdict(c) for c in answer.citations],
            "suggestions": list(answer.suggestions), "elsewhere": elsewhere or [],
            "timings": {k: round(v, 3) for k, v in answer.timings.items()}}


def history_pairs(turns: list[dict]) -> list[tuple[str, str]]:
    """Earlier turns as the chat takes them: (question, answer) pairs (a stopped answer's is empty)."""
    return [(t["question"], t.get("answer", "")) for t in turns]


# ------------------------------------------------------------------ evidence: which passage words support what


def evidence_spans(text: str, supporting: list[str]) -> list[tuple[int, int]]:
    """For each answer sentence a citation supports, the span of the passage that backs it: the sentence
    itself where the answer copied it, else the passage sentence sharing most of its words. One span per
    supporting sentence (None-free, duplicates dropped, in the order of `supporting`)."""
    spans: list[tuple[int, int]] = []
    passage_sentences = None
    for s in supporting:
        span = find_span(text, s)
        if span is None:
            if passage_sentences is None:
                passage_sentences = split_sentences(text)
            scored = [(overlap(s, p), p) for p in passage_sentences]
            best = max(scored, default=(0.0, ""))
            span = find_span(text, best[1]) if best[0] >= 0.5 else None
        if span and span not in spans:
            spans.append(span)
    return spans


def find_span(text: str, sentence: str) -> tuple[int, int] | None:
    """Where a sentence occurs in a passage, whatever the whitespace and bold markers between its words,
    without the full stop an answer may have added to a copied list item."""
    words = sentence.replace("**", "").removesuffix(".").split()
    if not words:
        return None
    m = re.search(SPAN_GAP.join(re.escape(w) for w in words), text)
    if m is None and "," in sentence:  # a list quoted as one sentence (text.joined_lists): its items' commas
        m = re.search(SPAN_GAP.join(re.escape(w.rstrip(",")) for w in words), text)
    return m.span() if m else None


# what may stand between two words of a quoted sentence in its passage: space and bold marks, and for a list
# quoted as one sentence, the commas that replaced its line breaks and the list markers
SPAN_GAP = r"(?:\s|\*\*|,|(?<=\n)[ \t]*(?:[-*+>•]|\d+[.)])(?=\s))+"


# ------------------------------------------------------------------ Markdown + formulas -> HTML


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    """CommonMark with raw HTML off (a post's or a question's tags are shown as text), tables on, and
    images shown as their alt text: a remote image would be a request leaving the machine."""
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")

    def image(self, tokens, idx, options, env):
        alt = "".join(t.content for t in tokens[idx].children or []) or "image"
        return f"<span class='image-alt'>[{escape(alt)}]</span>"

    def link_open(self, tokens, idx, options, env):
        token = tokens[idx]
        if not (token.attrGet("href") or "").startswith("#"):
            token.attrSet("target", "_blank")
            token.attrSet("rel", "noopener noreferrer")
        return self.renderToken(tokens, idx, options, env)

    md.add_render_rule("image", image)
    md.add_render_rule("link_open", link_open)
    return md


@lru_cache(maxsize=4096)
def formula_html(tex: str, display: bool) -> str:
    """A TeX formula as MathML, which the browser typesets itself (no script, no raw TeX in the page); a
    formula the converter cannot read is shown as code and logged."""
    from latex2mathml.converter import convert

    fixed = tex.strip()
    for pattern, repl in _TEX_FIXES:
        fixed = pattern.sub(repl, fixed)
    try:
        mathml = convert(fixed, display="block" if display else "inline")
    except Exception as e:  # noqa: BLE001 - a third-party parser; any failure falls back to code
        log.warning("formula not converted (%s): %.80s", e, tex)
        return f"<code class='tex'>{escape(tex)}</code>"
    if _MATHML_UNSAFE.search(mathml):
        return f"<code class='tex'>{escape(tex)}</code>"
    return mathml


def markdown_html(text: str, marks: list[tuple[int, int, str]] = ()) -> str:
    """A post's Markdown as HTML, formulas as MathML, with the spans in `marks` ((start, end, class) in
    `text`) wrapped in <mark class=... data-k=...> elements (k: the span's place in `marks`) that never
    cross a tag, so a highlight spanning two list items or a bold word stays well formed. Overlapping
    spans: the first one wins."""
    marks = list(marks)[:MAX_MARKS]
    text = _insert_marks(readable(text), marks)
    formulas: list[str] = []

    def hold(m: re.Match) -> str:
        formulas.append(m.group(1))
        return f"{_FORMULA_OPEN}{len(formulas) - 1}{_FORMULA_CLOSE}"

    rendered = _markdown().render(FORMULA.sub(hold, text))

    def place(m: re.Match) -> str:
        alone = m.group(1) is not None  # the formula is its whole paragraph: display it as a block
        return (m.group(2) or "") + formula_html(formulas[int(m.group(3))], alone) + (m.group(4) or "")

    rendered = re.sub(f"(<p>)?({_STARTS})?{_FORMULA_OPEN}(\\d+){_FORMULA_CLOSE}({_END})?(?(1)</p>)", place, rendered)
    return _wrap_marks(rendered, marks)


def _insert_marks(text: str, marks) -> str:
    """Put the start/end characters of each mark into the text, moved off list markers and out of
    formulas so that the Markdown still parses the same."""
    if not marks:
        return text
    formulas = [m.span() for m in FORMULA.finditer(text)]
    edits: list[tuple[int, int, str]] = []  # (position, order, character): an end sorts before a start
    taken_until = -1
    for k, (start, end, _) in sorted(enumerate(marks), key=lambda t: t[1][:2]):
        for f0, f1 in formulas:
            if f0 < start < f1:
                start = f0
            if f0 < end < f1:
                end = f1
        line = _LINE_START.match(text, text.rfind("\n", 0, start) + 1)
        if line and line.start() <= start < line.end():
            start = line.end()
        if start >= end or start < taken_until:
            continue
        taken_until = end
        edits += [(start, 1, chr(_START + k)), (end, 0, _END)]
    out, pos = [], 0
    for at, _, char in sorted(edits):
        out += [text[pos:at], char]
        pos = at
    return "".join(out) + text[pos:]


def _wrap_marks(rendered: str, marks) -> str:
    """Turn the mark characters into <mark> elements around text and formulas only."""
    if _END not in rendered:
        return rendered
    out, k = [], None  # the mark we are inside, if any
    for piece in _TAG_OR_TEXT.split(rendered):
        if not piece:
            continue
        if piece.startswith("<") and not piece.startswith("<math"):
            out.append(piece)
            continue
        chunks = [piece] if piece.startswith("<math") else re.split(f"({_STARTS}|{_END})", piece)
        for chunk in chunks:
            if len(chunk) == 1 and _START <= ord(chunk) < _START + MAX_MARKS:
                k = ord(chunk) - _START
            elif chunk == _END:
                k = None
            elif chunk:
                # a display formula is a block: an inline <mark> around it shows as two slivers (app.css)
                block = " block" if chunk.startswith("<math") and 'display="block"' in chunk[:120] else ""
                out.append(f"<mark class='{marks[k][2]}{block}' data-k='{k}'>{chunk}</mark>"
                           if k is not None and chunk.strip() else chunk)
    return "".join(out)


# ------------------------------------------------------------------ the answer in the chat


def plain_preview(text: str, limit: int = 280) -> str:
    """One line for a tooltip: formulas and Markdown markers out."""
    text = FORMULA.sub("[formula]", text or "").replace("**", "").replace("\n", " ")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def answer_markdown(turn: dict, index: int) -> str:
    """The answer of turn `index` with each checked citation [n] turned into a link to its card in the
    Sources panel (#source-<turn>-<n>-<k>: k is the highlighted sentence to bring into view); its title is
    the preview shown on hover. Refusals say what was searched and, with a post filter, who covers it."""
    if turn.get("error"):
        return f"⚠️ _{escape(turn['error'])}_"
    if turn.get("refused"):
        return refusal_markdown(turn)
    cited = {c["n"]: c for c in turn.get("citations", [])}
    text = escape(turn.get("answer", ""))
    ends = sorted((text.find(e) + len(e), n, s) for n, c in cited.items() for s in c.get("supporting", [])
                  if (e := escape(s.removesuffix("."))) in text)

    def link(m: re.Match) -> str:
        c = cited.get(int(m.group(1)))
        if c is None:
            return m.group(0)
        spans = evidence_spans(c["text"], c.get("supporting", []))
        own = [s for end, n, s in ends if n == c["n"] and end <= m.start() + 1][-1:]  # the sentence it ends
        span = (evidence_spans(c["text"], own) or spans or [None])[0]
        k = spans.index(span) if span in spans else 0
        shown = c["text"][span[0]:span[1]] if span else c["text"]
        preview = f"{c['post_title']} — {section_title(c['section'])}: “{plain_preview(shown)}”"
        title = escape(preview).replace('"', "'").replace("\\", "\\\\")
        return f'[\\[{c["n"]}\\]](#source-{index}-{c["n"]}-{k} "{title}")'

    # a display formula is a block of its own: the [n] after it would open the next line, as if it cited the
    # sentence that follows, so it goes before the formula, at the end of the words that lead into it
    body = FORMULA_THEN_LINKS.sub(lambda m: f"{m[2].rstrip()} {m[1]}{m[2][len(m[2].rstrip()):]}",
                                  CITATION_MARK.sub(link, text))
    if not turn.get("done", True) and turn.get("pending"):
        # the sentence the model is still writing: shown apart until the check keeps, replaces or drops it
        body += (" " if body else "") + f"_{escape(turn['pending'])}…_"
    if turn.get("stopped"):
        partial = turn.get("partial", "")
        body = (partial + "\n\n" if partial else "") + "_Stopped._"
    return body


def refusal_markdown(turn: dict) -> str:
    if turn.get("answer") and turn["answer"] != NOT_COVERED:  # a polite reply to a polite message
        return escape(turn["answer"])
    parts = [f"**{NOT_COVERED}**"]
    if turn.get("post_title"):
        parts.append(f"Only *{escape(turn['post_title'])}* was searched.")
        elsewhere = turn.get("elsewhere") or []
        if elsewhere:
            where = "; ".join(f"*{escape(e['post_title'])}* — {escape(section_title(e['section']))}"
                              for e in elsewhere[:2])
            parts.append(f"Other posts do cover it: {where}. Choose **All posts** to search them.")
        else:
            parts.append("The other posts don't cover it either.")
    if turn.get("suggestions"):
        parts.append("The nearest sections the posts do cover are below; click one to ask it.")
    return " ".join(parts)


# ------------------------------------------------------------------ the Sources panel


def sources_html(turns: list[dict], pending: str | None = None) -> str:
    """Every answered turn's sources, one group per turn; the last group is shown, the script (app.js)
    shows another when one of its citations is clicked. `pending`: a question being answered now."""
    if not turns and pending is None:
        return "<p class='meta'>The sections each answer comes from appear here, with the sentences it " \
               "rests on highlighted.</p>"
    last = len(turns) - (pending is None)
    groups = [_turn_sources(i, t, shown=pending is None and i == last, last=i == last) for i, t in enumerate(turns)]
    if pending is not None:
        groups.append(f"<section class='turn' data-turn='{len(turns)}'><p class='meta'>Finding the sources for "
                      f"“{escape(plain_preview(pending, 120))}”…</p></section>")
    return "<div class='sources'>" + "".join(groups) + "</div>"


def _turn_sources(i: int, turn: dict, shown: bool, last: bool) -> str:
    head = (f"<div class='turn-head'><span class='meta'>Sources for</span> “{escape(plain_preview(turn['question'], 120))}”"
            f"<span class='turn-nav'><button type='button' class='nav to-chat' aria-label='back to the conversation'>"
            f"↑</button><button type='button' class='nav prev' aria-label='sources of the previous answer'"
            f"{' disabled' if i == 0 else ''}>‹</button><button type='button' class='nav next' "
            f"aria-label='sources of the next answer'>›</button></span></div>")
    cites = turn.get("citations") or []
    if turn.get("refused"):
        body = "<p class='meta'>No section of the posts answers this question.</p>"
    elif not cites:
        body = "<p class='meta'>No sentence of this answer could be checked against a section.</p>"
    else:
        body = "".join(source_card(i, c) for c in cites)
    return f"<section class='turn' data-turn='{i}'{'' if shown else ' hidden'}>{head}{body}</section>"


def source_card(i: int, c: dict) -> str:
    spans = evidence_spans(c["text"], c.get("supporting", []))
    body = markdown_html(c["text"], [(a, b, "support") for a, b in spans])
    url = c.get("url", "")
    link = (f" · <a class='external' href='{html.escape(url)}' target='_blank' rel='noopener noreferrer'>"
            f"original post ↗</a>" if url.startswith(("https://", "http://")) else "")
    return (f"<article class='source' id='source-{i}-{c['n']}'><header><b>[{c['n']}]</b> "
            f"{escape(section_title(c['section']))}</header><div class='meta'>{escape(c['post_title'])}"
            f"{' · ' + escape(c.get('date', '')[:10]) if c.get('date') else ''}{link}</div>"
            f"<div class='passage'>{body}</div></article>")


# ------------------------------------------------------------------ export


def conversation_markdown(turns: list[dict], title: str = "Interview-prep Q&A") -> str:
    """The conversation as a Markdown document: each question, its answer and its sources (section,
    post, link and the sentences the answer rests on)."""
    out = [f"# {title}", f"_Exported {time.strftime('%Y-%m-%d %H:%M')}_", ""]
    for t in turns:
        out += [f"## {t['question']}", ""]
        if t.get("stopped") or t.get("error"):
            out += ["_(no answer: " + ("stopped" if t.get("stopped") else t["error"]) + ")_", ""]
            continue
        out += [refusal_markdown(t).replace("**", "") if t.get("refused") else t.get("answer", ""), ""]
        for c in t.get("citations", []):
            url = c.get("url", "")
            out.append(f"- [{c['n']}] {c['post_title']} — {section_title(c['section'])}"
                       + (f" <{url}>" if url.startswith(("https://", "http://")) else ""))
            for a, b in evidence_spans(c["text"], c.get("supporting", [])):
                out.append(f"  > {' '.join(c['text'][a:b].split())}")
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------ status and examples


def status_line(posts, model_state: str) -> str:
    return f"{posts} posts · {model_state}"


def about_markdown(manifest: dict, generation: str, model: str) -> str:
    counts = manifest.get("counts", {})
    return (f"Index `{generation}`: {counts.get('posts', '?')} posts, {counts.get('chunks', '?')} passages, built "
            f"{manifest.get('built_at', '?')[:16].replace('T', ' ')}; embedder {manifest.get('embedder', '?')}; "
            f"language model {model}. Everything runs on this machine.")


def example_questions(sections: list[tuple[str, str]], post_words: dict[str, set[str]], posts_in_order: list[str],
                      n: int = 6) -> list[str]:
    """Section headings that are interview questions naming their own subject, one per post first.

    `sections`: (post guid, heading path); `post_words`: post guid -> its lower-case words. A heading is
    taken when it is a question of 4-14 words that holds a word at most two posts use ("What is Out-of-Bag
    (OOB) error?"), and leaves nothing to its post: no "we", "it" or "the algorithm", and not a Title Case
    step of a framework ("Over What Time Horizon Are We Predicting?")."""
    spread: dict[str, int] = {}
    for words in post_words.values():
        for w in words:
            spread[w] = spread.get(w, 0) + 1
    per_post: dict[str, list[str]] = {}
    for guid, section in sections:
        leaf = re.sub(r"^Q\d+[.:]\s*", "", section.split(" > ")[-1]).strip()
        m = re.match(r"([^?]{10,85}\?)", leaf)
        if not m:
            continue
        q = m.group(1)
        tokens = re.findall(r"[a-z0-9][a-z0-9+\-]*", q.lower())
        long_words = [w for w in q.split()[1:] if len(w) > 3 and w[0].isalpha()]
        title_case = long_words and sum(w[0].isupper() for w in long_words) / len(long_words) > 0.6
        vague = VAGUE.search(q)
        if (4 <= len(tokens) <= 14 and not title_case and not vague
                and any(spread.get(w, 0) and spread[w] <= 2 and len(w) > 2 for w in tokens)):
            per_post.setdefault(guid, []).append(q)
    order = [g for g in posts_in_order if g in per_post]
    picked = [per_post[g][i] for i in range(3) for g in order if i < len(per_post[g])]
    return list(dict.fromkeys(picked))[:n]


# ------------------------------------------------------------------ practice


def grade_html(grade) -> str:
    """A practice grade (rag.practice.Grade): the score, the key points covered and missed (each a sentence
    of the post, linked), and the post's answer with the key points marked."""
    q = grade.question
    verdict = "pass" if grade.passed else "not yet"
    rows = [f"<div class='score {'pass' if grade.passed else 'fail'}'><span class='value'>{grade.score}</span>"
            f"<span class='of'>/100 · {verdict}</span></div>"]
    if grade.note:
        rows.append(f"<p class='meta'>{escape(grade.note)}</p>")
    for title, points, cls in (("You covered", grade.covered, "covered"), ("You missed", grade.missed, "missed")):
        if points:
            items = "".join(
                f"<li class='{cls}'>{markdown_inline(p.text)} <a class='external' href='{html.escape(p.url)}' "
                f"target='_blank' rel='noopener noreferrer' title='the post, at this section'>[{p.n}] ↗</a></li>"
                for p in points)
            rows.append(f"<h4>{title} ({len(points)} of {len(grade.points)} key points)</h4><ul class='points'>"
                        f"{items}</ul>")
    reference = q.reference
    marks = []
    for p, c in zip(grade.points, grade.coverage):
        span = find_span(reference, p.text)
        if span:
            marks.append((*span, "covered" if c >= 0.5 else "missed"))
    rows.append(f"<h4>The post's answer <span class='meta'>({escape(q.post_title)} — {escape(q.heading)}; "
                f"key points you covered <mark class='covered'>like this</mark>, missed "
                f"<mark class='missed'>like this</mark>)</span></h4>"
                f"<div class='passage reference'>{markdown_html(reference, _disjoint(marks))}</div>")
    return "<div class='grade'>" + "".join(rows) + "</div>"


def markdown_inline(text: str) -> str:
    """One sentence of a post as inline HTML (bold, code, formulas), without the paragraph around it."""
    out = markdown_html(text).strip()
    return out[3:-4] if out.startswith("<p>") and out.endswith("</p>") else out


def _disjoint(marks: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    kept: list[tuple[int, int, str]] = []
    for a, b, cls in sorted(marks):
        if not kept or a >= kept[-1][1]:
            kept.append((a, b, cls))
    return kept


def question_markdown(q) -> str:
    url = f" · [the post ↗]({q.url})" if q.url.startswith(("https://", "http://")) else ""
    return f"### {escape(q.question)}\n<span class='meta'>{escape(q.post_title)} — {escape(q.heading)}{url}</span>"
