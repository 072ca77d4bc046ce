"""The chat app end to end: the real `app.py` in a subprocess on a real index, driven through headless
Chromium (Playwright) and through gradio_client. Nothing is mocked; answers are compared with `Chat.ask`.

Run with -s to see the time to first token measured in the browser.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gradio_client import Client
from playwright.sync_api import sync_playwright

from rag.answer import Chat
from rag.index import current_generation

from .conftest import NEW_POST_HTML, run_rag, write_feed

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
POST_URL = "https://dshandbook.substack.com/p/"
COVERED = "What is out-of-bag error in random forest?"
UNCOVERED = "How do I compute statistical power for an A/B test?"
KMEANS, DBSCAN_FOLLOWUP = "How does K-Means++ initialization improve K-Means?", "and what are DBSCAN's weaknesses?"
# (question, a word the cited section heading must contain): ten distinct topics for the load test
TOPICS = [(COVERED, "Out-of-Bag"), (KMEANS, "K-Means++"),
          ("What is speculative decoding?", "Speculative Decoding"),
          ("What is the KV cache?", "KV Cache"), ("What is Flash Attention?", "Flash Attention"),
          ("What is the core idea behind LoRA?", "LoRA"), ("What is the dying ReLU problem?", "Dying ReLU"),
          ("What is Grouped Query Attention?", "Grouped Query Attention"),
          ("Why is Xavier initialization used with tanh?", "Xavier"), ("How does DBSCAN work?", "DBSCAN")]
XSS_GUID, XSS_TITLE = "https://example.com/p/escaping", "Escaping <script>alert(3)</script> in web pages"
XSS_HTML = """<h2>Output escaping</h2><h3>Q1. How do you show a script tag safely on a web page?</h3>
<p>The string &lt;script&gt;alert(1)&lt;/script&gt; must be escaped before it is placed into a page, otherwise
the browser runs it as code. Escaping turns every angle bracket into an entity so the tag is shown as text.</p>"""
BOOSTING_GUID, BOOSTING_TITLE = "https://example.com/p/boosting", "Gradient Boosting Basics"
TTFT: dict[str, float] = {}  # question -> seconds from submit to the first answer text in the browser


# ------------------------------------------------------------------ the app as a subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppProcess:
    """`python app.py --port P --index DIR`, its output in a log file, stopped by pid at the end."""

    def __init__(self, index_dir: Path, log: Path, **env: str):
        self.port, self.log = free_port(), log
        self.url = f"http://127.0.0.1:{self.port}/"
        environment = {**os.environ, "RAG_CONFIG": "/nonexistent", "RAG_ANSWER_MODE": "extractive",
                       "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", **env}
        self.proc = subprocess.Popen([sys.executable, "app.py", "--port", str(self.port), "--index", str(index_dir)],
                                     cwd=ROOT, env=environment, stdout=open(log, "w"), stderr=subprocess.STDOUT)

    def wait_until_serving(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"app exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"app did not serve {self.url} within {timeout}s:\n{self.output()[-4000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def full_app(full_index, tmp_path_factory):
    """The app on the bundled corpus (index built once per session), extractive by default for speed."""
    settings, _ = full_index
    out = tmp_path_factory.mktemp("full_app")
    app = AppProcess(settings.index_dir, out / "app.log", RAG_FEEDBACK_PATH=str(out / "feedback.jsonl"))
    app.wait_until_serving()
    app.settings, app.feedback = settings, out / "feedback.jsonl"
    yield app
    app.stop()


@pytest.fixture(scope="module")
def small_app(tmp_path_factory, settings_for):
    """The app started on an empty index directory with a two-post feed (one post quotes a <script> tag):
    it must build the index itself before serving."""
    out = tmp_path_factory.mktemp("small_app")
    feed = write_feed(out / "feed.xml", keep=[9], new=[(XSS_GUID, XSS_TITLE, XSS_HTML)])
    app = AppProcess(out / "index", out / "app.log", RAG_FEED=str(feed))
    app.wait_until_serving()
    app.settings, app.out = settings_for(out / "index"), out
    yield app
    app.stop()


@pytest.fixture(scope="module")
def chromium():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium):
    """A fresh browser session; fails the test on any request that leaves the machine or any JS dialog."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.external, page.dialogs = [], []
    page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
            else page.external.append(r.url))
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    yield page
    context.close()
    assert page.dialogs == [], "a script from a post or a question ran"
    assert page.external == [], "the page tried to reach the network"


