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
import logging
import math
import os
import platform
import re
import string
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .chunking import section_title
from .grounding import CITATION, SENTENCE_SPLIT, SUPPORT_THRESHOLD, sentences, supported
from .models import embed
from .settings import PROJECT_DIR, Settings

log = logging.getLogger(__name__)

KINDS = ("factual", "conceptual", "paraphrase", "multi_hop", "followup", "unanswerable")
CURVE_K = 10  # hit@k curve and nDCG cutoff
STAGES = ("retrieve", "first_token", "total")
GEN_LIMIT_DEFAULT = 24  # questions per generator row in --compare (RAG_EVAL_GEN_LIMIT overrides)
SUPPORT_TEST = (
    f"An answer sentence (split with rag.grounding.sentences, citation markers removed) is *supported* when "
    f"at least one passage it cites with a valid marker [n] (n is one of the answer's citations) contains at "
    f"least {SUPPORT_THRESHOLD:.0%} of the sentence's content words (lower-cased, stop words removed; "
    f"rag.grounding.supported, checked against the cited section's full text). A marker right after a "
    f"sentence belongs to it; a single block of markers ending an otherwise unmarked answer cites every "
    f"sentence. A sentence without a valid citation is unsupported. Groundedness = supported sentences / answer sentences, averaged over answers "
    f"that are not refusals.")


class QuestionFileError(ValueError):
    """The questions file is malformed (the CLI prints it as one line)."""


# ------------------------------------------------------------------ questions


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


# ------------------------------------------------------------------ per-question scoring


def normalize(text: str) -> str:
    """How evidence is matched: lower-case, asterisks (Markdown emphasis) removed, whitespace collapsed."""
    return " ".join(text.lower().replace("*", "").split())


def relevance(texts: list[str], evidence: list[str]) -> tuple[list[bool], list[set[int]]]:
    """For each retrieved text: does it hold any evidence string, and which ones."""
    ev = [normalize(e) for e in evidence]
    found = []
    for t in texts:
        nt = normalize(t)
        found.append({i for i, e in enumerate(ev) if e in nt})
    return [bool(f) for f in found], found


def ndcg(rel: list[bool], k: int = CURVE_K) -> float:
    """Binary nDCG@k. The ideal ranking puts every relevant item found in the top k first (the full set of
    relevant sections is not labeled), so 0 when none is retrieved and 1 when all found ones lead."""
    rel = rel[:k]
    dcg = sum(1 / math.log2(i + 2) for i, r in enumerate(rel) if r)
    ideal = sum(1 / math.log2(i + 2) for i in range(max(sum(rel), 1)))
    return dcg / ideal


def retrieval_scores(texts: list[str], evidence: list[str], top_k: int, texts10: list[str] | None = None) -> dict:
    """hit@1/3/5, reciprocal rank and evidence recall on the top_k the answer used; curve and nDCG on top 10."""
    rel, found = relevance(texts[:top_k], evidence)
    rel10, _ = relevance((texts10 if texts10 is not None else texts)[:CURVE_K], evidence)
    first = next((i for i, r in enumerate(rel) if r), None)
    covered = set().union(*found) if found else set()
    return {
        "hit@1": float(any(rel[:1])), "hit@3": float(any(rel[:3])), "hit@5": float(any(rel[:5])),
        "rr": 1.0 / (first + 1) if first is not None else 0.0,
        "first_relevant_rank": first + 1 if first is not None else None,
        "evidence_recall@5": len(covered) / len(evidence),
        "ndcg@10": ndcg(rel10),
        "hits@k": [float(any(rel10[:k])) for k in range(1, CURVE_K + 1)],
        "relevant": rel10,
    }


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation) | set("“”‘’—–…•")


