import json
import logging
import re

import pytest

import rag.feed as feed_module
from rag.feed import FeedError, html_to_markdown, parse_feed, read_feed
from rag.index import Index, current_generation
from rag.indexer import update_index
from rag.settings import DEFAULT_FEED

from .conftest import feed_items, run_rag, write_feed


@pytest.fixture(scope="module")
def posts():
    return read_feed(DEFAULT_FEED)


def test_bundled_feed_has_ten_posts_with_metadata(posts):
    assert len(posts) == 10
    assert len({p.guid for p in posts}) == 10
    for p in posts:
        assert p.title and p.url.startswith("https://dshandbook.substack.com/p/")
        assert p.date.startswith(("2025-", "2026-")) and p.author == "Rudra"
    assert 30_000 < sum(len(p.markdown.split()) for p in posts) < 45_000


def test_every_formula_survives_as_display_math(posts):
    _, channel = feed_items()
    raw = "".join(item.findtext("{http://purl.org/rss/1.0/modules/content/}encoded") for item in channel.findall("item"))
    assert raw.count("persistentExpression") == 129
    markdown = "\n".join(p.markdown for p in posts)
    assert markdown.count("$$") == 2 * 129
    assert "$$x_{l+1} = \\mathrm{LN}\\left(x_l + F(x_l)\\right)$$" in markdown


def test_structure_kept_and_furniture_dropped(posts):
    md = "\n".join(p.markdown for p in posts)
    assert "## Introduction" in md and "#### Q2. What is the difference between Pre-LN and Post-LN" in md
    assert "```\ndef gini(labels):" in md  # code blocks stay fenced
    assert "\n- " in md  # lists
    for junk in ("Subscribe now", "Type your email", "substackcdn.com", "<svg", "Subscribe for free to receive"):
        assert junk not in md


def test_scripts_and_widgets_never_reach_markdown():
    md = html_to_markdown('<h2>T</h2><p>keep <b>this</b></p><script>alert("x")</script>'
                          '<p class="button-wrapper"><a>Subscribe now</a></p><img src="x.png">')
    assert md == "## T\n\nkeep **this**"


def test_malformed_and_empty_feeds_are_clear_errors(tmp_path):
    with pytest.raises(FeedError, match="not an RSS/Atom feed"):
        parse_feed(b"<html><body>not a feed</body></html>", "bad.xml")
    with pytest.raises(FeedError, match="empty"):
        (tmp_path / "empty.xml").write_text("  ")
        read_feed(tmp_path / "empty.xml")
    with pytest.raises(FeedError, match="not found"):
        read_feed(tmp_path / "missing.xml")
    with pytest.raises(FeedError, match="unsupported feed location"):
        read_feed("ftp://example.com/feed.xml")
    with pytest.raises(FeedError, match="cannot fetch"):
        read_feed("http://127.0.0.1:9/feed.xml")


RSS = """<?xml version="1.0"?><rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/">
<channel><title>t</title>{}</channel></rss>"""


def item(guid, title, html):
    return f"<item><title>{title}</title><guid>{guid}</guid><link>{guid}</link>" \
           f"<content:encoded><![CDATA[{html}]]></content:encoded></item>"


def test_empty_items_and_duplicate_guids_are_skipped_with_a_warning(caplog):
    data = RSS.format(item("g1", "One", "<p>first</p>") + item("g2", "Empty", "")
                      + item("g1", "One again", "<p>dup</p>")).encode()
    with caplog.at_level(logging.WARNING):
        posts = parse_feed(data, "test.xml")
    assert [p.title for p in posts] == ["One"]
    assert "'Empty': the item has no content" in caplog.text
    assert "'One again': duplicate guid g1" in caplog.text


def test_atom_feeds_are_read():
    atom = b"""<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>a</title>
    <entry><id>urn:1</id><title>Atom post</title><link href="https://x/1"/><updated>2025-01-01T00:00:00Z</updated>
    <content type="html">&lt;h2&gt;Head&lt;/h2&gt;&lt;p&gt;Body text&lt;/p&gt;</content></entry></feed>"""
    (post,) = parse_feed(atom)
    assert (post.guid, post.title, post.url, post.date) == ("urn:1", "Atom post", "https://x/1", "2025-01-01T00:00:00Z")
    assert post.markdown == "## Head\n\nBody text"


def test_content_hash_ignores_volatile_fields(posts):
    p = posts[0]
    same = type(p)(p.guid, p.title, p.url, "2030-01-01T00:00:00Z", "someone else", p.markdown)
    assert same.content_hash == p.content_hash
    assert type(p)(p.guid, p.title, p.url, p.date, p.author, p.markdown + "!").content_hash != p.content_hash
    json.dumps(p.__dict__)  # plain record


