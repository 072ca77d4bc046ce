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
from contextlib import closing
from urllib.parse import quote

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before importing gradio: nothing leaves the machine
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gradio as gr  # noqa: E402

from rag.answer import MODES, NOT_COVERED, Answer, Chat, QuestionError, check_question  # noqa: E402
from rag.chunking import section_title  # noqa: E402
from rag.errors import UserError  # noqa: E402
from rag.index import Index, current_generation  # noqa: E402
from rag.indexer import IndexBusy, update_index  # noqa: E402
from rag.settings import Settings, load_settings  # noqa: E402

log = logging.getLogger("app")

CONCURRENCY = 4  # answers computed at once; the generator itself runs one at a time (it holds a lock)
QUEUE_SIZE = 64  # waiting requests beyond this are turned away with a "busy" message
STATUS_EVERY = 10  # seconds between checks for a rebuilt index
THEME = gr.themes.Default(font=[gr.themes.Font("system-ui"), "sans-serif"], font_mono=["monospace"])
CSS = """
#sources .source { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 10px;
                   margin-bottom: 10px; }
#sources .meta { color: var(--body-text-color-subdued); font-size: 0.85em; }
#sources .passage { white-space: pre-wrap; font-size: 0.9em; max-height: 280px; overflow-y: auto; }
#sources mark { background: #fde68a; color: inherit; }
#status { font-size: 0.85em; }
"""
CITATION_MARK = re.compile(r"\[(\d+)\]")


# ------------------------------------------------------------------ rendering (pure functions)


def escape(text: str) -> str:
    """Markdown may stay markdown, but no HTML tag from a post or a question reaches the page."""
    return html.escape(text or "", quote=False)


def answer_markdown(answer: Answer) -> str:
    """The answer text with each checked citation [n] turned into a link to its post section."""
    cited = {c.n: c for c in answer.citations}

    def link(m: re.Match) -> str:
        c = cited.get(int(m.group(1)))
        if c is None:
            return m.group(0)
        title = f"{c.post_title} — {section_title(c.section)}".replace('"', "'")  # the renderer escapes it
        return f'[\\[{c.n}\\]]({quote(c.url, safe=":/#?&=%-._~")} "{title}")'

    text = CITATION_MARK.sub(link, escape(answer.answer))
    return text.replace(NOT_COVERED, f"**{NOT_COVERED}**", 1) if answer.refused else text


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
            f"<div class='source'><div><b>[{c.n}]</b> <a href='{html.escape(c.url)}' target='_blank' "
            f"rel='noopener noreferrer'>{html.escape(c.post_title)} — {html.escape(heading)}</a></div>"
            f"<div class='meta'>{html.escape(c.date[:10])}</div>"
            f"<div class='passage'>{highlight(c.text, c.supporting)}</div></div>")
    return "<h3>Sources</h3>" + "".join(cards)


def status_markdown(settings: Settings, index: Index) -> str:
    m = index.manifest
    counts = m.get("counts", {})
    built = m.get("built_at", "?").replace("T", " ").replace("Z", " UTC")
    return (f"Models: embedder `{settings.embedder}`, generator `{settings.generator}` · "
            f"Index: {counts.get('posts', '?')} posts, {counts.get('chunks', '?')} chunks, built {built} "
            f"(`{index.generation}`)")


def post_choices(index: Index) -> list[tuple[str, str]]:
    return [("All posts", "")] + [(p.title, p.guid) for p in index.posts()]


def example_questions(index: Index, n: int = 6) -> list[str]:
    """Section headings that are interview questions ("Q3: What is Out-of-Bag (OOB) error? ..."), one per
    post, cut to their first question."""
    found: dict[str, str] = {}
    for guid, section in index.sections():
        m = re.match(r"Q\d+[.:]\s*([^?]{10,85}\?)", section.split(" > ")[-1])
        if m and guid not in found:
            found[guid] = m.group(1)
    return [found[p.guid] for p in index.posts() if p.guid in found][:n]


