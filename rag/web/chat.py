"""The Chat tab: a thin Gradio layer over `rag.answer.Chat`; rendering is rag/render.py.

How a question travels: `take` validates it and either starts an answer (it sets `pending`, whose change
runs `respond`) or, while this session's answer is still being written, queues it (shown under the chat);
`respond` streams the answer and then answers the queued questions in order. Stop sets a flag that
`respond` checks between two pieces of the answer: it leaves the loop, which closes the answer's stream
and stops the model at its next step, and marks the answer as stopped; the queued questions go back
into the box. (Gradio's own `cancels=` would race: the cancelled event's last update could land after
Stop's.) Each conversation is a list of turn records (rag.render); it is
kept in the browser's storage, so a reload restores it, and can be downloaded as Markdown.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import uuid
from contextlib import closing
from pathlib import Path

import gradio as gr

from .. import render
from ..answer import Chat
from ..conversation import QuestionError, check_question
from ..errors import RagError
from ..feedback import FeedbackError, FeedbackStore
from ..generate import readable_name
from ..modes import MODES
from .state import GeneratorLoader, Sessions, index_build_started

log = logging.getLogger(__name__)

SAVED_TURNS = 30  # turns kept in the browser's storage (each carries its sources' text)
STORAGE_KEY = "interview-prep-chat-v1"
# BrowserState encrypts with a key the page itself receives, so it is no secret; a fixed one keeps a saved
# conversation readable after the server restarts (a random one would not).
STORAGE_SECRET = "interview-prep-chat"
STATUS_EVERY = 3  # seconds between checks for a loaded model or a rebuilt index
INDEX_NEWS_SECONDS = 120  # how long "index updated" stays on screen
LOADING = "⏳ _Loading the local language model; the answer starts as soon as it is ready…_"


def _message(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _stopped(turn_id: str, question: str, partial: str) -> dict:
    return {"turn_id": turn_id, "question": question, "answer": "", "partial": partial, "stopped": True,
            "citations": []}


def messages_for(turns: list[dict]) -> list[dict]:
    out = []
    for i, t in enumerate(turns):
        out += [_message("user", render.escape(t["question"])), _message("assistant", render.answer_markdown(t, i))]
    return out


def votes_for(turns: list[dict]) -> list[str | None]:
    return [{"up": "Like", "down": "Dislike"}.get(t.get("vote")) for t in turns]


FEED_NEWS = 15 * 60  # seconds a feed update or error stays on the status line


class ChatUI:
    def __init__(self, chat: Chat, loader: GeneratorLoader, feedback: FeedbackStore, export_dir: Path):
        self.chat, self.settings, self.loader, self.feedback = chat, chat.settings, loader, feedback
        self.sessions = Sessions()
        self.export_dir = Path(export_dir)
        self.export_dir.mkdir(parents=True, exist_ok=True)
        self._last_generation: tuple[str, float] | None = None  # (generation, when it was first seen)
        self.watcher = None  # rag.watch.FeedWatcher, when the app watches the feed: its news joins the status line

    # ------------------------------------------------------------------ asking

    def take(self, question: str, request: gr.Request):
        """(textbox, pending, queued, ask, stop): start answering a valid question, or queue it while this
        session's answer is still being written; an invalid one stays in the box with a note."""
        try:
            question = check_question(question, self.settings.max_question_chars)
        except QuestionError as e:
            gr.Warning(str(e), duration=5)
            return (gr.skip(),) * 5
        if self.sessions.start_or_queue(request.session_hash, question):
            return "", {"id": uuid.uuid4().hex, "question": question}, gr.skip(), *self._buttons(True)
        return "", gr.skip(), self._queued(request.session_hash), gr.skip(), gr.skip()

    def take_example(self, example: gr.SelectData, request: gr.Request):
        return self.take(example.value["text"], request)[1:]

    def take_suggestion(self, sample: list, request: gr.Request):
        return self.take(sample[0], request)[1:]

    def _queued(self, key: str):
        _, queue = self.sessions.view(key)
        if not queue:
            return gr.Markdown(visible=False)
        items = " · ".join(f"“{render.escape(render.plain_preview(q, 80))}”" for q in queue)
        return gr.Markdown(f"**Queued:** {items} — asked when the current answer is done.", visible=True)

    @staticmethod
    def _buttons(busy: bool):
        return gr.Button(visible=not busy), gr.Button(visible=busy)

    def respond(self, pending: dict, turns: list, post: str, mode: str, k: float, request: gr.Request):
        """Stream the answer to `pending`, then to each question queued meanwhile. Yields (chatbot, turns,
        sources, suggestions, queued, saved, export). The chat is drawn from the turns (the conversation's
        record), never read back from the page."""
        key = request.session_hash
        question = (pending or {}).get("question")
        turns = list(turns or [])
        messages = messages_for(turns)
        epoch = self.sessions.epoch(key)
        self.sessions.running(key, True)
        completed = False
        try:
            while question:
                with closing(self._answer(key, question, messages, turns, post, mode, k)) as updates:
                    for update in updates:
                        if self.sessions.epoch(key) != epoch:  # "New conversation" was pressed meanwhile
                            break
                        yield update
                question = self.sessions.next_or_idle(key)
                if question:
                    yield (gr.skip(),) * 4 + (self._queued(key), gr.skip(), gr.skip())
            completed = True
        finally:
            if not completed:  # a bug, or the page went away: the session must not stay busy for ever
                self.sessions.abandon(key)
            self.sessions.running(key, False)

    def _answer(self, key: str, question: str, messages: list, turns: list, post: str, mode: str, k: float):
        """One answer; appends to `messages` and `turns` in place. Ends early, marked as stopped, when
        Stop is pressed (checked between two pieces of the answer)."""
        skip = gr.skip()
        messages.append(_message("user", render.escape(question)))
        index = len(turns)
        try:
            plan = self.chat.plan(question, render.history_pairs(turns), post=post or None, mode=mode or None,
                                  k=int(k) if k else None)
        except RagError as e:
            gr.Warning(str(e), duration=6)
            messages.pop()
            return
        waiting = self.loader.needed(plan.mode)
        messages.append(_message("assistant", LOADING if waiting else "…"))
        if waiting:
            self.loader.start()
        yield messages, skip, render.sources_html(turns, pending=question), gr.Dataset(visible=False), skip, skip, skip
        while waiting and self.loader.loading and not self.sessions.stopping(key):
            self.loader.wait(plan.mode, timeout=0.5)
        turn_id, title = uuid.uuid4().hex, self.post_title(post)
        answer, shown, record = None, "", None
        if self.sessions.stopping(key):  # stopped while the model was loading: the answer never starts
            record = _stopped(turn_id, question, "")
        else:
            try:
                # closing(): leaving the loop early (Stop, or a closed page whose generator Gradio closes)
                # closes the answer's stream, which stops the model at its next step
                with closing(self.chat.stream_plan(plan)) as stream:
                    for answer in stream:
                        if self.sessions.stopping(key):
                            break
                        partial = render.turn_record(answer, turn_id=turn_id, post=post or None, post_title=title)
                        shown = render.answer_markdown({**partial, "done": True}, index)
                        messages[-1] = _message("assistant", render.answer_markdown(partial, index))
                        yield messages, skip, skip, skip, skip, skip, skip
                if self.sessions.stopping(key) and not (answer and answer.done):
                    record = _stopped(turn_id, question, shown)
                    log.info("answer stopped by the user after %d characters", len(shown))
            except RagError as e:  # the model failed to load, the index went missing...
                gr.Warning(str(e), duration=8)
                record = {"turn_id": turn_id, "question": question, "answer": "", "error": str(e), "citations": []}
        if record is None:
            elsewhere = self._elsewhere(plan) if answer.refused and plan.post else []
            record = render.turn_record(answer, turn_id=turn_id, post=post or None, post_title=title,
                                        elsewhere=elsewhere)
        messages[-1] = _message("assistant", render.answer_markdown(record, index))
        turns.append(record)
        suggestions = gr.Dataset(samples=[[s] for s in record.get("suggestions", [])],
                                 visible=bool(record.get("refused") and record.get("suggestions")))
        yield (messages, turns, render.sources_html(turns), suggestions, skip, self._saved(turns),
               self._export(turns))

    def _elsewhere(self, plan) -> list[dict]:
        """With a post filter, what the other posts hold for a refused question (None covered: [])."""
        try:
            wider = self.chat.retrieve(dataclasses.replace(plan, post=None))
        except RagError:
            return []
        if not wider.covered:
            return []
        return [{"post_title": p.post_title, "section": p.section} for p in wider.passages[:2]
                if p.post_guid != plan.post]

    def sync(self, request: gr.Request):
        """(ask, stop, queued) as the session's state says."""
        busy, _ = self.sessions.view(request.session_hash)
        return *self._buttons(busy), self._queued(request.session_hash)

    def stop(self, question: str, request: gr.Request):
        """Stop pressed: the answer being written ends at its next piece (the answering code checks the
        flag, closes the model's stream and marks the answer as stopped); queued questions go back into
        the box. (textbox, queued, ask, stop)"""
        queued = self.sessions.request_stop(request.session_hash)
        text = "\n".join(q for q in [(question or "").strip(), *queued] if q)
        return text, gr.Markdown(visible=False), *self._buttons(False)

    # ------------------------------------------------------------------ regenerate, edit, undo

    def retry(self, turns: list, data: gr.RetryData, request: gr.Request):
        """Regenerate: answer the retried question again (with the current settings).
        (chatbot, turns, pending, sources, ask, stop)"""
        return self._redo(turns, data.index // 2, None, request)

    def edit(self, turns: list, data: gr.EditData, request: gr.Request):
        """An edited question replaces that turn and every later one, and is answered."""
        return self._redo(turns, data.index // 2, str(data.value or ""), request)

    def _redo(self, turns: list, at: int, question: str | None, request: gr.Request):
        turns = list(turns or [])
        if not 0 <= at < len(turns):
            return (gr.skip(),) * 6
        question = question if question is not None else turns[at]["question"]
        try:
            question = check_question(question, self.settings.max_question_chars)
        except QuestionError as e:
            gr.Warning(str(e), duration=5)
            return messages_for(turns), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        if not self.sessions.start(request.session_hash):
            gr.Warning("An answer is still being written: press Stop first.", duration=5)
            return messages_for(turns), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        kept = turns[:at]
        shown = messages_for(kept) + [_message("user", render.escape(question)), _message("assistant", "…")]
        return (shown, kept, {"id": uuid.uuid4().hex, "question": question}, render.sources_html(kept),
                *self._buttons(True))

    def undo(self, turns: list, data: gr.UndoData, request: gr.Request):
        """Remove the last turn and put its question back into the box.
        (chatbot, turns, textbox, sources, saved, export)"""
        turns = list(turns or [])
        busy, _ = self.sessions.view(request.session_hash)
        if busy or not turns:
            return messages_for(turns), *(gr.skip(),) * 5
        at = min(data.index // 2, len(turns) - 1)
        question, kept = turns[at]["question"], turns[:at]
        return messages_for(kept), kept, question, render.sources_html(kept), self._saved(kept), self._export(kept)

    # ------------------------------------------------------------------ feedback

    def vote(self, turns: list, data: gr.LikeData):
        """One current vote per answer; the comment box opens for an optional comment.
        (turns, saved, comment row, comment target, comment note)"""
        turns = list(turns or [])
        at = data.index // 2 if isinstance(data.index, int) else data.index[0] // 2
        if not 0 <= at < len(turns) or turns[at].get("stopped"):
            return (gr.skip(),) * 5
        vote = {True: "up", False: "down"}.get(data.liked) if isinstance(data.liked, bool) else \
            {"Like": "up", "Dislike": "down"}.get(str(data.liked))
        turn = {**turns[at], "vote": vote}
        try:
            self.feedback.vote(turn, vote, render.history_pairs(turns[max(0, at - 3):at]))
        except (FeedbackError, OSError) as e:
            gr.Warning(f"The vote was not saved: {e}", duration=6)
            return (gr.skip(),) * 5
        turns[at] = turn
        if vote is None:
            return turns, self._saved(turns), gr.Row(visible=False), None, ""
        label = "👍" if vote == "up" else "👎"
        note = (f"{label} saved for “{render.escape(render.plain_preview(turn['question'], 60))}”. "
                f"Anything to add? (optional)")
        return turns, self._saved(turns), gr.Row(visible=True), turn["turn_id"], note

    def comment(self, text: str, turn_id: str | None, turns: list):
        """(comment box, comment row, comment note, turns, saved)"""
        if not turn_id:
            return gr.skip(), gr.Row(visible=False), "", gr.skip(), gr.skip()
        try:
            self.feedback.comment(turn_id, text)
        except (FeedbackError, OSError) as e:
            gr.Warning(str(e), duration=5)
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        turns = [{**t, "comment": " ".join(text.split())} if t.get("turn_id") == turn_id else t
                 for t in (turns or [])]
        return "", gr.Row(visible=False), "", turns, self._saved(turns)

    # ------------------------------------------------------------------ conversation lifetime

    def restore(self, saved: dict | None):
        """The conversation saved in this browser, shown again after a reload.
        (chatbot, turns, sources, export)"""
        turns = [t for t in (saved or {}).get("turns", []) if isinstance(t, dict) and "question" in t]
        if not turns:
            return gr.skip(), [], render.sources_html([]), gr.DownloadButton(visible=False)
        return (gr.Chatbot(value=messages_for(turns), feedback_value=votes_for(turns)), turns,
                render.sources_html(turns), self._export(turns))

    def new(self, request: gr.Request):
        """New conversation: stop any answer, forget the queue, the chat, the saved copy and the post filter.
        (chatbot, turns, sources, suggestions, post, saved, export, queued, ask, stop, comment row)"""
        self.sessions.reset(request.session_hash)
        # an answer being written ends at its next piece; its last update must reach the page before this
        self.sessions.wait_idle(request.session_hash, timeout=10)
        return ([], [], render.sources_html([]), gr.Dataset(visible=False), "", {"turns": []},
                gr.DownloadButton(visible=False), gr.Markdown(visible=False), *self._buttons(False),
                gr.Row(visible=False))

    def leave(self, request: gr.Request) -> None:
        self.sessions.drop(request.session_hash)

    @staticmethod
    def _saved(turns: list) -> dict:
        return {"turns": turns[-SAVED_TURNS:]}

    def _export(self, turns: list):
        if not turns:
            return gr.DownloadButton(visible=False)
        path = self.export_dir / f"conversation-{uuid.uuid4().hex[:8]}.md"
        path.write_text(render.conversation_markdown(turns), encoding="utf-8")
        for old in self.export_dir.glob("conversation-*.md"):  # Gradio has copied earlier ones to its cache
            if old != path and time.time() - old.stat().st_mtime > 60:
                old.unlink(missing_ok=True)
        return gr.DownloadButton(value=str(path), visible=True)

    # ------------------------------------------------------------------ settings and status

    def post_title(self, guid: str) -> str:
        return next((p.title for p in self.chat.retriever.index.posts() if p.guid == guid), "") if guid else ""

    def post_choices(self) -> list[tuple[str, str]]:
        return [("All posts", "")] + [(p.title, p.guid) for p in self.chat.retriever.index.posts()]

    def filter_changed(self, post: str):
        """The post filter is shown next to the question box whenever it is set. (row, note)"""
        if not post:
            return gr.Row(visible=False), ""
        return gr.Row(visible=True), f"Searching only *{render.escape(self.post_title(post))}*"

    def mode_changed(self, mode: str):
        """Choosing a mode that needs the model starts loading it now, not at the first question."""
        if self.loader.needed(mode):
            self.loader.start()
        return self.banner()

    def model_state(self) -> str:
        name = readable_name(self.settings.generator)
        if self.chat.generator_ready:
            return f"{name} ready"
        if self.loader.loading:
            return f"loading {name}…"
        if self.loader.failed:
            return f"{name} failed to load"
        return "answers quote the posts" if not MODES[self.settings.answer_mode].uses_generator else f"{name} not loaded"

    def banner(self):
        """A visible state for the slow things: the model loading, an index update being written or just
        served."""
        notes = []
        if self.loader.loading:
            waited = time.monotonic() - (self.loader.started_at or time.monotonic())
            notes.append(f"⏳ Loading the local language model ({waited:.0f} s so far; the first start on a "
                         f"machine converts it, which takes a minute or two). Answers that need it wait; "
                         f"the *extractive* mode answers now.")
        elif self.loader.failed:
            notes.append("⚠️ The language model could not be loaded (see the server log); the *extractive* "
                         "mode still answers.")
        started = index_build_started(self.settings.index_dir)
        if started:
            notes.append(f"⟳ The index is being updated (since {time.strftime('%H:%M', time.localtime(started))}); "
                         f"answers use the current one until the new one is complete.")
        if self._last_generation and time.monotonic() - self._last_generation[1] < INDEX_NEWS_SECONDS:
            notes.append(f"✓ Index updated: now {self._count_posts()} posts.")
        return gr.Markdown(" ".join(notes), visible=bool(notes))

    def _count_posts(self) -> int:
        try:
            return len(self.chat.retriever.index.posts())
        except RagError:
            return 0

    def refresh_status(self, shown: dict):
        """(status, banner, about, post choices, shown): recomputed on a timer; the post list is replaced
        only when `rag index` switched the served generation."""
        shown = shown or {}
        try:
            index = self.chat.retriever.index  # LiveIndex: reopens a new CURRENT generation
        except RagError as e:
            return f"Index unavailable: {e}", self.banner(), gr.skip(), gr.skip(), shown
        if self._last_generation is None:
            self._last_generation = (index.generation, -1e9)
        elif index.generation != self._last_generation[0]:
            self._last_generation = (index.generation, time.monotonic())
        posts = len(index.posts())
        line = render.status_line(posts, self.model_state()) + self.feed_note()
        about = render.about_markdown(index.manifest, index.generation, readable_name(self.settings.generator))
        choices = gr.Dropdown(choices=self.post_choices()) if index.generation != shown.get("generation") else gr.skip()
        return (line if line != shown.get("line") else gr.skip(), self.banner(),
                about if about != shown.get("about") else gr.skip(), choices,
                {"line": line, "about": about, "generation": index.generation})

    def feed_note(self) -> str:
        """What the feed watch last did, while it is news: an update or an error (an unchanged feed says nothing)."""
        status = self.watcher.news if self.watcher is not None else None
        if status is None or status.state not in ("updated", "error") or time.time() - status.checked_at > FEED_NEWS:
            return ""
        return f" · feed: {status.message}"

    def examples(self) -> list[str]:
        index = self.chat.retriever.index
        words: dict[str, set[str]] = {}
        for c in index.all_chunks():
            words.setdefault(c.post_guid, set()).update(re.findall(r"[a-z0-9][a-z0-9+\-]*", c.text.lower()))
        # five of the posts' own questions, and what a newcomer asks first (answered from rag/catalog.py)
        return render.example_questions(index.sections(), words, [p.guid for p in index.posts()], n=5) + [
            "What topics do the posts cover?"]

    # ------------------------------------------------------------------ the tab

    def build(self) -> None:
        """The Chat tab's components and events (inside an open gr.Blocks / gr.Tab)."""
        s = self.settings
        with gr.Row(equal_height=False, elem_id="chat-row"):
            with gr.Column(scale=3, min_width=300, elem_id="chat-col"):
                chatbot = gr.Chatbot(
                    elem_id="chat", show_label=False, height="62vh", min_height=320, sanitize_html=True,
                    buttons=["copy", "copy_all"],  # no "share": it would post to Hugging Face
                    examples=[{"text": q} for q in self.examples()], editable="user",
                    latex_delimiters=[{"left": "$$", "right": "$$", "display": True}],
                    placeholder="Ask an ML interview question, or start from an example:")
                suggestions = gr.Dataset(components=["textbox"], samples=[], visible=False,
                                         label="The posts don't cover that; they do cover:", elem_id="suggestions")
                queued = gr.Markdown(visible=False, elem_id="queued")
                with gr.Row(visible=False, elem_id="filter-row") as filter_row:
                    filter_note = gr.Markdown(elem_id="filter-note")
                    all_posts = gr.Button("Search all posts", size="sm", scale=0, min_width=120, elem_id="all-posts")
                with gr.Row(elem_id="input-row"):
                    question = gr.Textbox(show_label=False, placeholder="e.g. why is pre-LN more stable than post-LN?",
                                          scale=5, min_width=160, max_lines=6, autofocus=True, elem_id="question")
                    ask = gr.Button("Ask", variant="primary", scale=1, min_width=72, elem_id="ask")
                    stop = gr.Button("Stop", variant="stop", scale=1, min_width=72, visible=False, elem_id="stop")
                with gr.Row(visible=False, elem_id="comment-row") as comment_row:
                    comment_note = gr.Markdown(elem_id="comment-note")
                    comment_box = gr.Textbox(show_label=False, placeholder="What was wrong or good? (optional)",
                                             scale=4, min_width=160, max_lines=4, elem_id="comment")
                    send_comment = gr.Button("Send", size="sm", scale=0, min_width=72, elem_id="send-comment")
                with gr.Row(elem_id="chat-actions"):
                    new = gr.Button("New conversation", size="sm", elem_id="new")
                    export = gr.DownloadButton("Export as Markdown", size="sm", visible=False, elem_id="export")
            with gr.Column(scale=2, min_width=300, elem_id="sources-col"):
                sources = gr.HTML(render.sources_html([]), elem_id="sources")
        with gr.Accordion("Settings", open=False, elem_id="settings"):
            post = gr.Dropdown(self.post_choices(), value="", label="Search in", elem_id="post")
            offered = [m for m in MODES.values() if m.offered or m.name == s.answer_mode]
            mode = gr.Radio([m.name for m in offered], value=s.answer_mode, label="Answer mode", elem_id="mode",
                            info=" · ".join(f"{m.name}: {m.description}" for m in offered))
            k = gr.Slider(1, 10, value=s.top_k, step=1, label="Sections to retrieve (k)", elem_id="k")
            about = gr.Markdown(elem_id="about")
        turns = gr.State([])
        pending = gr.State(None)
        comment_for = gr.State(None)
        shown = gr.State({})
        saved = gr.BrowserState({"turns": []}, storage_key=STORAGE_KEY, secret=STORAGE_SECRET)
        self.components = dict(chatbot=chatbot, question=question, ask=ask, stop=stop, sources=sources, post=post,
                               mode=mode, k=k, about=about, export=export, turns=turns, saved=saved, shown=shown)

        quick = dict(concurrency_limit=None, show_progress="hidden", api_visibility="private")
        take = dict(fn=self.take, inputs=question, outputs=[question, pending, queued, ask, stop], **quick)
        question.submit(**take)
        ask.click(**take)
        chatbot.example_select(**{**take, "fn": self.take_example, "inputs": None, "outputs": [pending, queued, ask, stop]})
        suggestions.click(**{**take, "fn": self.take_suggestion, "inputs": suggestions,
                             "outputs": [pending, queued, ask, stop]})
        answering = pending.change(self.respond, inputs=[pending, turns, post, mode, k],
                                   outputs=[chatbot, turns, sources, suggestions, queued, saved, export],
                                   concurrency_id="answer", show_progress="hidden", api_visibility="private")
        answering.then(self.sync, outputs=[ask, stop, queued], **quick)
        stop.click(self.stop, inputs=question, outputs=[question, queued, ask, stop], **quick)
        redo_out = [chatbot, turns, pending, sources, ask, stop]
        chatbot.retry(self.retry, inputs=turns, outputs=redo_out, **quick)
        chatbot.edit(self.edit, inputs=turns, outputs=redo_out, **quick)
        chatbot.undo(self.undo, inputs=turns, outputs=[chatbot, turns, question, sources, saved, export], **quick)
        chatbot.like(self.vote, inputs=turns, outputs=[turns, saved, comment_row, comment_for, comment_note], **quick)
        for send in (send_comment.click, comment_box.submit):
            send(self.comment, inputs=[comment_box, comment_for, turns],
                 outputs=[comment_box, comment_row, comment_note, turns, saved], **quick)
        reset = dict(fn=self.new, outputs=[chatbot, turns, sources, suggestions, post, saved, export, queued, ask,
                                           stop, comment_row], **quick)
        new.click(**reset)
        chatbot.clear(**reset)
        post.change(self.filter_changed, inputs=post, outputs=[filter_row, filter_note], **quick)
        all_posts.click(lambda: "", outputs=post, **quick)

    def wire_page(self, demo: gr.Blocks, status, banner) -> None:
        """Page-level events: restore the saved conversation, keep the status and banner current."""
        c = self.components
        quick = dict(concurrency_limit=None, show_progress="hidden", api_visibility="private")
        demo.load(self.restore, inputs=c["saved"], outputs=[c["chatbot"], c["turns"], c["sources"], c["export"]],
                  **quick)
        refresh = dict(fn=self.refresh_status, inputs=c["shown"], outputs=[status, banner, c["about"], c["post"],
                                                                           c["shown"]], **quick)
        demo.load(**refresh)
        gr.Timer(STATUS_EVERY).tick(**refresh)
        c["mode"].change(self.mode_changed, inputs=c["mode"], outputs=banner, **quick)
        demo.unload(self.leave)
