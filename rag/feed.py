"""Feed (file or URL) -> posts: metadata plus a Markdown body that keeps headings, code and formulas."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import urllib.error
import urllib.request
import xml.sax
from dataclasses import dataclass
from pathlib import Path
from time import strftime
from urllib.parse import urlparse

import feedparser
from feedparser.exceptions import CharacterEncodingOverride, CharacterEncodingUnknown, UndeclaredNamespace
from bs4 import BeautifulSoup
from markdownify import MarkdownConverter

from .errors import RagError

log = logging.getLogger(__name__)

MAX_FEED_BYTES = 200 * 1024 * 1024
# Characters of one item's HTML. The largest bundled post is about 64,000; a bigger item is skipped before any
# HTML parsing (a 50 MB item took 15 s and 540 MB in BeautifulSoup, and chunking it never ended).
MAX_ITEM_CHARS = 2_000_000
UNCHANGED = "the index was not changed"
# A link is stored only when it is an absolute http(s) URL with no whitespace, control characters or characters
# that can never appear unescaped in a URL (they would end an HTML attribute or a Markdown link).
_WEB_URL = re.compile(r"https?://[^\s\x00-\x1f\x7f<>\"`\\]+", re.IGNORECASE)
# A valid multi-byte UTF-8 sequence: bytes that look like UTF-8 text, as opposed to a legacy single-byte encoding.
_UTF8_MULTIBYTE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")
# Substack furniture that is not content: subscribe widgets, buttons, images, share/embeds. Matched by hand
# rather than with a CSS selector: soupsieve took 40% of the conversion time.
NOT_CONTENT_TAGS = frozenset({"script", "style", "noscript", "iframe", "form", "button", "input", "svg", "figure",
                              "img", "picture"})
NOT_CONTENT_CLASSES = frozenset({"subscription-widget-wrap-editor", "subscription-widget", "button-wrapper",
                                 "captioned-image-container", "image-link", "footnote-anchor"})


def _is_furniture(tag) -> bool:
    return tag.name in NOT_CONTENT_TAGS or not NOT_CONTENT_CLASSES.isdisjoint(tag.get("class") or ())


def _drop_furniture(soup) -> None:
    for el in soup.find_all(_is_furniture):
        el.decompose()


class FeedError(RagError):
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
    _drop_furniture(soup)
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
    _drop_furniture(soup)
    return re.sub(r"\n{3,}", "\n\n", soup.get_text("\n")).strip()


@dataclass(frozen=True)
class Fetched:
    """One read of a feed: its bytes (None when the server said 304 Not Modified) and the validators to send
    next time (HTTP ETag / Last-Modified)."""
    data: bytes | None
    etag: str | None = None
    last_modified: str | None = None


def is_url(source: str | Path) -> bool:
    return urlparse(str(source)).scheme.lower() in ("http", "https")


def feed_path(source: str | Path) -> Path:
    """The file a non-URL feed location names (a path or a file:// URL); other schemes are refused."""
    text = str(source)
    scheme = urlparse(text).scheme.lower()
    if scheme in ("", "file") or re.match(r"^[a-zA-Z]:\\", text):
        return Path(urlparse(text).path if scheme == "file" else text)
    raise FeedError(f"unsupported feed location {text!r}: use a file path or an http(s) URL")


def fetch_url(url: str, etag: str | None = None, last_modified: str | None = None,
              timeout: float = 30.0) -> Fetched:
    """GET a feed URL, conditionally when validators from an earlier fetch are given."""
    headers = {"User-Agent": "rag-feed-reader", "Accept-Encoding": "identity"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            data = resp.read(MAX_FEED_BYTES + 1)
            etag, last_modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
    except urllib.error.HTTPError as e:
        if e.code == 304:
            return Fetched(None, etag, last_modified)
        raise FeedError(f"cannot fetch feed {url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise FeedError(f"cannot fetch feed {url}: {getattr(e, 'reason', e)}") from e
    return Fetched(_checked(data, url), etag, last_modified)


def _checked(data: bytes, source: str) -> bytes:
    if len(data) > MAX_FEED_BYTES:
        raise FeedError(f"feed {source} is larger than {MAX_FEED_BYTES // 2**20} MiB")
    if not data.strip():
        raise FeedError(f"feed {source} is empty")
    return data


def _read_source(source: str | Path) -> bytes:
    if is_url(source):
        return fetch_url(str(source)).data
    path = feed_path(source)
    if not path.is_file():
        raise FeedError(f"feed file not found: {path}")
    return _checked(path.read_bytes()[: MAX_FEED_BYTES + 1], str(source))


def _entry_date(entry) -> str:
    parsed = entry.get("published_parsed") or entry.get("updated_parsed")
    return strftime("%Y-%m-%dT%H:%M:%SZ", parsed) if parsed else ""


def _entry_html(entry) -> str:
    contents = entry.get("content") or []
    html = max((c.get("value", "") for c in contents), key=len, default="")
    return html or entry.get("summary", "") or entry.get("description", "")


def _line_column(data: bytes, offset: int) -> tuple[int, int]:
    line_start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - line_start + 1


def _check_well_formed(parsed, data: bytes, source: str) -> None:
    """feedparser falls back to a lenient parser for broken XML and still returns entries, cut-off ones included;
    a feed that is not well-formed is refused, so that a truncated or damaged download never replaces a post."""
    if not parsed.get("bozo"):
        return
    exc = parsed.get("bozo_exception")
    if isinstance(exc, CharacterEncodingOverride):
        # Harmless when the declared encoding is simply wrong (a Latin-1 feed declared as UTF-8). But text that is
        # otherwise UTF-8 with a bad byte is damage: feedparser would re-decode all of it as windows-1252.
        if parsed.get("encoding", "").lower() != "utf-8" and _UTF8_MULTIBYTE.search(data):
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as e:
                line, column = _line_column(data, e.start)
                raise FeedError(f"{source} is not valid UTF-8 at line {line}, column {column} (damaged download?); "
                                f"{UNCHANGED}") from None
        log.warning("%s: %s", source, exc)
        return
    if isinstance(exc, CharacterEncodingUnknown):  # feedparser then skips the XML check altogether
        raise FeedError(f"{source}: cannot tell its character encoding ({exc}); {UNCHANGED}")
    if isinstance(exc, feedparser.ThingsNobodyCaresAboutButMe):  # e.g. NonXMLContentType: not about the XML
        log.warning("%s: %s", source, exc)
        return
    if isinstance(exc, xml.sax.SAXParseException):
        where = f" at line {exc.getLineNumber()}, column {exc.getColumnNumber() + 1}"  # expat counts columns from 0
        reason = exc.getMessage()
    else:
        where, reason = "", str(exc)
    raise FeedError(f"{source} is not well-formed XML{where} ({reason}; truncated download?); {UNCHANGED}")


def _web_url(url: str) -> str:
    url = (url or "").strip()
    return url if _WEB_URL.fullmatch(url) and urlparse(url).netloc else ""


def _entry_url(entry, guid: str, source: str, title: str) -> str:
    """Only http(s) links are stored: a `javascript:` or `data:` link would become an href in the app."""
    link = entry.get("link") or ""
    if _web_url(link):
        return link.strip()
    fallback = _web_url(guid)
    if link:
        log.warning("%s %r: link %r is not an http(s) URL; %s", source, title, link[:200],
                    f"using the guid {fallback} instead" if fallback else "the post is kept without a link")
    return fallback


def parse_feed(data: bytes, source: str = "feed", max_item_chars: int = MAX_ITEM_CHARS) -> list[Post]:
    """Parse RSS/Atom bytes into posts. A feed that is not well-formed XML is refused (FeedError) as a whole;
    items without content, with a repeated guid or with more than `max_item_chars` characters of HTML are
    skipped with a warning."""
    # sanitize_html=False keeps data-attrs (formulas); scripts are removed by html_to_markdown.
    try:
        parsed = feedparser.parse(data, sanitize_html=False, resolve_relative_uris=False)
    except UndeclaredNamespace as e:  # raised from inside feedparser's XML parser rather than reported
        raise FeedError(f"{source} is not well-formed XML ({e}); {UNCHANGED}") from None
    except (ValueError, LookupError) as e:  # a damaged encoding name: "UT\0-8" cannot even be looked up
        raise FeedError(f"{source} has an unreadable character encoding ({e}); {UNCHANGED}") from None
    if not parsed.entries:
        reason = f": {parsed.get('bozo_exception')}" if parsed.get("bozo") else ""
        raise FeedError(f"{source} is not an RSS/Atom feed with items{reason}")
    _check_well_formed(parsed, data, source)
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
        html = _entry_html(entry)
        if len(html) > max_item_chars:  # checked on the raw string, before any HTML parsing
            log.warning("skipping %s %r: its HTML is %s characters, over the limit of %s per item",
                        source, title, f"{len(html):,}", f"{max_item_chars:,}")
            continue
        try:
            markdown = html_to_markdown(html)
        except RecursionError:
            log.warning("%s %r: HTML nested too deeply to convert; indexed as plain text", source, title)
            markdown = _plain_text(html)
        if not markdown:
            log.warning("skipping %s %r: the item has no content", source, title)
            continue
        seen.add(guid)
        posts.append(Post(guid=guid, title=title, url=_entry_url(entry, guid, source, title),
                          date=_entry_date(entry), author=entry.get("author", ""), markdown=markdown))
    if not posts:
        raise FeedError(f"{source} has no items with content")
    return posts


def read_feed(source: str | Path, max_item_chars: int = MAX_ITEM_CHARS) -> list[Post]:
    return parse_feed(_read_source(source), str(source), max_item_chars=max_item_chars)
