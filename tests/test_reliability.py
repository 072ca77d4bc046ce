"""The fault-and-bad-input probe's findings (docs/reliability.md), each reproduced with real parts: a real index
on disk damaged in place, the real `rag` command in a subprocess, the real chat."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from rag.answer import Chat
from rag.conversation import QuestionError
from rag.index import DB_FILE, VECTORS_FILE, Index, IndexUnavailable, current_generation
from rag.indexer import update_index
from rag.settings import load_settings

from .conftest import run_rag, write_feed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, settings_for):
    """Two small posts, indexed once; tests damage copies of it."""
    d = tmp_path_factory.mktemp("reliability")
    feed = write_feed(d / "two.xml", keep=[7, 8])
    settings = settings_for(d / "index")
    update_index(settings, feed=feed)
    return settings, feed


def damaged(small_index, tmp_path, name: str, offset_fraction: float, size: int):
    """A copy of the index with `size` random bytes written into `name` at `offset_fraction` of its length."""
    settings, feed = small_index
    index_dir = tmp_path / "index"
    shutil.copytree(settings.index_dir, index_dir)
    target = index_dir / current_generation(index_dir) / name
    data = bytearray(target.read_bytes())
    at = int(len(data) * offset_fraction)
    noise = np.random.default_rng(7).bytes(min(size, len(data) - at))
    data[at: at + len(noise)] = noise
    target.write_bytes(bytes(data))
    return settings.replace(index_dir=index_dir), feed


def one_line_error(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return [line for line in result.stderr.splitlines() if line.strip()][-1]


@pytest.mark.parametrize("name,where,size", [(DB_FILE, 1 / 3, 64 * 1024), (VECTORS_FILE, 1 / 2, 4096)],
                         ids=["sqlite-64KiB-at-a-third", "faiss-4KiB-in-the-middle"])
def test_random_bytes_in_a_served_file_are_detected_by_ask_and_index(small_index, tmp_path, name, where, size):
    settings, feed = damaged(small_index, tmp_path, name, where, size)
    with pytest.raises(IndexUnavailable, match=f"damaged.*{name}.*--rebuild"):
        Index.open(settings)
    ask = run_rag("ask", "How should weights be initialized?", "--index", str(settings.index_dir))
    line = one_line_error(ask)
    assert line.startswith("rag: error:") and "rag index --rebuild" in line
    index = run_rag("index", "--feed", str(feed), "--index", str(settings.index_dir))
    assert "already up to date" not in index.stdout
    assert "rag index --rebuild" in one_line_error(index)
    rebuilt = run_rag("index", "--rebuild", "--feed", str(feed), "--index", str(settings.index_dir))
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert Index.open(settings).manifest["counts"]["posts"] == 2


@pytest.fixture(scope="module")
def chat(small_index):
    return Chat(small_index[0])


def test_history_turns_obey_the_question_limit_and_k_is_bounded(chat):
    limit = chat.settings.max_question_chars
    with pytest.raises(QuestionError, match=f"turn 1's question is 1,000,000 characters long; the limit is {limit:,}"):
        chat.ask("and why?", [["x" * 1_000_000, "an answer"]])
    for k in (-5, 10**6, 2.5, "3", True):
        with pytest.raises(QuestionError, match="k .sections to retrieve. must be a whole number from 1 to 20"):
            chat.ask("How should weights be initialized?", k=k)
    for bad in ([[1, 2]], [["only one"]], {"q": "a"}, "[]", [[None, "a"]]):
        with pytest.raises(QuestionError, match=r"history must be a JSON list of \[question, answer\] pairs"):
            chat.ask("and why?", bad)
    assert chat.ask("How should weights be initialized?", k=3.0).passages  # a JSON number that is whole is fine


@pytest.mark.parametrize("content,expected", [
    (b'[["What is Xavier init?", "It scales', "not valid JSON (Unterminated string starting at: line 1, column 27)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "is not UTF-8 text (byte 0)"),
    (b'[["q", "a"], ', "not valid JSON (Expecting value: line 1, column 14)"),
])
def test_a_bad_history_file_names_the_file_and_the_position(small_index, tmp_path, content, expected):
    path = tmp_path / "turns.json"
    path.write_bytes(content)
    result = run_rag("ask", "and why?", "--history", str(path), "--index", str(small_index[0].index_dir))
    line = one_line_error(result)
    assert str(path) in line and expected in line, line


# ------------------------------------------------------------------ row 4: one huge item


def test_rag_index_skips_an_item_over_the_size_cap_and_indexes_the_rest(tmp_path):
    """A 2.5 MB item (over the default cap of 2,000,000 characters) is skipped with a warning before any HTML
    parsing; the other posts are indexed. The cap is the max_item_chars setting."""
    huge = "<h2>Huge</h2><p>" + "word " * 500_000 + "</p>"
    feed = write_feed(tmp_path / "huge.xml", keep=[8], new=[("https://x/huge", "Huge", huge),
                                                            ("https://x/small", "Small", "<p>A short post.</p>")])
    index_dir = tmp_path / "index"
    result = run_rag("index", "--feed", str(feed), "--index", str(index_dir), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    warning = [line for line in result.stderr.splitlines() if "'Huge'" in line]
    assert len(warning) == 1 and "over the limit of 2,000,000 per item" in warning[0], result.stderr[-2000:]
    assert "added 2," in result.stdout
    status = json.loads(run_rag("index", "--status", "--index", str(index_dir)).stdout)
    titles = {p["title"] for p in status["posts"]}
    assert len(titles) == 2 and "Small" in titles and "Huge" not in titles

    capped = run_rag("index", "--feed", str(feed), "--index", str(index_dir), env={"RAG_MAX_ITEM_CHARS": "10"})
    assert "has no items with content" in one_line_error(capped)  # every item is over a cap of 10


# ------------------------------------------------------------------ row 5: links that are not http(s)


def test_a_javascript_link_is_never_stored_or_cited(tmp_path):
    """An item whose <link> is `javascript:alert(document.domain)//` (and whose guid is not a web URL either)
    is indexed without a link: no post, chunk or citation carries it."""
    from .conftest import feed_items

    tree, channel = feed_items()
    for i, item in enumerate(channel.findall("item")):
        if i != 8:
            channel.remove(item)
        else:
            item.find("link").text = "javascript:alert(document.domain)//"
            item.find("guid").text = "urn:post:weights"
    feed = tmp_path / "evil.xml"
    tree.write(str(feed), xml_declaration=True, encoding="utf-8")
    index_dir = tmp_path / "index"

    result = run_rag("index", "--feed", str(feed), "--index", str(index_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "is not an http(s) URL; the post is kept without a link" in result.stderr

    answer = run_rag("ask", "How should weights be initialized?", "--json", "--index", str(index_dir))
    assert answer.returncode == 0, answer.stderr[-2000:]
    citations = json.loads(answer.stdout)["citations"]
    assert citations and all(c["url"] == "" for c in citations), citations
    settings = load_settings(config="/nonexistent", index_dir=index_dir)
    index = Index.open(settings)
    assert {p.url for p in index.posts()} == {""}
    assert {c.url for c in index.all_chunks()} == {""}
    assert b"javascript:" not in (index.path / DB_FILE).read_bytes().lower()
