"""Feedback: one current vote per answer in a real JSONL file, comments, the candidate eval questions made
from it (`rag feedback`), and the OpenAI-compatible endpoint's reading of a conversation."""

from __future__ import annotations

import json
import threading

import pytest

from rag.feedback import FeedbackError, FeedbackStore, candidates
from rag.openai_api import ApiError, conversation

from .conftest import run_rag

SECTION = ("K-Means++ chooses the first centroid at random. Each next centroid is chosen with probability "
           "proportional to its squared distance from the nearest centroid already chosen.")


def turn(turn_id="t1", question="how does k-means++ pick centroids", **kw):
    return {"turn_id": turn_id, "question": question, "answer": "Each next centroid is chosen far from the others. [1]",
            "refused": False, "mode": "extractive", "citations": [{
                "n": 1, "post_title": "Clustering", "url": "https://example.com/c", "section": "Q1. K-Means++",
                "text": SECTION, "supporting": ["Each next centroid is chosen far from the others."]}], **kw}


def test_a_changed_vote_replaces_the_line_and_keeps_the_comment(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.jsonl")
    store.vote(turn(), "up")
    store.comment("t1", "  good,\n but short  ")
    store.vote(turn(), "down")
    store.vote(turn("t2", "what is dbscan"), "up")
    lines = [json.loads(x) for x in (tmp_path / "feedback.jsonl").read_text().splitlines()]
    assert [(x["turn_id"], x["vote"], x.get("comment")) for x in lines] == [("t1", "down", "good, but short"),
                                                                             ("t2", "up", None)]
    store.vote(turn("t2"), None)  # an undone vote removes its line
    assert [x["turn_id"] for x in store.records()] == ["t1"]
    with pytest.raises(FeedbackError, match="vote on the answer first"):
        store.comment("t9", "no vote here")
    with pytest.raises(FeedbackError, match="one of up, down"):
        store.vote(turn(), "meh")


def test_concurrent_votes_and_a_damaged_line_lose_nothing(tmp_path):
    path = tmp_path / "feedback.jsonl"
    path.write_text("{not json\n")
    store = FeedbackStore(path)
    threads = [threading.Thread(target=store.vote, args=(turn(f"t{i}"), "up" if i % 2 else "down")) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["turn_id"] for r in store.records()) == sorted(f"t{i}" for i in range(20))


def test_candidates_are_eval_questions_marked_for_review(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.jsonl")
    store.vote(turn(), "up")
    store.vote(turn("t2", "whats dbscan"), "down")
    store.comment("t2", "it answered about k-means")
    store.vote(turn("t3", "and for dbscan?"), "up", history=[("how do I pick k for k-means?", "Use the elbow.")])
    store.vote(turn("t4", "What is Out-of-Bag error?"), "up")
    items = {c["question"]: c for c in candidates(store.records(), {"what is out of bag error"})}
    assert set(items) == {"how does k-means++ pick centroids", "whats dbscan", "and for dbscan?"}
    liked = items["how does k-means++ pick centroids"]
    assert liked["evidence"] == ["Each next centroid is chosen with probability proportional to its squared "
                                 "distance from the nearest centroid already chosen."]
    assert all(e in SECTION for e in liked["evidence"]) and liked["post_title"] == "Clustering"
    disliked = items["whats dbscan"]
    assert disliked["answer"] == "" and disliked["evidence"] == [] and disliked["review"]["status"] == "todo"
    assert disliked["review"]["comments"] == ["it answered about k-means"]
    assert items["and for dbscan?"]["kind"] == "followup"
    assert items["and for dbscan?"]["history"] == [["how do I pick k for k-means?", "Use the elbow."]]
    for c in items.values():  # the eval's question format
        assert {"id", "question", "answer", "post_title", "evidence", "kind"} <= set(c)


def test_the_feedback_command_writes_the_candidates(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.jsonl")
    store.vote(turn(), "up")
    out = tmp_path / "candidates.jsonl"
    done = run_rag("feedback", "--file", str(store.path), "--out", str(out), "--index", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "1 votes (1 up" in done.stderr and "1 candidate questions" in done.stderr
    assert json.loads(out.read_text())["question"] == "how does k-means++ pick centroids"


def test_an_openai_conversation_becomes_question_and_history():
    question, history = conversation([
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "how do I pick k for k-means?"},
        {"role": "assistant", "content": "Use the elbow method. [1]"},
        {"role": "user", "content": [{"type": "text", "text": "and for DBSCAN?"}]}])
    assert question == "and for DBSCAN?" and history == [["how do I pick k for k-means?", "Use the elbow method. [1]"]]
    for bad, message in (([], "non-empty"), ([{"role": "assistant", "content": "hi"}], "last message"),
                         ([{"role": "user", "content": 5}], "content must be"), ([{"content": "x"}], "role")):
        with pytest.raises(ApiError, match=message):
            conversation(bad)
