"""The chat app end to end: the real `app.py` in a subprocess on a real index, driven through headless
Chromium (Playwright), gradio_client and the `openai` client. Nothing is mocked; answers are compared with
`Chat.ask`.

Run with -s to see the time to first token measured in the browser. RAG_UPDATE_SCREENSHOT=1 refreshes the
screenshots in docs/screenshots/ (a normal run leaves the tree clean).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from gradio_client import Client
from playwright.sync_api import sync_playwright

from rag.answer import Chat
from rag.index import current_generation

from .conftest import NEW_POST_HTML, run_rag, write_feed

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
POST_URL = "https://dshandbook.substack.com/p/"
COVERED = "What is out-of-bag error in random forest?"
UNCOVERED = "How do I compute statistical power for an A/B test?"
NEAR_MISS = "How do I tune dropout rate in a CNN?"  # not covered, but the posts have CNN training sections
KMEANS, DBSCAN_FOLLOWUP = "How does K-Means++ initialization improve K-Means?", "and what are DBSCAN's weaknesses?"
FORMULAS = "why pre ln > post ln"  # a casual question whose section holds two display formulas
RANDOM_FOREST = "https://dshandbook.substack.com/p/random-forest-interview-questions"
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

    def cpu_seconds(self) -> float:
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_full_app(full_index, tmp_path_factory, name: str, second_look: bool = False) -> AppProcess:
    """The app on the bundled corpus (index built once per session), extractive by default for speed,
    its feedback file in a temporary directory; `app.settings` are the app's."""
    settings, _ = full_index
    out = tmp_path_factory.mktemp(name)
    app = AppProcess(settings.index_dir, out / "app.log", RAG_FEEDBACK_PATH=str(out / "feedback.jsonl"),
                     RAG_SECOND_LOOK=str(second_look).lower())
    app.wait_until_serving()
    app.settings, app.feedback = settings.replace(second_look=second_look), out / "feedback.jsonl"
    return app


@pytest.fixture(scope="module")
def full_app(full_index, tmp_path_factory):
    # without the second look (the default) an extractive app loads no model, so the model mode's loading
    # state is seen (the second look in the app: small_app and the soak test)
    app = start_full_app(full_index, tmp_path_factory, "full_app", second_look=False)
    yield app
    app.stop()


@pytest.fixture(scope="module")
def small_app(tmp_path_factory, settings_for):
    """The app started on an empty index directory with a two-post feed (one post quotes a <script> tag):
    it must build the index itself before serving."""
    out = tmp_path_factory.mktemp("small_app")
    feed = write_feed(out / "feed.xml", keep=[9], new=[(XSS_GUID, XSS_TITLE, XSS_HTML)])
    # with the second look on (off by default), so that its model load at start is seen (full_app: off)
    app = AppProcess(out / "index", out / "app.log", RAG_FEED=str(feed), RAG_SECOND_LOOK="true")
    app.wait_until_serving()
    app.settings, app.out = settings_for(out / "index").replace(second_look=True), out
    yield app
    app.stop()


@pytest.fixture(scope="module")
def chromium():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def new_page(chromium, width: int = 1280, height: int = 800, scheme: str = "light"):
    """A fresh browser session (its own storage); records requests that leave the machine and JS dialogs."""
    context = chromium.new_context(viewport={"width": width, "height": height}, color_scheme=scheme,
                                   accept_downloads=True)
    page = context.new_page()
    page.external, page.dialogs = [], []
    page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
            else page.external.append(r.url))
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    return page


def check_and_close(page) -> None:
    page.context.close()
    assert page.dialogs == [], "a script from a post or a question ran"
    assert page.external == [], "the page tried to reach the network"


@pytest.fixture
def page(chromium):
    page = new_page(chromium)
    yield page
    check_and_close(page)


@pytest.fixture
def phone(chromium):
    page = new_page(chromium, 390, 844, "dark")
    yield page
    check_and_close(page)


def client(app: AppProcess) -> Client:
    return Client(app.url, verbose=False, download_files=False, analytics_enabled=False)


# ------------------------------------------------------------------ driving the page

BOT, USER = "#chat [data-testid=bot]", "#chat [data-testid=user]"
NEW_ANSWER_TEXT = """n => { const m = document.querySelectorAll('#chat [data-testid=bot]');
                           return m.length > n && m[m.length - 1].innerText.trim().length > 1; }"""
