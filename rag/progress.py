"""The practice progress store: every SQL statement of practice mode lives here.

One SQLite file (default `<index_dir>/practice.sqlite`), three tables:

    attempts    one row per graded answer: question id, post, time, score, passed, the answer
    cards       the Leitner state of each question: box, when it is due, counts and scores
    key_points  the key points chosen for a question in one index generation and their embeddings (a
                cache: they are recomputed deterministically when missing, so a schema change drops it)

Question ids are stable across index rebuilds, so attempts and cards survive a rebuild; key points are
keyed by the generation too, because a rebuilt section may have other sentences. Each call opens its own
short-lived connection, so the CLI, the app's threads and a second process can share one file.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import RagError

SCHEMA_VERSION = 2  # 2: key points carry their vectors

SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY, question_id TEXT NOT NULL, post_guid TEXT NOT NULL, at REAL NOT NULL,
    score INTEGER NOT NULL, passed INTEGER NOT NULL, answer TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS attempts_by_question ON attempts(question_id, at);
CREATE TABLE IF NOT EXISTS cards (
    question_id TEXT PRIMARY KEY, post_guid TEXT NOT NULL, box INTEGER NOT NULL, due_at REAL NOT NULL,
    attempts INTEGER NOT NULL, passes INTEGER NOT NULL, last_score INTEGER NOT NULL,
    best_score INTEGER NOT NULL, last_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS key_points (
    generation TEXT NOT NULL, question_id TEXT NOT NULL, version INTEGER NOT NULL, points TEXT NOT NULL,
    dim INTEGER NOT NULL, vectors BLOB NOT NULL, PRIMARY KEY (generation, question_id, version));
"""


class ProgressUnavailable(RagError):
    """The progress file cannot be opened or written; the message names it."""


@dataclass(frozen=True)
class Attempt:
    question_id: str
    post_guid: str
    at: float  # unix seconds
    score: int  # 0-100
    passed: bool
    answer: str


@dataclass(frozen=True)
class Card:
    """Where a question stands in the Leitner system."""
    question_id: str
    post_guid: str
    box: int  # 1 (keeps failing) .. practice.BOXES (mastered)
    due_at: float  # unix seconds: ask it again from then on
    attempts: int
    passes: int
    last_score: int
    best_score: int
    last_at: float


class ProgressStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        with self._connect() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ProgressUnavailable(f"practice progress {self.path} was written by a newer version "
                                          f"(schema {version}, this one reads {SCHEMA_VERSION})")
            if version < SCHEMA_VERSION:
                db.execute("DROP TABLE IF EXISTS key_points")  # a cache; attempts and cards are kept
            db.executescript(SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _connect(self):
        """One connection per call and one transaction per `with` (commit on success, rollback on error)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.path, timeout=10)) as db:
                with db:
                    yield db
        except sqlite3.Error as e:
            raise ProgressUnavailable(f"practice progress {self.path}: {e} (delete the file to start over)") from e

    # -------------------------------------------------------------- attempts and cards

    def record(self, attempt: Attempt, box: int, due_at: float) -> Card:
        """Store one graded attempt and the question's new Leitner state in a single transaction."""
        with self._connect() as db:
            db.execute("INSERT INTO attempts (question_id, post_guid, at, score, passed, answer) "
                       "VALUES (?,?,?,?,?,?)", (attempt.question_id, attempt.post_guid, attempt.at,
                                                attempt.score, int(attempt.passed), attempt.answer))
            db.execute(
                "INSERT INTO cards VALUES (?,?,?,?,1,?,?,?,?) ON CONFLICT(question_id) DO UPDATE SET "
                "post_guid = excluded.post_guid, box = excluded.box, due_at = excluded.due_at, "
                "attempts = cards.attempts + 1, passes = cards.passes + excluded.passes, "
                "last_score = excluded.last_score, best_score = max(cards.best_score, excluded.best_score), "
                "last_at = excluded.last_at",
                (attempt.question_id, attempt.post_guid, box, due_at, int(attempt.passed), attempt.score,
                 attempt.score, attempt.at))
            row = db.execute("SELECT * FROM cards WHERE question_id = ?", (attempt.question_id,)).fetchone()
        return Card(*row)

    def card(self, question_id: str) -> Card | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM cards WHERE question_id = ?", (question_id,)).fetchone()
        return Card(*row) if row else None

    def cards(self) -> dict[str, Card]:
        with self._connect() as db:
            return {r[0]: Card(*r) for r in db.execute("SELECT * FROM cards")}

    def attempts(self, question_id: str | None = None) -> list[Attempt]:
        sql = "SELECT question_id, post_guid, at, score, passed, answer FROM attempts"
        args: tuple = ()
        if question_id is not None:
            sql, args = sql + " WHERE question_id = ?", (question_id,)
        with self._connect() as db:
            rows = db.execute(sql + " ORDER BY at, id", args).fetchall()
        return [Attempt(q, p, at, s, bool(ok), a) for q, p, at, s, ok, a in rows]

    def count_attempts(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT count(*) FROM attempts").fetchone()[0]

    # -------------------------------------------------------------- key point cache

    def key_points(self, generation: str, question_ids: list[str], version: int
                   ) -> dict[str, tuple[list[dict], np.ndarray]]:
        """The cached key points and their vectors of those questions that have them."""
        out = {}
        with self._connect() as db:
            for start in range(0, len(question_ids), 500):  # SQLite's limit on bound parameters
                ids = question_ids[start:start + 500]
                rows = db.execute(f"SELECT question_id, points, dim, vectors FROM key_points WHERE generation = ? "
                                  f"AND version = ? AND question_id IN ({','.join('?' * len(ids))})",
                                  (generation, version, *ids)).fetchall()
                for qid, points, dim, blob in rows:
                    out[qid] = (json.loads(points), np.frombuffer(blob, dtype=np.float32).reshape(-1, dim))
        return out

    def save_key_points(self, generation: str, version: int,
                        entries: dict[str, tuple[list[dict], np.ndarray]]) -> None:
        """Store the key points and vectors of several questions in one transaction."""
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO key_points VALUES (?,?,?,?,?,?)", [
                (generation, qid, version, json.dumps(points, ensure_ascii=False), int(vectors.shape[1]),
                 np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
                for qid, (points, vectors) in entries.items()])
            # entries of generations other than this one are stale once a new one is served
            db.execute("DELETE FROM key_points WHERE generation != ?", (generation,))
