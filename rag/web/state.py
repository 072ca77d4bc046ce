"""Server-side state the browser sessions share: who is answering what (and what is queued behind it),
the language model's loading, and whether the index is being rebuilt."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..answer import Chat
from ..modes import MODES

log = logging.getLogger(__name__)

BUILD_FRESH_SECONDS = 15 * 60  # a half-written generation older than this is a killed run's leftover


@dataclass
class Session:
    busy: bool = False  # an answer is being written
    queue: list[str] = field(default_factory=list)  # questions sent meanwhile
    stop: bool = False  # Stop was pressed: the answer being written ends at its next piece
    epoch: int = 0  # counts "New conversation": an answer begun before one must not write into the new one
    idle: threading.Event = field(default_factory=threading.Event)  # set while no answering code runs

    def __post_init__(self):
        self.idle.set()


class Sessions:
    """Per browser session: whether an answer is being written, the questions sent meanwhile, and a Stop
    request. Every change happens under one lock, so a question sent just as an answer ends is never
    dropped: it is either queued before the answer looks for the next one, or it starts an answer itself.
    Stop is a flag the answering code checks between two pieces of the answer, so that code ends the
    answer itself (closing the model's stream) and its last update is the one the page keeps."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def _get(self, key: str) -> Session:
        return self._sessions.setdefault(key, Session())

    def start_or_queue(self, key: str, question: str) -> bool:
        """True: the caller starts answering `question` now; False: it was queued."""
        with self._lock:
            s = self._get(key)
            if s.busy:
                s.queue.append(question)
                return False
            s.busy, s.stop = True, False
            return True

    def start(self, key: str) -> bool:
        """Mark the session busy unless it already is (regenerate, edit): False when it is."""
        with self._lock:
            s = self._get(key)
            if s.busy:
                return False
            s.busy, s.stop = True, False
            return True

    def next_or_idle(self, key: str) -> str | None:
        """The next queued question (the session stays busy), or None and the session is idle. After a
        Stop the queue holds only questions sent after it (Stop handed the earlier ones back)."""
        with self._lock:
            s = self._get(key)
            s.stop = False
            if s.queue:
                return s.queue.pop(0)
            s.busy = False
            return None

    def request_stop(self, key: str) -> list[str]:
        """Stop the answer being written; returns the queued questions (they go back to the text box)."""
        with self._lock:
            s = self._get(key)
            queued, s.queue = s.queue, []
            s.stop = s.busy
            return queued

    def abandon(self, key: str) -> None:
        """The answering code ended abnormally: the session is idle and its queue dropped."""
        with self._lock:
            s = self._get(key)
            s.busy, s.stop, s.queue = False, False, []

    def stopping(self, key: str) -> bool:
        with self._lock:
            return self._get(key).stop

    def reset(self, key: str) -> None:
        """New conversation: forget the queue and stop what is being written."""
        with self._lock:
            s = self._get(key)
            s.queue, s.stop, s.epoch = [], s.busy, s.epoch + 1

    def running(self, key: str, running: bool) -> None:
        """The answering code of a session starts (True) or has ended, however it ended (False)."""
        with self._lock:
            event = self._get(key).idle
        event.clear() if running else event.set()

    def wait_idle(self, key: str, timeout: float) -> bool:
        with self._lock:
            event = self._get(key).idle
        return event.wait(timeout)

    def epoch(self, key: str) -> int:
        with self._lock:
            return self._get(key).epoch

    def view(self, key: str) -> tuple[bool, list[str]]:
        with self._lock:
            s = self._sessions.get(key) or Session()
            return s.busy, list(s.queue)

    def drop(self, key: str) -> None:
        with self._lock:
            self._sessions.pop(key, None)


class GeneratorLoader:
    """Loads the language model once, in the background, and lets answers wait for that one load (two
    requests arriving during a load must not start a second one)."""

    def __init__(self, chat: Chat):
        self.chat = chat
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.started_at: float | None = None

    def start(self) -> None:
        with self._lock:
            if self.chat.generator_ready or (self._thread and self._thread.is_alive()):
                return
            self.started_at = time.monotonic()
            self._thread = self.chat.load_generator_in_background()

    @property
    def loading(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    @property
    def failed(self) -> bool:
        return bool(self._thread and not self._thread.is_alive() and not self.chat.generator_ready)

    def needed(self, mode: str | None) -> bool:
        m = MODES.get(mode or self.chat.settings.answer_mode)
        return bool(m and m.uses_generator and not self.chat.generator_ready)

    def wait(self, mode: str | None, timeout: float | None = None) -> None:
        """Start the load if `mode` needs the model and wait for it; a failed load is left for the answer
        to report (it tries again and raises the ModelError)."""
        if not self.needed(mode):
            return
        self.start()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)


def index_build_started(index_dir: Path) -> float | None:
    """When a `rag index` run still writing a new generation started (its .tmp-* directory), or None."""
    try:
        stamps = [p.stat().st_mtime for p in Path(index_dir).glob(".tmp-*") if p.is_dir()]
    except OSError:
        return None
    fresh = [t for t in stamps if time.time() - t < BUILD_FRESH_SECONDS]
    return min(fresh) if fresh else None