def squad_tokens(text: str) -> list[str]:
    text = "".join(ch for ch in CITATION.sub("", text).lower() if ch not in _PUNCT)
    return _ARTICLES.sub(" ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1: lower-case, punctuation and articles removed, bag-of-tokens overlap."""
    pred, ref = squad_tokens(prediction), squad_tokens(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


_LEADING_MARKS = re.compile(r"^\s*((?:\[\d+\]\s*)+)")
_TRAILING_MARKS = re.compile(r"((?:\s*\[\d+\])+)\s*$")
_MARK = re.compile(r"\[(\d+)\]")


def cited_sentences(text: str) -> list[tuple[str, list[int]]]:
    """Answer sentences (as rag.grounding.sentences splits them) with the citation numbers each carries.
    A marker right after a sentence's final period belongs to that sentence. When the only markers are one
    block at the very end of the answer (the chat's post-hoc citation of an unmarked answer), they cite
    every sentence."""
    pieces: list[tuple[list[str], list[int]]] = []
    for piece in SENTENCE_SPLIT.split(text):
        m = _LEADING_MARKS.match(piece)
        rest = piece
        if m and pieces:
            pieces[-1][1].extend(int(x) for x in _MARK.findall(m.group(1)))
            rest = piece[m.end():]
        # rag.grounding.sentences works piece by piece, so each piece yields its own sentence (or none)
        pieces.append((sentences(piece), [int(x) for x in _MARK.findall(rest)]))
    out = [(s, marks) for found, marks in pieces for s in found]
    if [s for s, _ in out] != sentences(text):
        log.warning("answer sentence split differs from rag.grounding.sentences; update cited_sentences")
    tail = _TRAILING_MARKS.search(text)
    if tail and len(_MARK.findall(text)) == len(_MARK.findall(tail.group(1))):
        marks = [int(x) for x in _MARK.findall(tail.group(1))]
        out = [(s, marks) for s, _ in out]
    return out


def groundedness(text: str, refused: bool, cited: dict[int, str]) -> tuple[float | None, list[dict]]:
    """Share of answer sentences supported by at least one passage they cite (see SUPPORT_TEST); `cited`
    maps each citation number of the answer to the cited section's text."""
    if refused:
        return None, []
    checks = []
    for sentence, marks in cited_sentences(text):
        valid = [n for n in dict.fromkeys(marks) if n in cited]
        ok = any(supported(sentence, cited[n]) for n in valid)
        checks.append({"sentence": sentence, "cites": valid, "supported": ok})
    if not checks:
        return 0.0, checks
    return sum(c["supported"] for c in checks) / len(checks), checks


def citation_scores(answer, evidence: list[str]) -> tuple[float | None, float | None]:
    """Precision: cited sections holding an evidence string / cited sections. Recall: evidence strings found
    in at least one cited section / evidence strings. None where undefined."""
    if not evidence or answer.refused:
        return None, None
    rel, found = relevance([c.text for c in answer.citations], evidence)
    precision = sum(rel) / len(rel) if rel else None
    recall = len(set().union(*found)) / len(evidence) if found else 0.0
    return precision, recall


# ------------------------------------------------------------------ aggregation


def mean(values) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def percentile(values, q: float) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.percentile(vals, q)) if vals else None


def aggregate(results: list[dict]) -> dict:
    """The metrics of a set of per-question results (each metric over the questions where it is defined)."""
    ok = [r for r in results if not r.get("error")]
    covered = [r for r in results if r["evidence"]]
    unanswerable = [r for r in ok if not r["evidence"]]
    answerable = [r for r in ok if r["evidence"]]
    m: dict = {"questions": len(results), "errors": len(results) - len(ok), "covered": len(covered),
               "unanswerable": len(results) - len(covered)}
    if covered:
        for key in ("hit@1", "hit@3", "hit@5", "mrr", "ndcg@10", "evidence_recall@5"):
            m[key] = mean(r.get("rr" if key == "mrr" else key) or 0.0 for r in covered)
        m["hit@k"] = [float(np.mean([(r.get("hits@k") or [0.0] * CURVE_K)[k] for r in covered]))
                      for k in range(CURVE_K)]
        m["evidence_indexed"] = mean(r.get("evidence_indexed") for r in covered)
    if "semantic_sim" in (ok[0] if ok else {}):
        m["answered"] = sum(not r["refused"] for r in ok)
        m["semantic_sim"] = mean(r["semantic_sim"] for r in answerable)
        m["token_f1"] = mean(r["token_f1"] for r in answerable)
        m["groundedness"] = mean(r["groundedness"] for r in ok)
        m["citation_precision"] = mean(r["citation_precision"] for r in answerable)
        m["citation_recall"] = mean(r["citation_recall"] for r in answerable)
    if "refused" in (ok[0] if ok else {}):
        m["refusal_accuracy"] = mean(float(r["refused"]) for r in unanswerable)
        m["false_refusal_rate"] = mean(float(r["refused"]) for r in answerable)
    lat = {}
    for stage in STAGES:
        vals = [r["timings"].get(stage) for r in ok if r.get("timings")]
        if any(v is not None for v in vals):
            lat[stage] = {"p50": percentile(vals, 50), "p95": percentile(vals, 95), "mean": mean(vals)}
    m["latency"] = lat
    cpu = [r["cpu_seconds"] for r in ok if r.get("cpu_seconds") is not None]
    if cpu:
        m["cpu_seconds_mean"] = float(np.mean(cpu))
    return m


def metrics_by_kind(results: list[dict]) -> dict:
    return {"overall": aggregate(results),
            "by_kind": {k: aggregate(rs) for k in KINDS if (rs := [r for r in results if r["kind"] == k])}}


# ------------------------------------------------------------------ running


class Evaluator:
    """Holds the loaded chat (embedder, index, generator) so several rows share one set of models."""

    def __init__(self, settings: Settings, chat=None, progress: bool = True):
        from .answer import Chat

        from .retrieve import Retriever

        self.settings = settings
        self.chat = chat or Chat(settings, retriever=_RecordingRetriever(Retriever(settings)))
        if not isinstance(self.chat.retriever, _RecordingRetriever):
            self.chat.retriever = _RecordingRetriever(self.chat.retriever)
        self.recorder: _RecordingRetriever = self.chat.retriever
        self.retriever = self.recorder.inner
        self.progress = progress
        self._indexed_text: dict[str, str] | None = None

    def _bar(self, items, desc: str):
        from tqdm import tqdm

        return tqdm(items, desc=desc, unit="q", file=sys.stderr, disable=not self.progress, dynamic_ncols=True)

    def indexed_text(self) -> dict[str, str]:
        """Every post's indexed chunk text, normalized, keyed by post title: to tell a retrieval miss from
        evidence the chunker lost (e.g. text split off into a heading)."""
        if self._indexed_text is None:
            from .retrieve import _join_overlapping

            index = self.retriever.index
            chunks = index.chunks(list(range(index.vectors.ntotal)))
            by_post: dict[str, list] = {}
            for _, c in sorted(chunks.items(), key=lambda kv: (kv[1].post_title, kv[1].position)):
                by_post.setdefault(c.post_title, []).append(c)
            self._indexed_text = {}
            for title, cs in by_post.items():
                sections: dict[int, list[str]] = {}
                for c in cs:
                    sections.setdefault(c.section_no, []).append(c.text)
                self._indexed_text[title] = normalize("\n\n".join(_join_overlapping(t) for t in sections.values()))
        return self._indexed_text

    def evidence_indexed(self, evidence: list[str]) -> float | None:
        if not evidence:
            return None
        texts = self.indexed_text().values()
        return sum(any(normalize(e) in t for t in texts) for e in evidence) / len(evidence)

    def chat_search_call(self, question: str, history) -> tuple[str, dict]:
        """How the chat would call Retriever.search for this question (query and keyword arguments), found by
        starting the chat and stopping it at its search call, so no answer is produced."""
        self.recorder.capture = True
        try:
            next(self.chat.stream(question, history, mode="extractive"))
        except _Captured:
            return self.recorder.last
        finally:
            self.recorder.capture = False
        raise RuntimeError("the chat answered without calling Retriever.search")

    def warm_up(self, mode: str) -> float:
        """Load the models before timing anything, so the first question's latency is not a model load."""
        start = time.perf_counter()
        self.retriever.search("warm up", 1)
        if mode != "extractive":
            _ = self.chat.generator
        return time.perf_counter() - start

    def answer_row(self, questions: list[dict], mode: str, fusion: str | None = None, desc: str = "") -> list[dict]:
        from .answer import QuestionError

        top_k = self.settings.top_k
        results = []
        for q in self._bar(questions, desc or f"answer {mode}"):
            history = [tuple(t) for t in q.get("history") or []] or None
            r = _base(q)
            r["mode"] = mode
            answer = None
            cpu = time.process_time()
            try:
                for answer in self.chat.stream(q["question"], history, mode=mode, fusion=fusion):
                    pass
                r["cpu_seconds"] = time.process_time() - cpu  # all threads; less sensitive to a busy machine
            except QuestionError as e:
                r.update(error=str(e), answer="", refused=None, citations=[], retrieved=[], timings={})
                results.append(r)
                continue
            out = answer.to_json()
            r.update(query=answer.query, answer=answer.answer, refused=answer.refused, citations=out["citations"],
                     retrieved=out["retrieved"], timings={k: float(v) for k, v in answer.timings.items()})
            r["retrieved_ranked"] = [p.text for p in answer.passages]
            if q["evidence"]:
                query, kw = self.recorder.last  # the chat's own search call, repeated for the top 10
                ten = self.retriever.search(query, CURVE_K, **kw)
                r.update(retrieval_scores([p.text for p in answer.passages], q["evidence"], top_k,
                                          [p.text for p in ten.passages]))
                r["evidence_indexed"] = self.evidence_indexed(q["evidence"])
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
        for r in results:
            if r not in todo:
                zero = 0.0 if r["evidence"] and not r.get("error") else None
                r.setdefault("semantic_sim", zero)
                r.setdefault("token_f1", zero)

    def retrieval_row(self, questions: list[dict], fusion: str) -> list[dict]:
        """Retrieval alone with one fusion: the search call the chat would make (follow-up handling included),
        top 10."""
        top_k = self.settings.top_k
        results = []
        for q in self._bar(questions, f"retrieve {fusion}"):
            history = [tuple(t) for t in q.get("history") or []] or None
            query, kw = self.chat_search_call(q["question"], history)
            ret = self.retriever.search(query, CURVE_K, **{**kw, "fusion": fusion})
            # the "covered" decision as the chat makes it: on its own top_k, not on the top 10
            decision = self.retriever.search(query, top_k, **{**kw, "fusion": fusion})
            r = _base(q)
            r.update(query=ret.query, refused=not decision.covered, timings={"retrieve": decision.seconds},
                     context_chars=sum(len(p.text) for p in ret.passages[:top_k]))
            if q["evidence"]:
                texts = [p.text for p in ret.passages]
                r.update(retrieval_scores(texts, q["evidence"], top_k, texts))
            results.append(r)
        return results

    def baseline_row(self, questions: list[dict], chunk_size: int = 1000, overlap: int = 100,
                     top_k: int = 5) -> tuple[list[dict], dict]:
        """The tutorial pipeline: 1000-character RecursiveCharacterTextSplitter chunks of the post Markdown,
        MiniLM vectors in a flat inner-product FAISS index, top 5 chunks for the raw question."""
        import faiss
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        from .feed import read_feed

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


class _Captured(Exception):
    pass


class _RecordingRetriever:
    """Stands in for the chat's retriever and records how the chat calls `search`, so the eval can repeat
    that exact call with k=10 or another fusion, whatever the chat does to a follow-up question."""

    def __init__(self, inner):
        self.inner = inner
        self.last: tuple[str, dict] | None = None
        self.capture = False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def search(self, query, k=None, **kw):
        self.last = (query, dict(kw))
        if self.capture:
            raise _Captured
        return self.inner.search(query, k, **kw)


def _base(q: dict) -> dict:
    return {"id": q["id"], "kind": q["kind"], "question": q["question"], "history": q.get("history"),
            "reference": q["answer"], "post_title": q.get("post_title"), "post_titles": q.get("post_titles"),
            "evidence": q["evidence"]}


# ------------------------------------------------------------------ writing


def run_info(settings: Settings, questions_path: str, n: int, mode: str | None) -> dict:
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=PROJECT_DIR, capture_output=True, text=True,
                                  timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain", "--", "rag", "eval/questions.jsonl",
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
                   ("semantic_sim", "sem. sim"), ("token_f1", "token F1"), ("groundedness", "grounded"),
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
    lat = overall.get("latency", {})
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
        f"refusal threshold {s['refusal_threshold']}, chunks {s['max_chunk_tokens']} tokens "
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


# ------------------------------------------------------------------ compare


COMPARE_COLUMNS = [("questions", "n"), ("hit@1", "hit@1"), ("hit@3", "hit@3"), ("hit@5", "hit@5"), ("mrr", "MRR"),
                   ("ndcg@10", "nDCG@10"), ("evidence_recall@5", "evid. R@5"), ("context_chars", "ctx chars@5"),
                   ("semantic_sim", "sem. sim"), ("token_f1", "F1"), ("groundedness", "grounded"),
                   ("citation_precision", "cit. P"), ("citation_recall", "cit. R"),
                   ("refusal_accuracy", "refusal acc"), ("false_refusal_rate", "false refusal"),
                   ("retrieve_p50", "retrieve p50 s"), ("total_p50", "total p50 s"), ("total_p95", "total p95 s"),
                   ("seconds", "row time s")]


def compare_row(name: str, kind: str, results: list[dict], seconds: float, note: str = "") -> dict:
    m = aggregate(results)
    ctx = [r["context_chars"] for r in results if r.get("context_chars") is not None]
    lat = m.get("latency", {})
    row = {"name": name, "row_kind": kind, "note": note, "seconds": seconds,
           "context_chars": float(np.mean(ctx)) if ctx else None,
           "retrieve_p50": lat.get("retrieve", {}).get("p50"),
           "total_p50": lat.get("total", {}).get("p50"), "total_p95": lat.get("total", {}).get("p95"), **m}
    if kind == "baseline":  # no refusal decision in the tutorial pipeline
        row.pop("refusal_accuracy", None)
        row.pop("false_refusal_rate", None)
    return row


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
            f"(Retrieval.covered: confidence >= refusal threshold {info['settings']['refusal_threshold']}). "
            f"`ctx chars@5` is the mean text length of the top 5 retrieved items (sections vs 1000-char chunks: "
            f"larger units hit more easily). Latencies exclude model loading.\n\n{notes}\n\n![compare](compare.png)\n")
    (out / "compare.md").write_text(text, encoding="utf-8")
    plot_compare(out, rows)


