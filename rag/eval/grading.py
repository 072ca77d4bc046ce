"""The grading evaluation: do practice-mode grades agree with a reviewer's?

    python -m rag.eval.grading [--grades eval/practice_grades.jsonl] [--out DIR] [--index DIR]
                               [--all-questions] [--tune]

The labeled set has, per practice question, a good answer in other words, a partial one, a fluent wrong
one and the answer to another question, each with the grade a reviewer gives (0-100) and a fixed `split`
(dev/test). Reported per split: Spearman rank correlation of score and grade, the pass/fail confusion
(pass = grade >= 60), the mean score per kind, and four checks per question: the post's own answer
scores >= 80, "I don't know" <= 20, the next question's answer from the same post <= 40, the question
pasted back <= 20. `--tune` grid-searches the grading weights on the dev split only and reports both
splits at the chosen weights; nothing here writes to anyone's practice progress.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..errors import RagError
from ..practice import PASS_SCORE, GradingWeights, Practice, PracticeQuestion, combine
from ..settings import PROJECT_DIR, load_settings

KINDS = ("good", "partial", "wrong", "other")
FIELDS = ("question_id", "question", "kind", "answer", "grade")
CHECKS = {"own_answer": (">=", 80), "dont_know": ("<=", 20), "other_answer": ("<=", 40), "pasted_question": ("<=", 20)}


class GradesFileError(RagError):
    """The labeled grades file is malformed."""


def load_rows(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.exists() and (PROJECT_DIR / p).exists():
        p = PROJECT_DIR / p
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise GradesFileError(f"{p}:{n}: not JSON ({e.msg})") from e
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise GradesFileError(f"{p}:{n}: missing {', '.join(missing)}")
        rows.append({**row, "split": row.get("split", "all")})
    return rows


def resolve(practice: Practice, row: dict) -> PracticeQuestion:
    """The row's question: by id, else by its question text (sets written elsewhere may not know our ids)."""
    by_id = {q.id: q for q in practice.questions()}
    if row["question_id"] in by_id:
        return by_id[row["question_id"]]
    wanted = " ".join(str(row["question"]).lower().split())
    for q in practice.questions():
        if " ".join(q.question.lower().split()) == wanted or " ".join(q.heading.lower().split()) == wanted:
            return q
    raise GradesFileError(f"question {row['question_id']!r} ({row['question'][:60]!r}) is not in the index")


def spearman(x, y) -> float:
    try:
        from scipy.stats import spearmanr

        return float(spearmanr(x, y).statistic)
    except ImportError:  # average ranks by hand
        def ranks(v):
            v = np.asarray(v, float)
            order = v.argsort(kind="stable")
            r = np.empty(len(v))
            r[order] = np.arange(len(v))
            for value in np.unique(v):
                r[v == value] = r[v == value].mean()
            return r
        return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def metrics(rows: list[dict], scores: list[int]) -> dict:
    grades = np.array([r["grade"] for r in rows], float)
    s = np.array(scores, float)
    truth, said = grades >= PASS_SCORE, s >= PASS_SCORE
    confusion = {"tp": int((truth & said).sum()), "fp": int((~truth & said).sum()),
                 "fn": int((truth & ~said).sum()), "tn": int((~truth & ~said).sum())}
    by_kind = {k: round(float(s[[r["kind"] == k for r in rows]].mean()), 1)
               for k in KINDS if any(r["kind"] == k for r in rows)}
    return {"n": len(rows), "spearman": round(spearman(s, grades), 3) if len(rows) > 2 else None,
            "mae": round(float(np.abs(s - grades).mean()), 1), "pass_accuracy": round(float((truth == said).mean()), 3),
            "confusion": confusion, "mean_score_by_kind": by_kind,
            "mean_grade_by_kind": {k: round(float(grades[[r["kind"] == k for r in rows]].mean()), 1) for k in by_kind}}


def check_answers(practice: Practice, questions: list[PracticeQuestion]) -> dict[str, list[tuple[str, str]]]:
    """Per check, (question id, answer) pairs: the post's own answer, "I don't know", the next question's
    answer from the same post, the question pasted back."""
    every = practice.questions()
    out: dict[str, list[tuple[str, str]]] = {k: [] for k in CHECKS}
    for q in questions:
        same = [o for o in every if o.post_guid == q.post_guid]
        other = same[(same.index(q) + 1) % len(same)]
        out["own_answer"].append((q.id, q.reference))
        out["dont_know"].append((q.id, "I don't know."))
        if other.id != q.id:
            out["other_answer"].append((q.id, other.reference))
        out["pasted_question"].append((q.id, q.question))
    return out


def run_checks(weights: GradingWeights, evidence: dict) -> dict:
    out = {}
    for name, items in evidence.items():
        op, bound = CHECKS[name]
        scores = {qid: combine(ev, weights)[0] for qid, ev in items}
        ok = {qid: (s >= bound if op == ">=" else s <= bound) for qid, s in scores.items()}
        out[name] = {"rule": f"score {op} {bound}", "passed": sum(ok.values()), "total": len(ok),
                     "mean": round(float(np.mean(list(scores.values()))), 1) if scores else None,
                     "failures": {qid: scores[qid] for qid, good in ok.items() if not good}}
    return out


