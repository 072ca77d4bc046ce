"""The eval's outputs: results.jsonl, metrics.json, report.md, the PNG plots and the compare table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..chunking import section_title
from .metrics import CURVE_K, STAGES, SUPPORT_TEST, mean, metrics_by_kind


def covered_rule(settings: dict) -> str:
    """How the run decided covered / not covered, as rag.retrieve.Retriever.decide does."""
    model = settings.get("coverage_model")
    if model and Path(model).exists():
        return f"the coverage model `{Path(model).name}` (rag calibrate) says so"
    return f"the best dense or heading cosine >= refusal threshold {settings['refusal_threshold']}"


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


RESULT_DROP = ("relevant", "hits@k")


def write_results(out: Path, results: list[dict]) -> None:
    with open(out / "results.jsonl", "w", encoding="utf-8") as f:
        for r in results:
            row = {k: v for k, v in r.items() if k not in RESULT_DROP}
            row["hit@k"] = r.get("hits@k")
            row["retrieved_relevant"] = r.get("relevant")
            f.write(json.dumps(row, ensure_ascii=False, default=_jsonable) + "\n")


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"
    return str(v)


OVERALL_COLUMNS = [("questions", "n"), ("hit@1", "hit@1"), ("hit@3", "hit@3"), ("hit@5", "hit@5"), ("mrr", "MRR"),
                   ("ndcg@10", "nDCG@10"), ("evidence_recall@5", "evid. recall@5"),
                   ("semantic_sim", "sem. sim"), ("token_f1", "token F1"), ("answer_evidence", "holds evid."),
                   ("groundedness", "grounded"), ("model_written", "model wrote"),
                   ("citation_precision", "cit. P"), ("citation_recall", "cit. R"),
                   ("refusal_accuracy", "refusal acc"), ("false_refusal_rate", "false refusal")]


def _table(rows: list[tuple[str, dict]], columns=OVERALL_COLUMNS, first: str = "") -> str:
    cols = [c for c in columns if any(m.get(c[0]) is not None for _, m in rows)]
    lines = ["| " + " | ".join([first] + [c[1] for c in cols]) + " |",
             "|" + "---|" * (len(cols) + 1)]
    for name, m in rows:
        lines.append("| " + " | ".join([name] + [fmt(m.get(c[0])) for c in cols]) + " |")
    return "\n".join(lines)


def _latency_table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| seconds | " + " | ".join(f"{s} p50 | {s} p95" for s in STAGES) + " | CPU s/question |",
             "|" + "---|" * (2 + 2 * len(STAGES))]
    for name, m in rows:
        lat = m.get("latency", {})
        cells = []
        for s in STAGES:
            cells += [fmt(lat.get(s, {}).get("p50")), fmt(lat.get(s, {}).get("p95"))]
        cells.append(fmt(m.get("cpu_seconds_mean")))
        lines.append("| " + " | ".join([name] + cells) + " |")
    return "\n".join(lines)


def badness(r: dict) -> float:
    """Lower is worse: for unanswerable questions whether it refused; otherwise the mean of retrieval hit@5,
    semantic similarity, token F1, groundedness and citation recall (a false refusal scores 0)."""
    if r.get("error"):
        return -1.0
    if not r["evidence"]:
        return 1.0 if r["refused"] else 0.0
    if r["refused"]:
        return 0.0
    parts = [r.get("hit@5"), r.get("semantic_sim"), r.get("token_f1"), r.get("groundedness"),
             r.get("citation_recall")]
    return mean(parts) or 0.0


def _failures(results: list[dict]) -> list[str]:
    """Compact lists of the refusal mistakes (they score 0 and would crowd out everything else)."""
    def top(r):
        p = (r.get("retrieved") or [{}])[0]
        return f"{p.get('post_title', '–')} — {section_title(p.get('section', '–'))}" if p else "–"

    lines = []
    errors = [r for r in results if r.get("error")]
    missed = [r for r in results if not r["evidence"] and r.get("refused") is False]
    false = [r for r in results if r["evidence"] and r.get("refused")]
    if errors:
        lines += [f"## Errors ({len(errors)})", ""] + [f"- {r['id']}: {r['error']}" for r in errors] + [""]
    lines += [f"## Unanswerable questions that were answered ({len(missed)})", ""]
    lines += [f"- **{r['id']}** {r['question']} → {(r.get('answer') or '')[:200]!r} (top section: {top(r)})"
              for r in missed] or ["none"]
    lines += ["", f"## Answerable questions that were refused ({len(false)})", "",
              "`rank` is the rank of the first retrieved section holding an evidence string (– if none in the "
              "top 5): a refusal with rank 1 is a miscalibrated \"covered\" decision, not a retrieval miss.", ""]
    lines += [f"- **{r['id']}** ({r['kind']}, rank {fmt(r.get('first_relevant_rank'))}) {r['question']} "
              f"(top section: {top(r)})" for r in false] or ["none"]
    return lines + [""]


def _worst(results: list[dict], n: int = 10) -> str:
    lines = []
    for r in sorted(results, key=badness)[:n]:
        lines.append(f"### {r['id']} ({r['kind']}, score {badness(r):.2f})")
        lines.append(f"- **Q:** {r['question']}")
        if r.get("history"):
            lines.append(f"- *after:* {r['history'][-1][0]}" + (f" → query `{r.get('query')}`" if r.get("query") else ""))
        lines.append(f"- **Reference:** {r['reference']}")
        ans = (r.get("answer") or "").replace("\n", " ")
        lines.append(f"- **Answer** ({'refused' if r.get('refused') else 'answered'}): {ans[:600]}"
                     + ("…" if len(ans) > 600 else ""))
        expected = r.get("post_titles") or ([r["post_title"]] if r.get("post_title") else [])
        lines.append(f"- **Expected post:** {'; '.join(expected) or 'none (not covered)'}")
        scores = ", ".join(f"{k} {fmt(r.get(k))}" for k in ("first_relevant_rank", "semantic_sim", "token_f1",
                                                           "groundedness", "citation_precision", "citation_recall",
                                                           "evidence_indexed") if r.get(k) is not None)
        if scores:
            lines.append(f"- *Scores:* {scores}")
        if r.get("citations"):
            lines.append("- **Cited:** " + "; ".join(f"[{c['n']}] {c['post_title']} — {section_title(c['section'])}"
                                                   for c in r["citations"]))
        rel = r.get("relevant") or []
        lines.append("- **Retrieved:**")
        for i, p in enumerate(r.get("retrieved") or []):
            mark = " ✓" if i < len(rel) and rel[i] else ""
            lines.append(f"    {i + 1}. {p['post_title']} — {section_title(p['section'])}{mark}")
        lines.append("")
    return "\n".join(lines)


def write_report(out: Path, info: dict, metrics: dict, results: list[dict]) -> None:
    s = info["settings"]
    overall = metrics["overall"]
    lines = [
        f"# Eval report — {info['questions_file']} ({info['questions']} questions, mode {info['mode']})", "",
        f"- date: {info['date']}; commit `{info['commit']}`"
        + (f" (uncommitted changes in {', '.join(info['uncommitted'])})" if info.get("uncommitted") else "")
        + f"; machine: {info['machine']}; load average at start {info['load_average_start']}, "
        f"at end {info.get('load_average_end', '–')}",
        f"- run time: {info.get('seconds', 0):.0f} s (model loading {info.get('load_seconds', 0):.1f} s, not counted "
        f"in latencies)",
        f"- settings: embedder `{s['embedder']}`, generator `{s['generator']}`, fusion `{s['fusion']}` "
        f"(dense weight {s['dense_weight']}, rrf_k {s['rrf_k']}), top_k {s['top_k']}, candidates {s['candidates']}, "
        f"covered when {covered_rule(s)}, chunks {s['max_chunk_tokens']} tokens "
        f"(overlap {s['chunk_overlap_tokens']}), context {s['context_tokens']} tokens, "
        f"max_new_tokens {s['max_new_tokens']}, index `{s['index_dir']}`",
        "",
        "## Overall", "", _table([("all", overall)]), "",
        _latency_table([("all", overall)]), "",
        f"{overall['covered']} questions have evidence (retrieval and answer metrics), {overall['unanswerable']} are "
        f"unanswerable (refusal accuracy); {overall['errors']} raised QuestionError.",
        "",
        "## Per kind", "", _table([(k, m) for k, m in metrics["by_kind"].items()], first="kind"), "",
        _latency_table([(k, m) for k, m in metrics["by_kind"].items()]), "",
        "## How it is measured", "",
        "- **Hit**: a retrieved section (the answer's passages, rank order) contains an evidence string after "
        "normalising both (lower-case, `*` removed, whitespace collapsed). hit@1/3/5, MRR and evidence recall@5 "
        f"use the top_k={s['top_k']} sections the answer used; the hit@k curve and nDCG@10 (binary relevance, "
        "ideal = the relevant sections found ranked first) use a separate top-10 retrieval of the same query.",
        "- **Correctness**: cosine similarity of embedder vectors of answer and reference, and SQuAD token F1 "
        "(lower-case, punctuation and articles removed), over answerable questions; a refusal scores 0.",
        f"- **Support test (groundedness)**: {SUPPORT_TEST}",
        "- **Citations**: precision = cited sections containing an evidence string / cited sections; recall = "
        "evidence strings found in at least one cited section / evidence strings (answerable, not refused).",
        "- **Model wrote**: share of an answer's sentences that are not copied verbatim from a retrieved section, "
        "averaged over answers (0 for extractive answers; in the generate mode, sentences the check replaced by "
        "their source are copies).",
        "- **Refusals**: refusal accuracy = unanswerable questions refused; false-refusal rate = answerable "
        "questions refused.",
        "- **Latency**: wall-clock seconds from Answer.timings (retrieve, first_token, total), models loaded "
        "beforehand. CPU s/question is the process CPU time (all threads) per answer: on a busy machine wall "
        "time grows with the load average, CPU time much less.",
        "- **evidence_indexed**: share of evidence strings present anywhere in the index's chunk text; below 1 "
        "means a miss the retriever could not avoid.",
        "",
        "## Plots", "", "![hit@k](hit_at_k.png)", "", "![metrics per kind](metrics_by_kind.png)", "",
        "![latency](latency.png)", "",
        *_failures(results),
        "## Worst answered questions", "",
        "Answerable questions that got an answer, ranked by the mean of hit@5, semantic similarity, token F1, "
        "groundedness and citation recall. ✓ marks a retrieved section holding an evidence string.", "",
        _worst([r for r in results if r["evidence"] and not r.get("refused") and not r.get("error")]),
    ]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_hit_curve(out: Path, metrics: dict) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks = list(range(1, CURVE_K + 1))
    for name, m in [("all", metrics["overall"]), *metrics["by_kind"].items()]:
        if m.get("hit@k"):
            ax.plot(ks, m["hit@k"], marker="o" if name == "all" else ".", lw=3 if name == "all" else 1.2,
                    label=f"{name} (n={m['covered']})")
    ax.set(xlabel="k (sections retrieved)", ylabel="hit@k", ylim=(0, 1.02), xticks=ks,
           title="Share of questions with an evidence-holding section in the top k")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "hit_at_k.png", dpi=110)
    plt.close(fig)


BAR_METRICS = [("hit@5", "hit@5"), ("mrr", "MRR"), ("ndcg@10", "nDCG@10"), ("semantic_sim", "sem. sim"),
               ("token_f1", "token F1"), ("groundedness", "grounded"), ("citation_recall", "cit. recall"),
               ("refusal_accuracy", "refusal acc"), ("false_refusal_rate", "false refusal")]


def plot_by_kind(out: Path, metrics: dict) -> None:
    plt = _plt()
    kinds = list(metrics["by_kind"])
    cols = [c for c in BAR_METRICS if any(m.get(c[0]) is not None for m in metrics["by_kind"].values())]
    fig, ax = plt.subplots(figsize=(max(8, 1.5 * len(kinds) + 2), 4.8))
    width = 0.8 / max(len(cols), 1)
    for j, (key, label) in enumerate(cols):
        vals = [metrics["by_kind"][k].get(key) for k in kinds]
        xs = [i + (j - (len(cols) - 1) / 2) * width for i in range(len(kinds))]
        ax.bar([x for x, v in zip(xs, vals) if v is not None], [v for v in vals if v is not None], width,
               label=label)
    ax.set_xticks(range(len(kinds)), [f"{k}\n(n={metrics['by_kind'][k]['questions']})" for k in kinds], fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="score", title="Metrics per question kind")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.tight_layout()
    fig.savefig(out / "metrics_by_kind.png", dpi=110)
    plt.close(fig)


def plot_latency(out: Path, results: list[dict]) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(STAGES), figsize=(12, 3.8))
    for ax, stage in zip(axes, STAGES):
        vals = [r["timings"][stage] for r in results if r.get("timings", {}).get(stage) is not None]
        if vals:
            ax.hist(vals, bins=min(30, max(5, len(vals) // 3)), color="tab:blue", alpha=0.8)
            for q, style in ((50, "--"), (95, ":")):
                v = float(np.percentile(vals, q))
                ax.axvline(v, color="k", ls=style, label=f"p{q} {v:.2f}s")
            ax.legend(fontsize=8)
        ax.set(title=stage, xlabel="seconds", ylabel="questions")
    fig.suptitle("Latency per question")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)


def rerender(out: Path) -> dict:
    """Rewrite report.md, metrics.json and the plots of a finished run from its results.jsonl (after a change
    to the report or the aggregation; nothing is re-run, so answer-level scores stay as measured)."""
    out = Path(out)
    info = json.loads((out / "metrics.json").read_text())["run"]
    results = []
    for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        r["hits@k"], r["relevant"] = r.pop("hit@k", None), r.pop("retrieved_relevant", None)
        results.append(r)
    return write_run(out, info, results)


def write_run(out: Path, info: dict, results: list[dict]) -> dict:
    """metrics.json, results.jsonl, report.md and the three plots of one answer mode."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = metrics_by_kind(results)
    payload = {"run": info, "support_test": SUPPORT_TEST, **metrics}
    (out / "metrics.json").write_text(json.dumps(payload, indent=2, default=_jsonable), encoding="utf-8")
    write_results(out, results)
    write_report(out, info, metrics, results)
    plot_hit_curve(out, metrics)
    plot_by_kind(out, metrics)
    plot_latency(out, results)
    return metrics


