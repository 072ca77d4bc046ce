"""Feed (file or URL) -> posts: metadata plus a Markdown body that keeps headings, code and formulas."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from time import strftime
from urllib.parse import urlparse

import feedparser
from bs4 import BeautifulSoup
from markdownify import MarkdownConverter

log = logging.getLogger(__name__)

MAX_FEED_BYTES = 200 * 1024 * 1024
# Substack furniture that is not content: subscribe widgets, buttons, images, share/embeds.
NOT_CONTENT = (
    "script, style, noscript, iframe, form, button, input, svg, figure, img, picture, "
    ".subscription-widget-wrap-editor, .subscription-widget, .button-wrapper, "
    ".captioned-image-container, .image-link, .footnote-anchor"
)


class FeedError(Exception):
    """The feed cannot be read or holds nothing usable."""


@dataclass(frozen=True)
class Post:
    guid: str
    title: str
    url: str
    date: str  # ISO 8601, or "" when the feed gives none
    author: str
    markdown: str

    @property
    def content_hash(self) -> str:
        """Fingerprint of what gets indexed, so volatile feed fields never trigger re-embedding."""
        h = hashlib.sha256()
        for part in (self.title, self.url, self.markdown):
            h.update(part.encode() + b"\0")
        return h.hexdigest()


class _PostConverter(MarkdownConverter):
    def convert_div(self, el, text, parent_tags):
        if "latex-rendered" in (el.get("class") or []):
            return f"\n\n{_latex(el)}\n\n"
        return super().convert_div(el, text, parent_tags)


def _latex(el) -> str:
    """Formulas live only in data-attrs JSON; a plain HTML-to-text pass would drop them."""
    try:
        expr = json.loads(el.get("data-attrs") or "{}").get("persistentExpression", "")
    except json.JSONDecodeError:
        expr = el.get_text(" ", strip=True)
    expr = " ".join(expr.split())
    return f"$${expr}$$" if expr else ""


def html_to_markdown(html: str) -> str:
    soup = BeautifulSoup(html, "lxml")
    for el in soup.select(NOT_CONTENT):
        el.decompose()
    for heading in soup.find_all(re.compile(r"^h[1-6]$")):
        for inline in heading.find_all(["strong", "b", "em", "i"]):
            inline.unwrap()  # "### **Title**" would put asterisks into section names
    md = _PostConverter(
        heading_style="ATX",
        bullets="-",
        escape_underscores=False,
        escape_asterisks=False,
        escape_misc=False,
    ).convert_soup(soup)
    md = re.sub(r"[ \t]+\n", "\n", md)
    return re.sub(r"\n{3,}", "\n\n", md).strip()


def _plain_text(html: str) -> str:
    soup = BeautifulSoup(html, "lxml")
    for el in soup.select(NOT_CONTENT):
        el.decompose()
    return re.sub(r"\n{3,}", "\n\n", soup.get_text("\n")).strip()


def _read_source(source: str | Path) -> bytes:
    text = str(source)
    scheme = urlparse(text).scheme.lower()
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(text, timeout=30) as resp:
                data = resp.read(MAX_FEED_BYTES + 1)
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise FeedError(f"cannot fetch feed {text}: {getattr(e, 'reason', e)}") from e
    elif scheme in ("", "file") or re.match(r"^[a-zA-Z]:\\", text):
        path = Path(urlparse(text).path if scheme == "file" else text)
        if not path.is_file():
            raise FeedError(f"feed file not found: {path}")
        data = path.read_bytes()[: MAX_FEED_BYTES + 1]
    else:
        raise FeedError(f"unsupported feed location {text!r}: use a file path or an http(s) URL")
    if len(data) > MAX_FEED_BYTES:
        raise FeedError(f"feed {text} is larger than {MAX_FEED_BYTES // 2**20} MiB")
    if not data.strip():
        raise FeedError(f"feed {text} is empty")
    return data


def _entry_date(entry) -> str:
    parsed = entry.get("published_parsed") or entry.get("updated_parsed")
    return strftime("%Y-%m-%dT%H:%M:%SZ", parsed) if parsed else ""


def _entry_html(entry) -> str:
    contents = entry.get("content") or []
    html = max((c.get("value", "") for c in contents), key=len, default="")
    return html or entry.get("summary", "") or entry.get("description", "")


def parse_feed(data: bytes, source: str = "feed") -> list[Post]:
    """Parse RSS/Atom bytes into posts; items without content or with a repeated guid are skipped with a warning."""
    # sanitize_html=False keeps data-attrs (formulas); scripts are removed by html_to_markdown.
    parsed = feedparser.parse(data, sanitize_html=False, resolve_relative_uris=False)
    if not parsed.entries:
        reason = f": {parsed.get('bozo_exception')}" if parsed.get("bozo") else ""
        raise FeedError(f"{source} is not an RSS/Atom feed with items{reason}")
    posts: list[Post] = []
    seen: set[str] = set()
    for i, entry in enumerate(parsed.entries, 1):
        title = " ".join((entry.get("title") or "").split()) or f"item {i}"
        guid = entry.get("id") or entry.get("link") or ""
        if not guid:
            log.warning("skipping %s %r: no guid or link", source, title)
            continue
        if guid in seen:
            log.warning("skipping %s %r: duplicate guid %s (the first one is kept)", source, title, guid)
            continue
        try:
            markdown = html_to_markdown(_entry_html(entry))
        except RecursionError:
            log.warning("%s %r: HTML nested too deeply to convert; indexed as plain text", source, title)
            markdown = _plain_text(_entry_html(entry))
        if not markdown:
            log.warning("skipping %s %r: the item has no content", source, title)
            continue
        seen.add(guid)
        posts.append(Post(guid=guid, title=title, url=entry.get("link") or guid, date=_entry_date(entry),
                          author=entry.get("author", ""), markdown=markdown))
    if not posts:
        raise FeedError(f"{source} has no items with content")
    return posts


def read_feed(source: str | Path) -> list[Post]:
    return parse_feed(_read_source(source), str(source))
