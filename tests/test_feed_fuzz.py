"""Property-based: truncated or byte-damaged feeds never cost a stored post any of its chunks.

A post may change only when the run says so (report.changed / report.removed); a feed that is refused
(FeedError) leaves the index exactly as it was.
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from rag.feed import FeedError, parse_feed
from rag.index import Index, current_generation
from rag.indexer import update_index
from rag.settings import DEFAULT_FEED

from .conftest import write_feed

SMALL = [4, 7, 8]  # the three smallest bundled posts, about 50 chunks in all: seconds to embed
BUNDLED = DEFAULT_FEED.read_bytes()


def truncations(data: bytes):
    return st.integers(0, len(data) - 1).map(lambda n: data[:n])


def mutations(data: bytes):
    """1-3 bytes replaced, inserted or deleted anywhere in the feed."""
    edit = st.tuples(st.integers(0, len(data) - 1), st.sampled_from(["replace", "insert", "delete"]),
                     st.integers(0, 255))

    def apply(edits):
        out = bytearray(data)
        for at, kind, byte in sorted(edits, reverse=True):  # from the end, so earlier offsets stay valid
            at = min(at, len(out) - 1)
            if kind == "replace":
                out[at] = byte
            elif kind == "insert":
                out.insert(at, byte)
            else:
                del out[at]
        return bytes(out)

    return st.lists(edit, min_size=1, max_size=3).map(apply)


# ------------------------------------------------------------------ fast: the parser alone


@functools.cache
def bundled_markdown() -> dict[str, str]:  # not a fixture: hypothesis would print all of it with each failure
    return {p.guid: p.markdown for p in parse_feed(BUNDLED, "bundled")}


@settings(max_examples=60, deadline=None)
@given(truncations(BUNDLED))
def test_a_truncated_feed_is_refused_or_read_whole_never_as_shorter_posts(data):
    try:
        posts = parse_feed(data, "truncated.xml")
    except FeedError as e:
        assert "\n" not in str(e)
        return
    for post in posts:  # only a cut in the trailing whitespace leaves a feed that can be read
        assert post.markdown == bundled_markdown()[post.guid]


# ------------------------------------------------------------------ slow: a real index, updated with damaged feeds


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, settings_for):
    d = tmp_path_factory.mktemp("fuzz")
    feed = write_feed(d / "small.xml", keep=SMALL)
    s = settings_for(d / "index")
    report = update_index(s, feed=feed)
    assert len(report.added) == len(SMALL)
    return s, feed.read_bytes(), d


def stored(s) -> dict[str, tuple[str, int]]:
    index = Index.open(s)
    try:
        return {p.guid: (p.title, p.chunks) for p in index.posts()}
    finally:
        index.close()


@pytest.mark.slow
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_damaged_feeds_never_cost_a_stored_post_its_chunks(small_index, data):
    s, feed, d = small_index
    cut = data.draw(st.booleans(), label="truncate")
    damaged = data.draw(truncations(feed) if cut else mutations(feed), label="feed")
    path = d / "damaged.xml"
    path.write_bytes(damaged)
    before, generation = stored(s), current_generation(s.index_dir)

    try:
        report = update_index(s, feed=path)
    except FeedError as e:
        event("refused")
        assert "\n" not in str(e)
        assert current_generation(s.index_dir) == generation  # refused: nothing was written
        assert stored(s) == before
        return

    after = stored(s)
    event(f"accepted, {'changed' if report.changed else 'unchanged'}")
    if cut:  # a prefix of the feed holds no new or edited post: at most its trailing whitespace was cut
        assert not report.added and not report.changed, report.summary()
    on_purpose = {g for g, (title, _) in after.items() if title in report.changed}
    on_purpose |= {g for g, (title, _) in before.items() if title in report.removed}
    for guid, (title, chunks) in before.items():
        if guid in on_purpose:
            continue
        assert guid in after, f"{title!r} disappeared: {report.summary()}"
        assert after[guid][1] == chunks, f"{title!r} went from {chunks} to {after[guid][1]} chunks unannounced"
    for guid in on_purpose & before.keys() & after.keys():  # a 1-3 byte edit rewords a post, never guts it
        assert after[guid][1] * 2 >= before[guid][1], f"{before[guid][0]!r}: {before[guid][1]} -> {after[guid][1]}"
    assert all(n > 0 for _, n in after.values())