# ------------------------------------------------------------------ malformed feeds never replace stored posts


def bundled_bytes() -> bytes:
    return DEFAULT_FEED.read_bytes()


def test_a_truncated_feed_is_a_clear_error_naming_the_place():
    data = bundled_bytes()
    with pytest.raises(FeedError) as err:
        parse_feed(data[: len(data) // 2], "half.xml")
    message = str(err.value)
    assert re.fullmatch(r"half\.xml is not well-formed XML at line \d+, column \d+ \(.+; truncated download\?\); "
                        r"the index was not changed", message), message
    assert "\n" not in message


def test_a_feed_cut_after_its_first_items_is_refused_not_partly_read():
    data = bundled_bytes()
    end = data.index(b"</item>", data.index(b"Clustering")) + len(b"</item>")  # four whole items, then EOF
    with pytest.raises(FeedError, match=r"not well-formed XML at line 1, column \d+"):
        parse_feed(data[:end], "cut.xml")


@pytest.mark.parametrize("anchor, damage", [
    (b"Gini", b"\x00"), (b"Gini", b"]]>"),  # inside an item's CDATA
    (b"<item><title><![CDATA[Clustering", b"<"), (b"<item><title><![CDATA[Clustering", b"&bogus;"),  # between tags
    (b"</item>", b"x"),  # a broken end tag
])
def test_markup_damage_inside_an_item_is_refused(anchor, damage):
    data = bundled_bytes()
    at = data.index(anchor) + 2
    with pytest.raises(FeedError, match="not well-formed XML"):
        parse_feed(data[:at] + damage + data[at:], "damaged.xml")


def test_a_damaged_byte_in_a_utf8_feed_is_refused_not_read_as_windows_1252():
    """One bad byte would otherwise make feedparser re-decode the whole feed, turning every post into mojibake."""
    data = bundled_bytes()
    at = data.index(b"Gini")
    with pytest.raises(FeedError) as err:
        parse_feed(data[:at] + b"\xff" + data[at + 1:], "bad-byte.xml")
    assert re.fullmatch(r"bad-byte\.xml is not valid UTF-8 at line 1, column \d+ \(damaged download\?\); "
                        r"the index was not changed", str(err.value)), str(err.value)


def test_a_damaged_encoding_name_is_refused_not_a_traceback():
    """Found by the fuzz test: a NUL byte in the XML declaration's encoding name made feedparser raise."""
    data = bundled_bytes()
    at = data.index(b"UTF-8") + 2
    with pytest.raises(FeedError, match=r"bad-encoding\.xml has an unreadable character encoding .*; the index was "
                                        r"not changed"):
        parse_feed(data[:at] + b"\x00" + data[at + 1:], "bad-encoding.xml")


def test_harmless_encoding_quirks_are_still_accepted():
    # A legacy feed that declares UTF-8 but is really Latin-1: feedparser's CharacterEncodingOverride, not damage.
    latin1 = RSS.replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="utf-8"?>').format(
        item("g1", "Caf\u00e9", "<p>cr\u00e8me br\u00fbl\u00e9e</p>")).encode("latin-1")
    (post,) = parse_feed(latin1, "latin1.xml")
    assert (post.title, post.markdown) == ("Caf\u00e9", "cr\u00e8me br\u00fbl\u00e9e")
    declared = RSS.replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="iso-8859-1"?>').format(
        item("g1", "Caf\u00e9", "<p>cr\u00e8me</p>")).encode("latin-1")
    assert parse_feed(declared)[0].markdown == "cr\u00e8me"
    bom = b"\xef\xbb\xbf" + RSS.format(item("g1", "One", "<p>caf\u00e9</p>")).encode()
    assert parse_feed(bom)[0].markdown == "caf\u00e9"


