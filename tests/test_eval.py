"""The eval harness end to end on real models, and the integrity of the labeled question sets."""

from __future__ import annotations

import json
import math
import re
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from rag.eval.evaluate import EvalRun, QuestionFileError, load_questions, run_eval, stratified
from rag.eval.metrics import KINDS, groundedness, ndcg, normalize, strictly_supported, token_f1
from rag.text import cited_sentences
from rag.settings import DEFAULT_FEED, PROJECT_DIR

QUESTION_FILES = [PROJECT_DIR / "eval" / "dev.jsonl", PROJECT_DIR / "eval" / "test.jsonl"]
RESULT_KEYS = {"id", "kind", "question", "answer", "refused", "citations", "retrieved", "timings"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def posts():
    from rag.feed import read_feed

    return {p.title: p.markdown for p in read_feed(DEFAULT_FEED)}


# ---------------------------------------------------------------- the question sets


@pytest.mark.parametrize("path", QUESTION_FILES, ids=lambda p: p.name)
def test_question_file_is_valid_and_evidence_is_verbatim(path, posts):
    questions = load_questions(path)  # validates fields, kinds, history shape and unique ids
    assert len({q["id"] for q in questions}) == len(questions)
    assert {q["kind"] for q in questions} <= set(KINDS)
    problems = []
    for q in questions:
        titles = q.get("post_titles") or ([q["post_title"]] if q.get("post_title") else [])
        if q["kind"] == "unanswerable":
            assert not q["evidence"] and not titles, q["id"]
            continue
        assert titles, f"{q['id']}: no post_title"
        unknown = [t for t in titles if t not in posts]
        assert not unknown, f"{q['id']}: unknown post title(s) {unknown}"
        for e in q["evidence"]:
            if not any(e in posts[t] for t in titles):
                problems.append(f"{q['id']}: {e!r}")
    assert not problems, "evidence not verbatim in its post's Markdown:\n" + "\n".join(problems)


def test_dev_and_test_splits_size_coverage_and_disjointness(posts):
    dev, test = (load_questions(p) for p in QUESTION_FILES)
    assert len(dev) + len(test) >= 400
    assert sum(not q["evidence"] for q in dev + test) >= 100  # uncovered questions, mostly near-misses
    for split in (dev, test):
        kinds = Counter(q["kind"] for q in split)
        assert set(kinds) == set(KINDS), kinds
        covered = {t for q in split for t in (q.get("post_titles") or [q.get("post_title")]) if t}
        assert covered == set(posts), f"posts without a question: {set(posts) - covered}"
    assert not {q["id"] for q in dev} & {q["id"] for q in test}, "dev and test ids overlap"
    assert not {q["question"] for q in dev} & {q["question"] for q in test}, "a question is in both splits"


# ---------------------------------------------------------------- pieces of the harness


def test_bad_question_lines_name_the_line(tmp_path):
    good = {"id": "a", "question": "q?", "answer": "x", "post_title": None, "evidence": [], "kind": "unanswerable"}
    cases = {
        "{not json": "q.jsonl:2: not valid JSON",
        json.dumps({**good, "kind": "trivia"}): "kind 'trivia'",
        json.dumps({**good, "id": "b", "kind": "factual"}): "needs at least one evidence",
        json.dumps({**good, "id": "b", "kind": "followup", "evidence": ["x"]}): "needs a non-empty 'history'",
        json.dumps({**good, "history": [["only one"]]}): "'history' must be",
        json.dumps(good): "duplicate id 'a' (first on line 1)",
    }
    for line, message in cases.items():
        path = tmp_path / "q.jsonl"
        path.write_text(json.dumps(good) + "\n" + line + "\n")
        with pytest.raises(QuestionFileError, match=re.escape(message)):
            load_questions(path)


def test_metric_helpers():
    assert normalize("**Bold**  text\n here") == "bold text here"
    assert token_f1("The cat [1] sat.", "a cat sat!") == 1.0
    assert token_f1("dog", "cat") == 0.0
    assert ndcg([True]) == 1.0 and ndcg([False] * 10) == 0.0
    assert math.isclose(ndcg([False, True]), 1 / math.log2(3))
    assert cited_sentences("One two three. [1] Four five six. [2]") == [("One two three.", [1]), ("Four five six.", [2])]
    assert cited_sentences("One two three. [1]. Four five six. [2].") == [("One two three.", [1]),
                                                                         ("Four five six.", [2])]
    assert cited_sentences("One two three. [1] $$x = y$$ [1] Four five six. [2]") == [
        ("One two three.", [1]), ("$$x = y$$", [1]), ("Four five six.", [2])]  # a formula is its own sentence
    # a single trailing block of markers on an unmarked answer cites every sentence
    assert cited_sentences("One two three. Four five six. [1] [2]") == [("One two three.", [1, 2]),
                                                                        ("Four five six.", [1, 2])]
    passage = "The cat sat on the mat all afternoon."
    score, checks = groundedness("The cat sat on the mat. [1] Dogs fly planes quickly. [1] The cat sat there. [2]",
                                 False, {1: passage})
    assert [c["supported"] for c in checks] == [True, False, False]  # invented; cites a passage not cited
    assert math.isclose(score, 1 / 3)
    assert groundedness("The posts don't cover this.", True, {}) == (None, [])
    # the eval's test is stricter than the chat's: numbers, negations and named methods must be in the passage
    p = "Adam keeps a running mean of gradients and usually converges in 10 epochs."
    assert strictly_supported("Adam keeps a running mean of gradients.", p)
    assert not strictly_supported("Adam keeps a running mean of gradients in 20 epochs.", p)
    assert not strictly_supported("Adam does not keep a running mean of gradients.", p)
    assert not strictly_supported("AdamW keeps a running mean of gradients.", p)
    qs = [{"id": str(i), "kind": k} for i, k in enumerate(["factual"] * 5 + ["unanswerable"] * 2 + ["followup"])]
    assert {q["kind"] for q in stratified(qs, 3)} == {"factual", "unanswerable", "followup"}


# ---------------------------------------------------------------- end to end


def _small_question_file(tmp_path: Path, n: int = 7) -> Path:
    """n dev questions, one of every kind first, then round robin over the kinds."""
    questions = load_questions(QUESTION_FILES[0])
    queues = [[q for q in questions if q["kind"] == k] for k in KINDS]
    pick = [queue[i] for i in range(n) for queue in queues if i < len(queue)][:n]
    path = tmp_path / f"small-{n}.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in pick))
    return path


@pytest.mark.slow
def test_eval_end_to_end(full_index, tmp_path, capsys):
    settings, _ = full_index
    out = tmp_path / "run"
    run = EvalRun(questions=_small_question_file(tmp_path), out=out, limit=6, mode="extractive")
    assert run_eval(run, settings) == 0
    assert str(out) in capsys.readouterr().out

    for name in ("metrics.json", "results.jsonl", "report.md", "hit_at_k.png", "metrics_by_kind.png", "latency.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        w, h = _png_size(png)
        assert w > 200 and h > 200

    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(results) == 6  # --limit applied
    kinds = {r["kind"] for r in results}
    assert {"unanswerable", "followup"} <= kinds
    for r in results:
        assert RESULT_KEYS <= set(r), RESULT_KEYS - set(r)
        assert isinstance(r["refused"], bool)
        assert all({"post_title", "section", "text"} <= set(p) for p in r["retrieved"])
        assert all({"n", "post_title", "url", "section", "text"} <= set(c) for c in r["citations"])
        for stage in ("retrieve", "first_token", "total"):
            assert r["timings"][stage] > 0
        assert r["timings"]["retrieve"] <= r["timings"]["total"]
        for key in ("hit@1", "hit@5", "rr", "ndcg@10", "semantic_sim", "token_f1", "groundedness",
                    "citation_precision", "citation_recall"):
            v = r.get(key)
            assert v is None or 0.0 <= v <= 1.0, (r["id"], key, v)
        if r["kind"] != "unanswerable":
            assert r["hit@5"] is not None and r["semantic_sim"] is not None

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["by_kind"]) == kinds

    def check(m):
        for key, v in m.items():
            if key in ("questions", "errors", "covered", "unanswerable", "answered", "latency", "cpu_seconds_mean"):
                continue
            values = v if isinstance(v, list) else [v]
            assert all(x is None or 0.0 <= x <= 1.0 for x in values), (key, v)
        for stage, lat in m["latency"].items():
            assert 0 < lat["p50"] <= lat["p95"], stage

    check(metrics["overall"])
    for m in metrics["by_kind"].values():
        check(m)
    overall = metrics["overall"]
    assert overall["questions"] == 6 and overall["unanswerable"] == 1
    assert overall["refusal_accuracy"] in (0.0, 1.0)
    assert len(overall["hit@k"]) == 10

    report = (out / "report.md").read_text()
    assert "Support test" in report and "## Worst answered questions" in report and "## Per kind" in report
    assert "## Answerable questions that were refused" in report


@pytest.mark.slow
def test_calibrate_fits_on_dev_and_reports_test(full_index, tmp_path):
    from rag.coverage import FEATURES, CoverageModel
    from rag.eval.calibrate import calibrate

    settings, _ = full_index
    settings = settings.replace(second_look=False)  # retrieval only; the second look has its own test
    out, model_path = tmp_path / "calibration.json", tmp_path / "coverage.json"
    dev, test = _small_question_file(tmp_path, n=40), QUESTION_FILES[1]
    result = calibrate(settings, dev, out, test, model_path)
    assert result["second_look"] is False and result["second_looks_taken"] == 0
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert _png_size(out.with_suffix(".png"))[0] > 200
    model = CoverageModel.load(model_path)
    assert model.features == list(FEATURES) and 0 < model.threshold < 1
    assert model.threshold == result["cross_validated"]["threshold"]
    for split in (result["cross_validated"], result["test"]["model"]):
        low, high = split["refusal_ci"]
        assert low <= split["refusal"] <= high and split["refusal_n"] > 0
    # the fitted model decides: a chat that loads it refuses an off-topic question and answers a covered one
    from rag.answer import Chat

    chat = Chat(settings.replace(coverage_model=model_path))
    assert chat.ask("how do i bake sourdough bread at home?").refused
    assert not chat.ask("What is out-of-bag error in a random forest?").refused


def test_two_looks_is_the_chats_decision():
    from rag.eval.calibrate import two_looks

    first = np.array([0.9, 0.2, 0.2, 0.01, 0.2])
    second = np.array([0.1, 0.8, np.nan, 0.9, 0.1])
    # a confident first look stands; an unsure refusal takes the second look's probability when it was taken
    # and the first reached the floor; below the floor, or without a second look, the first look decides
    assert two_looks(first, second, 0.03).tolist() == [0.9, 0.8, 0.2, 0.01, 0.2]
    assert two_looks(first, second, None).tolist() == first.tolist()


@pytest.mark.slow
def test_calibrate_with_the_second_look(full_index, tmp_path):
    """With the real 0.5B model: the threshold is chosen for both looks, as the chat decides."""
    from rag.eval.calibrate import calibrate

    settings, _ = full_index
    out, model_path = tmp_path / "calibration.json", tmp_path / "coverage.json"
    result = calibrate(settings.replace(second_look=True), _small_question_file(tmp_path, n=30), out, None, model_path)
    assert result["second_look"] is True and 0 < result["second_looks_taken"] <= 30
    chosen, first = result["cross_validated"], result["first_look_only"]
    assert chosen["threshold"] == first["threshold"] == json.loads(model_path.read_text())["threshold"]
    # second looks only turn refusals into answers
    assert chosen["false_refusal"] <= first["false_refusal"] and chosen["refusal"] <= first["refusal"]
