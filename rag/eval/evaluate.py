"""The eval harness: labeled questions -> retrieval, answer, groundedness, refusal and latency metrics.

`rag eval --questions FILE --out DIR [--limit N] [--mode M] [--compare]` writes

    DIR/metrics.json   overall and per question kind
    DIR/results.jsonl  one line per question: answer, citations, retrieved sections in rank order, timings,
                       and every per-question metric
    DIR/report.md      settings, tables, the worst questions, the support test
    DIR/*.png          hit@k curve, metrics per kind, latency histogram

and with --compare also DIR/compare.md, DIR/compare.json and DIR/compare.png (fusions, answer modes and a
tutorial-style baseline side by side). No LLM judge: every number comes from evidence strings, token
overlap, embedding similarity or the sentence-level support test of rag.grounding.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..embedder import embed
from ..errors import RagError
from ..settings import PROJECT_DIR, Settings
from ..text import CITATION, cited_sentences
from . import SPLITS
from .metrics import (CURVE_K, KINDS, aggregate, citation_scores, groundedness, normalize, retrieval_scores,
                      holds_evidence, token_f1)
from .report import summary, write_compare, write_run, write_summary



@dataclass(frozen=True)
class EvalRun:
    """What `rag eval` was asked to do. Several question files (dev and test by default) are run one after
    the other into DIR/<file stem>/, with a summary of all of them in DIR/summary.md."""
    questions: tuple[str | Path, ...] | str | Path = SPLITS
    out: str | Path = "eval/runs/latest"
    limit: int | None = None
    mode: str | None = None  # default: the settings' answer mode
    compare: bool = False  # fusions, answer modes and a tutorial baseline side by side
    gen_limit: int = 24  # with compare: questions per generator mode (stratified by kind)


class QuestionFileError(RagError):
    """The questions file is malformed (the CLI prints it as one line)."""


def resolve_path(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists() and not p.is_absolute() and (PROJECT_DIR / p).exists():
        return PROJECT_DIR / p
    return p


def load_questions(path: str | Path, limit: int | None = None) -> list[dict]:
    """Read and validate a JSONL question file; every problem names its line."""
    p = resolve_path(path)
    if not p.is_file():
        raise QuestionFileError(f"{path}: no such questions file")
    questions, seen = [], {}
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            q = json.loads(line)
        except json.JSONDecodeError as e:
            raise QuestionFileError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e
        if not isinstance(q, dict):
            raise QuestionFileError(f"{where}: expected a JSON object, got {type(q).__name__}")
        _validate(q, where)
        if q["id"] in seen:
            raise QuestionFileError(f"{where}: duplicate id {q['id']!r} (first on line {seen[q['id']]})")
        seen[q["id"]] = lineno
        questions.append(q)
    if not questions:
        raise QuestionFileError(f"{p}: no questions")
    return questions[:limit] if limit else questions


def _validate(q: dict, where: str) -> None:
    for key in ("id", "question", "answer", "kind"):
        if not isinstance(q.get(key), str) or not q[key].strip():
            raise QuestionFileError(f"{where}: field {key!r} must be a non-empty string")
    if q["kind"] not in KINDS:
        raise QuestionFileError(f"{where}: kind {q['kind']!r} is not one of {', '.join(KINDS)}")
    ev = q.get("evidence")
    if not isinstance(ev, list) or not all(isinstance(e, str) and e.strip() for e in ev):
        raise QuestionFileError(f"{where}: 'evidence' must be a list of non-empty strings")
    if q["kind"] == "unanswerable" and ev:
        raise QuestionFileError(f"{where}: an unanswerable question must have empty evidence")
    if q["kind"] != "unanswerable" and not ev:
        raise QuestionFileError(f"{where}: a {q['kind']} question needs at least one evidence string")
    if q.get("post_title") is not None and not isinstance(q["post_title"], str):
        raise QuestionFileError(f"{where}: 'post_title' must be a string or null")
    if "post_titles" in q and not (isinstance(q["post_titles"], list)
                                   and all(isinstance(t, str) for t in q["post_titles"])):
        raise QuestionFileError(f"{where}: 'post_titles' must be a list of strings")
    history = q.get("history")
    if history is not None and not (isinstance(history, list) and all(
            isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t) for t in history)):
        raise QuestionFileError(f"{where}: 'history' must be a list of [question, answer] string pairs")
    if q["kind"] == "followup" and not history:
        raise QuestionFileError(f"{where}: a followup question needs a non-empty 'history'")


def stratified(questions: list[dict], n: int | None) -> list[dict]:
    """n questions spread over the kinds (round robin in file order), so a subset still covers every kind."""
    if not n or n >= len(questions):
        return list(questions)
    kinds = ("factual", "unanswerable", "followup", "multi_hop", "conceptual", "paraphrase")
    queues = {k: [q for q in questions if q["kind"] == k] for k in kinds}
    picked: list[dict] = []
    while len(picked) < n:
        for k in kinds:
            if queues[k] and len(picked) < n:
                picked.append(queues[k].pop(0))
    order = {q["id"]: i for i, q in enumerate(questions)}
    return sorted(picked, key=lambda q: order[q["id"]])


class Evaluator:
    """Holds the loaded chat (embedder, index, generator) so several rows share one set of models."""

    def __init__(self, settings: Settings, chat=None, progress: bool = True):
        from ..answer import Chat

        self.settings = settings
        self.chat = chat or Chat(settings)
        self.retriever = self.chat.retriever
        self.progress = progress
        self._indexed_text: dict[str, str] | None = None

    def _bar(self, items, desc: str):
        from tqdm import tqdm

        return tqdm(items, desc=desc, unit="q", file=sys.stderr, disable=not self.progress, dynamic_ncols=True)

    def indexed_text(self) -> dict[str, str]:
        """Every post's indexed chunk text, normalized, keyed by post title: to tell a retrieval miss from
        evidence the chunker lost (e.g. text split off into a heading)."""
        if self._indexed_text is None:
            from ..retrieve import join_overlapping

            by_post: dict[str, list] = {}
            for c in self.retriever.index.all_chunks():
                by_post.setdefault(c.post_title, []).append(c)
            self._indexed_text = {}
            for title, cs in by_post.items():
                sections: dict[int, list[str]] = {}
                for c in cs:
                    sections.setdefault(c.section_no, []).append(c.text)
                self._indexed_text[title] = normalize("\n\n".join(join_overlapping(t) for t in sections.values()))
        return self._indexed_text

    def evidence_indexed(self, evidence: list[str]) -> float | None:
        if not evidence:
            return None
        texts = self.indexed_text().values()
        return sum(any(normalize(e) in t for t in texts) for e in evidence) / len(evidence)

    def plan(self, q: dict, mode: str = "extractive", fusion: str | None = None):
        """The chat's own plan for a labeled question (follow-up handling included), or a QuestionError."""
        return self.chat.plan(q["question"], q.get("history"), mode=mode, fusion=fusion)

    def warm_up(self, mode: str) -> float:
        """Load the models before timing anything, so the first question's latency is not a model load."""
        start = time.perf_counter()
        self.retriever.search("warm up", 1)
        if mode != "extractive":
            _ = self.chat.generator
        return time.perf_counter() - start

    def answer_row(self, questions: list[dict], mode: str, fusion: str | None = None, desc: str = "") -> list[dict]:
        from ..conversation import QuestionError

        top_k = self.settings.top_k
        results = []
        for q in self._bar(questions, desc or f"answer {mode}"):
            r = _base(q)
            r["mode"] = mode
            answer = None
            cpu = time.process_time()
            start = time.perf_counter()
            try:
                plan = self.plan(q, mode, fusion)
                for answer in self.chat.stream_plan(plan, start=start):
                    pass
                r["cpu_seconds"] = time.process_time() - cpu  # all threads; less sensitive to a busy machine
            except QuestionError as e:
                r.update(error=str(e), answer="", refused=None, citations=[], retrieved=[], timings={})
                results.append(r)
                continue
            out = answer.to_json()
            r.update(query=answer.query, answer=answer.answer, refused=answer.refused, citations=out["citations"],
                     retrieved=out["retrieved"], timings={k: float(v) for k, v in answer.timings.items()},
                     generator=answer.generator, draft=answer.draft or None)
            r["retrieved_ranked"] = [p.text for p in answer.passages]
            if q["evidence"]:
                ten = self.chat.retrieve(plan, CURVE_K)  # the chat's own search, repeated for the top 10
                r.update(retrieval_scores([p.text for p in answer.passages], q["evidence"], top_k,
                                          [p.text for p in ten.passages]))
                r["evidence_indexed"] = self.evidence_indexed(q["evidence"])
            r["model_written"] = written_share(answer) if not answer.refused else None
            g, checks = groundedness(answer.answer, answer.refused, {c.n: c.text for c in answer.citations})
            r["groundedness"], r["support"] = g, checks
            r["citation_precision"], r["citation_recall"] = citation_scores(answer, q["evidence"])
            results.append(r)
        self._correctness(results)
        for r in results:
            r.pop("retrieved_ranked", None)
        return results

    def _correctness(self, results: list[dict]) -> None:
        """Semantic similarity and token F1 against the reference, for answerable questions; a refusal of an
        answerable question scores 0 on both."""
        todo = [r for r in results if r["evidence"] and not r.get("error") and not r["refused"]]
        if todo:
            a = embed(self.retriever.model, [CITATION.sub("", r["answer"]) for r in todo])
            b = embed(self.retriever.model, [r["reference"] for r in todo])
            for r, s in zip(todo, (a * b).sum(axis=1).tolist()):
                r["semantic_sim"] = max(0.0, min(1.0, float(s)))
                r["token_f1"] = token_f1(r["answer"], r["reference"])
                r["answer_evidence"] = holds_evidence(r["answer"], r["evidence"])
        for r in results:
            if r not in todo:
                zero = 0.0 if r["evidence"] and not r.get("error") else None
                r.setdefault("semantic_sim", zero)
                r.setdefault("token_f1", zero)
                r.setdefault("answer_evidence", zero)

    def retrieval_row(self, questions: list[dict], fusion: str) -> list[dict]:
        """Retrieval alone with one fusion: the search call the chat would make (follow-up handling included),
        top 10."""
        top_k = self.settings.top_k
        results = []
        for q in self._bar(questions, f"retrieve {fusion}"):
            plan = self.plan(q, fusion=fusion)
            ret = self.chat.retrieve(plan, CURVE_K)
            # the "covered" decision as the chat makes it: on its own top_k, not on the top 10
            decision = self.chat.retrieve(plan)
            r = _base(q)
            r.update(query=ret.query, refused=not decision.covered, timings={"retrieve": decision.seconds},
                     context_chars=sum(len(p.text) for p in ret.passages[:top_k]))
            if q["evidence"]:
                texts = [p.text for p in ret.passages]
                r.update(retrieval_scores(texts, q["evidence"], top_k, texts))
            results.append(r)
        return results

    def unrelated_turn_row(self, questions: list[dict], seed: int = 20261205) -> list[dict]:
        """The follow-up decision on questions that do not depend on the conversation: each non-follow-up
        question is asked after an earlier turn taken from a question about another post (fixed seed). It
        should be searched alone (`joined` false) and scored as without the turn: same hit@k, same refusal."""
        import random

        rng = random.Random(seed)
        standalone = [q for q in questions if q["kind"] != "followup"]
        results = []
        for q in self._bar(standalone, "after an unrelated turn"):
            others = [o for o in standalone if o.get("post_title") != q.get("post_title") and o is not q]
            other = rng.choice(others)
            history = [[other["question"], other["answer"]]]
            plan = self.chat.plan(q["question"], history)
            ret = self.chat.retrieve(plan, CURVE_K)
            decision = self.chat.retrieve(plan)
            r = _base(q)
            r.update(query=ret.query, refused=not decision.covered, joined=decision.joined,
                     timings={"retrieve": decision.seconds}, history=history)
            if q["evidence"]:
                texts = [p.text for p in ret.passages]
                r.update(retrieval_scores(texts, q["evidence"], self.settings.top_k, texts))
            results.append(r)
        return results

    def baseline_row(self, questions: list[dict], chunk_size: int = 1000, overlap: int = 100,
                     top_k: int = 5) -> tuple[list[dict], dict]:
        """The tutorial pipeline: 1000-character RecursiveCharacterTextSplitter chunks of the post Markdown,
        MiniLM vectors in a flat inner-product FAISS index, top 5 chunks for the raw question."""
        import faiss
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        from ..feed import read_feed

        start = time.perf_counter()
        splitter = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=overlap)
        chunks = [c for post in read_feed(self.settings.feed) for c in splitter.split_text(post.markdown)]
        vectors = embed(self.retriever.model, chunks)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        info = {"chunks": len(chunks), "chunk_size": chunk_size, "chunk_overlap": overlap,
                "build_seconds": time.perf_counter() - start}
        results = []
        for q in self._bar(questions, "tutorial baseline"):
            t = time.perf_counter()
            _, ids = index.search(embed(self.retriever.model, [q["question"]]), CURVE_K)
            texts = [chunks[i] for i in ids[0] if i >= 0]
            r = _base(q)
            r.update(query=q["question"], timings={"retrieve": time.perf_counter() - t},
                     context_chars=sum(len(x) for x in texts[:top_k]))
            if q["evidence"]:
                r.update(retrieval_scores(texts, q["evidence"], top_k, texts))
            results.append(r)
        return results, info


