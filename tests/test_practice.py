"""Practice mode: questions from the real index, grading with the real embedder, progress in a real SQLite
file. The grading bounds here are per question; rag/eval/grading.py measures them over the labeled set.

One Practice (and its key points, cached in its SQLite file) is shared by the module; tests that record
attempts work on a copy of that file with their own clock."""

from __future__ import annotations

import json
import random
import re
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from rag.chunking import anchor
from rag.errors import RagError
from rag.eval.grading import Table, assign_splits, load_rows, main as grading_main, GradesFileError
from rag.practice import (BOX_INTERVALS, MASTERED_BOX, MAX_ANSWER_CHARS, PASS_SCORE, Evidence, GradingWeights,
                          LikelihoodJudge, Practice, PracticeError, Rival, build_questions, combine,
                          index_sections, is_question_heading, question_id, question_text, session,
                          split_sentences)
from rag.progress import Attempt, ProgressStore
from tests.conftest import run_rag

GRADES = Path(__file__).resolve().parent.parent / "eval" / "practice_grades.jsonl"
OOB = "360db4f8deff"  # Random Forest, Q3: What is Out-of-Bag (OOB) error?


class Clock:
    def __init__(self, start: float = 1_700_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def shared(full_index, tmp_path_factory):
    """Read-only use: questions, key points, grades with record=False."""
    settings, _ = full_index
    return Practice(settings, db_path=tmp_path_factory.mktemp("practice") / "practice.sqlite", clock=Clock())


@pytest.fixture(scope="module")
def judged(shared, tmp_path_factory):
    """Read-only use, grading as the CLI does by default: with the 0.5B model's likelihood judge."""
    path = tmp_path_factory.mktemp("judged") / "practice.sqlite"
    shared.key_points(shared.questions()[0])
    shutil.copy(shared.store.path, path)
    return Practice(shared.settings, db_path=path, judge=LikelihoodJudge(), clock=Clock())


@pytest.fixture(params=["embeddings", "with the judge"])
def grader(request, shared, judged):
    return shared if request.param == "embeddings" else judged


@pytest.fixture
def practice(shared, tmp_path):
    """A Practice with its own progress file (a copy of the shared one: same key points, no attempts)."""
    shared.key_points(shared.questions()[0])  # the shared file exists and holds some key points
    path = tmp_path / "practice.sqlite"
    shutil.copy(shared.store.path, path)
    p = Practice(shared.settings, db_path=path, clock=Clock())
    assert p.store.count_attempts() == 0
    return p


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


# ------------------------------------------------------------------ without an index


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


def test_labeled_set_has_four_kinds_per_question_and_the_seeded_split(tmp_path):
    rows = load_rows(GRADES)  # refuses a file whose split is not the seeded one
    by_question: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_question.setdefault(r["question_id"], {})[r["kind"]] = r
    assert len(by_question) >= 60 and all(set(k) == {"good", "partial", "wrong", "other"} for k in by_question.values())
    split = assign_splits(rows)
    for post in {r["post_title"] for r in rows}:
        mine = [q for q in by_question if by_question[q]["good"]["post_title"] == post]
        assert abs(sum(split[q] == "test" for q in mine) - len(mine) / 2) <= 0.5
    for q, kinds in by_question.items():
        other = kinds["other"]
        source = by_question[other["answer_of"]]["good"]  # the good answer of another question ...
        assert other["answer"] == source["answer"] and source["question_id"] != q
        assert source["post_title"] == other["post_title"] and source["split"] == other["split"]  # ... same post, split
        assert kinds["good"]["grade"] >= 80 and kinds["wrong"]["grade"] <= 20 and other["grade"] <= 40
        assert kinds["good"]["grade"] > kinds["partial"]["grade"] > kinds["wrong"]["grade"]
    moved = [dict(r) for r in rows]
    moved[0]["split"] = "test" if moved[0]["split"] == "dev" else "dev"
    (tmp_path / "moved.jsonl").write_text("".join(json.dumps(r) + "\n" for r in moved))
    with pytest.raises(GradesFileError, match="seeded split"):
        load_rows(tmp_path / "moved.jsonl")


def _random_evidence(rng: random.Random) -> Evidence:
    def arrays(n):
        return np.array([rng.random() for _ in range(n)]), np.array([rng.random() for _ in range(n)])
    rivals = tuple(Rival(f"rival {i}", *arrays(rng.randint(1, 5))) for i in range(rng.randint(0, 3)))
    return Evidence(*arrays(rng.randint(1, 6)), empty=rng.random() < 0.1, echo=rng.random() < 0.1, rivals=rivals)


def test_harness_scores_are_the_products_scores():
    """rag/eval/grading.py tunes weights with a vectorised copy of `combine`: it must agree answer by answer."""
    rng = random.Random(7)
    table = Table([_random_evidence(rng) for _ in range(300)], np.array([rng.random() for _ in range(300)]))
    for w in (GradingWeights(), GradingWeights(dense=0.5, low=0.25, high=0.8, target=0.5, curve=0.6,
                                               rival_margin=-0.05, judge=0.5)):
        table.verify(w)  # raises on the first disagreement
    scores = table.scores(GradingWeights())
    assert scores.min() >= 0 and scores.max() <= 100 and len(set(scores.tolist())) > 10


def test_combine_caps_an_answer_that_fits_another_question_better():
    own = (np.array([0.55, 0.5]), np.array([0.4, 0.3]))
    rival = Rival("How does K-Means++ initialization work?", np.array([0.8, 0.75]), np.array([0.7, 0.6]))
    w = GradingWeights(rival_margin=0.0, rival_cap=30)
    alone, _, note = combine(Evidence(*own), w)
    capped, _, capped_note = combine(Evidence(*own, rivals=(rival,)), w)
    assert alone > 30 and note is None
    assert capped == 30 and "K-Means++" in capped_note
    assert combine(Evidence(*own, rivals=(rival,)), GradingWeights(rival_margin=float("inf")))[0] == alone
    assert combine(Evidence(*own, empty=True), w)[0] == 0
    assert combine(Evidence(*own, echo=True), w)[0] <= 10


def test_progress_store_is_plain_sqlite(tmp_path):
    path = tmp_path / "p.sqlite"
    store = ProgressStore(path)
    assert store.cards() == {} and store.count_attempts() == 0
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    points = [{"n": 1, "text": "A sentence.", "section": "S", "url": "u", "weight": 1.0}] * 2
    store.save_key_points("gen-a", 1, {"q1": (points, vectors)})
    got_points, got_vectors = store.key_points("gen-a", ["q1", "q2"], 1)["q1"]
    assert got_points[0]["text"] == "A sentence." and np.array_equal(got_vectors, vectors)
    assert store.key_points("gen-a", ["q1"], 2) == {}
    store.save_key_points("gen-b", 1, {"q1": (points[:1], vectors[:1])})
    assert store.key_points("gen-a", ["q1"], 1) == {}  # stale generations are dropped
    # a file of schema 1 (key points without vectors) keeps its attempts and loses only the cache
    store.record(Attempt("q1", "g", 1.0, 70, True, "an answer"), 2, 100.0)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE key_points")
        db.execute("CREATE TABLE key_points (generation TEXT, question_id TEXT, version INTEGER, points TEXT)")
        db.execute("PRAGMA user_version = 1")
    again = ProgressStore(path)
    assert again.count_attempts() == 1 and again.card("q1").box == 2 and again.key_points("gen-b", ["q1"], 1) == {}
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(RagError, match="newer version"):
        ProgressStore(path)


# ------------------------------------------------------------------ questions from the real index


def test_questions_cover_every_post_with_stable_ids(shared):
    questions = shared.questions()
    assert len({q.post_guid for q in questions}) == len(shared.index.posts()) == 10
    assert len({q.id for q in questions}) == len(questions)
    for q in questions:
        assert q.id == question_id(q.post_guid, q.section)
        assert "#" not in q.url or q.url.endswith(anchor(q.section.split(" > ")[-1]))
        assert q.question.strip() and q.reference.strip()
    # the labeled set was written against an index built separately from the same feed: same ids
    labeled = {json.loads(line)["question_id"] for line in GRADES.read_text().splitlines() if line.strip()}
    assert labeled <= {q.id for q in questions}
    # and the same sections give the same questions again
    assert [q.id for q in build_questions(index_sections(shared.index))] == [q.id for q in questions]


def test_key_points_are_sentences_of_the_section_not_headings_or_questions(shared):
    questions = shared.questions()
    sample = questions[:: max(1, len(questions) // 40)]
    for q in sample:
        points = shared.key_points(q)
        headings = {h.strip() for part in q.parts for h in part.section.split(" > ")}
        assert 2 <= len(points) <= 6, q.question
        assert [p.n for p in points] == list(range(1, len(points) + 1))
        for p in points:
            part = next(part for part in q.parts if part.section == p.section)
            assert p.text in split_sentences(part.text), (q.question, p.text)
            assert p.text.strip("* ") not in headings
            assert not p.text.rstrip().endswith(":"), p.text
            assert p.url == part.url
        asked = [p.text.rstrip(" *\"”").endswith("?") for p in points]
        assert all(asked) or not any(asked), q.question  # questions only where the section is a checklist
    # chosen once and stored with their vectors: a second Practice on the same file reads them back
    again = Practice(shared.settings, db_path=shared.store.path)
    assert [again.key_points(q) for q in sample[:5]] == [shared.key_points(q) for q in sample[:5]]
    stored = again.store.key_points(shared.index.generation, [q.id for q in sample[:5]], 2)
    assert all(len(stored[q.id][0]) == stored[q.id][1].shape[0] for q in sample[:5])


def test_post_filter_by_guid_or_title(shared):
    guid, title = shared.posts()[0]
    assert shared.next_question(post=guid).post_guid == guid
    assert shared.next_question(post=title.split(":")[0].lower()).post_guid == guid
    with pytest.raises(PracticeError, match="no posts match"):
        shared.next_question(post="no such post anywhere")
    with pytest.raises(PracticeError, match="several posts match"):
        shared.next_question(post="interview")


# ------------------------------------------------------------------ grading


@pytest.mark.slow
def test_grading_bounds(grader):
    """The issue's bounds on the first question of every post: the post's own answer >= 80, "I don't know"
    <= 20, the next question's answer <= 40; the question pasted back is refused."""
    for q in first_of_each_post(grader):
        own = grader.grade(q.id, q.reference, record=False)
        assert own.score >= 80, (q.question, own.score)
        assert len(own.covered) >= len(own.missed), (q.question, own.to_json()["points"])
        assert grader.grade(q.id, "I don't know", record=False).score <= 20
        other = neighbour(grader, q)
        graded = grader.grade(q.id, other.reference, record=False)
        assert graded.score <= 40, (q.question, other.question, graded.score)
        with pytest.raises(PracticeError, match="repeats the question"):
            grader.grade(q.id, q.question, record=False)


@pytest.mark.slow
def test_paraphrase_counts_and_confident_wrong_answer_does_not(grader):
    """On reviewer-labeled dev answers (every third dev question of eval/practice_grades.jsonl): good
    paraphrases pass, fluent wrong answers do not, and each paraphrase outscores its question's wrong
    answer. (The figures over the whole set are rag/eval/grading.py's.)"""
    rows = [r for r in load_rows(GRADES) if r["split"] == "dev" and r["kind"] in ("good", "wrong")]
    sample = sorted({r["question_id"] for r in rows})[::3]
    score = {(r["question_id"], r["kind"]): grader.grade(r["question_id"], r["answer"], record=False).score
             for r in rows if r["question_id"] in sample}
    good, wrong = [score[q, "good"] for q in sample], [score[q, "wrong"] for q in sample]
    assert sum(s >= PASS_SCORE for s in good) >= 0.8 * len(sample), good
    assert sum(s >= PASS_SCORE for s in wrong) <= 1, wrong
    assert all(g > w for g, w in zip(good, wrong)) and np.mean(good) - np.mean(wrong) >= 40, (good, wrong)


@pytest.mark.slow
def test_a_paraphrase_of_list_items_outscores_a_confident_wrong_answer(grader):
    """The post's OOB answer is a list of fragments ("Compare with true label"); a paraphrase in long
    sentences matches them less well than a reviewer would credit it (docs/practice.md), but it still
    covers more points than a fluent wrong answer and ranks well above it."""
    q = grader.question(OOB)
    good = grader.grade(q.id, "Every tree is fit on a bootstrap sample, so roughly a third of the rows are never "
                              "seen by that tree. Predict each row using only the trees that left it out, "
                              "aggregate those votes and compare with the label: that is the OOB error, a free "
                              "stand-in for cross-validation without a held-out set.", record=False)
    wrong = grader.grade(q.id, "OOB error is the training error of the forest on the rows each tree was fit on, "
                               "so it is optimistic and you always need a separate validation set.", record=False)
    assert wrong.score < PASS_SCORE and good.score - wrong.score >= 20, (good.score, wrong.score)
    assert len(good.covered) > len(wrong.covered)
    assert {c["n"] for c in good.to_json()["citations"]} == {p.n for p in good.points}


@pytest.mark.slow
def test_invalid_attempts_are_refused_quickly_and_write_nothing(practice):
    q = practice.next_question()
    for bad in ("", "   \n ", "x" * 50_000, "??? !!! ...", q.question, f"  {q.question.upper()}  "):
        start = time.perf_counter()
        with pytest.raises(PracticeError) as e:
            practice.grade(q.id, bad)
        assert time.perf_counter() - start < 5 and "\n" not in str(e.value)
    with pytest.raises(PracticeError, match="unknown question id"):
        practice.grade("000000000000", "Bagging averages trees trained on bootstrap samples.")
    with pytest.raises(PracticeError, match="no posts match"):
        practice.next_question(post="gradient boosting cookbook")
    assert practice.store.count_attempts() == 0 and practice.store.cards() == {}
    # the longest answer allowed is graded in bounded time
    start = time.perf_counter()
    practice.grade(q.id, ("Trees are trained on bootstrap samples and averaged. " * 200)[:MAX_ANSWER_CHARS],
                   record=False)
    assert time.perf_counter() - start < 30
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
    assert failed.due_at == clock() + BOX_INTERVALS[1]
    passed = practice.grade(strong.id, strong.reference)
    assert passed.passed and passed.box == 2 and passed.due_at == clock() + BOX_INTERVALS[2]
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
    # progress survives the process: a new Practice on the same file sees the same cards
    assert Practice(practice.settings, db_path=practice.store.path).store.cards() == cards


# ------------------------------------------------------------------ the CLI contract


@pytest.mark.slow
def test_cli_contract(shared, tmp_path):
    db = tmp_path / "cli.sqlite"
    shutil.copy(shared.store.path, db)  # key points already chosen: the subprocesses only read them
    common = ["--index", str(shared.settings.index_dir), "--db", str(db)]
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
                ["--grade", q["id"], "--answer", "y" * 50_000], ["--grade", q["id"], "--answer", q["question"]],
                ["--grade", q["id"]], ["--answer", "text"], ["--post", "no such post"]):
        r = run_rag("practice", *bad, "--json", *common)
        assert r.returncode == 2, (bad, r.stderr)
        assert r.stderr.strip().startswith("rag: error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr

    r = run_rag("practice", "--stats", *common)
    assert r.returncode == 0 and "attempts" in r.stdout
    r = run_rag("practice", "--stats", "--json", *common)
    assert sum(s["attempts"] for s in json.loads(r.stdout)) == 1  # the invalid attempts wrote nothing

    # the terminal session: ask, read, grade, next; an empty line quits (--fast: without the 0.5B model)
    r = run_rag("practice", "--post", "random forest", "--fast", *common,
                input="Random Forest averages many decorrelated trees trained on bootstrap samples.\n\n")
    assert r.returncode == 0, r.stderr
    assert "Score" in r.stdout and "The post's answer" in r.stdout and r.stdout.count("> ") >= 2
    assert re.search(r"\[\d[+-]\]", r.stdout) and "\033[" not in r.stdout  # key points marked; no colour in a pipe
    r = run_rag("practice", "--stats", "--json", *common)
    assert sum(s["attempts"] for s in json.loads(r.stdout)) == 2


def test_session_loop_quits_on_eof_and_asks_again_after_a_refused_answer(practice):
    out: list[str] = []
    q = practice.next_question()
    answers = iter([q.question, "I don't know"])

    def read(prompt):
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    assert session(practice, read=read, write=out.append) == 0
    text = "\n".join(out)
    assert q.question in text and "repeats the question" in text and "Score 0/100" in text
    assert practice.store.count_attempts() == 1  # the pasted question was not an attempt


# ------------------------------------------------------------------ the grading eval


@pytest.mark.slow
def test_grading_eval_writes_its_report(shared, tmp_path):
    rows = [r for r in load_rows(GRADES) if r["post_title"].startswith("Random Forest")]
    split = assign_splits(rows)  # a set of its own: split by the same seeded rule
    small = tmp_path / "grades.jsonl"
    small.write_text("".join(json.dumps({**r, "split": split[r["question_id"]]}) + "\n" for r in rows))
    out = tmp_path / "run"
    assert grading_main(["--grades", str(small), "--out", str(out), "--index", str(shared.settings.index_dir),
                         "--bounds", "labeled"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert list(report["graders"]) == ["embeddings"] and report["graders"]["embeddings"]["product_defaults"]
    for s in ("dev", "test"):
        m = report["graders"]["embeddings"]["splits"][s]
        assert m["n"] == 12 and -1 <= m["spearman"] <= 1 and sum(m["confusion"].values()) == 12
        assert set(m["checks"]) == {"own_answer", "dont_know", "other_answer", "pasted_question"}
    assert len((out / "results.jsonl").read_text().splitlines()) == 24
    assert (out / "grading.png").stat().st_size > 10_000 and "Spearman" in (out / "report.md").read_text()
