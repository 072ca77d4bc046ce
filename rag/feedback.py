"""Feedback on answers: one current vote per answer (with an optional comment) in a JSONL file, and the
step that turns it into candidate eval questions for a person to review.

The file (settings.feedback_file, default <index>/feedback.jsonl) holds one JSON object a line, one line per
answer (`turn_id`): a changed vote or a comment replaces that answer's line, an undone vote removes it.
Writes go through a file lock and an atomic rename, so the app and `rag feedback` never see half a file.

    rag feedback --out eval/candidates.jsonl     # candidate questions, each marked for review
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

from filelock import FileLock

from .errors import RagError
from .text import sentences, stems

log = logging.getLogger(__name__)

VOTES = ("up", "down")
MAX_COMMENT_CHARS = 2000
KEEP = ("turn_id", "question", "answer", "refused", "mode", "generator", "post", "post_title", "history")


class FeedbackError(RagError):
    """A vote or comment that cannot be stored as given, or an unreadable feedback file."""


class FeedbackStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = FileLock(str(self.path) + ".lock")

    def records(self) -> list[dict]:
        """Every current vote, oldest first; a damaged line is skipped with a warning, never fatal."""
        if not self.path.exists():
            return []
        out = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s: line %d is not JSON; skipped", self.path, n)
                continue
            if isinstance(record, dict) and record.get("turn_id"):
                out.append(record)
        return out

    def vote(self, turn: dict, vote: str | None, history: list | None = None) -> dict | None:
        """Record `vote` ("up" / "down") on an answer (a turn record of rag.render), replacing an earlier vote
        on it and keeping its comment; None removes the vote. Returns the stored line."""
        if vote is not None and vote not in VOTES:
            raise FeedbackError(f"a vote is one of {', '.join(VOTES)}, not {vote!r}")
        if not turn.get("turn_id"):
            raise FeedbackError("this answer has no id to attach a vote to")

        def change(old: dict | None) -> dict | None:
            if vote is None:
                return None
            record = {"timestamp": _now(), "vote": vote, **{k: turn.get(k) for k in KEEP if k in turn}}
            record["history"] = [list(p) for p in (history or [])][-3:]
            record["sources"] = [{k: c.get(k) for k in ("n", "post_title", "url", "section", "supporting", "text")}
                                 for c in turn.get("citations", [])]
            if old and old.get("comment"):
                record["comment"] = old["comment"]
            return record

        return self._update(turn["turn_id"], change)

    def comment(self, turn_id: str, text: str) -> dict:
        """Attach a comment to an answer's current vote (replacing an earlier comment)."""
        text = " ".join((text or "").split())
        if not text:
            raise FeedbackError("the comment is empty")
        if len(text) > MAX_COMMENT_CHARS:
            raise FeedbackError(f"the comment is {len(text):,} characters long; please keep it under "
                                f"{MAX_COMMENT_CHARS:,}")

        def change(old: dict | None) -> dict:
            if old is None:
                raise FeedbackError("vote on the answer first, then add a comment")
            return {**old, "comment": text, "timestamp": _now()}

        return self._update(turn_id, change)

    def _update(self, turn_id: str, change) -> dict | None:
        with self._lock:
            records = self.records()
            old = next((r for r in records if r["turn_id"] == turn_id), None)
            new = change(old)
            kept = [r for r in records if r["turn_id"] != turn_id] + ([new] if new else [])
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
            os.replace(tmp, self.path)  # a crash mid-write never leaves half a file
        return new


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ------------------------------------------------------------------ feedback -> candidate eval questions


def _normal(question: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", question.lower()))


def evidence_for(record: dict) -> list[str]:
    """Verbatim substrings of the cited sections that back the answer: for each sentence the answer rests
    on, the section sentence that holds it or shares most of its words (at most four)."""
    out: list[str] = []
    for source in record.get("sources", []):
        text = source.get("text") or ""
        options = sentences(text)
        for s in source.get("supporting", []):
            own = stems(s)
            best = max(options, key=lambda c: len(own & stems(c)) / (len(own) or 1), default="")
            found = _verbatim(text, best) if best and own & stems(best) else None
            if found and found not in out:
                out.append(found)
    return out[:4]


def _verbatim(text: str, sentence: str) -> str | None:
    """The stretch of `text` that is `sentence`, whatever the whitespace between its words."""
    words = sentence.split()
    m = re.search(r"\s+".join(map(re.escape, words)), text) if words else None
    return m.group(0) if m else None


def candidates(records: list[dict], known_questions: set[str] = frozenset()) -> list[dict]:
    """Candidate eval questions (the JSONL question format of design.md, plus a `review` object): a liked
    answer proposes itself as the reference with the cited sentences as evidence; a disliked one asks the
    reviewer to write the reference (or to confirm the posts don't cover it). Votes on the same question
    (and history) are one candidate: the latest vote decides, every comment is kept. Questions already in
    the eval sets (`known_questions`, compared without case and punctuation) are left out."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in sorted(records, key=lambda r: r.get("timestamp", "")):
        key = (_normal(r.get("question", "")), _normal(" ".join(q for q, _ in r.get("history", []))))
        if key[0] and key[0] not in known_questions:
            groups.setdefault(key, []).append(r)
    out = []
    for n, votes in enumerate(groups.values(), 1):
        r = votes[-1]
        liked, refused = r.get("vote") == "up", bool(r.get("refused"))
        titles = list(dict.fromkeys(s.get("post_title") for s in r.get("sources", []) if s.get("post_title")))
        item = {
            "id": f"fb-{n:03d}",
            "question": r["question"],
            "answer": r.get("answer", "") if liked and not refused else "",
            "post_title": titles[0] if liked and titles else None,
            "evidence": evidence_for(r) if liked and not refused else [],
            "kind": "followup" if r.get("history") else "unanswerable" if liked and refused else "from_feedback",
            "review": {
                "status": "todo",
                "vote": r.get("vote"),
                "votes": {v: sum(x.get("vote") == v for x in votes) for v in VOTES},
                "comments": [x["comment"] for x in votes if x.get("comment")],
                "bot_answer": r.get("answer", ""),
                "bot_refused": refused,
                "bot_sources": [f"{s.get('post_title')} — {s.get('section')}" for s in r.get("sources", [])],
                "mode": r.get("mode"),
                "voted_at": r.get("timestamp"),
                "todo": ("check the answer and evidence, then set kind" if liked and not refused else
                         "confirm the posts do not cover this question" if liked else
                         "write the reference answer and its evidence (verbatim sentences of the post), or "
                         "leave evidence empty if the posts do not cover it; then set kind"),
            },
        }
        if r.get("history"):
            item["history"] = r["history"]
        out.append(item)
    return out


def known_questions(paths: list[str | Path]) -> set[str]:
    out = set()
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise FeedbackError(f"{path}: cannot read ({e.strerror})") from e
        for line in lines:
            try:
                out.add(_normal(json.loads(line).get("question", "")))
            except (json.JSONDecodeError, AttributeError):
                continue
    return out