def written_share(answer) -> float | None:
    """Share of the answer's sentences that are not copied verbatim from a retrieved section: what a model
    wrote (0 for an extractive answer)."""
    parts = [s for s, _ in cited_sentences(answer.answer)]
    if not parts:
        return None
    texts = [normalize(p.text) for p in answer.passages]
    return sum(not any(copied(normalize(s).rstrip("."), t) for t in texts) for s in parts) / len(parts)


def copied(sentence: str, text: str) -> bool:
    """Verbatim in the text, or a list item of it behind its list's label, also from the text ("adaboost —
    net effect: works only when ...", rag.modes.labelled)."""
    if sentence in text:
        return True
    label, _, rest = sentence.partition(": ")
    return bool(rest) and rest in text and all(part.strip() in text for part in label.split(" — "))


def _base(q: dict) -> dict:
    return {"id": q["id"], "kind": q["kind"], "question": q["question"], "history": q.get("history"),
            "reference": q["answer"], "post_title": q.get("post_title"), "post_titles": q.get("post_titles"),
            "evidence": q["evidence"]}


def run_info(settings: Settings, questions_path: str, n: int, mode: str | None) -> dict:
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=PROJECT_DIR, capture_output=True, text=True,
                                  timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain", "--", "rag", "eval/dev.jsonl", "eval/test.jsonl",
                                        "eval/questions_holdout.jsonl").splitlines() if len(line) > 3]
    dirty = bool(changed)
    s = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()}
    return {"date": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
            "commit": (git("rev-parse", "--short", "HEAD").strip() or "unknown") + ("+dirty" if dirty else ""),
            "uncommitted": changed,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
            "load_average_start": [round(x, 2) for x in os.getloadavg()],
            "command": "rag " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("rag") else None,
            "questions_file": str(questions_path), "questions": n, "mode": mode, "settings": s}


