"""The chat app: the Chat and Practice tabs (rag/web) and the OpenAI-compatible API (rag/openai_api.py) on
one local server.

    python app.py [--host HOST] [--port PORT] [--index DIR] [--config FILE]

Builds the index of the configured feed first when there is none. Served on the same port:
    /                       the browser app (Gradio)
    /gradio_api/...         Gradio's API; the named endpoint `/ask` returns what `rag ask --json` prints
    /v1/chat/completions    OpenAI-compatible chat completions (streaming or not); /v1/models
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before importing gradio: nothing leaves the machine
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gradio as gr  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from rag.answer import Chat  # noqa: E402
from rag.conversation import QuestionError  # noqa: E402
from rag.errors import RagError  # noqa: E402
from rag.feedback import FeedbackStore  # noqa: E402
from rag.index import current_generation  # noqa: E402
from rag.indexer import IndexBusy, update_index  # noqa: E402
from rag.modes import MODES  # noqa: E402
from rag.openai_api import router as openai_router  # noqa: E402
from rag.practice import Practice  # noqa: E402
from rag.settings import Settings, load_settings  # noqa: E402
from rag.web import asset  # noqa: E402
from rag.web.chat import ChatUI  # noqa: E402
from rag.web.practice import PracticeUI  # noqa: E402
from rag.watch import FeedWatcher  # noqa: E402
from rag.web.state import GeneratorLoader  # noqa: E402

log = logging.getLogger("app")

CONCURRENCY = 4  # answers computed at once (per entry point); the model itself runs one step at a time
QUEUE_SIZE = 64  # waiting requests beyond this are turned away with a "busy" message
THEME = gr.themes.Default(font=[gr.themes.Font("system-ui"), "sans-serif"], font_mono=["monospace"])


class App:
    """What every session shares: settings, the loaded models (inside Chat), feedback and practice stores."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.chat = Chat(settings)
        self.loader = GeneratorLoader(self.chat)
        self.chat_ui = ChatUI(self.chat, self.loader, FeedbackStore(settings.feedback_file),
                              tempfile.mkdtemp(prefix="rag-export-"))
        self.practice_ui = PracticeUI(Practice(settings, index=self.chat.retriever.live))

    def ask(self, question: str, history: str = "[]", mode: str = "", post: str = "", k: int = 0) -> dict:
        """Answer a question from the posts: the same JSON object as `rag ask --json`.

        history: earlier turns as a JSON list of [question, answer] pairs; mode: an answer mode (empty: the
        configured default); post: a post guid to search only that post; k: sections to retrieve (0: the
        configured default)."""
        try:
            try:
                turns = json.loads(history or "[]")
            except (TypeError, json.JSONDecodeError) as e:
                raise QuestionError(f"history is not valid JSON ({e})") from e
            self.loader.wait(mode or None)
            answer = self.chat.ask(question, turns, post=post or None, mode=mode or None, k=k or None)
        except RagError as e:  # the same one-line messages as the CLI, no traceback in the log
            raise gr.Error(str(e), print_exception=False) from None
        return answer.to_json()

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="Interview-prep Q&A", delete_cache=(3600, 3600)) as demo:
            with gr.Row(elem_id="top"):
                gr.Markdown("## Interview-prep Q&A", elem_id="title")
                status = gr.Markdown(elem_id="status")
            gr.Markdown("Answers come only from the posts of *A Data Scientist's Handbook: Interview Prep*, with "
                        "the sections they rest on. Everything runs on this machine.", elem_classes="meta")
            banner = gr.Markdown(visible=False, elem_id="banner")
            with gr.Tabs(elem_id="tabs"):
                with gr.Tab("Chat", id="chat-tab", elem_id="chat-tab"):
                    self.chat_ui.build()
                with gr.Tab("Practice", id="practice-tab", elem_id="practice-tab"):
                    self.practice_ui.build()
            self.chat_ui.wire_page(demo, status, banner)
            gr.api(self.ask, api_name="ask", concurrency_id="answer")  # shares the UI's answer slots
        return demo

    def server(self) -> FastAPI:
        demo = self.build()
        demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
        server = FastAPI(title="Interview-prep Q&A", docs_url=None, redoc_url=None, openapi_url=None)
        server.include_router(openai_router(self.chat, CONCURRENCY, before_answer=self.loader.wait))
        return gr.mount_gradio_app(
            server, demo, path="/", server_name=self.settings.host, server_port=self.settings.port,
            footer_links=["api"], run_history=False, show_error=True, theme=THEME, css=asset("app.css"),
            head=f"<script>{asset('app.js')}</script>")


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
        app = App(settings)
        app.chat.retriever.search("warm up")  # first-query costs paid before the first user arrives
        if MODES[settings.answer_mode].uses_generator or app.chat.takes_second_looks:
            app.loader.start()  # the page serves meanwhile and says the model is loading
        # new posts in the feed are indexed in-process and switched in atomically; the status line says so
        app.chat_ui.watcher = FeedWatcher(settings).start()
        server = app.server()
    except RagError as e:
        print(f"app: error: {e}", file=sys.stderr)
        return 2
    log.info("serving on http://%s:%d", settings.host, settings.port)
    # a browser tab keeps a Gradio stream open: without a time limit, shutting down would wait for it
    uvicorn.run(server, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