# the answer is complete: Ask is back, and the Sources panel no longer waits for it
ANSWER_DONE = """() => !document.querySelector('#stop') && document.querySelector('#ask') &&
                       !document.querySelector('#sources')?.innerText?.includes('Finding the sources')"""
MARK_IN_VIEW = """() => { const m = document.querySelector('#sources mark.current');
    if (!m) return false;
    const r = m.getBoundingClientRect(), c = document.querySelector('#sources-col').getBoundingClientRect();
    return r.top >= Math.max(0, c.top) && r.bottom <= Math.min(innerHeight, c.bottom) && r.height > 0; }"""


def open_app(page, app: AppProcess) -> None:
    page.goto(app.url)
    page.wait_for_selector("#question textarea")
    page.wait_for_function("() => /\\d+ posts/.test(document.querySelector('#status').innerText)")


def submit(page, question: str) -> tuple[int, float]:
    before = page.locator(BOT).count()
    page.fill("#question textarea", question)
    start = time.perf_counter()
    page.press("#question textarea", "Enter")
    return before, start


def wait_answer(page, before: int, start: float, label: str, timeout: float = 300_000):
    """Waits for the new answer's first text (time to first token) and then for the finished answer."""
    page.wait_for_function(NEW_ANSWER_TEXT, arg=before, timeout=timeout)
    TTFT[label] = time.perf_counter() - start
    page.wait_for_function(ANSWER_DONE, timeout=timeout)
    print(f"\nbrowser time to first token {TTFT[label]:.2f}s, complete {time.perf_counter() - start:.2f}s: {label}")
    return page.locator(BOT).last


def new_conversation(page) -> None:
    page.click("#new")
    page.wait_for_function(f"() => document.querySelectorAll('{BOT}').length === 0")


def ask(page, question: str, label: str | None = None):
    before, start = submit(page, question)
    return wait_answer(page, before, start, label or question)


def choose_mode(page, mode: str) -> None:
    if not page.locator("#mode").is_visible():
        page.click("#settings >> text=Settings")
    page.locator("#mode label", has_text=mode).click()


def luminance(rgb: str) -> float:
    channels = [int(x) / 255 for x in re.findall(r"\d+", rgb)[:3]]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(fg: str, bg: str) -> float:
    a, b = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def screenshot(page, name: str, tmp_path: Path, full_page: bool = False) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=full_page)
    if os.environ.get("RAG_UPDATE_SCREENSHOT"):  # docs' screenshots are refreshed on purpose, not by every run
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SHOTS / name)


# ------------------------------------------------------------------ conversation basics


def test_conversation_in_the_browser(full_app, page, tmp_path):
    open_app(page, full_app)
    assert "10 posts" in page.inner_text("#status")
    examples = page.locator("#chat button.example").all_inner_texts()
    assert len(examples) == 6, examples  # five drawn from the posts' headings, each naming its subject
    assert not any(re.search(r"\b(the algorithm|we|it)\b", e, re.I) for e in examples[:5]), examples
    assert examples[5] == "What topics do the posts cover?"  # and what a newcomer asks first

    answer = ask(page, COVERED)
    link = answer.locator("a[href^='#source-']").first
    assert link.inner_text() == "[1]"  # a citation opens the local section, not the live post
    assert "Random Forest" in page.inner_text("#sources .source") and page.locator("#sources mark").count() >= 1
    external = page.locator("#sources a.external").first  # the original post: a separate, external link
    assert external.get_attribute("href").startswith(POST_URL) and external.get_attribute("target") == "_blank"

    answer = ask(page, UNCOVERED)
    text = answer.inner_text()
    assert "The posts don't cover this" in text
    assert "The closest sections are" not in text  # the nearest sections are listed once: as the chips below
    assert not page.locator("#suggestions button").count()  # nothing near: no sections offered at all
    answer = ask(page, NEAR_MISS)
    assert "The posts don't cover this" in answer.inner_text()
    chips = page.locator("#suggestions button").all_inner_texts()  # near sections: offered once, as chips
    assert chips and not any("::" in c for c in chips), chips
    suggestion = page.locator("#suggestions button").first
    suggested = suggestion.inner_text().rstrip(".")
    before, start = page.locator(BOT).count(), time.perf_counter()
    suggestion.click()  # a covered section as a one-click follow-up: fills and submits the question
    wait_answer(page, before, start, "clicked suggestion")
    assert suggested in page.locator(USER).last.inner_text()

    new_conversation(page)
    ask(page, KMEANS)
    answer = ask(page, DBSCAN_FOLLOWUP)
    assert "DBSCAN" in answer.inner_text()
    assert "Clustering" in page.inner_text("#sources section.turn:not([hidden])")
    screenshot(page, "desktop-light.png", tmp_path)

    new_conversation(page)
    before, start = 0, time.perf_counter()
    page.locator("#chat button.example").first.click()  # an example on the empty screen asks itself
    wait_answer(page, before, start, "clicked example")
    new_conversation(page)
    before, start = 0, time.perf_counter()
    page.locator("#chat button.example").last.click()  # the list of posts, each cited
    wait_answer(page, before, start, "topics")
    assert "Random Forest: Interview Questions & Answers" in page.locator(BOT).last.inner_text()
    assert page.locator(BOT).last.locator("a[href^='#source-']").count() == 10
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
    assert page.locator(USER).count() == 0
    ask(page, COVERED)  # the session still works
    assert page.locator(USER).count() == 1
    with pytest.raises(Exception, match="keep it under"):
        client(full_app).predict("x" * 3000, "[]", "extractive", "", 0, api_name="/ask")


