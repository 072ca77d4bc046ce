"""The grading evaluation: do practice-mode grades agree with a reviewer's?

    python -m rag.eval.grading [--grades eval/practice_grades.jsonl] [--out eval/runs/grading]
                               [--index DIR] [--splits dev,test] [--tune] [--judge MODEL]

The labeled set has, per practice question, a good answer in other words, a partial one, a fluent wrong
one and the answer to another question of the same post, each with the grade a reviewer gives (0-100).
Questions are split once by a fixed seed (SEED: half of each post's questions to test); the file's
`split` fields must match that assignment, so nobody moves a row by hand.

Reported per split: Spearman rank correlation of score and grade, the pass/fail confusion (pass = 60),
mean score and pass rate per kind, and the bounds of the issue per question: the post's own answer
scores >= 80, "I don't know" <= 20, the answer of the next question of the same post <= 40, the question
pasted back <= 20 (the app refuses it as an attempt). The bounds need no labels, so dev's bounds run on
dev's questions and on every question of the index that is in neither split; test's on test's.

With `--tune` the grading weights are chosen by a grid search on dev only; the search itself is
cross-validated (5 folds of dev, grouped by post) so that the figure it was chosen by is not its only
figure, and test is scored once at the weights chosen on all of dev. `--judge MODEL` adds the product's
LikelihoodJudge (its values are cached in OUT/judge_cache.jsonl). `--splits dev` keeps test unseen while
developing. Nothing here writes to anyone's practice progress.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import RagError
from ..practice import (PASS_SCORE, Evidence, GradingWeights, Practice, PracticeQuestion, combine,
                        default_weights, judged)
from ..settings import PROJECT_DIR, load_settings

SEED = 20261205
KINDS = ("good", "partial", "wrong", "other")
FIELDS = ("question_id", "question", "post_title", "kind", "answer", "grade", "split")
CHECKS = {"own_answer": (">=", 80), "dont_know": ("<=", 20), "other_answer": ("<=", 40),
          "pasted_question": ("<=", 20)}
# The grid the weights are chosen from (GradingWeights fields); rival_cap stays at its default. The judge's
# axes join only when a judge is measured.
GRID = {"dense": (0.6, 0.7, 0.8), "low": (0.3, 0.35, 0.4), "high": (0.6, 0.65, 0.7, 0.75),
        "target": (0.6, 0.7, 0.8), "curve": (0.8, 1.0), "rival_margin": (-0.05, 0.0, 0.05, float("inf"))}
JUDGE_GRID = {"judge": (0.25, 0.5, 0.75), "judge_low": (0.0, 0.25, 0.5), "judge_high": (1.0, 1.5, 2.0)}
FOLDS = 5


class GradesFileError(RagError):
    """The labeled grades file is malformed, or its split is not the seeded one."""


# ---------------------------------------------------------------------------------------------- the set


def assign_splits(rows: list[dict], seed: int = SEED) -> dict[str, str]:
    """question id -> dev/test: per post (by title), its questions sorted by id, shuffled by the seed, the
    first half to dev and the rest to test. All answers to one question share its split."""
    posts: dict[str, list[str]] = {}
    for r in rows:
        ids = posts.setdefault(r["post_title"], [])
        if r["question_id"] not in ids:
            ids.append(r["question_id"])
    rng = random.Random(seed)
    out = {}
    for title in sorted(posts):
        ids = sorted(posts[title])
        rng.shuffle(ids)
        out.update({q: "dev" if i < len(ids) // 2 else "test" for i, q in enumerate(ids)})
    return out


def load_rows(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.exists() and (PROJECT_DIR / p).exists():
        p = PROJECT_DIR / p
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise GradesFileError(f"{p}: cannot read the grades file ({e.strerror})") from e
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise GradesFileError(f"{p}:{n}: not JSON ({e.msg})") from e
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise GradesFileError(f"{p}:{n}: missing {', '.join(missing)}")
        if row["kind"] not in KINDS or not 0 <= row["grade"] <= 100:
            raise GradesFileError(f"{p}:{n}: kind must be one of {', '.join(KINDS)} and grade 0-100")
        rows.append(row)
    expected = assign_splits(rows)
    moved = next((r for r in rows if r["split"] != expected[r["question_id"]]), None)
    if moved is not None:
        raise GradesFileError(f"{p}: question {moved['question_id']} is in {moved['split']!r}, but the seeded "
                              f"split (seed {SEED}) puts it in {expected[moved['question_id']]!r}")
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


def check_answers(practice: Practice, questions: list[PracticeQuestion]) -> list[tuple[str, str, str]]:
    """(check, question id, answer) for the bounds: the post's own answer, "I don't know", the answer of
    the next question of the same post, the question pasted back."""
    every = practice.questions()
    out = []
    for q in questions:
        same = [o for o in every if o.post_guid == q.post_guid]
        other = same[(same.index(q) + 1) % len(same)]
        out += [("own_answer", q.id, q.reference), ("dont_know", q.id, "I don't know."),
                ("pasted_question", q.id, q.question)]
        if other.id != q.id:
            out.append(("other_answer", q.id, other.reference))
    return out


class CachedJudge:
    """The product's LikelihoodJudge with its values kept in a JSONL file (keyed by model, question, its
    reference and the answer), so that a re-run or an interrupted run does not pay the model again."""

    def __init__(self, model: str, path: Path):
        from ..practice import LikelihoodJudge

        self.judge, self.path, self.values = LikelihoodJudge(model, threads=1), path, {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self.values[entry["key"]] = entry["value"]

    def __call__(self, q: PracticeQuestion, points, answer: str) -> float:
        key = hashlib.sha1("\n\0".join((self.judge.name, q.id, q.reference, answer)).encode()).hexdigest()
        if key not in self.values:
            self.values[key] = self.judge(q, points, answer)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "value": self.values[key]}) + "\n")
        return self.values[key]


# ---------------------------------------------------------------------------------------------- scoring


@dataclass
class Table:
    """The evidence of many answers in flat arrays, so that a weight grid scores all of them at once.
    `scores()` is `practice.combine` vectorised; `verify()` checks the two agree."""
    evidence: list[Evidence]
    verdicts: np.ndarray | None = None  # a judge's verdict per answer, when measured

    def __post_init__(self):
        ev = self.evidence
        self.n = len(ev)
        self.own_row = np.repeat(np.arange(self.n), [len(e.dense) for e in ev])
        self.own_dense = np.concatenate([e.dense for e in ev] or [np.zeros(0)])
        self.own_terms = np.concatenate([e.terms for e in ev] or [np.zeros(0)])
        self.points = np.bincount(self.own_row, minlength=self.n).astype(float)
        rivals = [(i, r) for i, e in enumerate(ev) for r in e.rivals]
        self.rival_row = np.array([i for i, _ in rivals], dtype=int)
        self.rival_id = np.repeat(np.arange(len(rivals)), [len(r.dense) for _, r in rivals]).astype(int)
        self.rival_dense = np.concatenate([r.dense for _, r in rivals] or [np.zeros(0)])
        self.rival_terms = np.concatenate([r.terms for _, r in rivals] or [np.zeros(0)])
        self.rival_points = np.bincount(self.rival_id, minlength=len(rivals)).astype(float)
        self.has_rival = np.array([bool(e.rivals) for e in ev], dtype=bool)
        self.empty = np.array([e.empty for e in ev], dtype=bool)
        self.echo = np.array([e.echo for e in ev], dtype=bool)

    def coverage(self, dense: float, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
        """Per answer: mean coverage of its own key points, and the best mean coverage of a rival's."""
        def cov(d, t):
            return np.clip((dense * d + (1 - dense) * t - low) / (high - low), 0.0, 1.0)
        own = np.bincount(self.own_row, cov(self.own_dense, self.own_terms), minlength=self.n)
        own = np.divide(own, self.points, out=np.zeros(self.n), where=self.points > 0)
        rival = np.zeros(self.n)
        if len(self.rival_row):
            means = np.bincount(self.rival_id, cov(self.rival_dense, self.rival_terms),
                                minlength=len(self.rival_row)) / np.maximum(self.rival_points, 1)
            np.maximum.at(rival, self.rival_row, means)
        return own, rival

    def scores(self, w: GradingWeights, covered: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        own, rival = covered if covered is not None else self.coverage(w.dense, w.low, w.high)
        mean = own
        if self.verdicts is not None and w.judge:
            mean = (1 - w.judge) * own + w.judge * judged(self.verdicts, w) * w.target
        score = np.round(100 * np.minimum(1.0, mean / w.target) ** w.curve)
        capped = ~self.echo & self.has_rival & ((rival - own) > w.rival_margin) & (score > w.rival_cap)
        score = np.where(capped, w.rival_cap, score)
        score = np.where(self.echo, np.minimum(score, 10), score)
        return np.where(self.empty, 0, score).astype(int)

    def verify(self, w: GradingWeights) -> None:
        """The vectorised scores are the product's scores (combine), answer by answer."""
        mine = self.scores(w)
        for i, e in enumerate(self.evidence):
            verdict = None if self.verdicts is None else float(self.verdicts[i])
            theirs = combine(e, w, verdict)[0]
            if theirs != mine[i]:
                raise AssertionError(f"harness score {mine[i]} != product score {theirs} for answer {i}")

    def subset(self, index) -> "Table":
        return Table([self.evidence[i] for i in index],
                     None if self.verdicts is None else self.verdicts[np.asarray(index, dtype=int)])


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    value = float(spearmanr(x, y).statistic)
    return 0.0 if np.isnan(value) else value


def metrics(rows: list[dict], scores) -> dict:
    grades = np.array([r["grade"] for r in rows], float)
    s = np.asarray(scores, float)
    truth, said = grades >= PASS_SCORE, s >= PASS_SCORE
    confusion = {"tp": int((truth & said).sum()), "fp": int((~truth & said).sum()),
                 "fn": int((truth & ~said).sum()), "tn": int((~truth & ~said).sum())}
    kinds = np.array([r["kind"] for r in rows])
    by_kind = {k: {"n": int((kinds == k).sum()), "mean_score": round(float(s[kinds == k].mean()), 1),
                   "mean_grade": round(float(grades[kinds == k].mean()), 1),
                   "pass_rate": round(float(said[kinds == k].mean()), 3)}
               for k in KINDS if (kinds == k).any()}
    return {"n": len(rows), "spearman": round(spearman(s, grades), 3) if len(rows) > 2 else None,
            "mae": round(float(np.abs(s - grades).mean()), 1), "pass_accuracy": round(float((truth == said).mean()), 3),
            "confusion": confusion, "by_kind": by_kind}


def check_results(items: list[tuple[str, str, str]], scores) -> dict:
    out = {}
    for name, (op, bound) in CHECKS.items():
        got = {qid: int(s) for (check, qid, _), s in zip(items, scores) if check == name}
        ok = {qid: (s >= bound if op == ">=" else s <= bound) for qid, s in got.items()}
        out[name] = {"rule": f"score {op} {bound}", "passed": sum(ok.values()), "total": len(ok),
                     "mean": round(float(np.mean(list(got.values()))), 1) if got else None,
                     "failures": {qid: got[qid] for qid, good in ok.items() if not good}}
    return out


def _check_rate(items, scores) -> float:
    c = check_results(items, scores)
    return sum(v["passed"] for v in c.values()) / max(1, sum(v["total"] for v in c.values()))


# ---------------------------------------------------------------------------------------------- tuning


def grid(judge: bool = False):
    judging = [{}] + ([dict(zip(JUDGE_GRID, v)) for v in itertools.product(*JUDGE_GRID.values())] if judge else [])
    for dense, low, high in itertools.product(GRID["dense"], GRID["low"], GRID["high"]):
        if high > low + 0.1:
            rest = itertools.product(GRID["target"], GRID["curve"], GRID["rival_margin"], judging)
            yield (dense, low, high), [replace(GradingWeights(), dense=dense, low=low, high=high, target=t,
                                               curve=c, rival_margin=m, **j) for t, c, m, j in rest]


def objective(rows, scores, items, check_scores) -> float:
    """What tuning maximises: rank agreement + pass/fail agreement + share of bounds kept (each 0..1)."""
    m = metrics(rows, scores)
    return m["spearman"] + m["pass_accuracy"] + _check_rate(items, check_scores)


def tune(rows: list[dict], table: Table, items: list, checks: Table, judge: bool = False) -> tuple[GradingWeights, float]:
    best, best_value = GradingWeights(), -np.inf
    for (dense, low, high), candidates in grid(judge):
        covered, check_covered = table.coverage(dense, low, high), checks.coverage(dense, low, high)
        for w in candidates:
            value = objective(rows, table.scores(w, covered), items, checks.scores(w, check_covered))
            if value > best_value + 1e-9:
                best, best_value = w, value
    return best, best_value


def cross_validate(rows, table, items, checks, post_of: dict[str, str], judge: bool = False
                   ) -> tuple[np.ndarray, list[dict]]:
    """Out-of-fold scores of the dev rows: each fold scored at the weights tuned on the other folds
    (folds group whole posts, so an answer never meets its question's siblings across the cut)."""
    from sklearn.model_selection import GroupKFold

    posts = np.array([r["post_title"] for r in rows])
    item_posts = np.array([post_of[qid] for _, qid, _ in items])
    scores = np.zeros(len(rows), dtype=int)
    folds = []
    for train, held in GroupKFold(FOLDS).split(rows, groups=posts):
        train_posts = set(posts[train])
        ci = [i for i in range(len(items)) if item_posts[i] in train_posts]
        w, _ = tune([rows[i] for i in train], table.subset(train), [items[i] for i in ci], checks.subset(ci), judge)
        scores[held] = table.subset(held).scores(w)
        folds.append({"held_out_posts": sorted(set(posts[held])), "weights": asdict(w)})
    return scores, folds


# ---------------------------------------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rag.eval.grading", description=__doc__.split("\n\n")[0])
    ap.add_argument("--grades", default="eval/practice_grades.jsonl", help="labeled answers (default: %(default)s)")
    ap.add_argument("--out", default="eval/runs/grading", help="output directory (default: %(default)s)")
    ap.add_argument("--index", metavar="DIR", help="index directory (default: RAG_INDEX_DIR or ./index)")
    ap.add_argument("--config", metavar="FILE")
    ap.add_argument("--tune", action="store_true", help="choose the grading weights on the dev split (cross-validated)")
    ap.add_argument("--judge", metavar="MODEL", help="also measure the likelihood judge with this generator "
                    "(e.g. Qwen/Qwen2.5-Coder-0.5B-Instruct); with --tune its weights join the grid")
    ap.add_argument("--bounds", choices=("all", "labeled"), default="all", help="run dev's bounds on every "
                    "question in neither split too (all), or on the labeled questions only (quick)")
    ap.add_argument("--splits", default="dev,test", help="splits to score: 'dev' while developing keeps the "
                    "test split unseen (default: %(default)s)")
    args = ap.parse_args(argv)
    args.command = " ".join(["python -m rag.eval.grading", *(sys.argv[1:] if argv is None else argv)])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return run(args)
    except RagError as e:
        print(f"rag: error: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    from tqdm import tqdm

    start = time.perf_counter()
    settings = load_settings(args.config, index_dir=args.index)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if not set(splits) <= {"dev", "test"} or (args.tune and "dev" not in splits):
        raise GradesFileError("--splits takes dev and/or test; --tune needs dev")
    every_row = load_rows(args.grades)
    with tempfile.TemporaryDirectory() as tmp:  # key points are cached here, never in a user's progress
        practice = Practice(settings, db_path=Path(tmp) / "practice.sqlite")
        judge = CachedJudge(args.judge, out / "judge_cache.jsonl") if args.judge else None
        for row in every_row:
            row["resolved_id"] = resolve(practice, row).id
        rows = [r for r in every_row if r["split"] in splits]
        labeled = list(dict.fromkeys(r["resolved_id"] for r in rows))
        if args.bounds == "all":
            practice._key_points(practice.questions())  # every question's key points in one embedding batch

        def table(pairs, desc) -> Table:
            evidence, verdicts = [], []
            for qid, answer in tqdm(pairs, desc=desc, unit="answer", file=sys.stderr):
                q, points, ev = practice.evidence(qid, answer)
                evidence.append(ev)
                if judge is not None:  # refused (echo) and empty answers are never judged by the product
                    verdicts.append(0.0 if ev.empty or ev.echo else judge(q, points, answer))
            return Table(evidence, np.array(verdicts) if judge is not None else None)

        answers = table([(r["resolved_id"], r["answer"]) for r in rows], "labeled answers")
        pool = {s: [practice.question(q) for q in labeled if any(r["resolved_id"] == q and r["split"] == s for r in rows)]
                for s in splits}
        # The bounds need no labels, so every question that is in neither split joins dev's: tuning keeps
        # them on hundreds of questions, and the test questions stay unseen.
        if "dev" in pool and args.bounds == "all":
            pool["dev"] += [q for q in practice.questions() if q.id not in {r["resolved_id"] for r in every_row}]
        post_of = {q.id: q.post_title for q in practice.questions()}
        items = {s: check_answers(practice, qs) for s, qs in pool.items()}
        checks = {s: table([(qid, a) for _, qid, a in items[s]], f"bounds ({s})") for s in items}
        index_path = str(practice.index.path)
    if len(splits) == 2 and args.bounds == "all":  # dev's pool and test's are every question of the index
        items["every question"] = items["dev"] + items["test"]
        checks["every question"] = Table(checks["dev"].evidence + checks["test"].evidence, None if judge is None
                                         else np.concatenate([checks["dev"].verdicts, checks["test"].verdicts]))

    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": args.command,
              "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python "
                         f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f}",
              "grades_file": str(args.grades), "seed": SEED, "index": index_path, "tuned_on_dev": bool(args.tune),
              "judge": args.judge, "pass_score": PASS_SCORE, "graders": {}}
    results = [{**{k: r[k] for k in ("question_id", "kind", "grade", "split")}, "answer": r["answer"][:200],
                "scores": {}} for r in rows]
    configurations = [("embeddings", False)] + ([("with judge", True)] if judge is not None else [])
    for name, with_judge in configurations:
        keep = (lambda t: t) if with_judge else (lambda t: Table(t.evidence))  # the same evidence, verdicts or not
        grader = evaluate(rows, keep(answers), items, {s: keep(t) for s, t in checks.items()}, post_of, with_judge,
                          args.tune)
        for r, score in zip(results, grader.pop("scores")):
            r["scores"][name] = score
        report["graders"][name] = grader
    report["seconds"] = round(time.perf_counter() - start, 1)
    write(out, report, results)
    print_report(report)
    print(f"written: {out / 'metrics.json'}, {out / 'results.jsonl'}, {out / 'report.md'}, {out / 'grading.png'}")
    return 0