def tune(dev: list[tuple[dict, object]], checks: dict) -> GradingWeights:
    """Grid search on dev only: the best Spearman among weights that keep pass/fail accuracy and every
    check within 2 points of the best seen, so a correlation gain never buys a broken bound."""
    grid = itertools.product((0.5, 0.6, 0.7, 0.8, 0.9), (0.25, 0.3, 0.35, 0.4, 0.45),
                             (0.55, 0.6, 0.65, 0.7, 0.75), (0.5, 0.6, 0.7, 0.8))
    results = []
    for dense, low, high, target in grid:
        if high <= low + 0.1:
            continue
        w = replace(GradingWeights(), dense=dense, low=low, high=high, target=target)
        scores = [combine(ev, w)[0] for _, ev in dev]
        m = metrics([r for r, _ in dev], scores)
        c = run_checks(w, checks)
        check_rate = sum(v["passed"] for v in c.values()) / max(1, sum(v["total"] for v in c.values()))
        results.append((m["spearman"], m["pass_accuracy"], check_rate, w))
    best_acc = max(r[1] for r in results)
    best_check = max(r[2] for r in results)
    eligible = [r for r in results if r[1] >= best_acc - 0.02 and r[2] >= best_check - 0.02]
    return max(eligible, key=lambda r: (r[0], r[1], r[2]))[3]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rag.eval.grading", description=__doc__.split("\n\n")[0])
    ap.add_argument("--grades", default="eval/practice_grades.jsonl", help="labeled answers (default: %(default)s)")
    ap.add_argument("--out", default="eval/runs/grading", help="output directory (default: %(default)s)")
    ap.add_argument("--index", metavar="DIR", help="index directory (default: RAG_INDEX_DIR or ./index)")
    ap.add_argument("--config", metavar="FILE")
    ap.add_argument("--all-questions", action="store_true",
                    help="run the four checks on every practice question of the index, not only the labeled ones")
    ap.add_argument("--tune", action="store_true", help="choose the grading weights on the dev split")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return run(args)
    except RagError as e:
        print(f"rag: error: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    start = time.perf_counter()
    settings = load_settings(args.config, index_dir=args.index)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_rows(args.grades)
    with tempfile.TemporaryDirectory() as tmp:  # key points are cached here, never in a user's progress
        practice = Practice(settings, db_path=Path(tmp) / "practice.sqlite")
        for row in rows:
            row["resolved_id"] = resolve(practice, row).id
        evidence = [(row, practice.evidence(row["resolved_id"], row["answer"])[2]) for row in rows]
        splits = sorted({r["split"] for r in rows})
        labeled = {s: list(dict.fromkeys(r["resolved_id"] for r in rows if r["split"] == s)) for s in splits}
        pool = {s: [practice.question(i) for i in ids] for s, ids in labeled.items()}
        if args.all_questions:
            pool["all_questions"] = practice.questions()
        check_evidence = {
            s: {name: [(qid, practice.evidence(qid, answer)[2]) for qid, answer in items]
                for name, items in check_answers(practice, qs).items()}
            for s, qs in pool.items()}
        weights = practice.weights
        if args.tune:
            dev = [(r, ev) for r, ev in evidence if r["split"] == "dev"]
            if not dev:
                raise GradesFileError("--tune needs rows with split 'dev'")
            weights = tune(dev, check_evidence["dev"])
        report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": f"{platform.node()} "
                  f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
                  "grades_file": str(args.grades), "index": str(practice.index.path), "weights": asdict(weights),
                  "tuned_on_dev": bool(args.tune), "pass_score": PASS_SCORE, "splits": {}}
        results = []
        for s in splits:
            part = [(r, ev) for r, ev in evidence if r["split"] == s]
            scores = [combine(ev, weights)[0] for _, ev in part]
            report["splits"][s] = {**metrics([r for r, _ in part], scores),
                                   "checks": run_checks(weights, check_evidence[s])}
            results += [{**{k: r[k] for k in ("question_id", "kind", "grade", "split")}, "score": sc,
                         "answer": r["answer"][:200]} for (r, _), sc in zip(part, scores)]
        if "all_questions" in check_evidence:
            report["all_questions"] = {"checks": run_checks(weights, check_evidence["all_questions"])}
        report["seconds"] = round(time.perf_counter() - start, 1)
    (out / "metrics.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    with open(out / "results.jsonl", "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print_report(report)
    print(f"metrics written to {out / 'metrics.json'}, per answer to {out / 'results.jsonl'}")
    return 0


def print_report(report: dict) -> None:
    w = report["weights"]
    print(f"weights: dense {w['dense']}, low {w['low']}, high {w['high']}, target {w['target']}"
          + (" (tuned on dev)" if report["tuned_on_dev"] else ""))
    sections = [(s, m) for s, m in report["splits"].items()]
    if "all_questions" in report:
        sections.append(("all_questions", report["all_questions"]))
    for s, m in sections:
        if "spearman" in m:
            c = m["confusion"]
            kinds = "  ".join(f"{k} {v:.0f} (grade {m['mean_grade_by_kind'][k]:.0f})"
                              for k, v in m["mean_score_by_kind"].items())
            print(f"[{s}] n={m['n']}  spearman {m['spearman']:.3f}  pass accuracy {m['pass_accuracy']:.3f}  "
                  f"MAE {m['mae']:.1f}  confusion tp {c['tp']} fp {c['fp']} fn {c['fn']} tn {c['tn']}")
            print(f"[{s}] mean score by kind: {kinds}")
        checks = "  ".join(f"{name} {v['passed']}/{v['total']}" for name, v in m["checks"].items())
        print(f"[{s}] checks: {checks}")


if __name__ == "__main__":
    sys.exit(main())
