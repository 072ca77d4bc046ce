"""Questions about the posts themselves ("what topics do you cover?", "summarize the clustering post"), answered from
the real index's list of posts and headings; questions that name a post and a topic are still searched."""

import pytest

from rag import render
from rag.answer import Chat
from rag.catalog import OVERVIEW_POSTS, PostOutline, catalog_reply, numbered_question, overview, post_outlines


@pytest.fixture(scope="module")
def chat(full_index):
    settings, _ = full_index
    return Chat(settings.replace(answer_mode="extractive"))


@pytest.mark.parametrize("question", ["what topics do you cover?", "What can I ask you?", "which posts do you have",
                                      "help", "whats this bot about"])
def test_asked_what_the_posts_cover_the_chat_lists_every_post(chat, question):
    posts = chat.retriever.index.posts()
    a = chat.ask(question)
    assert not a.refused, a.answer  # it was "The posts don't cover this."
    for p in posts:
        assert p.title in a.answer
    assert [c.url for c in a.citations] == [p.url for p in posts]  # one citation per post, in the list's order
    assert all(f"[{c.n}]" in a.answer for c in a.citations)
    # an example question short enough to scan (the first question of a two-question heading), never one that
    # leans on its post ("How does the algorithm handle missing data?" names no algorithm)
    assert "e.g. “What is the difference between Pre-LN and Post-LN Transformers?”" in a.answer
    assert "e.g. “What is Out-of-Bag (OOB) error?”" in a.answer and "the algorithm" not in a.answer
    assert a.generator is None and a.timings["total"] < 5
    links = render.answer_markdown(render.turn_record(a, turn_id="t"), 0)
    assert links.count("](#source-0-") == len(posts)  # each [n] opens its post's card in the Sources panel


@pytest.mark.parametrize("question", ["summarize the clustering post", "whats in the clustering post?",
                                      "what questions does the clustering article have"])
def test_asked_about_one_post_the_chat_lists_its_questions(chat, question):
    a = chat.ask(question)
    assert not a.refused
    assert [c.post_title for c in a.citations] == ["Clustering: Interview Questions & Answers"]
    # the post's own numbers (it has no Q5), which "explain Q6 of ..." refers to; no introduction or conclusion
    assert "- **Q2.** How do you determine the optimal number of clusters in real datasets?" in a.answer
    assert "**Q5.**" not in a.answer and "- **Q6.** How do you evaluate clustering" in a.answer
    assert "Introduction" not in a.answer and "Conclusion" not in a.answer
    assert "has 18 interview questions" in a.answer and "… and 6 more in the post." in a.answer


@pytest.mark.parametrize("question, title", [
    ("what questions do interviewers ask about random forests?", "Random Forest: Interview Questions & Answers"),
    ("what kind of questions are asked on clustering in interviews", "Clustering: Interview Questions & Answers")])
def test_asked_which_questions_there_are_on_a_topic_the_chat_lists_its_posts(chat, question, title):
    a = chat.ask(question)
    assert [c.post_title for c in a.citations] == [title] and "interview questions [1]:" in a.answer
    assert catalog_reply("what questions do interviewers ask about dropout", post_outlines(chat.retriever.index)) \
        is None  # no post on it: searched as usual


def test_a_post_is_named_by_its_topic_or_its_shorthand(chat):
    rf = chat.ask("what's in the rf post").citations
    assert [c.post_title for c in rf] == ["Random Forest: Interview Questions & Answers"]
    init = chat.ask("what does the weight initialization post cover?")
    assert "What happens if all weights are initialized to zero?" in init.answer
    assert "THANKS FOR READING" not in init.answer  # a closing line is no part of the post
    system = chat.ask("overview of the system design post")
    assert system.citations[0].post_title == "How to Approach a Machine Learning System Design Interview"
    assert "parts" in system.answer  # not all of its headings are interview questions


def test_this_post_is_the_one_the_chat_is_filtered_to(chat):
    guid = next(p.guid for p in chat.retriever.index.posts() if p.title.startswith("Optimizers"))
    a = chat.ask("what does this post cover?", post=guid)
    assert [c.post_title for c in a.citations] == ["Optimizers: Interview Questions & Answers"]
    assert "Why does AdamW exist?" in a.answer
    # with no post chosen, "this post" could be any of them: the chat says which there are
    assert len(chat.ask("summarize this post").citations) == len(chat.retriever.index.posts())


@pytest.mark.parametrize("question", ["does the random forest post cover boosting?",
                                      "what does the random forest post say about out-of-bag error",
                                      "what do you know about dropout", "what is post-ln about?",
                                      "what can you tell me about k-means++"])
def test_a_question_about_a_topic_is_no_question_about_the_posts(chat, question):
    outlines = post_outlines(chat.retriever.index)
    assert catalog_reply(question, outlines) is None
    a = chat.ask(question)
    assert a.refused or len(a.citations) < len(outlines) and "interview questions" not in a.answer


