"""Feed watch with real parts: a real index on disk, real feed files, a real HTTP server in a thread (ETag,
Last-Modified, 304, timeouts, garbage, errors), the watcher's own thread and `rag index --watch` as a process."""

from __future__ import annotations

import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from rag.index import Index, current_generation
from rag.indexer import update_index
from rag.watch import MAX_BACKOFF_INTERVALS, FeedWatcher

from .conftest import NEW_POST_HTML, write_feed

pytestmark = pytest.mark.slow

NEW = ("https://x/gradient-boosting", "Gradient Boosting: Interview Questions", NEW_POST_HTML)
INTERVAL = 60.0  # the checks below are called directly; the interval only sets next_check_at


def posts(settings) -> set[str]:
    index = Index.open(settings)
    try:
        return {p.title for p in index.posts()}
    finally:
        index.close()


@pytest.fixture()
def small(tmp_path, settings_for):
    """A one-post index and the feed file it was built from."""
    feed = write_feed(tmp_path / "feed.xml", keep=[8])
    settings = settings_for(tmp_path / "index")
    update_index(settings, feed=feed)
    return settings, feed


def test_a_file_feed_is_read_only_when_it_changes_and_a_new_post_is_indexed(small, tmp_path):
    settings, feed = small
    (before,) = posts(settings)
    seen = []
    watcher = FeedWatcher(settings, feed=feed, interval=INTERVAL, on_status=seen.append)
    first = watcher.check()
    assert first.state == "unchanged" and first.report.unchanged == [before]  # read and compared once
    again = watcher.check()
    assert again.state == "unchanged" and again.report is None  # same mtime and size: not even read
    os.utime(feed)  # touched, same bytes: read, found identical, not indexed
    assert watcher.check().report is None
    generation = current_generation(settings.index_dir)

    write_feed(tmp_path / "next.xml", keep=[8], new=[NEW]).replace(feed)
    status = watcher.check()

    assert status.state == "updated", status.message
    assert status.report.added == [NEW[1]] and status.report.chunks_embedded > 0
    assert f"1 new: {NEW[1]}" in status.message and "\n" not in status.message
    assert posts(settings) == {before, NEW[1]}
    assert current_generation(settings.index_dir) not in (None, generation)
    assert [s.state for s in seen] == ["unchanged", "unchanged", "unchanged", "updated"]
    assert status.next_check_at == pytest.approx(status.checked_at + INTERVAL)
    assert watcher.check().state == "unchanged" and watcher.news == status  # the update stays the news


