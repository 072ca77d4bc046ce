"""What the app renders, without a browser: the posts' Markdown and formulas as HTML, highlights that stay
well formed, citation links with previews, refusals, exports and example questions. Real posts (the
bundled feed), no models."""

from __future__ import annotations

import re

import pytest

from rag import render
from rag.feed import read_feed
from rag.settings import DEFAULT_FEED


@pytest.fixture(scope="module")
def posts():
    return read_feed(DEFAULT_FEED)


def test_every_formula_of_the_posts_becomes_mathml(posts):
    for post in posts:
        formulas = render.FORMULA.findall(post.markdown)
        html = render.markdown_html(post.markdown)
        assert "$$" not in html, post.title
        assert html.count("<math") == len(formulas), post.title
        text = re.sub(r"<[^>]+>", "", re.sub(r"<code.*?</code>", "", html, flags=re.S))
        assert not re.search(r"\\(mathrm|frac|left|right|text|sum|hat)\b", text), post.title
        assert "<code class='tex'>" not in html, post.title  # no formula fell back to raw TeX


def test_highlights_cross_bold_and_list_items_and_stay_well_formed():
    text = ("The difference lies in where **Layer Normalization** is applied.\n\n"
            "- **Post-LN**: LayerNorm is applied after adding the residual.\n"
            "- second item\n\n$$x_{l+1} = \\mathrm{LN}(x_l)$$\n")
    spans = render.evidence_spans(text, ["The difference lies in where Layer Normalization is applied.",
                                         "LayerNorm is applied after adding the residual."])
    html = render.markdown_html(text, [(a, b, "support") for a, b in spans])
    marks = re.findall(r"<mark class='support' data-k='(\d)'>(.*?)</mark>", html)
    assert {k for k, _ in marks} == {"0", "1"}
    assert all("<" not in inner for _, inner in marks)  # a mark never holds a tag: always well formed
    assert "".join(inner for k, inner in marks if k == "0") == "The difference lies in where Layer Normalization is applied"
    assert "<li><strong>Post-LN</strong>: <mark" in html  # the list still parses, the label stays out
    assert html.count("<math") == 1 and "display=\"block\"" in html
    # a sentence quoted with its display formula: the formula's mark is a block (app.css), not an inline mark
    # around a block, which the browser shows as two slivers above and below the formula
    text = "Agglomerative clustering leads to a time complexity of\n\n$$O(n^2 \\log n)$$\n\nand so on."
    html = render.markdown_html(text, [(0, text.index("\n\nand"), "support")])
    assert re.search(r"<mark class='support block' data-k='0'><math[^>]*display=\"block\"", html), html
    assert "<mark class='support' data-k='0'>Agglomerative clustering leads to a time complexity of</mark>" in html


def test_a_list_quoted_as_one_sentence_is_highlighted_over_its_items():
    quoted = ["Controls: Tree depth, Learning rate, Regularization (λ,γ)."]  # text.joined_lists
    text = "Same mechanisms.\n\n**Controls:**\n• Tree depth\n• Learning rate\n• Regularization (λ,γ)\n\nNext."
    (span,) = render.evidence_spans(text, quoted)  # the posts' bullets: lines of one paragraph
    assert text[span[0]:span[1]] == "Controls:**\n• Tree depth\n• Learning rate\n• Regularization (λ,γ)"
    text = "Same mechanisms.\n\nControls:\n\n- Tree depth\n- Learning rate\n- Regularization (λ,γ)\n\nNext."
    (span,) = render.evidence_spans(text, quoted)  # a Markdown list: one mark in each item
    html = render.markdown_html(text, [(*span, "support")])
    marks = re.findall(r"<mark class='support' data-k='0'>(.*?)</mark>", html, flags=re.S)
    assert [m.strip() for m in marks] == ["Controls:", "Tree depth", "Learning rate", "Regularization (λ,γ)"], html
    assert html.count("<li>") == 3 and all("<" not in m for m in marks)  # still a list, marks well formed


def test_a_paraphrased_sentence_is_matched_to_the_passage_sentence_it_rests_on():
    text = "Bagging trains models on bootstrap samples. Boosting trains models one after another on the errors."
    (span,) = render.evidence_spans(text, ["Boosting fits models sequentially on the errors of earlier ones."])
    assert text[span[0]:span[1]] == "Boosting trains models one after another on the errors"


