"""The chat app: a thin Gradio layer over `rag.answer.Chat`.

    python app.py [--host HOST] [--port PORT] [--index DIR] [--config FILE]

Builds the index of the configured feed first when there is none. Each browser session keeps its own
conversation (gr.State + the Chatbot value); retrieval, answering and citations all live in `rag`.
A named API endpoint, `/ask`, returns the same answer JSON as `rag ask --json`.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from contextlib import closing
from urllib.parse import quote

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before importing gradio: nothing leaves the machine
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gradio as gr  # noqa: E402

from rag.answer import NOT_COVERED, Answer, Chat  # noqa: E402
from rag.chunking import section_title  # noqa: E402
from rag.conversation import QuestionError, check_question  # noqa: E402
from rag.errors import RagError  # noqa: E402
from rag.index import Index, current_generation  # noqa: E402
from rag.indexer import IndexBusy, update_index  # noqa: E402
from rag.modes import MODES  # noqa: E402
from rag.settings import Settings, load_settings  # noqa: E402

log = logging.getLogger("app")

CONCURRENCY = 4  # answers computed at once; the generator itself runs one at a time (it holds a lock)
QUEUE_SIZE = 64  # waiting requests beyond this are turned away with a "busy" message
STATUS_EVERY = 5  # seconds between checks for a rebuilt index or a loaded model
THEME = gr.themes.Default(font=[gr.themes.Font("system-ui"), "sans-serif"], font_mono=["monospace"])
CSS = """
#sources .source { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 10px;
                   margin-bottom: 10px; }