COMPARE_COLUMNS = [("questions", "n"), ("hit@1", "hit@1"), ("hit@3", "hit@3"), ("hit@5", "hit@5"), ("mrr", "MRR"),
                   ("ndcg@10", "nDCG@10"), ("evidence_recall@5", "evid. R@5"), ("context_chars", "ctx chars@5"),
                   ("semantic_sim", "sem. sim"), ("token_f1", "F1"), ("answer_evidence", "holds evid."),
                   ("groundedness", "grounded"), ("model_written", "model wrote"), ("citation_precision", "cit. P"),
                   ("citation_recall", "cit. R"), ("refusal_accuracy", "refusal acc"), ("false_refusal_rate", "false refusal"),
                   ("first_token_p50", "1st token p50 s"), ("retrieve_p50", "retrieve p50 s"), ("total_p50", "total p50 s"), ("total_p95", "total p95 s"),
                   ("seconds", "row time s")]


def write_compare(out: Path, info: dict, rows: list[dict]) -> None:
    (out / "compare.json").write_text(json.dumps({"run": info, "rows": rows}, indent=2, default=_jsonable),
                                      encoding="utf-8")
    table = _table([(f"{r['name']}", r) for r in rows], COMPARE_COLUMNS, first="row")
    notes = "\n".join(f"- **{r['name']}**: {r['note']}" for r in rows if r.get("note"))
    text = (f"# Compare — {info['questions_file']} ({info['questions']} questions)\n\n"
            f"date {info['date']}; commit `{info['commit']}`; {info['machine']}; load average at start "
            f"{info['load_average_start']}; total {info.get('seconds', 0):.0f} s\n\n{table}\n\n"
            f"`n` is the number of questions a row used. Retrieval rows score the top_k={info['settings']['top_k']} "
            f"sections (nDCG on the top 10); their refusal columns are retrieval's own \"covered\" decision "
            f"(Retrieval.covered: {covered_rule(info['settings'])}). "
            f"`ctx chars@5` is the mean text length of the top 5 retrieved items (sections vs 1000-char chunks: "
            f"larger units hit more easily). Latencies exclude model loading.\n\n{notes}\n\n![compare](compare.png)\n")
    (out / "compare.md").write_text(text, encoding="utf-8")
    plot_compare(out, rows)


