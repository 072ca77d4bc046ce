"""Feed watch: poll the feed (a file by mtime, a URL with ETag / Last-Modified) and update the index in-process.

    watcher = FeedWatcher(settings, on_status=lambda s: print(s.message)).start()   # a daemon thread
    ...
    watcher.status       # the last WatchStatus (state, one-line message, report, error, next check)
    watcher.wake()       # check now instead of at the next interval
    watcher.stop()

Each check that finds new bytes parses them and runs `rag.indexer.update_index` in this process, so the
embedder a running app has already loaded is reused (rag.embedder keeps one instance per model and
backend) and the new generation is switched in atomically (`rag.index.LiveIndex` picks it up on the next
question). A feed that cannot be fetched or parsed, or an index another `rag index` holds, leaves the
served index untouched: the status says what went wrong, the error is logged, and the next try waits twice
as long as the one before (the interval, then 2x, 4x, ... up to 16x), until a check succeeds.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import RagError
from .feed import Fetched, FeedError, feed_path, fetch_url, is_url, parse_feed
from .indexer import UpdateReport, update_index
from .settings import Settings

log = logging.getLogger(__name__)

MAX_BACKOFF_INTERVALS = 16  # a failing feed is retried at most this many intervals apart


@dataclass(frozen=True)
class WatchStatus:
    state: str  # "starting", "unchanged" (nothing new), "updated", "error"
    message: str  # one line, for a status bar or a log
    checked_at: float = 0.0  # time.time() of the check
    next_check_at: float = 0.0  # time.time() of the next one
    report: UpdateReport | None = None  # what the update did (state "updated" or "unchanged" after parsing)
    error: str | None = None
    failures: int = 0  # consecutive failed checks (the back-off doubles with each)


@dataclass
class _Validators:
    """What identifies the version last indexed, so an unchanged feed costs one stat() or one 304."""
    mtime_size: tuple[int, int] | None = None
    etag: str | None = None
    last_modified: str | None = None
    digest: str | None = None


class FeedSource:
    """Reads the feed only when it may have changed; `commit` records the version once it is indexed."""

    def __init__(self, location: str | Path, timeout: float = 30.0):
        self.location = str(location)
        self.url = is_url(location)
        self.path = None if self.url else feed_path(location)
        self.timeout = timeout
        self.seen = _Validators()
        self._pending = _Validators()

    def read_if_changed(self) -> bytes | None:
        """The feed's bytes, or None when it is the version last committed. Raises FeedError."""
        if self.url:
            got = fetch_url(self.location, self.seen.etag, self.seen.last_modified, self.timeout)
        else:
            got = self._read_file()
        if got is None or got.data is None:
            return None
        digest = hashlib.sha256(got.data).hexdigest()
        self._pending = _Validators(self._pending.mtime_size, got.etag, got.last_modified, digest)
        if digest == self.seen.digest:  # touched or re-served, same bytes
            self.commit()
            return None
        return got.data

    def _read_file(self) -> Fetched | None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self.seen.mtime_size:
                return None
            self._pending = _Validators(mtime_size=stamp)
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise FeedError(f"feed file not found: {self.path}") from None
        except OSError as e:
            raise FeedError(f"cannot read feed {self.path}: {e.strerror}") from e
        if not data.strip():
            raise FeedError(f"feed {self.path} is empty")
        return Fetched(data)

    def commit(self) -> None:
        self.seen = self._pending