def test_posts_and_questions_cannot_inject_html():
    html = render.markdown_html("A <script>alert(1)</script> and [x](javascript:alert(1)) and ![i](https://x.y/a.png)")
    assert "<script" not in html and "&lt;script&gt;" in html
    assert "href=\"javascript" not in html and "<a" not in html  # markdown-it refuses the link
    assert "<img" not in html and "[i]" in html  # an image would be a request leaving the machine


def turn(**kw):
    base = {"turn_id": "t", "question": "whats oob", "answer": "Remaining ~36.8% are **Out-of-Bag** for that tree. [1]",
            "refused": False, "done": True, "citations": [{
                "n": 1, "post_title": "Random Forest", "url": "https://example.com/p/rf#oob", "date": "2025-12-28",
                "section": "Intro > Q3: What is Out-of-Bag (OOB) error?",
                "text": "**Because of bootstrapping:**\n\n- Remaining ~36.8% are **Out-of-Bag** for that tree\n",
                "supporting": ["Remaining ~36.8% are Out-of-Bag for that tree."]}]}
    return {**base, **kw}


def test_a_citation_links_to_its_local_card_with_a_preview():
    md = render.answer_markdown(turn(), 3)
    link = re.search(r"\[\\\[1\\\]\]\((#source-3-1-0) \"([^\"]+)\"\)", md)
    assert link, md
    assert "Random Forest" in link.group(2) and "Remaining ~36.8% are Out-of-Bag for that tree" in link.group(2)
    html = render.sources_html([turn(), turn()])
    assert html.count("<section class='turn'") == 2 and "id='source-1-1'" in html
    assert re.search(r"<section class='turn' data-turn='0' hidden>", html)  # only the latest is shown
    assert "href='https://example.com/p/rf#oob' target='_blank'" in html


def test_a_citation_after_a_display_formula_goes_before_it():
    # seen in the browser: the formula is a block, and the [1] after it opened the next line as if it cited the
    # sentence after it
    text = "AdamW fixes this by decoupling decay:\n\n$$W_{t+1} = W_t - \\eta \\lambda W_t$$\n\nDecay is scaled by v."
    quoted = ["AdamW fixes this by decoupling decay: $$W_{t+1} = W_t - \\eta \\lambda W_t$$", "Decay is scaled by v."]
    answer = f"{quoted[0]} [1] {quoted[1]} [1]"
    md = render.answer_markdown(turn(answer=answer, citations=[{**turn()["citations"][0], "text": text,
                                                                "supporting": quoted}]), 0)
    links = re.findall(r"\[\\\[1\\\]\]\(#source-0-1-(\d) ", md)
    assert links == ["0", "1"], md  # each [1] still opens its own sentence in the Sources panel
    assert re.match(r'AdamW fixes this by decoupling decay: \[\\\[1\\\]\]\(#source-0-1-0 "[^"]*"\) \$\$W_\{t\+1\}[^$]*\$\$ '
                    r'Decay is', md), md


def test_a_refusal_says_when_the_post_filter_caused_it():
    refused = turn(refused=True, answer="The posts don't cover this.", citations=[], post_title="Random Forest",
                   elsewhere=[{"post_title": "Clustering", "section": "Intro > Q2. How does DBSCAN work?"}],
                   suggestions=["How does DBSCAN work?"])
    md = render.answer_markdown(refused, 0)
    assert "Only *Random Forest* was searched" in md and "*Clustering* — Q2. How does DBSCAN work?" in md
    assert md.count("DBSCAN") == 1  # the nearest sections are the chips, not repeated in the message


def test_export_holds_questions_answers_and_the_sentences_they_rest_on():
    md = render.conversation_markdown([turn(), turn(question="and why?", stopped=True, partial="Rem")])
    assert "## whats oob" in md and "<https://example.com/p/rf#oob>" in md
    assert "  > Remaining ~36.8% are **Out-of-Bag** for that tree" in md
    assert "## and why?" in md and "stopped" in md


def test_example_questions_name_their_subject():
    sections = [("a", "Intro > Q1. What Is the Input and What Is the Output?"),
                ("a", "Intro > Q2. How does the algorithm behave in high-dimensional data?"),
                ("a", "Intro > Q3: What is Out-of-Bag (OOB) error? How is it computed?"),
                ("b", "Over What Time Horizon Are We Predicting?"),
                ("b", "Q1. How does K-Means++ initialization improve standard K-Means?")]
    words = {"a": {"input", "output", "algorithm", "out-of-bag", "oob", "error"},
             "b": {"k-means++", "k-means", "horizon", "predicting"}}
    assert render.example_questions(sections, words, ["a", "b"]) == [
        "What is Out-of-Bag (OOB) error?", "How does K-Means++ initialization improve standard K-Means?"]