def test_a_post_name_that_matches_no_post_or_several_is_searched(chat):
    outlines = post_outlines(chat.retriever.index)
    assert catalog_reply("summarize the xgboost post", outlines) is None  # no such post
    assert catalog_reply("what's in the interview questions post", outlines).cited == tuple(outlines)  # all of them
    assert catalog_reply("summarize the answers post", outlines) is None  # eight titles say "Answers": search


def test_asked_to_be_quizzed_the_chat_points_to_practice_with_a_question_of_the_topic(chat):
    # seen in the CLI: "quiz me on random forests" quoted how the trees are built
    rf = chat.ask("quiz me on random forests")
    assert not rf.refused and "Practice" in rf.answer
    assert [c.post_title for c in rf.citations] == ["Random Forest: Interview Questions & Answers"]
    outlines = {o.title: o for o in post_outlines(chat.retriever.index)}
    asked = rf.answer.split("> ", 1)[1].split("\n", 1)[0]
    assert asked in outlines["Random Forest: Interview Questions & Answers"].headings
    kmeans = chat.ask("can you ask me some interview questions about k-means?")  # no post is named so
    assert "K-Means" in kmeans.answer.split("> ", 1)[1] and kmeans.citations[0].post_title.startswith("Clustering")
    assert not chat.ask("quiz me").refused  # any post
    assert chat.ask("test me on dropout").refused  # no question is about it: searched, and not covered


def test_the_overview_of_a_large_feed_lists_the_newest_posts_only():
    # pure formatting: a feed of hundreds of posts would fill the chat with one line each
    posts = [PostOutline(f"g{n}", f"Post {n}", f"https://x/{n}", f"2026-01-{n % 28 + 1:02d}", "Intro", "text",
                         ("What is it?",), 1) for n in range(30)]
    reply = overview(posts)
    assert len(reply.cited) == OVERVIEW_POSTS and reply.cited == tuple(posts[:OVERVIEW_POSTS])
    assert "The posts cover 30 topics (the newest first)" in reply.text and "… and 10 older posts" in reply.text
    assert f"[{OVERVIEW_POSTS}]" in reply.text and f"[{OVERVIEW_POSTS + 1}]" not in reply.text


def test_another_post_asked_for_as_a_follow_up(chat):
    # seen in the CLI: "and the random forest one?" after "whats in the clustering post?" quoted two sentences
    first = "whats in the clustering post?"
    rf = chat.ask("and the random forest one?", [[first, chat.ask(first).answer]])
    assert [c.post_title for c in rf.citations] == ["Random Forest: Interview Questions & Answers"], rf.answer
    assert "What is Out-of-Bag (OOB) error?" in rf.answer
    # after a question about a topic it is a follow-up about that topic, searched as usual
    topic = chat.ask("and the random forest one?", [["how does k-means++ work?", "It spreads the centroids."]])
    assert "interview questions" not in topic.answer


def test_a_question_asked_by_its_number_in_a_post_is_answered(chat):
    # "what's Q3 in the clustering post?" was answered from whatever "q3" and "clustering" matched
    a = chat.ask("what's Q3 in the clustering post?")
    heading = "Compare K-Means, DBSCAN, and Gaussian Mixture Models (GMM). When would you use each?"
    assert a.answer.startswith(f"*{heading}*"), a.answer  # says which question it answers
    assert a.question == "what's Q3 in the clustering post?" and a.query == heading  # shown as typed
    assert not a.refused and heading in a.citations[0].section
    loss = chat.ask("answer question 2 from the loss functions post")  # a post without numbers: its list's 2nd
    assert "differentiable almost everywhere" in loss.citations[0].section
    guid = next(p.guid for p in chat.retriever.index.posts() if p.title.startswith("Random Forest"))
    oob = chat.ask("explain q3 of this post", post=guid)
    assert "Out-of-Bag (OOB) error" in oob.citations[0].section
    more = chat.ask("tell me more", [["what's Q3 in the clustering post?", a.answer]])  # more of that question
    assert more.citations[0].section == a.citations[0].section and more.query == heading
    plan = chat.plan("tell me more", [["what's Q3 in the clustering post?", a.answer]])
    assert plan.previous == heading  # what every mode asks again, the generate mode's model too
    assert chat.plan("why?", [["what's Q3 in the clustering post?", a.answer]]).previous == heading  # any follow-up
    missing = chat.ask("what is q5 in the clustering post")  # the post skips Q5
    assert missing.answer.startswith("It has no question 5.") and "**Q6.**" in missing.answer
    outlines = post_outlines(chat.retriever.index)
    assert numbered_question("how does q-learning work", outlines) is None  # no post named
    assert numbered_question("what is q3", outlines) is None