# ------------------------------------------------------------------ sources: local, highlighted, rendered


def test_citation_opens_the_local_section_with_the_sentence_highlighted(full_app, page, tmp_path):
    open_app(page, full_app)
    ask(page, COVERED)
    ask(page, FORMULAS)
    first = page.locator(BOT).first
    # formulas and Markdown of the sources are rendered: MathML, no TeX or Markdown markers left
    sources_html = page.inner_html("#sources")
    assert page.locator("#sources math").count() >= 2
    for raw in ("$$", "\\mathrm", "\\left", "**"):
        assert raw not in sources_html and raw not in page.inner_text("#sources"), raw

    # hovering a citation of the first answer previews the sentence it rests on
    link = first.locator("a[href^='#source-']").first
    link.hover()
    page.wait_for_selector("#cite-preview", state="visible")
    preview = page.inner_text("#cite-preview")
    assert "Random Forest" in preview and "“" in preview

    # clicking it shows that answer's sources (not the latest answer's) with the sentence in view
    link.click()
    page.wait_for_function(MARK_IN_VIEW)
    shown = page.locator("#sources section.turn:not([hidden])")
    assert shown.count() == 1 and "Out-of-Bag" in shown.inner_text()
    mark = page.locator("#sources mark.current").first.inner_text()
    assert mark.strip() and mark.strip().split()[0] in preview
    assert page.url.endswith("/")  # no navigation: the page stays offline-safe
    screenshot(page, "desktop-citation.png", tmp_path)


def test_highlight_is_readable_in_dark_and_light_mode(full_app, chromium):
    for scheme in ("dark", "light"):
        page = new_page(chromium, scheme=scheme)
        try:
            open_app(page, full_app)
            ask(page, COVERED)
            assert page.evaluate("() => document.body.classList.contains('dark')") == (scheme == "dark")

            def check(selector: str) -> None:
                colours = page.locator(selector).first.evaluate(
                    "m => [getComputedStyle(m).color, getComputedStyle(m).backgroundColor]")
                ratio = contrast(*colours)
                print(f"\n{scheme} {selector}: {colours} contrast {ratio:.1f}")
                assert ratio >= 4.5, (scheme, selector, colours, ratio)

            check("#sources mark.support")  # as the answer arrives
            page.locator(f"{BOT} a[href^='#source-']").first.click()
            page.wait_for_function(MARK_IN_VIEW)
            check("#sources mark.current")  # the sentence a clicked citation points at
        finally:
            check_and_close(page)


