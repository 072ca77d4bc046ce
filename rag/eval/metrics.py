"""The eval's scores: evidence hits and nDCG, token F1, the sentence-level support test, citation precision
and recall, and their aggregation overall and per question kind. Pure functions over result dicts."""

from __future__ import annotations

import logging
import math
import re
import string
from collections import Counter

import numpy as np

from ..grounding import NEGATIONS, SUPPORT_THRESHOLD, names_and_numbers_in, overlap
from ..text import CITATION, NLTK_STOPWORDS, cited_sentences, words

log = logging.getLogger(__name__)

KINDS = ("factual", "conceptual", "paraphrase", "multi_hop", "followup", "unanswerable")
CURVE_K = 10  # hit@k curve and nDCG cutoff
STAGES = ("retrieve", "first_token", "total")
STRICT_THRESHOLD = 0.7
SUPPORT_TEST = (
    f"An answer sentence (split with rag.text.cited_sentences, citation markers removed) is *supported* when "
    f"at least one passage it cites with a valid marker [n] (n is one of the answer's citations) contains "
    f"at least {STRICT_THRESHOLD:.0%} of the sentence's content-word stems (Snowball, stop words removed), every "
    f"number and every named term of the sentence (an acronym or a word with an inner capital: OOB, GELU, "
    f"LayerNorm, XGBoost) and every negation word ({', '.join(sorted(NEGATIONS))}, n't) the sentence uses. "
    f"This is stricter than the check the chat itself uses to keep a sentence ({SUPPORT_THRESHOLD:.0%} of stems, "
    f"numbers and named terms; rag.grounding.supported), so groundedness is not 1.0 by construction. A marker "
    f"right after a sentence belongs to it; a single block of markers ending an otherwise unmarked answer "
    f"cites every sentence. A sentence without a valid citation is unsupported. Groundedness = supported "
    f"sentences / answer sentences, averaged over answers that are not refusals.")


def _negations(text: str) -> set[str]:
    found = set(words(text)) & NEGATIONS
    return found | ({"n't"} if "n't" in text.lower() or "n’t" in text.lower() else set())


def strictly_supported(sentence: str, passage: str) -> bool:
    """The eval's support test (SUPPORT_TEST)."""
    return (overlap(sentence, passage) >= STRICT_THRESHOLD and names_and_numbers_in(sentence, passage)
            and _negations(sentence) <= _negations(passage))


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


# The metric's own stop words, fixed: the product's list (text.STOPWORDS) may grow, and the measure must not
# move with it (the question words are text.QUERY_WORDS as they stood until 2026-12-06).
EVIDENCE_STOPWORDS = frozenset(NLTK_STOPWORDS) | {"explain", "tell", "describe", "difference", "vs", "versus"}


def holds_evidence(answer: str, evidence: list[str]) -> float:
    """1.0 when the answer holds at least half of the content words of some evidence string, else 0.0."""
    own = set(squad_tokens(answer))
    best = 0.0
    for e in evidence:
        words = set(squad_tokens(e)) - EVIDENCE_STOPWORDS
        if words:
            best = max(best, len(words & own) / len(words))
    return float(best >= 0.5)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1: lower-case, punctuation and articles removed, bag-of-tokens overlap."""
    pred, ref = squad_tokens(prediction), squad_tokens(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def groundedness(text: str, refused: bool, cited: dict[int, str]) -> tuple[float | None, list[dict]]:
    """Share of answer sentences supported by at least one passage they cite (see SUPPORT_TEST); `cited`
    maps each citation number of the answer to the cited section's text."""
    if refused:
        return None, []
    checks = []
    for sentence, marks in cited_sentences(text):
        valid = [n for n in dict.fromkeys(marks) if n in cited]
        ok = any(strictly_supported(sentence, cited[n]) for n in valid)
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
        m["answer_evidence"] = mean(r.get("answer_evidence") for r in answerable)
        m["groundedness"] = mean(r["groundedness"] for r in ok)
        m["citation_precision"] = mean(r["citation_precision"] for r in answerable)
        m["citation_recall"] = mean(r["citation_recall"] for r in answerable)
        m["model_written"] = mean(r.get("model_written") for r in ok if not r["refused"])
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