def plot_compare(out: Path, rows: list[dict]) -> None:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [1.2, 1]})
    ret_cols = [("hit@1", "hit@1"), ("hit@3", "hit@3"), ("hit@5", "hit@5"), ("mrr", "MRR"), ("ndcg@10", "nDCG@10")]
    ans_cols = [("semantic_sim", "sem. sim"), ("token_f1", "token F1"), ("answer_evidence", "holds evid."),
                ("groundedness", "grounded"),
                ("citation_precision", "cit. P"), ("citation_recall", "cit. R"), ("refusal_accuracy", "refusal acc"),
                ("false_refusal_rate", "false refusal")]
    for ax, cols, which, title in ((a1, ret_cols, lambda r: r["row_kind"] != "answer", "Retrieval"),
                                   (a2, ans_cols, lambda r: r["row_kind"] == "answer", "Answers")):
        sel = [r for r in rows if which(r)]
        width = 0.8 / max(len(sel), 1)
        for j, r in enumerate(sel):
            vals = [r.get(c[0]) for c in cols]
            xs = [i + (j - (len(sel) - 1) / 2) * width for i in range(len(cols))]
            bars = ax.bar([x for x, v in zip(xs, vals) if v is not None], [v for v in vals if v is not None],
                          width, label=f"{r['name']} (n={r['questions']})")
            ax.bar_label(bars, fmt="%.2f", fontsize=6, rotation=90, padding=2)
        ax.set_xticks(range(len(cols)), [c[1] for c in cols], fontsize=8)
        ax.set(ylim=(0, 1.15), title=title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=110)
    plt.close(fig)