def client(app: AppProcess) -> Client:
    return Client(app.url, verbose=False, download_files=False, analytics_enabled=False)


# ------------------------------------------------------------------ driving the page

BOT = "#chat [data-testid=bot]"
NEW_ANSWER_TEXT = """n => { const m = document.querySelectorAll('#chat [data-testid=bot]');
                           return m.length > n && m[m.length - 1].innerText.trim().length > 0; }"""
ANSWER_DONE = """() => { const t = document.querySelector('#sources').innerText;
                         return !t.includes('…') && !t.includes('appear here'); }"""


def open_app(page, app: AppProcess) -> None:
    page.goto(app.url)
    page.wait_for_selector("#question textarea")
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('chunks')")


def submit(page, question: str) -> tuple[int, float]:
    before = page.locator(BOT).count()
    page.fill("#question textarea", question)
    start = time.perf_counter()
    page.press("#question textarea", "Enter")
    return before, start


def wait_answer(page, before: int, start: float, label: str, timeout: float = 180_000):
    """Waits for the new answer's first text (time to first token) and then for the finished answer."""
    page.wait_for_function(NEW_ANSWER_TEXT, arg=before, timeout=timeout)
    TTFT[label] = time.perf_counter() - start
    page.wait_for_function(ANSWER_DONE, timeout=timeout)
    print(f"\nbrowser time to first token {TTFT[label]:.2f}s, complete {time.perf_counter() - start:.2f}s: {label}")
    return page.locator(BOT).last


def new_conversation(page) -> None:
    page.click("text=New conversation")
    page.wait_for_function(f"() => document.querySelectorAll('{BOT}').length === 0")


def ask(page, question: str, label: str | None = None):
    before, start = submit(page, question)
    return wait_answer(page, before, start, label or question)


# ------------------------------------------------------------------ tests


def test_conversation_in_the_browser(full_app, page, tmp_path):
    open_app(page, full_app)
    status = page.inner_text("#status")
    assert "10 posts" in status and "all-MiniLM-L6-v2" in status and "SmolLM2" in status and "built 20" in status
    examples = page.locator("#chat button.example")
    assert examples.count() >= 3  # questions drawn from the posts' headings on the empty screen

    answer = ask(page, COVERED)
    links = answer.locator(f"a[href^='{POST_URL}']")
    assert links.count() >= 1 and "#" in links.first.get_attribute("href")
    assert links.first.inner_text() == "[1]"
    assert "Random Forest" in page.inner_text("#sources .source") and page.locator("#sources mark").count() >= 1

    answer = ask(page, UNCOVERED)
    assert "The posts don't cover this" in answer.inner_text()
    suggestion = page.locator("#suggestions button").first
    suggested = suggestion.inner_text().rstrip(".")
    before, start = page.locator(BOT).count(), time.perf_counter()
    suggestion.click()  # a covered section as a one-click follow-up: fills and submits the question
    wait_answer(page, before, start, "clicked suggestion")
    assert suggested in page.locator("#chat [data-testid=user]").last.inner_text()

    new_conversation(page)
    ask(page, KMEANS)
    answer = ask(page, DBSCAN_FOLLOWUP)
    assert "DBSCAN" in answer.inner_text()
    assert "Clustering" in page.inner_text("#sources")
    page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
    if os.environ.get("RAG_UPDATE_SCREENSHOT"):  # the docs' screenshot is refreshed on purpose, not by every run
        shutil.copy(tmp_path / "chat.png", ROOT / "docs" / "screenshot.png")

    new_conversation(page)
    before, start = 0, time.perf_counter()
    page.locator("#chat button.example").first.click()  # an example on the empty screen asks itself
    wait_answer(page, before, start, "clicked example")
    print("\nbrowser time to first token, extractive:", {q[:40]: round(t, 2) for q, t in TTFT.items()})


