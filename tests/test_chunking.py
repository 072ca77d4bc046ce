import pytest

from rag.chunking import Chunker, anchor, section_title
from rag.feed import read_feed
from rag.embedder import load_embedder
from rag.settings import DEFAULT_FEED


@pytest.fixture(scope="module")
def chunker():
    return Chunker(load_embedder("sentence-transformers/all-MiniLM-L6-v2").tokenizer)


@pytest.fixture(scope="module")
def chunks(chunker):
    return [c for p in read_feed(DEFAULT_FEED) for c in chunker.chunk(p)]


def test_all_129_formulas_survive_into_chunks(chunks):
    posts = read_feed(DEFAULT_FEED)
    formulas = {f for p in posts for f in p.markdown.split("$$")[1::2]}
    text = "\n".join(c.text for c in chunks)
    assert sum(p.markdown.count("$$") // 2 for p in posts) == 129
    missing = [f for f in formulas if f"$${f}$$" not in text]
    assert not missing


def test_no_chunk_exceeds_the_embedder_window(chunks, chunker):
    sizes = [chunker.count(c.embed_text) for c in chunks]
    assert max(sizes) <= 256
    assert sum(s < chunker.min_tokens for s in sizes) <= 2  # orphans merged, not indexed alone


def test_every_chunk_has_title_section_and_link(chunks):
    assert 300 < len(chunks) < 700
    for c in chunks:
        assert c.post_title and c.section and c.url.startswith("https://dshandbook.substack.com/p/")
        assert c.text.strip()
        assert c.embed_text.startswith(c.post_title)
    sections = {c.section for c in chunks}
    assert any(s.endswith("Q3: What is Out-of-Bag (OOB) error? How is it computed and why is it useful?")
               for s in sections)
    assert any("#§q2-" in c.url for c in chunks)


def test_long_sections_split_short_ones_merged(chunker):
    from rag.feed import Post
    body = "## Long\n\n" + "\n\n".join(f"Sentence number {i} about gradient descent and momentum." for i in range(200))
    cs = chunker.chunk(Post("g", "T", "https://x/p", "", "", body + "\n\n### Tiny part\n\nOk."))
    assert len(cs) > 5 and all(chunker.count(c.embed_text) <= 256 for c in cs)
    assert cs[-1].text.endswith("Tiny part\n\nOk.")  # the orphan joined its own section with its heading
    assert cs[-1].section == "Long"
    # another question's short section stays apart: merged, its text would be quoted in answers to this one
    cs = chunker.chunk(Post("g", "T", "https://x/p", "", "", body + "\n\n## Tiny\n\nOk."))
    assert cs[-1].text == "Ok." and cs[-1].section == "Tiny" and "Ok." not in cs[-2].text


def test_anchor_matches_substack_style():
    assert anchor("Q1. What is Layer Normalization?") == "§q1-what-is-layer-normalization"


def test_section_title_names_the_question_a_sub_heading_belongs_to(chunks):
    q8 = "Q8. How does the algorithm behave in high-dimensional data?"
    assert section_title(f"Introduction > {q8} > k-Nearest Neighbors (kNN)") == f"{q8} › k-Nearest Neighbors (kNN)"
    assert section_title(f"Introduction > {q8}") == q8  # a question is its own title
    assert section_title("Start by Clarifying the Problem > Why it matters") == "Why it matters"
    # in the bundled corpus, titles tell apart sections whose last headings repeat
    leaves = {(c.post_guid, c.section.split(" > ")[-1]) for c in chunks}
    titles = {(c.post_guid, section_title(c.section)) for c in chunks}
    assert len(titles) > len(leaves)
