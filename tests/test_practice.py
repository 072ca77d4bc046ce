"""Practice mode: questions from the real index, grading with the real embedder, progress in a real SQLite
file. The grading bounds here are per question; rag/eval/grading.py measures them over the labeled set."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rag.chunking import anchor
from rag.practice import (BOX_INTERVALS, MASTERED_BOX, MAX_ANSWER_CHARS, PASS_SCORE, Practice, PracticeError,
                          build_questions, index_sections, is_question_heading, question_id, question_text,
                          session, split_sentences)
from rag.progress import ProgressStore
from tests.conftest import run_rag

GRADES = Path(__file__).resolve().parent.parent / "eval" / "practice_grades.jsonl"


class Clock:
    def __init__(self, start: float = 1_700_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def practice(full_index, tmp_path):
    settings, _ = full_index
    return Practice(settings, db_path=tmp_path / "practice.sqlite", clock=Clock())


def first_of_each_post(p: Practice):
    seen, out = set(), []
    for q in p.questions():
        if q.post_guid not in seen:
            seen.add(q.post_guid)
            out.append(q)
    return out


def neighbour(p: Practice, q):
    same = [o for o in p.questions() if o.post_guid == q.post_guid]
    return same[(same.index(q) + 1) % len(same)]


# ------------------------------------------------------------------ questions without an index


def test_question_headings_and_generated_questions():
    assert is_question_heading("Q3: What is Out-of-Bag (OOB) error? How is it computed and why is it useful?")
    assert is_question_heading("Q16: Time and Space Complexity of Decision Trees")
    assert is_question_heading("Derive Adam Bias-Corrected Updates. Why is bias correction necessary?")
    assert is_question_heading("For semantic segmentation, compare pixel-wise cross-entropy and Dice loss.")
    assert not is_question_heading("A Reusable ML System Design Checklist")
    assert not is_question_heading("Business Objective")
    assert question_text(("Intro", "Q3: What is OOB error?"), "RF: Q&A") == "What is OOB error?"
    assert question_text(("Start by Clarifying the Problem", "Business Objective"), "How to Approach X") == \
        "Explain Business Objective (Start by Clarifying the Problem)."
    assert question_text(("Case: Sparse vs Dense Features",), "Optimizers: Q&A",
                         "**Question:** Which optimizer would you choose and why?\n\nSparse ...") == \
        "Sparse vs Dense Features: Which optimizer would you choose and why?"
    assert question_text(("Q16. What is the time complexity of common clustering algorithms",), "C") == \
        "What is the time complexity of common clustering algorithms?"


def test_ids_hash_the_post_and_heading_path_not_row_ids():
    assert question_id("guid-1", "A > Q1. Why?") == question_id("guid-1", "A > Q1. Why?")
    assert question_id("guid-1", "A > Q1. Why?") != question_id("guid-2", "A > Q1. Why?")
    assert len(question_id("g", "s")) == 12


# ------------------------------------------------------------------ questions from the real index


def test_questions_cover_every_post_with_stable_ids(practice, full_index):
    settings, _ = full_index
    questions = practice.questions()
    assert len({q.post_guid for q in questions}) == len(practice.index.posts()) == 10
    assert len({q.id for q in questions}) == len(questions)
    for q in questions:
        assert q.id == question_id(q.post_guid, q.section)
        assert q.url.startswith(q.url.split("#")[0]) and ("#" not in q.url or q.url.endswith(anchor(q.section.split(" > ")[-1])))
        assert q.question.strip() and q.reference.strip()
    # the labeled set was written against an index built separately from the same feed: same ids
    labeled = {json.loads(line)["question_id"] for line in GRADES.read_text().splitlines() if line.strip()}
    assert labeled <= {q.id for q in questions}
    # and the same sections give the same questions again
    assert [q.id for q in build_questions(index_sections(practice.index))] == [q.id for q in questions]


def test_key_points_are_sentences_of_the_section_not_headings(practice):
    questions = practice.questions()
    sample = questions[:: max(1, len(questions) // 40)]
    for q in sample:
        points = practice.key_points(q)
        headings = {h.strip() for part in q.parts for h in part.section.split(" > ")}
        assert 2 <= len(points) <= 6, q.question
        assert [p.n for p in points] == list(range(1, len(points) + 1))
        for p in points:
            part = next(part for part in q.parts if part.section == p.section)
            assert p.text in split_sentences(part.text), (q.question, p.text)
            assert p.text.strip("* ") not in headings
            assert not p.text.rstrip().endswith(":")
            assert p.url == part.url
    # chosen once and stored: a second Practice on the same file reads them back unchanged
    again = Practice(practice.settings, db_path=practice.store.path)
    assert [again.key_points(q) for q in sample[:5]] == [practice.key_points(q) for q in sample[:5]]


def test_post_filter_by_guid_or_title(practice):
    posts = practice.posts()
    guid, title = posts[0]
    assert practice.next_question(post=guid).post_guid == guid
    assert practice.next_question(post=title.split(":")[0].lower()).post_guid == guid
    with pytest.raises(PracticeError, match="no posts match"):
        practice.next_question(post="no such post anywhere")
    with pytest.raises(PracticeError, match="several posts match"):
        practice.next_question(post="interview")


# ------------------------------------------------------------------ grading


@pytest.mark.slow
def test_grading_bounds(practice):
    for q in first_of_each_post(practice):
        own = practice.grade(q.id, q.reference, record=False)
        assert own.score >= 80, (q.question, own.score)
        assert own.covered and not own.missed or own.score >= 80
        assert practice.grade(q.id, "I don't know", record=False).score <= 20
        other = neighbour(practice, q)
        assert practice.grade(q.id, other.reference, record=False).score <= 40, (q.question, other.question)
        pasted = practice.grade(q.id, q.question, record=False)
        assert pasted.score <= 20 and pasted.note


@pytest.mark.slow
def test_paraphrase_counts_and_confident_wrong_answer_does_not(practice):
    q = practice.question("360db4f8deff")  # Random Forest, Q3: out-of-bag error
    good = practice.grade(q.id, "Every tree is fit on a bootstrap sample, so roughly a third of the rows are never "
                                "seen by that tree. Predict each row using only the trees that left it out, "
                                "aggregate those votes and compare with the label: that is the OOB error, a free "
                                "stand-in for cross-validation without a held-out set.", record=False)
    wrong = practice.grade(q.id, "OOB error is the training error of the forest on the rows each tree was fit on, "
                                 "so it is optimistic and you always need a separate validation set.", record=False)
    assert good.score >= PASS_SCORE > wrong.score
    assert good.score - wrong.score >= 30
    assert {c["n"] for c in good.to_json()["citations"]} == {p.n for p in good.points}


@pytest.mark.slow
def test_invalid_attempts_write_nothing(practice):
    q = practice.next_question()
    for bad in ("", "   \n ", "x" * 50_000, "??? !!! ..."):
        start = time.perf_counter()
        with pytest.raises(PracticeError):
            practice.grade(q.id, bad)
        assert time.perf_counter() - start < 5
    with pytest.raises(PracticeError, match="unknown question id"):
        practice.grade("000000000000", "Bagging averages trees trained on bootstrap samples.")
    assert practice.store.count_attempts() == 0 and practice.store.cards() == {}
    # the longest answer allowed is graded in bounded time
    start = time.perf_counter()
    practice.grade(q.id, ("Trees are trained on bootstrap samples and averaged. " * 200)[:MAX_ANSWER_CHARS],
                   record=False)
    assert time.perf_counter() - start < 60
    assert practice.store.count_attempts() == 0


# ------------------------------------------------------------------ spaced repetition


@pytest.mark.slow
def test_leitner_failed_comes_back_before_mastered_and_due_dates_hold(practice):
    clock = practice.clock
    post = practice.posts()[0][0]
    pool = [q for q in practice.questions() if q.post_guid == post]
    weak, strong = pool[0], pool[1]
    failed = practice.grade(weak.id, "I don't know")
    assert failed.recorded and failed.box == 1 and not failed.passed
    passed = practice.grade(strong.id, strong.reference)
    assert passed.passed and passed.box == 2
    # neither is due yet: a new question of the post comes first
    nxt = practice.next_question(post=post)
    assert nxt.id not in (weak.id, strong.id)
    clock.advance(BOX_INTERVALS[1] + 1)
    assert practice.next_question(post=post).id == weak.id  # failed: back within the session
    # master the strong one (pass it whenever it is due), keep failing the weak one
    while practice.store.card(strong.id).box < MASTERED_BOX:
        clock.advance(practice.store.card(strong.id).due_at - clock() + 1)
        assert practice.next_question(post=post, exclude=[weak.id]).id == strong.id
        practice.grade(strong.id, strong.reference)
    practice.grade(weak.id, "no idea")
    clock.advance(60 * 86400)  # both long overdue
    assert practice.next_question(post=post).id == weak.id
    cards = practice.store.cards()
    assert cards[weak.id].box == 1 and cards[strong.id].box >= MASTERED_BOX
    assert [a.question_id for a in practice.store.attempts(weak.id)] == [weak.id, weak.id]
    stats = {s.post_guid: s for s in practice.stats()}[post]
    assert (stats.attempted, stats.mastered, stats.due) == (2, 1, 2)
    assert stats.attempts == 2 + cards[strong.id].attempts


def test_progress_store_is_plain_sqlite(tmp_path):
    store = ProgressStore(tmp_path / "p.sqlite")
    assert store.cards() == {} and store.count_attempts() == 0
    store.save_key_points("gen-a", "q1", 1, [{"n": 1, "text": "A sentence.", "section": "S", "url": "u",
                                               "weight": 1.0}])
    assert store.key_points("gen-a", "q1", 1)[0]["text"] == "A sentence."
    assert store.key_points("gen-a", "q1", 2) is None
    store.save_key_points("gen-b", "q1", 1, [])
    assert store.key_points("gen-a", "q1", 1) is None  # stale generations are dropped


# ------------------------------------------------------------------ the CLI contract


@pytest.mark.slow
def test_cli_contract(full_index, tmp_path):
    settings, _ = full_index
    common = ["--index", str(settings.index_dir), "--db", str(tmp_path / "cli.sqlite")]
    r = run_rag("practice", "--json", *common)
    assert r.returncode == 0, r.stderr
    q = json.loads(r.stdout)
    assert {"id", "question", "post_title", "section", "url"} <= set(q)
    r = run_rag("practice", "--json", "--post", "random forest", *common)
    assert json.loads(r.stdout)["post_title"].startswith("Random Forest")

    r = run_rag("practice", "--grade", q["id"], "--answer", "I am not sure, maybe it is about trees.", "--json",
                *common)
    assert r.returncode == 0, r.stderr
    g = json.loads(r.stdout)
    assert isinstance(g["score"], int) and 0 <= g["score"] <= 100
    assert isinstance(g["covered"], list) and isinstance(g["missed"], list) and g["missed"]
    assert g["reference"].strip()
    assert g["citations"] and {"n", "post_title", "url", "section", "text"} <= set(g["citations"][0])
    assert {c["text"] for c in g["citations"]} == set(g["covered"]) | set(g["missed"])

    for bad in (["--grade", q["id"], "--answer", ""], ["--grade", "nope", "--answer", "x y z"],
                ["--grade", q["id"], "--answer", "y" * 50_000], ["--grade", q["id"]], ["--answer", "text"]):
        r = run_rag("practice", *bad, "--json", *common)
        assert r.returncode == 2, (bad, r.stderr)
        assert r.stderr.strip().startswith("rag: error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr

    r = run_rag("practice", "--stats", *common)
    assert r.returncode == 0 and "attempts" in r.stdout
    r = run_rag("practice", "--stats", "--json", *common)
    assert sum(s["attempts"] for s in json.loads(r.stdout)) == 1  # the invalid attempts wrote nothing

    # the terminal session: ask, read, grade, next; an empty line quits
    r = run_rag("practice", "--post", "random forest", *common,
                input="Random Forest averages many decorrelated trees trained on bootstrap samples.\n\n")
    assert r.returncode == 0, r.stderr
    assert "Score" in r.stdout and "The post's answer" in r.stdout and r.stdout.count("\n> ") + r.stdout.count("> ") >= 2


def test_session_loop_quits_on_eof(practice):
    out: list[str] = []
    answers = iter([])

    def read(prompt):
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    assert session(practice, read=read, write=out.append) == 0
    assert any("?" in line or "Explain" in line for line in out)
