"""Property-based: truncated or byte-damaged copies of the bundled feed never cost a stored post any of its chunks.

The slow test gives each damaged feed to the real `rag index` (a subprocess) against an index of the whole
bundled corpus. A post may change only when the run says so (its summary's "changed:" / "removed:" lines);
a feed that is refused (exit 2, one line) leaves the index exactly as it was.
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from rag.feed import FeedError, parse_feed
from rag.index import Index, current_generation
from rag.indexer import update_index
from rag.settings import DEFAULT_FEED

from .conftest import run_rag

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


# ------------------------------------------------------------------ slow: a real index, `rag index` given damaged feeds


@pytest.fixture(scope="module")
def built_index(tmp_path_factory, settings_for):
    """The bundled corpus, indexed once; each example runs `rag index` against it."""
    d = tmp_path_factory.mktemp("fuzz")
    s = settings_for(d / "index")
    report = update_index(s)
    assert len(report.added) == 10
    return s, d


def stored(s) -> dict[str, tuple[str, str, int]]:
    index = Index.open(s)
    try:
        return {p.guid: (p.title, p.content_hash, p.chunks) for p in index.posts()}
    finally:
        index.close()


def reported(stdout: str, label: str) -> set[str]:
    """Titles the run's summary lists under `label` ("  changed: <title>")."""
    return {line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith(f"  {label}: ")}


@pytest.mark.slow
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_damaged_feeds_never_cost_a_stored_post_its_chunks(built_index, data):
    s, d = built_index
    cut = data.draw(st.booleans(), label="truncate")
    damaged = data.draw(truncations(BUNDLED) if cut else mutations(BUNDLED), label="feed")
    path = d / "damaged.xml"
    path.write_bytes(damaged)
    before, generation = stored(s), current_generation(s.index_dir)

    result = run_rag("index", "--feed", str(path), "--index", str(s.index_dir))

    assert result.returncode in (0, 2) and "Traceback" not in result.stderr, result.stderr[-2000:]
    after = stored(s)
    if result.returncode == 2:
        event("refused")
        errors = [line for line in result.stderr.splitlines() if line.startswith("rag: error:")]
        assert len(errors) == 1, result.stderr[-2000:]
        assert current_generation(s.index_dir) == generation  # refused: nothing was written
        assert after == before
        return
    changed, removed = reported(result.stdout, "changed"), reported(result.stdout, "removed")
    event(f"accepted, {'changed' if changed else 'unchanged'}")
    if cut:  # a prefix of the feed holds no new or edited post: at most its trailing whitespace was cut
        assert not changed and not reported(result.stdout, "added"), result.stdout
    on_purpose = {g for g, (title, _, _) in after.items() if title in changed}
    on_purpose |= {g for g, (title, _, _) in before.items() if title in removed}
    for guid, (title, content_hash, chunks) in before.items():
        if guid in on_purpose:
            continue
        assert guid in after, f"{title!r} disappeared: {result.stdout}"
        assert after[guid][1:] == (content_hash, chunks), f"{title!r} changed unannounced: {result.stdout}"
    for guid in on_purpose & before.keys() & after.keys():  # a 1-3 byte edit rewords a post, never guts it
        assert after[guid][2] * 2 >= before[guid][2], f"{before[guid][0]!r}: {before[guid][2]} -> {after[guid][2]}"
    assert all(n > 0 for _, _, n in after.values())