def compare_row(name: str, kind: str, results: list[dict], seconds: float, note: str = "") -> dict:
    m = aggregate(results)
    ctx = [r["context_chars"] for r in results if r.get("context_chars") is not None]
    lat = m.get("latency", {})
    row = {"name": name, "row_kind": kind, "note": note, "seconds": seconds,
           "context_chars": float(np.mean(ctx)) if ctx else None,
           "retrieve_p50": lat.get("retrieve", {}).get("p50"), "first_token_p50": lat.get("first_token", {}).get("p50"),
           "total_p50": lat.get("total", {}).get("p50"), "total_p95": lat.get("total", {}).get("p95"), **m}
    if kind == "baseline":  # no refusal decision in the tutorial pipeline
        row.pop("refusal_accuracy", None)
        row.pop("false_refusal_rate", None)
    return row


def run_eval(run: EvalRun, settings: Settings) -> int:
    files = [run.questions] if isinstance(run.questions, (str, Path)) else list(run.questions)
    out = Path(run.out)
    ev = Evaluator(settings)
    if len(files) == 1:
        run_split(ev, run, files[0], out)
        return 0
    rows = []
    for path in files:
        rows.append((Path(path).stem, run_split(ev, run, path, out / Path(path).stem)))
    write_summary(out, rows, calibration_figures())
    print(f"\nsummary of {len(files)} question files: {out / 'summary.md'}")
    return 0