def test_phone_layout_shows_sources_before_settings(full_app, phone, tmp_path):
    open_app(phone, full_app)
    assert phone.locator("#status").bounding_box()["height"] < 60  # one short line, not a quarter screen
    ask(phone, FORMULAS)
    sources = phone.locator("#sources .source").first.bounding_box()
    settings = phone.locator("#settings").bounding_box()
    assert sources["y"] < settings["y"]  # the answer's sources come before Settings
    assert phone.evaluate("() => document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
    screenshot(phone, "phone-dark.png", tmp_path)
    phone.locator(f"{BOT} a[href^='#source-']").first.click()  # a citation brings its sentence on screen
    phone.wait_for_function(MARK_IN_VIEW)
    screenshot(phone, "phone-dark-source.png", tmp_path)


# ------------------------------------------------------------------ the model: loading, queue, Stop


def test_the_app_loads_the_model_at_start_for_the_second_look(small_app, page):
    """An extractive app with the second look on loads the model in the background at start,
    and the status line says when it is ready: an unsure refusal never waits for a load."""
    open_app(page, small_app)
    page.wait_for_function("() => document.querySelector('#status')?.innerText?.includes('ready')", timeout=300_000)


def test_generator_mode_loading_queue_and_stop(full_app, page):
    """The language-model mode end to end: a visible loading state, a question sent during an answer is
    queued and answered, Stop ends the generation in the server, and the API gives what Chat.ask gives."""
    mode = "generate"
    open_app(page, full_app)
    assert "ready" not in page.inner_text("#status")  # an extractive app loads no model at start
    page.evaluate("""() => { window.sawLoading = false;
        new MutationObserver(() => { if (document.body.innerText.includes('Loading the local language model'))
            window.sawLoading = true; }).observe(document.body, {childList: true, subtree: true, characterData: true}); }""")
    choose_mode(page, mode)  # choosing a model mode starts loading the model, and the page says so
    page.wait_for_function("() => window.sawLoading")
    page.wait_for_function("() => document.querySelector('#status')?.innerText?.includes('ready')", timeout=300_000)
    first, second = "whats the kv cache", "what is lora"
    before, start = submit(page, first)
    page.wait_for_function(NEW_ANSWER_TEXT, arg=before, timeout=300_000)
    page.fill("#question textarea", second)  # sent while the first answer is being written
    page.press("#question textarea", "Enter")
    page.wait_for_selector("#queued >> text=Queued", timeout=10_000)  # shown under the chat, box emptied
    assert page.input_value("#question textarea") == ""
    page.wait_for_function(f"() => document.querySelectorAll('{USER}').length === 2", timeout=300_000)
    page.wait_for_function(ANSWER_DONE, timeout=300_000)
    print(f"\ntwo queued generate-mode answers in {time.perf_counter() - start:.1f}s")
    assert page.locator(USER).all_inner_texts() == [first, second]
    answers = page.locator(BOT).all_inner_texts()
    assert all(len(a) > 20 for a in answers) and "Stopped" not in "".join(answers)
    assert "KV Cache" in page.locator("#sources section.turn[data-turn='0']").text_content()
    assert "LoRA" in page.locator("#sources section.turn[data-turn='1']").text_content()

    # Stop: the answer ends as it is, marked; the model stops computing; a queued question comes back
    before, _ = submit(page, "explain speculative decoding")
    page.wait_for_function(NEW_ANSWER_TEXT, arg=before, timeout=300_000)
    page.fill("#question textarea", "what is flash attention")
    page.press("#question textarea", "Enter")
    page.wait_for_selector("#queued >> text=Queued")
    page.click("#stop")
    page.wait_for_selector(f"{BOT} >> text=Stopped.", timeout=30_000)
    assert page.input_value("#question textarea") == "what is flash attention"  # not lost
    page.wait_for_selector("#ask")
    time.sleep(1)
    cpu = full_app.cpu_seconds()
    time.sleep(3)
    idle = full_app.cpu_seconds() - cpu
    print(f"\napp CPU in the 3 s after Stop: {idle:.2f} s")
    assert idle < 1.0  # generating keeps at least one core busy (about 3 s of CPU in 3 s)
    assert "answer stopped by the user" in full_app.output()

    # the API in the same mode gives what Chat.ask gives
    got = client(full_app).predict(COVERED, "[]", mode, "", 0, api_name="/ask")
    expected = Chat(full_app.settings).ask(COVERED, mode=mode).to_json()
    assert got["mode"] == mode and got["answer"] == expected["answer"]
    assert got["citations"] == expected["citations"]


# ------------------------------------------------------------------ regenerate, edit, filter, feedback


def test_regenerate_edit_and_undo(full_app, page):
    open_app(page, full_app)
    ask(page, COVERED)
    ask(page, "whats gini impurity")
    page.locator(f"{BOT} >> nth=-1").hover()
    page.locator("#chat button[aria-label='Retry']").last.click()  # regenerate the last answer
    page.wait_for_selector("#stop")  # the answer is being written again
    page.wait_for_function(ANSWER_DONE)
    assert page.locator(USER).all_inner_texts() == [COVERED, "whats gini impurity"]
    assert page.locator(BOT).count() == 2 and "Gini" in page.locator(BOT).last.inner_text()

    page.locator(f"{USER} >> nth=-1").hover()
    page.locator("#chat button[aria-label='Edit']").last.click()  # edit the last question
    page.locator("#chat textarea").last.fill("why are decision trees greedy")
    page.locator("#chat").get_by_role("button", name="Submit").click()
    page.wait_for_function(f"""() => {{ const users = document.querySelectorAll('{USER}'),
        bots = document.querySelectorAll('{BOT}');
        return users.length === 2 && bots.length === 2 && users[1].innerText.includes('greedy') &&
               bots[1].innerText.toLowerCase().includes('greedy') && ({ANSWER_DONE})(); }}""")

    page.locator(f"{BOT} >> nth=-1").hover()
    page.locator("#chat button[aria-label='Undo']").last.click()  # undo: the question goes back to the box
    page.wait_for_function(f"() => document.querySelectorAll('{BOT}').length === 1")
    assert page.input_value("#question textarea") == "why are decision trees greedy"


def test_refusal_says_when_the_post_filter_caused_it(full_app, page):
    open_app(page, full_app)
    page.click("#settings >> text=Settings")
    page.locator("#post input").click()
    page.locator("[role=option]", has_text="Random Forest").click()
    page.wait_for_selector("#filter-row >> text=Searching only")  # the filter is shown next to the box
    answer = ask(page, "How does DBSCAN work?")
    text = answer.inner_text()
    assert "The posts don't cover this" in text and "Only Random Forest" in text
    assert "Clustering" in text and "All posts" in text  # who covers it, and how to search there
    new_conversation(page)  # a new conversation starts without the filter
    page.wait_for_selector("#filter-row", state="hidden")
    assert "All posts" in page.locator("#post input").input_value()


def test_feedback_keeps_one_vote_per_answer_with_a_comment(full_app, page):
    open_app(page, full_app)
    ask(page, COVERED)
    ask(page, KMEANS)

    def lines():
        return [json.loads(x) for x in full_app.feedback.read_text().splitlines()] if full_app.feedback.exists() else []

    def wait_for(check):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if check(lines()):
                return lines()
            time.sleep(0.2)
        pytest.fail(f"feedback file: {lines()}")

    mine = lambda ls: [x for x in ls if x["question"] in (COVERED, KMEANS)]  # noqa: E731
    page.locator("#chat button[aria-label='Like']").first.click()
    wait_for(lambda ls: [(x["question"], x["vote"]) for x in mine(ls)] == [(COVERED, "up")])
    page.wait_for_selector("#comment-row", state="visible")
    page.locator("#chat button[aria-label='Dislike']").first.click()  # changed: replaces the earlier vote
    wait_for(lambda ls: [(x["question"], x["vote"]) for x in mine(ls)] == [(COVERED, "down")])
    page.fill("#comment textarea", "it should say what the 36.8% means")
    page.click("#send-comment")
    votes = wait_for(lambda ls: [x.get("comment") for x in mine(ls)] == ["it should say what the 36.8% means"])
    page.locator("#chat button[aria-label='Like']").last.click()
    votes = wait_for(lambda ls: len(mine(ls)) == 2)
    assert sorted((x["question"], x["vote"]) for x in mine(votes)) == sorted([(COVERED, "down"), (KMEANS, "up")])
    for v in mine(votes):
        assert v["answer"] and v["timestamp"] and v["sources"][0]["url"].startswith(POST_URL)
    assert page.locator(".toast-wrap .toast-body").count() <= 1  # no pile of toasts

    # the command turns them into candidate eval questions, marked for review
    done = run_rag("feedback", "--file", str(full_app.feedback), "--index", str(full_app.settings.index_dir))
    assert done.returncode == 0, done.stderr
    candidates = {c["question"]: c for c in map(json.loads, done.stdout.splitlines())}
    liked, disliked = candidates[KMEANS], candidates[COVERED]
    assert liked["review"]["status"] == disliked["review"]["status"] == "todo"
    sections = [s["text"] for v in mine(votes) if v["question"] == KMEANS for s in v["sources"]]
    assert liked["evidence"] and all(any(e in text for text in sections) for e in liked["evidence"])  # verbatim
    assert liked["answer"] and liked["post_title"] == "Clustering: Interview Questions & Answers"
    assert disliked["answer"] == "" and disliked["evidence"] == []  # the reviewer writes them
    assert disliked["review"]["comments"] == ["it should say what the 36.8% means"]


# ------------------------------------------------------------------ persistence and export


def test_reload_keeps_the_conversation_and_export_has_its_sources(full_app, page):
    open_app(page, full_app)
    ask(page, KMEANS)
    ask(page, DBSCAN_FOLLOWUP)
    page.locator("#chat button[aria-label='Like']").last.click()
    time.sleep(1)
    page.reload()
    open_app(page, full_app)
    page.wait_for_function(f"() => document.querySelectorAll('{USER}').length === 2")
    assert page.locator(USER).all_inner_texts() == [KMEANS, DBSCAN_FOLLOWUP]
    assert page.locator("#sources section.turn").count() == 2
    page.locator(f"{BOT} >> nth=0").locator("a[href^='#source-']").first.click()  # old citations still work
    page.wait_for_function(MARK_IN_VIEW)
    answer = ask(page, "and how do I pick its parameters?")  # the restored turns are the follow-up's history
    assert "DBSCAN" in page.inner_text("#sources section.turn:not([hidden])") or "DBSCAN" in answer.inner_text()

    with page.expect_download() as download:
        page.click("#export")
    markdown = Path(download.value.path()).read_text()
    assert markdown.count("\n## ") == 3 and KMEANS in markdown and DBSCAN_FOLLOWUP in markdown
    assert "Clustering: Interview Questions & Answers" in markdown and f"<{POST_URL}" in markdown
    assert "\n  > " in markdown  # the sentences each answer rests on are quoted


# ------------------------------------------------------------------ practice


def test_practice_tab_asks_grades_and_asks_again(full_app, page, tmp_path):
    open_app(page, full_app)
    page.click("button[role=tab]:has-text('Practice')")
    page.click("#practice-new")
    page.wait_for_function("() => document.querySelector('#practice-question')?.innerText?.includes('?')")
    question = page.inner_text("#practice-question")
    page.fill("#practice-answer textarea", "I don't know.")
    page.click("#practice-grade")
    page.wait_for_selector("#practice-result .score", timeout=120_000)
    screenshot(page, "practice.png", tmp_path, full_page=True)
    result = page.inner_text("#practice-result")
    assert re.search(r"\b\d{1,3}/100", result)
    assert "You missed" in result and page.locator("#practice-result li.missed").count() >= 1
    assert page.locator("#practice-result li.missed a.external").first.get_attribute("href").startswith("https://")
    assert page.locator("#practice-result .reference mark").count() >= 1  # the post's answer, key points marked
    page.click("#practice-next")
    page.wait_for_function("q => { const t = document.querySelector('#practice-question')?.innerText || '';"
                           " return t.includes('?') && t !== q; }", arg=question)
    page.wait_for_selector("#practice-result", state="hidden")
    page.click("#practice-progress")
    page.wait_for_selector("#practice-chart img", timeout=30_000)  # the progress chart per post


# ------------------------------------------------------------------ the APIs


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
    only = api.predict(COVERED, "[]", "extractive", RANDOM_FOREST, 2, api_name="/ask")
    assert len(only["retrieved"]) <= 2 and {r["post_title"] for r in only["retrieved"]} == \
        {"Random Forest: Interview Questions & Answers"}


@pytest.mark.parametrize("history, k, message", [
    ("[[1, 2]]", 0, "pairs of strings"),  # issue 14 row 6: the CLI's validation, one message
    (json.dumps([["x" * 1_000_000, "an answer"]]), 0, "turn 1's question is 1,000,000 characters"),  # row 7
    ("[]", -5, "from 1 to 20"),
    ("[]", 10**6, "from 1 to 20"),
    ("{not json", 0, "not valid JSON"),
])
def test_ask_api_validates_history_and_k(full_app, history, k, message):
    log_before = len(full_app.output())
    with pytest.raises(Exception) as failure:
        client(full_app).predict(COVERED, history, "extractive", "", k, api_name="/ask")
    assert message in str(failure.value)
    assert "Traceback" not in full_app.output()[log_before:]


def test_openai_compatible_endpoint(full_app):
    import openai

    api = openai.OpenAI(base_url=f"{full_app.url}v1", api_key="not-needed-on-loopback", max_retries=0)
    assert "interview-prep" in [m.id for m in api.models.list()]
    chat = Chat(full_app.settings)
    expected = chat.ask(KMEANS, mode="extractive").to_json()
    reply = api.chat.completions.create(model="interview-prep-extractive",
                                        messages=[{"role": "system", "content": "be brief"},
                                                  {"role": "user", "content": KMEANS}])
    content = reply.choices[0].message.content
    assert content.startswith(expected["answer"]) and "Sources:" in content
    assert reply.sources == expected["citations"] and reply.refused is False

    # streaming, with the conversation as history
    stream = api.chat.completions.create(
        model="interview-prep-extractive", stream=True,
        messages=[{"role": "user", "content": KMEANS}, {"role": "assistant", "content": content},
                  {"role": "user", "content": DBSCAN_FOLLOWUP}])
    pieces, last = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        last = chunk
    expected = chat.ask(DBSCAN_FOLLOWUP, [(KMEANS, content)], mode="extractive").to_json()
    assert "".join(pieces).startswith(expected["answer"])
    assert last.choices[0].finish_reason == "stop" and last.sources == expected["citations"]

    refused = api.chat.completions.create(model="interview-prep-extractive",
                                          messages=[{"role": "user", "content": "how do I bake sourdough"}])
    assert refused.refused is True and refused.sources == []
    with pytest.raises(openai.BadRequestError, match="keep it under"):
        api.chat.completions.create(model="interview-prep", messages=[{"role": "user", "content": "x" * 3000}])
    with pytest.raises(openai.NotFoundError, match="unknown model"):
        api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


def test_openai_endpoint_answers_other_machines_only_with_the_key(full_index):
    """The /v1 routes of the app (rag.openai_api) with a client address that is not loopback: refused,
    unless `api_key` is set and sent."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from rag.openai_api import router

    settings, _ = full_index
    body = {"model": "interview-prep-extractive", "messages": [{"role": "user", "content": COVERED}]}
    for key, header, status in (("", None, 403), ("s3cret", None, 401), ("s3cret", "Bearer nope", 401),
                                ("s3cret", "Bearer s3cret", 200)):
        server = FastAPI()
        server.include_router(router(Chat(settings.replace(api_key=key))))
        remote = TestClient(server, client=("192.0.2.7", 50000))
        headers = {"Authorization": header} if header else {}
        assert remote.get("/v1/models", headers=headers).status_code == status, (key, header)
        reply = remote.post("/v1/chat/completions", json=body, headers=headers)
        assert reply.status_code == status, reply.text
        if status == 200:
            assert "Out-of-Bag" in reply.json()["choices"][0]["message"]["content"]
        else:
            assert reply.json()["error"]["message"]
    local = TestClient(server, client=("127.0.0.1", 50000))  # this machine needs no key
    assert local.post("/v1/chat/completions", json=body).status_code == 200


# ------------------------------------------------------------------ load, sessions, safety, rebuilds


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
    pages = [new_page(chromium) for _ in range(2)]
    for p in pages:
        open_app(p, full_app)
    a, b = pages
    turns = [(KMEANS, COVERED), (DBSCAN_FOLLOWUP, "and how is it computed?")]
    for qa, qb in turns:  # both sessions ask at the same time
        pending = [(a, *submit(a, qa)), (b, *submit(b, qb))]
        for p, before, start in pending:
            wait_answer(p, before, start, "concurrent session")
        assert "Clustering" in a.inner_text("#sources") and "Random Forest" in b.inner_text("#sources")
    assert a.locator(USER).all_inner_texts() == [KMEANS, DBSCAN_FOLLOWUP]
    assert b.locator(USER).all_inner_texts() == [COVERED, "and how is it computed?"]
    for p in pages:
        check_and_close(p)


def test_scripts_in_posts_and_questions_are_shown_as_text(small_app, page):
    assert "building it" in small_app.output()  # the app built the missing index itself
    assert f"http://127.0.0.1:{small_app.port}" in small_app.output()  # loopback by default
    open_app(page, small_app)
    answer = ask(page, "How do you show a script tag safely on a web page?")
    assert "<script>alert(1)</script>" in answer.inner_text()
    assert "<script>alert(1)</script>" in page.inner_text("#sources")
    hostile = "Is <script>alert(2)</script> or <img src=x onerror=alert(4)> escaped?"
    ask(page, hostile)
    assert page.locator(USER).last.inner_text() == hostile
    assert page.locator("#chat script, #sources script, #chat img, #sources img").count() == 0
    page.wait_for_timeout(1000)  # a dialog would have fired by now; the page fixture checks none did


def test_rebuilt_index_is_served_without_restart(small_app, page):
    question = "Why does a small learning rate help gradient boosting?"
    api = client(small_app)
    before = api.predict(question, "[]", "extractive", "", 0, api_name="/ask")
    assert BOOSTING_TITLE not in {c["post_title"] for c in before["citations"]}
    open_app(page, small_app)
    assert "2 posts" in page.inner_text("#status")
    old_generation = current_generation(small_app.settings.index_dir)
    page.click("#settings >> text=Settings")  # the index details: which generation is served
    page.wait_for_function(f"() => document.querySelector('#about')?.innerText?.includes('{old_generation}')")

    feed = write_feed(small_app.out / "feed2.xml", keep=[9],
                      new=[(XSS_GUID, XSS_TITLE, XSS_HTML), (BOOSTING_GUID, BOOSTING_TITLE, NEW_POST_HTML)])
    done = run_rag("index", "--feed", str(feed), "--index", str(small_app.settings.index_dir))
    assert done.returncode == 0, done.stderr
    new_generation = current_generation(small_app.settings.index_dir)
    assert new_generation != old_generation

    ask(page, question)
    assert BOOSTING_TITLE in page.inner_text("#sources")
    # the switch is a visible state: the status and a note say so, the details name the new generation
    page.wait_for_function("() => document.querySelector('#status')?.innerText?.includes('3 posts')", timeout=30_000)
    page.wait_for_selector("#banner >> text=Index updated")
    page.wait_for_function(f"() => document.querySelector('#about')?.innerText?.includes('{new_generation}')")
    after = api.predict(question, "[]", "extractive", "", 0, api_name="/ask")
    assert BOOSTING_TITLE in {c["post_title"] for c in after["citations"]}


def test_new_posts_in_the_watched_feed_are_served_without_a_command(tmp_path, page):
    """The app watches its feed (rag.watch): a post added to the feed file is indexed in-process and served,
    and the status line says so, with no `rag index` run by anyone."""
    feed = write_feed(tmp_path / "feed.xml", keep=[9])
    app = AppProcess(tmp_path / "index", tmp_path / "app.log", RAG_FEED=str(feed), RAG_WATCH_INTERVAL="1")
    try:
        app.wait_until_serving()
        question = "Why does a small learning rate help gradient boosting?"
        api = client(app)
        before = api.predict(question, "[]", "extractive", "", 0, api_name="/ask")
        assert BOOSTING_TITLE not in {c["post_title"] for c in before["citations"]}
        write_feed(feed, keep=[9], new=[(BOOSTING_GUID, BOOSTING_TITLE, NEW_POST_HTML)])
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            after = api.predict(question, "[]", "extractive", "", 0, api_name="/ask")
            if BOOSTING_TITLE in {c["post_title"] for c in after["citations"]}:
                break
            time.sleep(2)
        else:
            pytest.fail(f"the new post was not served within 180 s:\n{app.output()[-3000:]}")
        open_app(page, app)
        page.wait_for_function("() => document.querySelector('#status')?.innerText?.includes('feed:')", timeout=30_000)
        assert "2 posts" in page.inner_text("#status")
    finally:
        app.stop()