class FeedWatcher:
    """Polls one feed at `interval` seconds and keeps the index in `settings.index_dir` up to date."""

    def __init__(self, settings: Settings, feed: str | Path | None = None, interval: float | None = None,
                 on_status: Callable[[WatchStatus], None] | None = None, timeout: float = 30.0):
        self.settings = settings
        self.interval = float(interval or settings.watch_interval)
        self.source = FeedSource(feed or settings.feed, timeout)
        self.on_status = on_status
        self.status = WatchStatus("starting", f"watching {self.source.location} every {self.interval:g} s")
        self.news: WatchStatus | None = None  # the last update, or the current error: outlives "unchanged" checks
        self._failures = 0
        self._checking = threading.Lock()  # one check at a time, whoever calls it
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ one check

    def check(self) -> WatchStatus:
        """Poll the feed once, now, and update the index if it changed. Never raises for a bad feed."""
        with self._checking:
            return self._check()

    def _check(self) -> WatchStatus:
        now = time.time()
        try:
            data = self.source.read_if_changed()
            report = None
            if data is not None:
                posts = parse_feed(data, self.source.location, max_item_chars=self.settings.max_item_chars)
                report = update_index(self.settings, posts=posts)
                self.source.commit()
        except RagError as e:  # FeedError, IndexBusy, IndexUnavailable, ModelError: one line each
            return self._publish(self._failed(now, str(e)))
        except Exception as e:  # noqa: BLE001 - the watch outlives any one bad check; the log has the trace
            log.exception("feed watch: unexpected error checking %s", self.source.location)
            return self._publish(self._failed(now, f"{type(e).__name__}: {e}"))
        self._failures = 0
        return self._publish(_succeeded(now, now + self.interval, report))

    def _failed(self, now: float, error: str) -> WatchStatus:
        self._failures += 1
        delay = min(self.interval * 2 ** min(self._failures - 1, 30), self.interval * MAX_BACKOFF_INTERVALS)
        log.warning("feed watch: %s (try %d failed; next in %.0f s)", error, self._failures, delay)
        return WatchStatus("error", f"feed update failed at {_clock(now)}: {error}; the index was not changed; "
                                    f"retrying in {_duration(delay)}",
                           now, now + delay, error=error, failures=self._failures)

    def _publish(self, status: WatchStatus) -> WatchStatus:
        self.status = status
        if status.state in ("updated", "error"):
            self.news = status
        elif self.news is not None and self.news.state == "error":
            self.news = None  # the feed reads again: the error is over
        if self.on_status is not None:
            try:
                self.on_status(status)
            except Exception:  # noqa: BLE001 - a broken callback must not stop the watch
                log.exception("feed watch: status callback failed")
        return status

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        """Check now, then at each next_check_at, until stop(). Blocks; `start` runs it in a thread."""
        while not self._stop.is_set():
            status = self.check()
            # in slices of a second, so a stop requested without wake() (a signal handler may not touch the
            # wake event's lock: rag.cli) ends the wait soon
            while not self._stop.is_set() and time.time() < status.next_check_at:
                if self._wake.wait(min(1.0, max(0.0, status.next_check_at - time.time()))):
                    break
            self._wake.clear()

    def stop_soon(self) -> None:
        """Ask run() to end after the check in progress, within a second; safe in a signal handler (it sets
        only the stop event, which run() reads without its lock)."""
        self._stop.set()

    def start(self) -> "FeedWatcher":
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name="feed-watch", daemon=True)
            self._thread.start()
        return self

    def wake(self) -> None:
        """Check now rather than at the next interval (e.g. a "check for new posts" button)."""
        self._wake.set()

    def stop(self, timeout: float | None = 60.0) -> None:
        """Stop after the check in progress, if any (an update is never interrupted half way)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)


def _succeeded(now: float, next_at: float, report: UpdateReport | None) -> WatchStatus:
    if report is None or report.generation is None:
        what = "no new posts" if report is None else f"no new or changed posts ({len(report.unchanged)} unchanged)"
        return WatchStatus("unchanged", f"feed checked at {_clock(now)}: {what}", now, next_at, report)
    parts = [f"{len(titles)} {label}: {', '.join(titles[:3])}{' ...' if len(titles) > 3 else ''}"
             for label, titles in (("new", report.added), ("changed", report.changed), ("removed", report.removed))
             if titles]
    return WatchStatus("updated", f"index updated at {_clock(now)}: {'; '.join(parts)} "
                                  f"({report.chunks_total} chunks, {report.seconds:.1f} s)", now, next_at, report)


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