def plot_compare(out: Path, rows: list[dict]) -> None:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [1.2, 1]})
    ret_cols = [("hit@1", "hit@1"), ("hit@3", "hit@3"), ("hit@5", "hit@5"), ("mrr", "MRR"), ("ndcg@10", "nDCG@10")]
    ans_cols = [("semantic_sim", "sem. sim"), ("token_f1", "token F1"), ("groundedness", "grounded"),
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


# ------------------------------------------------------------------ entry point


SUMMARY = [("hit@1", "hit@1"), ("hit@5", "hit@5"), ("mrr", "MRR"), ("ndcg@10", "nDCG@10"),
           ("semantic_sim", "sim"), ("token_f1", "F1"), ("groundedness", "grounded"), ("citation_precision", "citP"),
           ("citation_recall", "citR"), ("refusal_accuracy", "refusal"), ("false_refusal_rate", "falseRef")]


def _summary(rows: list[tuple[str, dict]]) -> str:
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


def run_eval(args, settings: Settings) -> int:
    from .answer import MODES
    from .retrieve import FUSIONS

    started = time.perf_counter()
    questions = load_questions(args.questions, getattr(args, "limit", None))
    mode = getattr(args, "mode", None) or settings.answer_mode
    if mode not in MODES:
        raise ValueError(f"unknown answer mode {mode!r}; choose one of {', '.join(MODES)}")
    out = Path(getattr(args, "out", None) or "eval/runs/latest")
    out.mkdir(parents=True, exist_ok=True)
    info = run_info(settings, args.questions, len(questions), mode)
    ev = Evaluator(settings)

    if not getattr(args, "compare", False):
        info["load_seconds"] = ev.warm_up(mode)
        results = ev.answer_row(questions, mode)
        info["seconds"] = time.perf_counter() - started
        info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        metrics = write_run(out, info, results)
        print(_summary([(f"{mode} overall", metrics["overall"]),
                        *((k, m) for k, m in metrics["by_kind"].items())]))
        print(f"\n{len(questions)} questions in {info['seconds']:.0f} s; report: {out / 'report.md'}")
        return 0

    gen_limit = getattr(args, "gen_limit", None) or int(os.environ.get("RAG_EVAL_GEN_LIMIT", GEN_LIMIT_DEFAULT))
    rows: list[dict] = []
    info["load_seconds"] = ev.warm_up("extractive")
    for fusion in FUSIONS:
        t = time.perf_counter()
        res = ev.retrieval_row(questions, fusion)
        rows.append(compare_row(f"retrieval {fusion}", "retrieval", res, time.perf_counter() - t,
                                "sections, " + {"convex": "hybrid: convex combination of min-max normalised dense "
                                                          "cosine and BM25", "rrf": "hybrid: reciprocal rank fusion",
                                                "dense": "FAISS cosine only", "bm25": "SQLite FTS5 BM25 only"}[fusion]
                                + (" (the default)" if fusion == settings.fusion else "")))
    t = time.perf_counter()
    res, binfo = ev.baseline_row(questions)
    rows.append(compare_row("tutorial baseline", "baseline", res, time.perf_counter() - t,
                            f"{binfo['chunks']} RecursiveCharacterTextSplitter chunks of {binfo['chunk_size']} chars "
                            f"(overlap {binfo['chunk_overlap']}) of the post Markdown, MiniLM, FAISS IndexFlatIP, "
                            f"top 5 chunks for the raw question (no follow-up rewriting); a hit is a chunk holding "
                            f"an evidence string; index built in {binfo['build_seconds']:.1f} s"))
    primary_results = None
    for m in MODES:
        subset = questions if m == "extractive" else stratified(questions, gen_limit)
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
        if m == mode:
            primary_results = res
    info["seconds"] = time.perf_counter() - started
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    write_compare(out, info, rows)
    print(_summary([(r["name"], r) for r in rows]))
    print(f"\n{len(questions)} questions, compare in {info['seconds']:.0f} s; "
          f"table: {out / 'compare.md'}; {mode} report: {out / 'report.md'} "
          f"({len(primary_results or [])} questions); other modes under {out}/mode-*/")
    return 0