def evaluate(rows, answers: Table, items: dict, checks: dict, post_of: dict, judged: bool, tune_weights: bool) -> dict:
    """One grader's figures: its weights (tuned on dev, or the product's), dev cross-validated, each split,
    the bounds; and its score of every answer."""
    dev = [i for i, r in enumerate(rows) if r["split"] == "dev"]
    dev_rows = [rows[i] for i in dev]
    out: dict = {}
    weights = default_weights(judged)
    if tune_weights:
        weights, _ = tune(dev_rows, answers.subset(dev), items["dev"], checks["dev"], judged)
        cv_scores, folds = cross_validate(dev_rows, answers.subset(dev), items["dev"], checks["dev"], post_of, judged)
        out["dev_cross_validated"] = {**metrics(dev_rows, cv_scores), "folds": folds}
    answers.verify(weights)
    scores = answers.scores(weights)
    out.update(weights=asdict(weights), product_defaults=weights == default_weights(judged), splits={})
    for s in sorted({r["split"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["split"] == s]
        out["splits"][s] = {**metrics([rows[i] for i in idx], scores[idx]),
                            "checks": check_results(items[s], checks[s].scores(weights))}
    if "every question" in items:
        out["every_question"] = {"checks": check_results(items["every question"],
                                                         checks["every question"].scores(weights))}
    out["scores"] = [int(x) for x in scores]
    return out


def write(out: Path, report: dict, results: list[dict]) -> None:
    (out / "metrics.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    with open(out / "results.jsonl", "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(markdown(report))
    plot(results, out / "grading.png")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"good": "tab:green", "partial": "tab:orange", "wrong": "tab:red", "other": "tab:purple"}
    graders = list(results[0]["scores"]) if results else []
    fig, axes = plt.subplots(len(graders), 2, figsize=(11, 4.4 * len(graders)), sharey=True, squeeze=False)
    rng = np.random.default_rng(0)
    for row, grader in zip(axes, graders):
        for ax, split in zip(row, ("dev", "test")):
            if not any(r["split"] == split for r in results):
                ax.set_axis_off()
                continue
            for kind, color in colors.items():
                mine = [r for r in results if r["split"] == split and r["kind"] == kind]
                x = np.array([r["grade"] for r in mine], float) + rng.uniform(-1.5, 1.5, len(mine))
                ax.scatter(x, [r["scores"][grader] for r in mine], s=18, alpha=0.75, color=color, label=kind)
            ax.axhline(PASS_SCORE, color="grey", lw=0.8, ls="--")
            ax.axvline(PASS_SCORE, color="grey", lw=0.8, ls="--")
            ax.set_title(f"{split}, {grader}: score vs reviewer grade")
            ax.set_xlabel("reviewer grade")
            ax.set_xlim(-3, 103)
            ax.set_ylim(-3, 103)
        row[0].set_ylabel("practice-mode score")
        row[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _rows_md(name: str, m: dict) -> list[str]:
    c = m["confusion"]
    lines = [f"**{name}** (n={m['n']}): Spearman {m['spearman']:.3f}, pass/fail accuracy {m['pass_accuracy']:.3f}, "
             f"MAE {m['mae']:.1f}; confusion (reviewer pass = grade >= {PASS_SCORE}): tp {c['tp']}, fp {c['fp']}, "
             f"fn {c['fn']}, tn {c['tn']}", "", "| kind | n | mean grade | mean score | scored a pass |",
             "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['n']} | {v['mean_grade']:.0f} | {v['mean_score']:.0f} | {v['pass_rate']:.2f} |"
              for k, v in m["by_kind"].items()]
    return lines + [""]


def _checks_md(name: str, checks: dict) -> list[str]:
    return [f"Bounds on {name}: " + "; ".join(f"{k} ({v['rule']}) {v['passed']}/{v['total']}, mean {v['mean']}"
                                            for k, v in checks.items()), ""]


def markdown(report: dict) -> str:
    lines = [f"# Practice grading eval, {report['date']}", "", f"- command: `{report['command']}`",
             f"- machine: {report['machine']}", f"- grades: {report['grades_file']} (split seed {report['seed']}); "
             f"index: {report['index']}", f"- judge: {report['judge'] or 'none'}", ""]
    for name, g in report["graders"].items():
        source = "tuned on dev" if report["tuned_on_dev"] else "the product's"
        same = "the product's defaults" if g["product_defaults"] else "not the product's defaults"
        lines += [f"## Grader: {name}", "", f"weights ({source}; {same}): "
                  + ", ".join(f"{k} {v}" for k, v in g["weights"].items()), ""]
        if "dev_cross_validated" in g:
            lines += _rows_md("dev, cross-validated (each fold scored at weights tuned on the others)",
                              g["dev_cross_validated"])
        for s, m in g["splits"].items():
            lines += _rows_md(f"{s}{' (tuned on)' if s == 'dev' and report['tuned_on_dev'] else ''}", m)
            lines += _checks_md(f"the {s} questions" + (" and every question in neither split" if s == "dev" else ""),
                                m["checks"])
        if "every_question" in g:
            lines += _checks_md("every question of the index", g["every_question"]["checks"])
    lines += ["![scores against grades](grading.png)", ""]
    return "\n".join(lines)


def print_report(report: dict) -> None:
    for name, g in report["graders"].items():
        print(f"== {name}: " + ", ".join(f"{k} {v}" for k, v in g["weights"].items())
              + (" (tuned on dev)" if report["tuned_on_dev"] else " (product weights)"))
        sections = [("dev-cv", g["dev_cross_validated"])] if "dev_cross_validated" in g else []
        for s, m in sections + list(g["splits"].items()):
            c = m["confusion"]
            kinds = "  ".join(f"{k} {v['mean_score']:.0f} (grade {v['mean_grade']:.0f}, pass {v['pass_rate']:.2f})"
                              for k, v in m["by_kind"].items())
            print(f"[{s}] n={m['n']}  spearman {m['spearman']:.3f}  pass accuracy {m['pass_accuracy']:.3f}  "
                  f"MAE {m['mae']:.1f}  confusion tp {c['tp']} fp {c['fp']} fn {c['fn']} tn {c['tn']}")
            print(f"[{s}] by kind: {kinds}")
            if "checks" in m:
                print(f"[{s}] bounds: " + "  ".join(f"{k} {v['passed']}/{v['total']}" for k, v in m["checks"].items()))
        if "every_question" in g:
            print("[every question] bounds: " + "  ".join(
                f"{k} {v['passed']}/{v['total']}" for k, v in g["every_question"]["checks"].items()))


if __name__ == "__main__":
    sys.exit(main())