def test_bad_questions_are_friendly_messages(full_app, page):
    open_app(page, full_app)
    page.fill("#question textarea", "word " * 600)
    page.press("#question textarea", "Enter")
    page.wait_for_selector("text=please keep it under")
    assert page.input_value("#question textarea").startswith("word word")  # kept, to be shortened
    page.fill("#question textarea", "   ")
    page.press("#question textarea", "Enter")
    page.wait_for_selector("text=Please type a question")
    assert page.locator("#chat [data-testid=user]").count() == 0
    ask(page, COVERED)  # the session still works
    assert page.locator("#chat [data-testid=user]").count() == 1
    with pytest.raises(Exception, match="keep it under"):
        client(full_app).predict("x" * 3000, "[]", "extractive", "", 0, api_name="/ask")


def test_api_gives_what_chat_ask_gives(full_app):
    chat = Chat(full_app.settings)
    api = client(full_app)
    first = api.predict(KMEANS, "[]", "extractive", "", 0, api_name="/ask")
    expected = chat.ask(KMEANS, mode="extractive").to_json()
    for key in ("answer", "refused", "citations", "query", "mode", "retrieved"):
        assert first[key] == expected[key]
    history = json.dumps([[KMEANS, first["answer"]]])
    followup = api.predict(DBSCAN_FOLLOWUP, history, "extractive", "", 0, api_name="/ask")
    expected = chat.ask(DBSCAN_FOLLOWUP, [(KMEANS, first["answer"])], mode="extractive").to_json()
    assert followup["answer"] == expected["answer"] and followup["citations"] == expected["citations"]
    assert "DBSCAN" in followup["answer"]
    # the post filter and k are passed through
    guid = "https://dshandbook.substack.com/p/random-forest-interview-questions"
    only = api.predict(COVERED, "[]", "extractive", guid, 2, api_name="/ask")
    assert len(only["retrieved"]) <= 2 and {r["post_title"] for r in only["retrieved"]} == \
        {"Random Forest: Interview Questions & Answers"}


def test_generator_mode_through_api_and_browser(full_app, page):
    """The language-model answer mode (copy-constrained generation) once, end to end."""
    default = "grounded"
    got = client(full_app).predict(COVERED, "[]", default, "", 0, api_name="/ask")
    expected = Chat(full_app.settings).ask(COVERED, mode=default).to_json()
    assert got["mode"] == default and got["answer"] == expected["answer"]
    assert got["citations"] == expected["citations"]

    open_app(page, full_app)
    page.click("#settings >> text=Settings")
    page.locator("#mode label", has_text=default).click()
    answer = ask(page, COVERED, label=f"{COVERED} ({default} mode, model loaded)")
    words = [w for w in expected["answer"].replace("*", "").split() if w.isalpha()][:5]
    assert all(w in answer.inner_text() for w in words), (words, answer.inner_text())
    if expected["citations"]:
        assert answer.locator(f"a[href^='{POST_URL}']").count() >= 1


def test_ten_concurrent_conversations_do_not_mix(full_app):
    chat = Chat(full_app.settings)
    expected = {}
    for q, _ in TOPICS:
        first = chat.ask(q, mode="extractive")
        expected[q] = (first.to_json(), chat.ask("and why does it matter?", [(q, first.answer)],
                                                 mode="extractive").to_json())

    def conversation(q: str):
        api = client(full_app)  # one session per conversation
        first = api.predict(q, "[]", "extractive", "", 0, api_name="/ask")
        second = api.predict("and why does it matter?", json.dumps([[q, first["answer"]]]), "extractive", "", 0,
                             api_name="/ask")
        return first, second

    start = time.perf_counter()
    with ThreadPoolExecutor(len(TOPICS)) as pool:
        questions = [q for q, _ in TOPICS]
        results = dict(zip(questions, pool.map(conversation, questions), strict=True))
    print(f"\n{len(TOPICS)} concurrent two-turn conversations in {time.perf_counter() - start:.1f}s")
    for q, word in TOPICS:
        first, second = results[q]
        cited = [c["section"] for c in first["citations"]]
        assert any(word.lower() in section.lower() for section in cited), (q, cited)
        assert (first["answer"], first["citations"]) == (expected[q][0]["answer"], expected[q][0]["citations"])
        assert (second["answer"], second["citations"]) == (expected[q][1]["answer"], expected[q][1]["citations"])