# ------------------------------------------------------------------ the app


class ChatApp:
    """What every session shares: settings, the loaded models (inside Chat) and the feedback lock."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.chat = Chat(settings)
        self.feedback_lock = threading.Lock()

    def take(self, question: str) -> tuple:
        """Move a valid question out of the textbox (into `pending`); keep an invalid one there and say why."""
        try:
            check_question(question, self.settings)
        except QuestionError as e:
            gr.Warning(str(e))
            return gr.skip(), ""
        return "", question

    def respond(self, question: str, messages: list, turns: list, post: str, mode: str, k: float):
        """Stream one answer into this session's chat; yields (chatbot, turns, sources, suggestions)."""
        unchanged = (gr.skip(),) * 4
        if not question:  # `take` has already said what is wrong with it
            yield unchanged
            return
        try:
            question = check_question(question, self.settings)
            history = [(t["question"], t["answer"]) for t in turns]
            messages = messages + [{"role": "user", "content": escape(question)}]
            yield messages, turns, sources_html(None), gr.Dataset(visible=False)
            # closing(): a session that goes away mid-answer releases the generator's lock at once
            with closing(self.chat.stream(question, history, post=post or None, mode=mode or None, k=int(k))) as s:
                for answer in s:
                    bot = {"role": "assistant", "content": answer_markdown(answer)}
                    yield messages + [bot], turns, sources_html(answer), gr.skip()
        except UserError as e:  # a question too long for the API, the index gone missing, a bad mode...
            gr.Warning(str(e))
            yield unchanged
            return
        turn = {"question": question, "answer": answer.answer, "refused": answer.refused, "mode": answer.mode,
                "post": post or None, "message_index": len(messages),
                "sources": [{key: v for key, v in c.items() if key != "text"} for c in answer.to_json()["citations"]]}
        suggestions = gr.Dataset(samples=[[s] for s in answer.suggestions],
                                 visible=bool(answer.refused and answer.suggestions))
        yield messages + [bot], turns + [turn], sources_html(answer), suggestions

    def ask(self, question: str, history: str = "[]", mode: str = "", post: str = "", k: int = 0) -> dict:
        """Answer a question from the posts: the same JSON object as `rag ask --json`.

        history: earlier turns as a JSON list of [question, answer] pairs; mode: extractive, grounded or
        free (empty: the configured default); post: a post guid to search only that post; k: sections to
        retrieve (0: the configured default)."""
        try:
            turns = json.loads(history or "[]")
            if not (isinstance(turns, list) and all(isinstance(t, list) and len(t) == 2 for t in turns)):
                raise ValueError("history must be a JSON list of [question, answer] pairs")
            answer = self.chat.ask(question, [tuple(t) for t in turns], post=post or None, mode=mode or None,
                                   k=int(k) or None)
        except UserError as e:
            raise gr.Error(str(e)) from e
        return answer.to_json()

    def record_feedback(self, turns: list, like: gr.LikeData) -> None:
        """Append the vote on an answer, with its question and sources, to the feedback JSONL file."""
        turn = next((t for t in turns if t["message_index"] == like.index), None)
        if turn is None:
            return
        vote = {True: "up", False: "down"}.get(like.liked, str(like.liked))
        line = json.dumps({"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "vote": vote,
                           **{k: v for k, v in turn.items() if k != "message_index"}}, ensure_ascii=False)
        path = self.settings.feedback_file
        with self.feedback_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        gr.Info("Thanks for the feedback.")

    def refresh_status(self, shown_generation: str):
        """Status note and post list, recomputed when `rag index` has switched the served generation."""
        try:
            index = self.chat.retriever.index  # LiveIndex: reopens a new CURRENT generation
        except UserError as e:
            return f"Index unavailable: {e}", gr.skip(), shown_generation
        if index.generation == shown_generation:
            return gr.skip(), gr.skip(), shown_generation
        return status_markdown(self.settings, index), gr.Dropdown(choices=post_choices(index)), index.generation

    def build(self) -> gr.Blocks:
        index = self.chat.retriever.index
        with gr.Blocks(title="Interview-prep Q&A") as demo:
            gr.Markdown("## Interview-prep Q&A\nAnswers come only from the posts of *A Data Scientist's "
                        "Handbook: Interview Prep*, with links to the sections they quote. Runs offline.")
            status = gr.Markdown(elem_id="status")
            with gr.Row():
                with gr.Column(scale=3):
                    post = gr.Dropdown(post_choices(index), value="", label="Search in", elem_id="post")
                    chatbot = gr.Chatbot(
                        elem_id="chat", label="Conversation", height=520, sanitize_html=True,
                        buttons=["copy", "copy_all"],  # no "share": it would post to Hugging Face
                        examples=[{"text": q} for q in example_questions(index)],
                        placeholder="Ask an ML interview question, or start from an example:")
                    suggestions = gr.Dataset(components=["textbox"], samples=[], visible=False,
                                             label="The posts don't cover that; they do cover:",
                                             elem_id="suggestions")
                    with gr.Row():
                        question = gr.Textbox(show_label=False, placeholder="e.g. how do I pick k for k-means?",
                                              scale=5, max_lines=6, autofocus=True, elem_id="question")
                        ask = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
                    new = gr.Button("New conversation", size="sm")
                    with gr.Accordion("Settings", open=False, elem_id="settings"):
                        mode = gr.Radio(list(MODES), value=self.settings.answer_mode, label="Answer mode",
                                        info="extractive: quotes, no model · grounded: the model picks and "
                                             "orders passage sentences · free: the model writes freely",
                                        elem_id="mode")
                        k = gr.Slider(1, 10, value=self.settings.top_k, step=1, label="Sections to retrieve (k)")
                with gr.Column(scale=2):
                    sources = gr.HTML(sources_html(None), elem_id="sources")
            turns = gr.State([])
            pending = gr.State("")
            shown_generation = gr.State("")

            take = dict(fn=self.take, outputs=[question, pending], concurrency_limit=None, show_progress="hidden",
                        api_visibility="private")
            answer = dict(fn=self.respond, inputs=[pending, chatbot, turns, post, mode, k],
                          outputs=[chatbot, turns, sources, suggestions], concurrency_id="answer",
                          api_visibility="undocumented")
            refresh = dict(fn=self.refresh_status, inputs=shown_generation, outputs=[status, post, shown_generation],
                           concurrency_limit=None, show_progress="hidden", api_visibility="private")
            question.submit(inputs=question, **take).then(**answer).then(**refresh)
            ask.click(inputs=question, **take).then(**answer).then(**refresh)
            chatbot.example_select(**{**take, "fn": take_example}).then(**answer).then(**refresh)
            suggestions.click(inputs=suggestions, **{**take, "fn": lambda s: ("", s[0])}).then(**answer).then(**refresh)
            chatbot.like(self.record_feedback, inputs=turns, outputs=None, concurrency_limit=None,
                         api_visibility="private")
            reset = dict(fn=lambda: ([], [], sources_html(None), gr.Dataset(visible=False)),
                         outputs=[chatbot, turns, sources, suggestions], queue=False, api_visibility="private")
            new.click(**reset)
            chatbot.clear(**reset)
            demo.load(**refresh)
            gr.Timer(STATUS_EVERY).tick(**refresh)
            gr.api(self.ask, api_name="ask", concurrency_id="answer")  # shares the UI's answer slots
        return demo


def take_example(example: gr.SelectData) -> tuple[str, str]:
    return "", example.value["text"]


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
        if settings.answer_mode != "extractive":
            app.chat.generator  # noqa: B018 - load the default mode's model now, not on the first question
        demo = app.build()
    except UserError as e:
        print(f"app: error: {e}", file=sys.stderr)
        return 2
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    log.info("serving on http://%s:%d", settings.host, settings.port)
    demo.launch(server_name=settings.host, server_port=settings.port, theme=THEME, css=CSS,
                footer_links=["api"], show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
