"""Can the local 0.5B model judge relevance or answerability? Three ways measured on dev questions, each against
what retrieval alone does (the numbers behind the choices in docs/generator.md):

  yes/no     P(yes) for "does this section answer the question?" on the top section: AUC for covered vs not
  likelihood the question's log-likelihood after reading each of the top 5 sections (UPR, Sachan et al. 2022):
             hit@1 when the sections are reordered by it, and the gain over no section as a covered signal (AUC)
  sketch     for a question retrieval is unsure of (not covered, P >= 0.03, no unknown rare word): the model
             writes a one-sentence answer, the question plus that sketch is searched again (HyDE) and decided
             again: covered questions rescued vs uncovered ones newly answered

    HF_HUB_OFFLINE=1 .venv/bin/python bench/model_signals.py --limit 120      # stratified dev sample
    HF_HUB_OFFLINE=1 .venv/bin/python bench/model_signals.py                  # every dev question (~1 h busy)

Writes bench/out/model_signals.json. Dev only: nothing here looks at the test split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rag.answer import Chat  # noqa: E402
from rag.eval.evaluate import load_questions, stratified  # noqa: E402
from rag.eval.metrics import relevance  # noqa: E402
from rag.settings import load_settings  # noqa: E402

JUDGE = ("You judge whether a passage answers a question. Reply with Yes if the passage contains the answer, "
         "otherwise No.")
WRITER = "You write interview questions about machine learning."


def words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


def auc(labels: list[bool], scores: list[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


class ModelSignals:
    def __init__(self, chat: Chat):
        self.gen = chat.generator
        self.tok = self.gen.tokenizer
        yes = {self.tok(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", " Yes", "yes", " yes")}
        no = {self.tok(w, add_special_tokens=False)["input_ids"][0] for w in ("No", " No", "no", " no")}
        self.yes, self.no = sorted(yes), sorted(no)

    @torch.inference_mode()
    def yes_probability(self, passage: str, question: str) -> float:
        msgs = [{"role": "system", "content": JUDGE},
                {"role": "user", "content": f"Passage:\n{passage}\n\nQuestion: {question}\n\n"
                                            f"Does the passage answer the question? Answer Yes or No."}]
        logits = self.gen.model(self.gen.prompt_ids(msgs), logits_to_keep=1).logits[0, -1].float()
        p = torch.softmax(logits, -1)
        y, n = float(p[self.yes].sum()), float(p[self.no].sum())
        return y / (y + n) if y + n else 0.5

    @torch.inference_mode()
    def question_likelihoods(self, passages: list[str | None], question: str) -> list[float]:
        """Mean log-probability of the question's tokens after each passage (None: no passage), one batch."""
        def head(p):
            user = (f"Passage:\n{p}\n\nWrite a question that this passage answers." if p
                    else "Write a question about machine learning.")
            return self.tok.apply_chat_template([{"role": "system", "content": WRITER}, {"role": "user", "content": user}],
                                                add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        q = self.tok(question, add_special_tokens=False)["input_ids"]
        seqs = [head(p) + q for p in passages]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), self.gen.pad_id)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # left padding: the question ends every row
            ids[i, width - len(s):], mask[i, width - len(s):] = torch.tensor(s), 1
        logits = self.gen.model(input_ids=ids, attention_mask=mask).logits[:, -len(q) - 1:-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor([q] * len(seqs))[..., None])[..., 0]
        return lp.mean(-1).tolist()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", default="eval/dev.jsonl")
    ap.add_argument("--limit", type=int, default=0, help="a stratified sample of N questions (default: all)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "model_signals.json"))
    a = ap.parse_args()
    chat = Chat(load_settings())
    signals = ModelSignals(chat)
    torch.set_num_threads(1)
    questions = stratified(load_questions(a.questions), a.limit or None)
    rows, start = [], time.perf_counter()
    for q in questions:
        plan = chat.plan(q["question"], q.get("history"))
        r = chat.search(plan)  # the first look
        texts = [f"{p.section.split(' > ')[-1]}\n{words(p.context, 110)}" for p in r.passages[:5]]
        rel = relevance([p.text for p in r.passages[:5]], q["evidence"])[0] if q["evidence"] else [False] * len(texts)
        row = {"id": q["id"], "covered": bool(q["evidence"]), "decided": r.covered, "confidence": r.confidence,
               "relevant": rel, "yes": signals.yes_probability(texts[0], q["question"]) if texts else 0.5}
        *row["likelihood"], row["likelihood_alone"] = signals.question_likelihoods(texts + [None], q["question"])
        if not r.covered and chat.unsure(r):  # the chat's own second look (rag.answer.Chat.second_look)
            again = chat.second_look(plan, r)
            row["sketch_covered"], row["sketch"] = again.covered, again.sketch
        rows.append(row)
    labels = [r["covered"] for r in rows]
    covered = [r for r in rows if r["covered"] and r["likelihood"]]
    band = [r for r in rows if "sketch_covered" in r]
    report = {
        "questions": len(rows), "file": a.questions, "seconds": round(time.perf_counter() - start),
        "date": time.strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg()[0],
        "yes_no_auc": auc(labels, [r["yes"] for r in rows]),
        "retrieval_confidence_auc": auc(labels, [r["confidence"] for r in rows]),
        "likelihood_gain_auc": auc(labels, [r["likelihood"][0] - r["likelihood_alone"] if r["likelihood"] else -9
                                            for r in rows]),
        "hit@1_fused": float(np.mean([r["relevant"][0] for r in covered])),
        "hit@1_by_likelihood": float(np.mean([r["relevant"][int(np.argmax(r["likelihood"]))] for r in covered])),
        "sketch_band": len(band),
        "sketch_rescued_covered": sum(r["covered"] and r["sketch_covered"] for r in band),
        "sketch_answered_uncovered": sum(not r["covered"] and r["sketch_covered"] for r in band),
        "covered_refused_before": sum(r["covered"] and not r["decided"] for r in rows),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"summary": report, "rows": rows}, indent=1))
    for k, v in report.items():
        print(f"{k:28s} {v:.3f}" if isinstance(v, float) else f"{k:28s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