#sources .meta { color: var(--body-text-color-subdued); font-size: 0.85em; }
#sources .passage { white-space: pre-wrap; font-size: 0.9em; max-height: 360px; overflow-y: auto; }
#sources mark { background: #fde68a; color: #1f2937; }  /* dark text in dark mode too: WCAG contrast */
#sources .source.flash { outline: 3px solid #f59e0b; }
#status { font-size: 0.85em; }
"""
# A citation [n] in an answer scrolls its card in the Sources panel into view (and its highlighted sentence
# into the card's view) instead of opening the live post, which is an error page offline.
HEAD = """<script>
document.addEventListener("click", (event) => {
  const link = event.target.closest('a[href^="#source-"]');
  if (!link) return;
  event.preventDefault();
  event.stopPropagation();
  const card = document.getElementById(link.getAttribute("href").slice(1));
  if (!card) return;
  card.scrollIntoView({block: "start", behavior: "smooth"});
  const mark = card.querySelector("mark");
  if (mark) mark.scrollIntoView({block: "nearest"});
  card.classList.add("flash");
  setTimeout(() => card.classList.remove("flash"), 1500);
}, true);
</script>"""
CITATION_MARK = re.compile(r"\[(\d+)\]")
LOADING_NOTE = "_Loading the local language model (only the first answer after start-up waits for it)…_"


# ------------------------------------------------------------------ rendering (pure functions)


def escape(text: str) -> str:
    """Markdown may stay markdown, but no HTML tag from a post or a question reaches the page."""
    return html.escape(text or "", quote=False)


def answer_markdown(answer: Answer, post_title: str = "") -> str:
    """The answer text with each checked citation [n] turned into a link to its card in the Sources panel;
    hovering it shows the cited section and the sentence it supports."""
    if answer.refused:
        where = (f" (only *{escape(post_title)}* was searched: choose \"All posts\" in Settings to search "
                 f"every post)") if post_title else ""
        near = " The nearest sections they do cover are below." if answer.suggestions else ""
        return f"**{NOT_COVERED}**{where}{near}"
    cited = {c.n: c for c in answer.citations}

    def link(m: re.Match) -> str:
        c = cited.get(int(m.group(1)))
        if c is None:
            return m.group(0)
        preview = f"{c.post_title} — {section_title(c.section)}: {' '.join(c.supporting)[:300]}"
        return f'[\\[{c.n}\\]](#source-{c.n} "{preview.replace(chr(34), chr(39))}")'  # the renderer escapes it

    return CITATION_MARK.sub(link, escape(answer.answer))


def highlight(text: str, sentences: list[str]) -> str:
    """Escaped passage text with the answer sentences it supports in <mark>."""
    spans = []
    for s in sentences:
        # without its final full stop: the answer ends a copied list item with one the passage lacks
        m = re.search(r"\s+".join(map(re.escape, s.removesuffix(".").split())), text)
        if m:
            spans.append(m.span())
    out, pos = [], 0
    for start, end in sorted(spans):
        if start < pos:  # overlaps the previous mark: extend it
            start = pos
        out.append(escape(text[pos:start].replace("**", "")))
        out.append(f"<mark>{escape(text[start:end].replace('**', ''))}</mark>")
        pos = max(pos, end)
    out.append(escape(text[pos:].replace("**", "")))
    return "".join(out)


def sources_html(answer: Answer | None) -> str:
    if answer is None:
        return "<p class='meta'>The sections each answer comes from appear here.</p>"
    if answer.refused:
        return "<p class='meta'>No section of the posts answers this question.</p>"
    if not answer.citations:
        return "<p class='meta'>…</p>" if not answer.done else "<p class='meta'>No citation passed the check.</p>"
    cards = []
    for c in answer.citations:
        heading = section_title(c.section)
        cards.append(
            f"<div class='source' id='source-{c.n}'><div><b>[{c.n}]</b> {html.escape(c.post_title)} — "
            f"{html.escape(heading)}</div><div class='meta'>{html.escape(c.date[:10])}"
            + (f" · <a href='{html.escape(c.url)}' target='_blank' rel='noopener noreferrer'>original post ↗</a>"
               if c.url.startswith(("https://", "http://")) else "") + "</div>"
            f"<div class='passage'>{highlight(c.text, c.supporting)}</div></div>")
    return "<h3>Sources</h3>" + "".join(cards)


def status_markdown(index: Index, model: str) -> str:
    """One short line: what the index holds and whether the language model is ready."""
    m = index.manifest
    counts = m.get("counts", {})
    built = m.get("built_at", "?")[:10]
    return f"{counts.get('posts', '?')} posts · {counts.get('chunks', '?')} passages · indexed {built} · {model}"


def post_choices(index: Index) -> list[tuple[str, str]]:
    return [("All posts", "")] + [(p.title, p.guid) for p in index.posts()]


def example_questions(index: Index, n: int = 6) -> list[str]:
    """Section headings that are interview questions naming their subject ("What is Out-of-Bag (OOB) error?",
    not "What loss function does the algorithm optimize?"), cut to their first question: one per post first,
    then a second per post until there are n."""
    per_post: dict[str, list[str]] = {}
    for guid, section in index.sections():
        leaf = re.sub(r"^Q\d+[.:]\s*", "", section.split(" > ")[-1]).strip()
        m = re.match(r"([^?]{10,85}\?)", leaf)
        if m and re.search(r"\s[A-Z][\w+-]*", m.group(1)):  # a name after the first word: the subject is said
            per_post.setdefault(guid, []).append(m.group(1))
    order = [p.guid for p in index.posts() if p.guid in per_post]
    picked = [per_post[g][i] for i in range(2) for g in order if i < len(per_post[g])]
    return list(dict.fromkeys(picked))[:n]


# ------------------------------------------------------------------ the app


class ChatApp:
    """What every session shares: settings, the loaded models (inside Chat) and the feedback lock."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.chat = Chat(settings)
        self.feedback_lock = threading.Lock()

    def take(self, question: str, busy: bool) -> tuple:
        """Move a valid question out of the textbox (into `pending`) and show Stop instead of Ask. A question
        sent while an answer is being written stays in the box, as does an invalid one, and a note says why.
        Returns (textbox, pending, busy, ask button, stop button)."""
        keep = (gr.skip(), "", gr.skip(), gr.skip(), gr.skip())
        if busy:
            gr.Warning("An answer is still being written: your question stays in the box. Send it when the "
                       "answer is done, or press Stop.")
            return keep
        try:
            check_question(question, self.settings.max_question_chars)
        except QuestionError as e:
            gr.Warning(str(e))
            return keep
        return "", question, True, gr.Button(visible=False), gr.Button(visible=True)

    def take_example(self, busy: bool, example: gr.SelectData) -> tuple:
        """Like `take` for a clicked example; whatever is typed in the box stays there."""
        return (gr.skip(), *self.take(example.value["text"], busy)[1:])

    def take_suggestion(self, sample: list, busy: bool) -> tuple:
        return (gr.skip(), *self.take(sample[0], busy)[1:])

    def respond(self, question: str, messages: list, turns: list, post: str, mode: str, k: float):
        """Stream one answer into this session's chat; yields (chatbot, turns, sources, suggestions)."""
        unchanged = (gr.skip(),) * 4
        if not question:  # `take` has already said what is wrong with it
            yield unchanged
            return
        try:
            question = check_question(question, self.settings.max_question_chars)
            history = [(t["question"], t["answer"]) for t in turns]
            messages = messages + [{"role": "user", "content": escape(question)}]
            waiting = (MODES.get(mode or self.settings.answer_mode) and MODES[mode or self.settings.answer_mode]
                       .uses_generator and not self.chat.generator_ready)
            note = [{"role": "assistant", "content": LOADING_NOTE}] if waiting else []
            yield messages + note, turns, sources_html(None), gr.Dataset(visible=False)
            # closing(): a session that goes away mid-answer releases the generator's lock at once
            with closing(self.chat.stream(question, history, post=post or None, mode=mode or None, k=int(k))) as s:
                for answer in s:
                    bot = {"role": "assistant", "content": answer_markdown(answer, self.post_title(post))}
                    yield messages + [bot], turns, sources_html(answer), gr.skip()
        except RagError as e:  # a question too long for the API, the index gone missing, a bad mode...
            gr.Warning(str(e))
            yield unchanged
            return
        turn = {"turn_id": uuid.uuid4().hex, "question": question, "answer": answer.answer,
                "refused": answer.refused, "mode": answer.mode,
                "post": post or None, "message_index": len(messages),
                "sources": [{key: v for key, v in c.items() if key != "text"} for c in answer.to_json()["citations"]]}
        suggestions = gr.Dataset(samples=[[s] for s in answer.suggestions],
                                 visible=bool(answer.refused and answer.suggestions))
        yield messages + [bot], turns + [turn], sources_html(answer), suggestions

    def post_title(self, guid: str) -> str:
        return next((p.title for p in self.chat.retriever.index.posts() if p.guid == guid), "") if guid else ""

    def ask(self, question: str, history: str = "[]", mode: str = "", post: str = "", k: int = 0) -> dict:
        """Answer a question from the posts: the same JSON object as `rag ask --json`.

        history: earlier turns as a JSON list of [question, answer] pairs; mode: extractive, grounded or
        free (empty: the configured default); post: a post guid to search only that post; k: sections to
        retrieve (0: the configured default)."""
        try:
            try:
                turns = json.loads(history or "[]")
            except (TypeError, json.JSONDecodeError) as e:
                raise QuestionError(f"history is not valid JSON ({e})") from e
            answer = self.chat.ask(question, turns, post=post or None, mode=mode or None, k=k or None)
        except RagError as e:
            raise gr.Error(str(e)) from e
        return answer.to_json()

    def record_feedback(self, turns: list, like: gr.LikeData) -> None:
        """One current vote per answer in the feedback JSONL file: a changed vote replaces the earlier line
        (the answer's `turn_id` ties them), an undone vote removes it. The thumbs themselves show the vote."""
        turn = next((t for t in turns if t["message_index"] == like.index), None)
        if turn is None:
            return
        record = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "vote": {True: "up", False: "down"}.get(like.liked, str(like.liked)),
                  **{k: v for k, v in turn.items() if k != "message_index"}}
        path = self.settings.feedback_file
        with self.feedback_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
            kept = [line for line in lines if _turn_id(line) != turn["turn_id"]]
            if like.liked in (True, False):
                kept.append(json.dumps(record, ensure_ascii=False))
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(tmp, path)  # a crash mid-write never leaves half a file

    def model_state(self) -> str:
        if not MODES[self.settings.answer_mode].uses_generator and not self.chat.generator_ready:
            return "answers quote the posts"
        from rag.generate import readable_name

        name = readable_name(self.settings.generator)
        return f"model {name} ready" if self.chat.generator_ready else f"loading model {name}…"

    def refresh_status(self, shown: dict):
        """Status line and post list, recomputed when `rag index` has switched the served generation or the
        model has finished loading; `shown` is what this page shows now ({"line", "generation"})."""
        shown = shown or {}
        try:
            index = self.chat.retriever.index  # LiveIndex: reopens a new CURRENT generation
        except RagError as e:
            return f"Index unavailable: {e}", gr.skip(), shown
        line = status_markdown(index, self.model_state())
        posts = gr.Dropdown(choices=post_choices(index)) if index.generation != shown.get("generation") else gr.skip()
        return (gr.skip() if line == shown.get("line") else line), posts, {"line": line, "generation": index.generation}

    def build(self) -> gr.Blocks:
        index = self.chat.retriever.index
        with gr.Blocks(title="Interview-prep Q&A") as demo:
            gr.Markdown("## Interview-prep Q&A\nAnswers come only from the posts of *A Data Scientist's "
                        "Handbook: Interview Prep*, with the sections they come from. Runs offline.")
            status = gr.Markdown(elem_id="status")
            with gr.Row():
                with gr.Column(scale=3):
                    chatbot = gr.Chatbot(
                        elem_id="chat", label="Conversation", height=520, sanitize_html=True,
                        buttons=["copy", "copy_all"],  # no "share": it would post to Hugging Face
                        examples=[{"text": q} for q in example_questions(index)],
                        latex_delimiters=[{"left": "$$", "right": "$$", "display": True}],
                        placeholder="Ask an ML interview question, or start from an example:")
                    suggestions = gr.Dataset(components=["textbox"], samples=[], visible=False,
                                             label="The posts don't cover that; they do cover:",
                                             elem_id="suggestions")
                    with gr.Row():
                        question = gr.Textbox(show_label=False, placeholder="e.g. how do I pick k for k-means?",
                                              scale=5, max_lines=6, autofocus=True, elem_id="question")
                        ask = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
                        stop = gr.Button("Stop", variant="stop", scale=1, visible=False, elem_id="stop")
                    new = gr.Button("New conversation", size="sm", elem_id="new")
                with gr.Column(scale=2):
                    sources = gr.HTML(sources_html(None), elem_id="sources")
            # below both columns, so that on a phone the sources come right after the conversation
            with gr.Accordion("Settings", open=False, elem_id="settings"):
                post = gr.Dropdown(post_choices(index), value="", label="Search in", elem_id="post")
                offered = [m for m in MODES.values() if m.offered or m.name == self.settings.answer_mode]
                mode = gr.Radio([m.name for m in offered], value=self.settings.answer_mode,
                                label="Answer mode", elem_id="mode",
                                info=" · ".join(f"{m.name}: {m.description}" for m in offered))
                k = gr.Slider(1, 10, value=self.settings.top_k, step=1, label="Sections to retrieve (k)")
            turns = gr.State([])
            pending = gr.State("")
            busy = gr.State(False)
            shown_status = gr.State({})

            take = dict(fn=self.take, inputs=[question, busy], outputs=[question, pending, busy, ask, stop],
                        concurrency_limit=None, show_progress="hidden", api_visibility="private")
            answer = dict(fn=self.respond, inputs=[pending, chatbot, turns, post, mode, k],
                          outputs=[chatbot, turns, sources, suggestions], concurrency_id="answer",
                          api_visibility="undocumented")
            idle = dict(fn=lambda: (False, gr.Button(visible=True), gr.Button(visible=False)),
                        outputs=[busy, ask, stop], queue=False, api_visibility="private")
            refresh = dict(fn=self.refresh_status, inputs=shown_status, outputs=[status, post, shown_status],
                           concurrency_limit=None, show_progress="hidden", api_visibility="private")
            answering = []
            for start in (question.submit(**take), ask.click(**take),
                          chatbot.example_select(**{**take, "fn": self.take_example, "inputs": busy}),
                          suggestions.click(**{**take, "fn": self.take_suggestion, "inputs": [suggestions, busy]})):
                answering.append(start.then(**answer))
                answering[-1].then(**idle).then(**refresh)
            # Stop cancels the answer (its generator is closed, which stops the model between two tokens)
            stop.click(cancels=answering, **idle)
            chatbot.like(self.record_feedback, inputs=turns, outputs=None, concurrency_limit=None,
                         api_visibility="private")
            reset = dict(fn=lambda: ([], [], sources_html(None), gr.Dataset(visible=False), ""),
                         outputs=[chatbot, turns, sources, suggestions, post], queue=False, api_visibility="private")
            new.click(**reset)
            chatbot.clear(**reset)
            demo.load(**refresh)
            gr.Timer(STATUS_EVERY).tick(**refresh)
            gr.api(self.ask, api_name="ask", concurrency_id="answer")  # shares the UI's answer slots
        return demo