def test_a_damaged_file_leaves_the_index_untouched_and_is_retried_with_back_off(small, tmp_path):
    settings, feed = small
    watcher = FeedWatcher(settings, feed=feed, interval=INTERVAL)
    watcher.check()
    generation, before = current_generation(settings.index_dir), posts(settings)
    good = write_feed(tmp_path / "next.xml", keep=[8], new=[NEW]).read_bytes()
    feed.write_bytes(good[: len(good) // 2])  # a half-written file

    delays = []
    for attempt in range(1, 7):
        status = watcher.check()
        assert status.state == "error" and status.failures == attempt
        assert "not well-formed XML" in status.error and "the index was not changed" in status.message
        assert "\n" not in status.message
        delays.append(status.next_check_at - status.checked_at)
        assert current_generation(settings.index_dir) == generation and posts(settings) == before
        assert watcher.news == status  # the error is shown until the feed reads again
    assert delays == pytest.approx([INTERVAL * f for f in (1, 2, 4, 8, MAX_BACKOFF_INTERVALS, MAX_BACKOFF_INTERVALS)])

    feed.write_bytes(good)  # the writer finished
    status = watcher.check()
    assert status.state == "updated" and status.failures == 0
    assert status.next_check_at - status.checked_at == pytest.approx(INTERVAL)
    assert posts(settings) == before | {NEW[1]}


def test_a_missing_feed_file_is_an_error_not_a_crash(small, tmp_path):
    settings, _ = small
    status = FeedWatcher(settings, feed=tmp_path / "gone.xml", interval=INTERVAL).check()
    assert status.state == "error" and "not found" in status.error


# ------------------------------------------------------------------ a real HTTP server


class FeedServer:
    """Serves `body` with an ETag and Last-Modified, answers 304 to a matching If-None-Match, and can be
    told to stall, fail or serve garbage. Records the conditional headers of every request."""

    def __init__(self, body: bytes):
        self.body, self.mode, self.stall = body, "ok", 0.0
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.requests.append({"if_none_match": self.headers.get("If-None-Match"),
                                        "if_modified_since": self.headers.get("If-Modified-Since")})
                if server.stall:
                    time.sleep(server.stall)
                if server.mode == "error":
                    self.send_error(503, "Service Unavailable")
                    return
                body = b"<html><body>502 Bad Gateway</body></html>" if server.mode == "garbage" else server.body
                etag = '"%s"' % hashlib.sha256(body).hexdigest()[:16]
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", "Sat, 05 Dec 2026 10:00:00 GMT")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/feed.xml"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server(small):
    s = FeedServer(small[1].read_bytes())
    yield s
    s.close()


def test_a_url_is_polled_with_etag_and_last_modified_and_304_costs_nothing(small, server, tmp_path):
    settings, _ = small
    watcher = FeedWatcher(settings, feed=server.url, interval=INTERVAL, timeout=5)
    assert watcher.check().state == "unchanged"
    assert server.requests[-1] == {"if_none_match": None, "if_modified_since": None}
    status = watcher.check()
    assert status.state == "unchanged" and status.report is None
    assert server.requests[-1]["if_none_match"] and server.requests[-1]["if_modified_since"]

    server.body = write_feed(tmp_path / "next.xml", keep=[8], new=[NEW]).read_bytes()
    status = watcher.check()
    assert status.state == "updated" and status.report.added == [NEW[1]]
    assert NEW[1] in posts(settings)


def test_timeouts_garbage_and_server_errors_leave_the_index_untouched(small, server, tmp_path):
    settings, _ = small
    watcher = FeedWatcher(settings, feed=server.url, interval=INTERVAL, timeout=0.5)
    watcher.check()
    generation, before = current_generation(settings.index_dir), posts(settings)
    server.body = write_feed(tmp_path / "next.xml", keep=[8], new=[NEW]).read_bytes()

    expected = []
    for mode, stall, message in [("ok", 2.0, "timed out"), ("garbage", 0, "not an RSS/Atom feed"),
                                 ("error", 0, "HTTP 503")]:
        server.mode, server.stall = mode, stall
        status = watcher.check()
        expected.append(INTERVAL * 2 ** (status.failures - 1))
        assert status.state == "error" and message in status.error, status.error
        assert status.next_check_at - status.checked_at == pytest.approx(expected[-1])
        assert current_generation(settings.index_dir) == generation and posts(settings) == before
        assert watcher.news == status  # the error is shown until the feed reads again
    assert expected == [INTERVAL, 2 * INTERVAL, 4 * INTERVAL]

    server.mode, server.stall = "ok", 0.0
    status = watcher.check()
    assert status.state == "updated" and status.failures == 0 and NEW[1] in posts(settings)


def test_the_watch_thread_updates_by_itself_and_stops(small, tmp_path):
    settings, feed = small
    updated = threading.Event()
    states = []

    def on_status(status):
        states.append(status.state)
        if status.state == "updated":
            updated.set()

    watcher = FeedWatcher(settings, feed=feed, interval=0.2, on_status=on_status).start()
    try:
        deadline = time.monotonic() + 30
        while not states and time.monotonic() < deadline:
            time.sleep(0.05)
        write_feed(tmp_path / "next.xml", keep=[8], new=[NEW]).replace(feed)
        assert updated.wait(120), states
    finally:
        watcher.stop()
    assert not watcher._thread.is_alive()
    assert states[0] == "unchanged" and "updated" in states and "error" not in states
    assert NEW[1] in posts(settings)


def test_a_stop_asked_without_waking_ends_a_long_wait_within_a_second(small):
    # what the CLI's Ctrl-C handler does when the KeyboardInterrupt itself gets dropped (it cannot wake())
    settings, feed = small
    checked = threading.Event()
    watcher = FeedWatcher(settings, feed=feed, interval=300, on_status=lambda s: checked.set()).start()
    assert checked.wait(60)
    start = time.monotonic()
    watcher.stop_soon()
    watcher._thread.join(10)
    assert not watcher._thread.is_alive() and time.monotonic() - start < 3


def test_rag_index_watch_prints_one_line_per_change_and_stops_on_ctrl_c(small, tmp_path):
    settings, feed = small
    # started as a background shell starts it, with SIGINT ignored (Python keeps an inherited SIG_IGN): the CLI
    # must still stop on the SIGINT sent below
    proc = subprocess.Popen([sys.executable, "-m", "rag.cli", "index", "--watch", "--interval", "0.3",
                             "--index", str(settings.index_dir), "--feed", str(feed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        first = proc.stdout.readline()
        assert "no new or changed posts" in first, first
        write_feed(tmp_path / "next.xml", keep=[8], new=[NEW]).replace(feed)
        line = proc.stdout.readline()
        while line and "index updated" not in line:  # a check may fall between the write and the rename
            line = proc.stdout.readline()
        assert f"1 new: {NEW[1]}" in line, line
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert NEW[1] in posts(settings)