def calibration_figures(path: Path = PROJECT_DIR / "eval" / "calibration.json") -> dict | None:
    """The coverage decision's cross-validated dev figures, as `rag calibrate` wrote them."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_split(ev: Evaluator, run: EvalRun, questions_file: str | Path, out: Path) -> list[dict]:
    """One question file: the answer mode (or with --compare every row) into `out`; returns the
    (name, metrics) rows for the summary."""
    from ..fusion import FUSIONS
    from ..modes import MODES, get_mode

    settings = ev.settings
    started = time.perf_counter()
    questions = load_questions(questions_file, run.limit)
    mode = get_mode(run.mode or settings.answer_mode).name
    out.mkdir(parents=True, exist_ok=True)
    info = run_info(settings, questions_file, len(questions), mode)

    if not run.compare:
        info["load_seconds"] = ev.warm_up(mode)
        results = ev.answer_row(questions, mode)
        info["seconds"] = time.perf_counter() - started
        info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        metrics = write_run(out, info, results)
        print(summary([(f"{mode} overall", metrics["overall"]),
                        *((k, m) for k, m in metrics["by_kind"].items())]))
        print(f"\n{len(questions)} questions in {info['seconds']:.0f} s; report: {out / 'report.md'}")
        return [(f"answer {mode}", metrics["overall"])]

    rows: list[dict] = []
    info["load_seconds"] = ev.warm_up("extractive")
    for fusion in FUSIONS.values():
        t = time.perf_counter()
        res = ev.retrieval_row(questions, fusion.name)
        rows.append(compare_row(f"retrieval {fusion.name}", "retrieval", res, time.perf_counter() - t,
                                f"sections, {fusion.description}"
                                + (" (the default)" if fusion.name == settings.fusion else "")))
    t = time.perf_counter()
    res = ev.unrelated_turn_row(questions)
    joined = sum(r["joined"] for r in res)
    rows.append(compare_row("after an unrelated turn", "retrieval", res, time.perf_counter() - t,
                            f"every non-follow-up question asked after a turn about another post (the follow-up "
                            f"decision): {joined} of {len(res)} were joined to that turn"))
    t = time.perf_counter()
    res, binfo = ev.baseline_row(questions)
    rows.append(compare_row("tutorial baseline", "baseline", res, time.perf_counter() - t,
                            f"{binfo['chunks']} RecursiveCharacterTextSplitter chunks of {binfo['chunk_size']} chars "
                            f"(overlap {binfo['chunk_overlap']}) of the post Markdown, MiniLM, FAISS IndexFlatIP, "
                            f"top 5 chunks for the raw question (no follow-up rewriting); a hit is a chunk holding "
                            f"an evidence string; index built in {binfo['build_seconds']:.1f} s"))
    for m in MODES:
        subset = stratified(questions, run.gen_limit) if MODES[m].uses_generator and run.gen_limit else questions
        load = ev.warm_up(m)
        t = time.perf_counter()
        res = ev.answer_row(subset, m, desc=f"answer {m}")
        secs = time.perf_counter() - t
        note = f"answer mode {m}, fusion {settings.fusion}" + (
            f"; {len(subset)} of {len(questions)} questions (stratified by kind)" if len(subset) < len(questions)
            else "") + (f"; generator load {load:.1f} s not counted" if load > 1 else "")
        rows.append(compare_row(f"answer {m}", "answer", res, secs, note))
        sub_info = {**info, "questions": len(subset), "mode": m, "seconds": secs, "load_seconds": load}
        write_run(out if m == mode else out / f"mode-{m}", sub_info, res)
    info["seconds"] = time.perf_counter() - started
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    write_compare(out, info, rows)
    print(summary([(r["name"], r) for r in rows]))
    print(f"\n{len(questions)} questions, compare in {info['seconds']:.0f} s; table: {out / 'compare.md'}; "
          f"{mode} report: {out / 'report.md'}; other modes under {out}/mode-*/")
    return [(r["name"], r) for r in rows]
