"""Shared fixtures: real feeds on disk, real models, real indexes in temporary directories."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from rag.settings import DEFAULT_FEED, load_settings  # noqa: E402

CONTENT = "{http://purl.org/rss/1.0/modules/content/}encoded"


def feed_items(path: Path = DEFAULT_FEED):
    tree = etree.parse(str(path))
    return tree, tree.getroot().find("channel")


def write_feed(path: Path, keep: list[int], change: dict[int, str] | None = None,
               new: list[tuple[str, str, str]] = ()) -> Path:
    """A feed derived from the bundled one: some items kept, some with extra HTML appended, some new."""
    tree, channel = feed_items()
    items = channel.findall("item")
    for i, item in enumerate(items):
        if i not in keep:
            channel.remove(item)
    for i, extra in (change or {}).items():
        items[i].find(CONTENT).text += extra
    for guid, title, html in new:
        item = copy.deepcopy(items[keep[0]])
        item.find("title").text = title
        item.find("guid").text = guid
        item.find("link").text = guid
        item.find(CONTENT).text = html
        channel.append(item)
    tree.write(str(path), xml_declaration=True, encoding="utf-8")
    return path


NEW_POST_HTML = """<h2>Gradient Boosting</h2><p>Gradient boosting fits each new tree to the negative gradient
of the loss with respect to the current ensemble's predictions, so every tree corrects the residual errors of
the trees before it.</p><h3>Q1. Why does a small learning rate help?</h3><p>Shrinkage makes each tree's
contribution small, which needs more trees but generalizes better because no single tree dominates.</p>"""


@pytest.fixture(scope="session")
def settings_for():
    def make(index_dir: Path, **kw):
        return load_settings(config="/nonexistent", index_dir=index_dir, **kw)
    return make


@pytest.fixture(scope="session")
def full_index(tmp_path_factory, settings_for):
    """The bundled corpus, indexed once per test session with the real embedder."""
    from rag.indexer import update_index

    settings = settings_for(tmp_path_factory.mktemp("full") / "index")
    report = update_index(settings)
    return settings, report


def run_rag(*args: str, env: dict | None = None, timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rag.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, **kw)