def test_two_browser_sessions_keep_their_own_conversations(full_app, chromium):
    pages = []
    for _ in range(2):
        context = chromium.new_context()
        pages.append(context.new_page())
        open_app(pages[-1], full_app)
    a, b = pages
    turns = [(KMEANS, COVERED), (DBSCAN_FOLLOWUP, "and how is it computed?")]
    for qa, qb in turns:  # both sessions ask at the same time
        pending = [(a, *submit(a, qa)), (b, *submit(b, qb))]
        for p, before, start in pending:
            wait_answer(p, before, start, "concurrent session")
        assert "Clustering" in a.inner_text("#sources") and "Random Forest" in b.inner_text("#sources")
    assert a.locator("#chat [data-testid=user]").all_inner_texts() == [KMEANS, DBSCAN_FOLLOWUP]
    assert b.locator("#chat [data-testid=user]").all_inner_texts() == [COVERED, "and how is it computed?"]
    for p in pages:
        p.context.close()


def test_thumbs_up_and_down_append_feedback_lines(full_app, page):
    open_app(page, full_app)
    ask(page, COVERED)
    page.locator("#chat button[aria-label='Like']").last.click()
    ask(page, KMEANS)
    page.locator("#chat button[aria-label='Dislike']").last.click()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = full_app.feedback.read_text().splitlines() if full_app.feedback.exists() else []
        if len(lines) >= 2:
            break
        time.sleep(0.2)
    votes = [json.loads(line) for line in lines]
    assert [(v["question"], v["vote"]) for v in votes] == [(COVERED, "up"), (KMEANS, "down")]
    for v in votes:
        assert v["answer"] and v["timestamp"] and v["sources"][0]["url"].startswith(POST_URL)


def test_scripts_in_posts_and_questions_are_shown_as_text(small_app, page):
    assert "building it" in small_app.output()  # the app built the missing index itself
    assert f"http://127.0.0.1:{small_app.port}" in small_app.output()  # loopback by default
    open_app(page, small_app)
    answer = ask(page, "How do you show a script tag safely on a web page?")
    assert "<script>alert(1)</script>" in answer.inner_text()
    assert "<script>alert(1)</script>" in page.inner_text("#sources")
    hostile = "Is <script>alert(2)</script> or <img src=x onerror=alert(4)> escaped?"
    ask(page, hostile)
    assert page.locator("#chat [data-testid=user]").last.inner_text() == hostile
    assert page.locator("#chat script, #sources script, #chat img, #sources img").count() == 0
    page.wait_for_timeout(1000)  # a dialog would have fired by now; the page fixture checks none did


def test_rebuilt_index_is_served_without_restart(small_app, page):
    question = "Why does a small learning rate help gradient boosting?"
    api = client(small_app)
    before = api.predict(question, "[]", "extractive", "", 0, api_name="/ask")
    assert BOOSTING_TITLE not in {c["post_title"] for c in before["citations"]}
    open_app(page, small_app)
    old_generation = current_generation(small_app.settings.index_dir)
    assert old_generation in page.inner_text("#status")

    feed = write_feed(small_app.out / "feed2.xml", keep=[9],
                      new=[(XSS_GUID, XSS_TITLE, XSS_HTML), (BOOSTING_GUID, BOOSTING_TITLE, NEW_POST_HTML)])
    done = run_rag("index", "--feed", str(feed), "--index", str(small_app.settings.index_dir))
    assert done.returncode == 0, done.stderr
    new_generation = current_generation(small_app.settings.index_dir)
    assert new_generation != old_generation

    ask(page, question)
    assert BOOSTING_TITLE in page.inner_text("#sources")
    page.wait_for_function(f"() => document.querySelector('#status').innerText.includes('{new_generation}')",
                           timeout=30_000)
    after = api.predict(question, "[]", "extractive", "", 0, api_name="/ask")
    assert BOOSTING_TITLE in {c["post_title"] for c in after["citations"]}