SUMMARY = [("hit@1", "hit@1"), ("hit@5", "hit@5"), ("mrr", "MRR"), ("ndcg@10", "nDCG@10"),
           ("semantic_sim", "sim"), ("token_f1", "F1"), ("answer_evidence", "evid"), ("groundedness", "grounded"),
           ("citation_precision", "citP"),
           ("citation_recall", "citR"), ("refusal_accuracy", "refusal"), ("false_refusal_rate", "falseRef")]


def summary(rows: list[tuple[str, dict]]) -> str:
    width = max(12, *(len(n) for n, _ in rows)) + 1
    head = f"{'':<{width}}{'n':>5}" + "".join(f"{label:>9}" for _, label in SUMMARY) + f"{'p50 s':>8}{'p95 s':>8}"
    lines = [head]
    for name, m in rows:
        lat = m.get("latency", {}).get("total") or m.get("latency", {}).get("retrieve") or {}
        cells = "".join(f"{'-' if m.get(k) is None else format(m[k], '.3f'):>9}" for k, _ in SUMMARY)
        p50, p95 = lat.get("p50"), lat.get("p95")
        lines.append(f"{name:<{width}}{m['questions']:>5}{cells}"
                     f"{'-' if p50 is None else format(p50, '.2f'):>8}{'-' if p95 is None else format(p95, '.2f'):>8}")
    return "\n".join(lines)