def _turn_id(line: str) -> str | None:
    try:
        return json.loads(line).get("turn_id")
    except (ValueError, AttributeError):
        return None


# ------------------------------------------------------------------ start-up


def ensure_index(settings: Settings) -> None:
    """Build the index when there is none; if a `rag index` is already building it, wait for that one."""
    if current_generation(settings.index_dir) is not None:
        return
    log.info("no index in %s yet: building it from %s (about a minute on a laptop CPU)",
             settings.index_dir, settings.feed)
    waiting = False
    while current_generation(settings.index_dir) is None:
        try:
            log.info("index built:\n%s", update_index(settings).summary())
        except IndexBusy:
            if not waiting:
                log.info("another `rag index` is building it; waiting for it to finish")
            waiting = True
            time.sleep(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chat with the interview-prep posts in a browser.")
    parser.add_argument("--host", help="address to listen on (default: settings.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: settings.port, 7860)")
    parser.add_argument("--index", metavar="DIR", help="index directory (default: RAG_INDEX_DIR or ./index)")
    parser.add_argument("--config", metavar="FILE", help="settings file (default: RAG_CONFIG or ./rag.toml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "sentence_transformers", "filelock", "faiss", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = load_settings(args.config, index_dir=args.index, host=args.host, port=args.port)
        ensure_index(settings)
        app = ChatApp(settings)
        app.chat.retriever.search("warm up")  # first-query costs paid before the first user arrives
        if MODES[settings.answer_mode].uses_generator:
            app.chat.load_generator_in_background()  # the page serves meanwhile and says the model is loading
        demo = app.build()
    except RagError as e:
        print(f"app: error: {e}", file=sys.stderr)
        return 2
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    log.info("serving on http://%s:%d", settings.host, settings.port)
    demo.launch(server_name=settings.host, server_port=settings.port, theme=THEME, css=CSS, head=HEAD,
                footer_links=["api"], show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