@pytest.mark.slow
def test_rag_index_with_a_truncated_feed_exits_2_and_keeps_every_stored_chunk(tmp_path, settings_for):
    settings = settings_for(tmp_path / "index")
    update_index(settings, feed=write_feed(tmp_path / "full.xml", keep=[3, 8]))  # Clustering + a small post
    before = {p.guid: (p.content_hash, p.chunks) for p in Index.open(settings).posts()}
    generation = current_generation(settings.index_dir)
    assert max(chunks for _, chunks in before.values()) > 30
    data = bundled_bytes()
    half = tmp_path / "half.xml"
    half.write_bytes(data[: len(data) // 2])  # ends inside the Clustering post

    result = run_rag("index", "--index", str(settings.index_dir), "--feed", str(half))

    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("rag: error:")]
    assert len(errors) == 1 and f"{half} is not well-formed XML at line 1, column" in errors[0]
    assert errors[0].endswith("the index was not changed")
    assert "Traceback" not in result.stderr
    assert current_generation(settings.index_dir) == generation
    assert {p.guid: (p.content_hash, p.chunks) for p in Index.open(settings).posts()} == before


# ------------------------------------------------------------------ a size cap per item


def test_an_item_over_the_size_cap_is_skipped_with_a_warning_and_the_rest_are_read(tmp_path, caplog):
    path = tmp_path / "big.xml"
    path.write_text(RSS.format(item("g1", "Small", "<p>first</p>") + item("g2", "Huge", "<p>" + "x" * 5000 + "</p>")
                               + item("g3", "Also small", "<p>third</p>")))
    with caplog.at_level(logging.WARNING):
        posts = read_feed(path, max_item_chars=1000)
    assert [p.title for p in posts] == ["Small", "Also small"]
    assert re.search(r"skipping .*big\.xml 'Huge': its HTML is 5,00\d characters, over the limit of 1,000", caplog.text)
    assert len(read_feed(path)) == 3  # the default cap is far above this
    with pytest.raises(FeedError, match="no items with content"):
        parse_feed(RSS.format(item("g2", "Huge", "<p>" + "x" * 5000 + "</p>")).encode(), "x.xml", max_item_chars=10)


def test_a_huge_item_is_skipped_before_any_html_parsing(tmp_path, monkeypatch, caplog):
    """The default cap; the item is never handed to BeautifulSoup (a 50 MB item took 15 s and 540 MB there)."""
    assert feed_module.MAX_ITEM_CHARS == 2_000_000
    seen: list[int] = []
    real = feed_module.html_to_markdown
    monkeypatch.setattr(feed_module, "html_to_markdown", lambda html: seen.append(len(html)) or real(html))
    huge = "<h2>Huge</h2><p>" + "word " * 1_000_000 + "</p>"  # 5 MB
    path = tmp_path / "huge.xml"
    path.write_text(RSS.format(item("g1", "Huge", huge) + item("g2", "Small", "<p>kept</p>")))
    with caplog.at_level(logging.WARNING):
        (post,) = read_feed(path)
    assert post.title == "Small" and post.markdown == "kept"
    assert max(seen) < 100  # only the small item was converted
    assert "'Huge': its HTML is 5,000,020 characters, over the limit of 2,000,000 per item" in caplog.text
    assert len(parse_feed(path.read_bytes(), max_item_chars=10_000_000)) == 2  # the cap is a parameter


# ------------------------------------------------------------------ only http(s) links are stored


def linked_item(guid, link, title="T"):
    return f"<item><title>{title}</title><guid>{guid}</guid><link>{link}</link>" \
           f"<content:encoded><![CDATA[<p>body of {title}</p>]]></content:encoded></item>"


def test_links_other_than_http_are_replaced_by_the_guid_or_dropped(caplog):
    data = RSS.format(
        linked_item("https://x/1", "javascript:alert(document.domain)//", "Script link")
        + linked_item("urn:post:2", "javascript:alert(document.domain)//", "Script link, no web guid")
        + linked_item("urn:post:3", "  JavaScript:alert(1)", "Upper case")
        + linked_item("urn:post:4", "data:text/html,&lt;script&gt;alert(1)&lt;/script&gt;", "Data link")
        + linked_item("urn:post:5", "java&#x09;script:alert(1)", "Tab in scheme")
        + linked_item("urn:post:6", "vbscript:msgbox(1)", "VBScript")
        + linked_item("urn:post:7", "https://ok.example/p/7", "Good link")
        + linked_item("urn:post:8", "HTTP://ok.example/p/8", "Upper-case http")
        + linked_item("urn:post:9", "https://x/9\" onmouseover=\"alert(1)", "Quote in link")
        + linked_item("javascript:alert(2)", "", "Script guid, no link")).encode()
    with caplog.at_level(logging.WARNING):
        posts = {p.title: p.url for p in parse_feed(data, "links.xml")}
    assert posts == {"Script link": "https://x/1", "Script link, no web guid": "", "Upper case": "",
                     "Data link": "", "Tab in scheme": "", "VBScript": "", "Good link": "https://ok.example/p/7",
                     "Upper-case http": "HTTP://ok.example/p/8", "Quote in link": "", "Script guid, no link": ""}
    assert "links.xml 'Script link': link 'javascript:alert(document.domain)//' is not an http(s) URL; " \
           "using the guid https://x/1 instead" in caplog.text
    assert "links.xml 'Script link, no web guid': link 'javascript:alert(document.domain)//' is not an http(s) " \
           "URL; the post is kept without a link" in caplog.text
    assert "Good link" not in caplog.text