def wilson(k: int, n: int) -> tuple[float, float] | None:
    """95% Wilson score interval of k successes in n (scipy)."""
    if not n:
        return None
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(method="wilson")
    return round(ci.low, 3), round(ci.high, 3)


def _rate_with_ci(m: dict, key: str, n_key: str) -> str:
    rate, n = m.get(key), m.get(n_key)
    if rate is None or not n:
        return "–"
    low, high = wilson(round(rate * n), n)
    return f"{rate:.3f} [{low:.2f}, {high:.2f}]"


SUMMARY_COLUMNS = [("questions", "n"), ("hit@1", "hit@1"), ("hit@5", "hit@5"), ("mrr", "MRR"),
                   ("token_f1", "token F1"), ("answer_evidence", "holds evid."), ("groundedness", "grounded"),
                   ("model_written", "model wrote"), ("citation_precision", "cit. P"), ("citation_recall", "cit. R")]


def write_summary(out: Path, splits: list[tuple[str, list[tuple[str, dict]]]], calibration: dict | None) -> None:
    """DIR/summary.md: every row of every question file side by side, refusal rates with 95% intervals, and
    the coverage decision's cross-validated dev figures from `rag calibrate`."""
    lines = ["# Eval summary", "", "Tune on dev, report test: nothing is chosen by looking at the test rows.", "",
             "| split | row | " + " | ".join(label for _, label in SUMMARY_COLUMNS)
             + " | refusal of uncovered [95% CI] | false refusal [95% CI] | first token p50 s | total p50 s |",
             "|" + "---|" * (len(SUMMARY_COLUMNS) + 6)]
    for split, rows in splits:
        for name, m in rows:
            m = {**m, "_unanswerable": m.get("unanswerable"), "_covered": m.get("covered")}
            lat = m.get("latency", {})
            cells = [fmt(m.get(k)) for k, _ in SUMMARY_COLUMNS]
            cells += [_rate_with_ci(m, "refusal_accuracy", "_unanswerable"), _rate_with_ci(m, "false_refusal_rate", "_covered"),
                      fmt(lat.get("first_token", {}).get("p50")), fmt(lat.get("total", {}).get("p50"))]
            lines.append(f"| {split} | {name} | " + " | ".join(cells) + " |")
    if calibration and calibration.get("cross_validated"):
        cv = calibration["cross_validated"]
        lines += ["", f"Coverage decision, 5-fold cross-validated on {calibration.get('dev')} (`rag calibrate`): "
                      f"threshold {cv['threshold']}, refusal of uncovered {cv['refusal']:.3f} {cv['refusal_ci']}, "
                      f"false refusal {cv['false_refusal']:.3f} {cv['false_refusal_ci']}."]
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
