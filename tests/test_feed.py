import json
import logging

import pytest

from rag.feed import FeedError, html_to_markdown, parse_feed, read_feed
from rag.settings import DEFAULT_FEED

from .conftest import feed_items


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
