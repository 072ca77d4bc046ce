"""The index on disk: generations of (SQLite posts + chunks + FTS5 keyword index, FAISS vectors, manifest).

Layout of index_dir:
    CURRENT             name of the generation being served (replaced atomically)
    gen-<stamp>/        chunks.sqlite, vectors.faiss, manifest.json
    .tmp-gen-<stamp>/   a generation being written; a killed run leaves one, the next run deletes it
    .lock               held by `rag index` while it writes

SQLite is the source of truth (it keeps each chunk's vector too), so a new generation copies unchanged
posts from the old one and FAISS is always derived from it. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from .errors import RagError
from .chunking import CHUNKER_VERSION, Chunk
from .feed import Post
from .settings import Settings
from .text import STOPWORDS, joined_compounds
from .vectors import build_vector_index

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # 2: chunks.context, the title and headings each chunk was embedded with; 3: keyword_text
DB_FILE, VECTORS_FILE, MANIFEST_FILE = "chunks.sqlite", "vectors.faiss", "manifest.json"
CURRENT_FILE, PREVIOUS_FILE = "CURRENT", "PREVIOUS"

_CHUNK_COLUMNS = "SELECT c.id, c.post_guid, p.title, c.section, c.section_no, c.url, c.text, c.position, c.context"

SCHEMA = """
CREATE TABLE posts (
    guid TEXT PRIMARY KEY, title TEXT NOT NULL, url TEXT NOT NULL, date TEXT NOT NULL,
    author TEXT NOT NULL, markdown TEXT NOT NULL, content_hash TEXT NOT NULL);
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY, post_guid TEXT NOT NULL REFERENCES posts(guid), section TEXT NOT NULL,
    section_no INTEGER NOT NULL, url TEXT NOT NULL, text TEXT NOT NULL, position INTEGER NOT NULL,
    context TEXT NOT NULL, embedding BLOB NOT NULL);
CREATE INDEX chunks_by_section ON chunks(post_guid, section_no);
CREATE VIRTUAL TABLE chunks_fts USING fts5(body, tokenize='porter unicode61');
"""

class IndexUnavailable(RagError):
    """The index is missing, corrupt or built with other settings; the message says what to do."""


def manifest_for(settings: Settings, dimension: int, posts: int, chunks: int, generation: str, kind: str,
                 files: dict[str, str]) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "embedder": settings.embedder,
        "embed_backend": settings.embed_backend,
        "dimension": dimension,
        "chunking": chunking_settings(settings),
        "faiss_index": kind,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "generation": generation,
        "counts": {"posts": posts, "chunks": chunks},
        "files": files,  # SHA-256 of each data file, checked whenever the generation is opened
    }


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def damaged_files(path: Path, manifest: dict) -> list[str]:
    """Data files of a generation whose bytes differ from what the manifest recorded when it was written
    (random bytes in SQLite or FAISS would otherwise be served as NaN vectors or crash a query)."""
    expected = manifest.get("files")
    if not isinstance(expected, dict) or set(expected) != {DB_FILE, VECTORS_FILE}:
        return [MANIFEST_FILE]
    return [name for name, digest in expected.items()
            if not (path / name).is_file() or file_digest(path / name) != digest]


def chunking_settings(settings: Settings) -> dict:
    return {"max_tokens": settings.max_chunk_tokens, "overlap_tokens": settings.chunk_overlap_tokens,
            "min_tokens": settings.min_chunk_tokens, "chunker_version": CHUNKER_VERSION}


def mismatches(manifest: dict, settings: Settings) -> list[str]:
    """What differs between how an index was built and how it is configured now."""
    wanted = {"schema_version": SCHEMA_VERSION, "embedder": settings.embedder,
              "embed_backend": settings.embed_backend, "chunking": chunking_settings(settings)}
    built = {**manifest, "embed_backend": manifest.get("embed_backend", "torch")}  # older indexes: torch
    return [f"{k}: index has {built.get(k)!r}, settings want {v!r}" for k, v in wanted.items() if built.get(k) != v]


_ABBREVIATION = re.compile(r"\b(?:e\.g|i\.e|a\.k\.a|cf|etc)\.")


def keyword_text(text: str) -> str:
    """What the keyword index holds of a chunk, and searches of a question: one-letter compounds joined up and
    Greek letters by name, as rag.text counts words. Split by FTS, "k-means" put a "k" into every clustering
    chunk, so the "k" of "how do I pick k?" matched them all instead of the few that speak of choosing k."""
    return joined_compounds(text)


def keyword_query(text: str) -> str:
    """A safe FTS5 OR-query from free text: quoted words, so user input is never FTS syntax. A single letter
    that is no stop word stays ("k", "p"; not the "s" of "what's"): with compounds joined it names a quantity."""
    text = _ABBREVIATION.sub(" ", keyword_text(text.lower()))  # "e.g." is no "e" and "g"
    words = dict.fromkeys(w for w in re.findall(r"\w+", text) if w not in STOPWORDS and (len(w) > 1 or w.isalpha()))
    return " OR ".join(f'"{w}"' for w in list(words)[:64])


def current_generation(index_dir: Path, pointer: str = CURRENT_FILE) -> str | None:
    """The generation CURRENT names, or None when there is none yet; a damaged CURRENT is an error."""
    try:
        name = (index_dir / pointer).read_bytes().decode("utf-8").strip()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise IndexUnavailable(f"{index_dir / pointer} is corrupt; run `rag index --rebuild`") from None
    if name and not re.fullmatch(r"gen-[\w-]+", name):
        raise IndexUnavailable(f"{index_dir / pointer} is corrupt; run `rag index --rebuild`")
    return name or None


def _pointer(index_dir: Path, pointer: str) -> str | None:
    """Like current_generation, but None for a damaged or dangling pointer: for recovery code."""
    try:
        name = current_generation(index_dir, pointer)
    except IndexUnavailable:
        return None
    return name if name and (index_dir / name / MANIFEST_FILE).is_file() else None


def latest_generation(index_dir: Path) -> str | None:
    """The generation to carry posts over from: the one CURRENT names, else (CURRENT lost or damaged) the
    newest complete one on disk, so that losing a pointer file never loses posts."""
    complete = sorted(p.name for p in index_dir.glob("gen-*") if (p / MANIFEST_FILE).is_file())
    return _pointer(index_dir, CURRENT_FILE) or (complete[-1] if complete else None)


def read_posts(index_dir: Path) -> list[Post]:
    """The posts of the latest complete generation, read straight from SQLite so that even an index built
    with other settings (which Index.open refuses) hands its posts on to a rebuild: nothing is lost because
    a feed is shorter. A damaged database is an IndexUnavailable."""
    name = latest_generation(index_dir)
    if name is None:
        return []
    try:
        db = sqlite3.connect(f"file:{index_dir / name / DB_FILE}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT guid, title, url, date, author, markdown FROM posts").fetchall()
        finally:
            db.close()
    except sqlite3.Error as e:
        raise IndexUnavailable(f"cannot read the posts of {index_dir / name} ({e}); "
                               f"run `rag index --rebuild`") from e
    return [Post(*r) for r in rows]


@dataclass(frozen=True)
class StoredPost:
    guid: str
    title: str
    url: str
    date: str
    author: str
    content_hash: str
    chunks: int


class Index:
    """A read-only view of one generation. Safe to share between threads."""

    def __init__(self, path: Path, manifest: dict, db: sqlite3.Connection, vectors: faiss.Index):
        self.path, self.manifest, self.db, self.vectors = path, manifest, db, vectors
        self._lock = threading.Lock()

    @classmethod
    def open(cls, settings: Settings) -> "Index":
        index_dir = settings.index_dir
        name = current_generation(index_dir)
        if name is None:
            raise IndexUnavailable(f"no index at {index_dir}: build it with `rag index` (or `make index`)")
        path = index_dir / name
        try:
            manifest = json.loads((path / MANIFEST_FILE).read_text())
        except (OSError, ValueError) as e:
            raise IndexUnavailable(f"index {path} is incomplete or corrupt ({e}); run `rag index --rebuild`") from e
        if not isinstance(manifest, dict):
            raise IndexUnavailable(f"index {path} has a corrupt manifest; run `rag index --rebuild`")
        problems = mismatches(manifest, settings)
        if problems:
            raise IndexUnavailable(f"index {path} was built with other settings ({'; '.join(problems)}); "
                              f"run `rag index --rebuild` to rebuild it with the current settings")
        damaged = damaged_files(path, manifest)
        if damaged:
            raise IndexUnavailable(f"index {path} is damaged ({', '.join(damaged)} changed since it was written); "
                                   f"run `rag index --rebuild`")
        try:
            db = sqlite3.connect(f"file:{path / DB_FILE}?mode=ro", uri=True, check_same_thread=False)
            (count,) = db.execute("SELECT count(*) FROM chunks").fetchone()
            vectors = faiss.read_index(str(path / VECTORS_FILE))
        except (sqlite3.Error, RuntimeError, OSError) as e:
            raise IndexUnavailable(f"index {path} is corrupt ({e}); run `rag index --rebuild`") from e
        if vectors.ntotal != count or vectors.d != manifest.get("dimension"):
            raise IndexUnavailable(f"index {path} is inconsistent ({vectors.ntotal} vectors of dimension {vectors.d}, "
                              f"{count} chunks); run `rag index --rebuild`")
        return cls(path, manifest, db, vectors)

    @property
    def generation(self) -> str:
        return self.path.name

    def _query(self, sql: str, args=()) -> list:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    def dense_search(self, query_vectors: np.ndarray, k: int) -> list[tuple[int, float]]:
        scores, ids = self.vectors.search(np.ascontiguousarray(query_vectors, dtype="float32"), k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def keyword_search(self, text: str, k: int, post_guid: str | None = None) -> list[tuple[int, float]]:
        query = keyword_query(text)
        if not query:
            return []
        # bm25() is lower-is-better; negate so every score here is higher-is-better.
        sql = ("SELECT f.rowid, -bm25(chunks_fts) AS s FROM chunks_fts f"
               + (" JOIN chunks c ON c.id = f.rowid WHERE c.post_guid = ? AND" if post_guid else " WHERE")
               + " chunks_fts MATCH ? ORDER BY s DESC LIMIT ?")
        args = (post_guid, query, k) if post_guid else (query, k)
        return [(int(i), float(s)) for i, s in self._query(sql, args)]

    def chunks(self, ids: list[int]) -> dict[int, Chunk]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._query(f"{_CHUNK_COLUMNS} FROM chunks c JOIN posts p ON p.guid = c.post_guid "
                           f"WHERE c.id IN ({marks})", list(ids))
        return {r[0]: Chunk(*r[1:]) for r in rows}

    def section_chunks(self, post_guid: str, section_no: int, limit: int = 40) -> list[tuple[int, Chunk]]:
        """The chunks of one section followed by those of its subsections, in reading order."""
        rows = self._query(f"{_CHUNK_COLUMNS} FROM chunks c JOIN posts p ON p.guid = c.post_guid "
                           "WHERE c.post_guid = ? AND c.section_no >= ? ORDER BY c.position LIMIT ?",
                           (post_guid, section_no, limit))
        out = [(r[0], Chunk(*r[1:])) for r in rows]
        head = next((c.section for _, c in out if c.section_no == section_no), None)
        members = []
        for i, c in out:
            if c.section_no != section_no and not c.section.startswith(f"{head} > "):
                break
            members.append((i, c))
        return members

    def post_chunk_ids(self, post_guid: str) -> list[int]:
        return [r[0] for r in self._query("SELECT id FROM chunks WHERE post_guid = ?", (post_guid,))]

    def post_chunks(self, post_guid: str) -> tuple[list[Chunk], np.ndarray]:
        """A post's chunks in reading order and their stored vectors, exactly as embedded: what a new
        generation copies for an unchanged post."""
        rows = self._query(f"{_CHUNK_COLUMNS}, c.embedding FROM chunks c JOIN posts p ON p.guid = c.post_guid "
                           "WHERE c.post_guid = ? ORDER BY c.position", (post_guid,))
        vectors = np.frombuffer(b"".join(r[-1] for r in rows), dtype="float32").reshape(len(rows), -1)
        return [Chunk(*r[1:-1]) for r in rows], vectors

    def all_chunks(self) -> list[Chunk]:
        """Every chunk in post and reading order (for the eval's text checks and practice mode)."""
        return [Chunk(*r[1:]) for r in self._query(
            f"{_CHUNK_COLUMNS} FROM chunks c JOIN posts p ON p.guid = c.post_guid ORDER BY c.post_guid, c.position")]

    def openings(self) -> dict[str, Chunk]:
        """Each post's first chunk (what a citation of the whole post shows), by post guid."""
        rows = self._query(f"{_CHUNK_COLUMNS} FROM chunks c JOIN posts p ON p.guid = c.post_guid "
                           "WHERE c.section_no = (SELECT min(section_no) FROM chunks WHERE post_guid = c.post_guid) "
                           "ORDER BY c.post_guid, c.position")
        out: dict[str, Chunk] = {}
        for r in rows:
            out.setdefault(r[1], Chunk(*r[1:]))
        return out

    def sections(self) -> list[tuple[str, str]]:
        """(post guid, heading path) of every section, in reading order."""
        return self._query("SELECT post_guid, section FROM chunks GROUP BY post_guid, section_no "
                           "ORDER BY min(id)")

    def posts(self) -> list[StoredPost]:
        rows = self._query("SELECT p.guid, p.title, p.url, p.date, p.author, p.content_hash, count(c.id) "
                           "FROM posts p LEFT JOIN chunks c ON c.post_guid = p.guid "
                           "GROUP BY p.guid ORDER BY p.date DESC")
        return [StoredPost(*r) for r in rows]

    def post_dates(self) -> dict[str, str]:
        return {p.guid: p.date for p in self.posts()}

    def close(self):
        self.db.close()


# ---------------------------------------------------------------- writing a generation


class GenerationWriter:
    """Writes a new generation into a temporary directory; `commit` makes it current atomically."""

    def __init__(self, settings: Settings, dimension: int):
        self.settings, self.dimension = settings, dimension
        self.name = f"gen-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{time.time_ns() % 10**9:09d}"
        self.tmp = settings.index_dir / f".tmp-{self.name}"
        self.tmp.mkdir(parents=True)
        self.db = sqlite3.connect(self.tmp / DB_FILE)
        self.db.executescript(SCHEMA)
        self.next_id = 0

    def add_post(self, post: Post | tuple) -> None:
        row = (post.guid, post.title, post.url, post.date, post.author, post.markdown, post.content_hash) \
            if isinstance(post, Post) else tuple(post)
        self.db.execute("INSERT INTO posts VALUES (?,?,?,?,?,?,?)", row)

    def add_chunks(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        for chunk, vector in zip(chunks, vectors, strict=True):
            self.db.execute("INSERT INTO chunks VALUES (?,?,?,?,?,?,?,?,?)",
                            (self.next_id, chunk.post_guid, chunk.section, chunk.section_no, chunk.url,
                             chunk.text, chunk.position, chunk.context, np.asarray(vector, dtype="float32").tobytes()))
            self.db.execute("INSERT INTO chunks_fts(rowid, body) VALUES (?, ?)",
                            (self.next_id, keyword_text(chunk.embed_text)))
            self.next_id += 1

    def commit(self) -> str:
        """Finish the files, then switch CURRENT to this generation in one atomic rename."""
        vectors = np.frombuffer(b"".join(
            r[0] for r in self.db.execute("SELECT embedding FROM chunks ORDER BY id")), dtype="float32")
        vectors = vectors.reshape(-1, self.dimension)
        index, kind = build_vector_index(vectors, self.dimension, self.settings)
        faiss.write_index(index, str(self.tmp / VECTORS_FILE))
        (posts,) = self.db.execute("SELECT count(*) FROM posts").fetchone()
        self.db.commit()
        self.db.execute("VACUUM")
        self.db.close()
        files = {name: file_digest(self.tmp / name) for name in (DB_FILE, VECTORS_FILE)}
        manifest = manifest_for(self.settings, self.dimension, posts, len(vectors), self.name, kind, files)
        _write_durably(self.tmp / MANIFEST_FILE, json.dumps(manifest, indent=2))
        for f in self.tmp.iterdir():
            _fsync(f)
        _checkpoint("written")
        final = self.settings.index_dir / self.name
        os.rename(self.tmp, final)
        _fsync(self.settings.index_dir)
        _checkpoint("renamed")
        previous = _pointer(self.settings.index_dir, CURRENT_FILE)
        if previous:
            _write_durably(self.settings.index_dir / PREVIOUS_FILE, previous + "\n")
        _write_durably(self.settings.index_dir / CURRENT_FILE, self.name + "\n")
        _checkpoint("switched")
        return self.name

    def abort(self) -> None:
        try:
            self.db.close()
        except sqlite3.Error:
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def prune_generations(index_dir: Path) -> None:
    """Delete leftovers of killed runs and every generation but the current and the previous one.

    The previous generation stays so that a request that opened it just before the switch can finish.
    While CURRENT is missing or damaged nothing is deleted: those generations may hold the only copy of
    a post, and the next run reads them.
    """
    for tmp in index_dir.glob(".tmp-gen-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    current = _pointer(index_dir, CURRENT_FILE)
    if current is None:
        return
    keep = {current, _pointer(index_dir, PREVIOUS_FILE)}
    for g in index_dir.glob("gen-*"):
        if g.is_dir() and g.name not in keep:
            shutil.rmtree(g, ignore_errors=True)


def _write_durably(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _checkpoint(stage: str) -> None:
    """Fault injection for the crash tests: RAG_KILL_AT=<stage> kills this process right here."""
    if os.environ.get("RAG_KILL_AT") == stage:
        log.warning("RAG_KILL_AT=%s: killing the process", stage)
        os.kill(os.getpid(), 9)


class LiveIndex:
    """The generation CURRENT names, reopened when `rag index` switches it, so a running app picks up a rebuild.

    A request keeps the Index object it started with; the previous generation stays on disk (see
    prune_generations) and open files outlive deletion, so an in-flight request never fails on a switch.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._index: Index | None = None
        self._lock = threading.Lock()

    def get(self) -> Index:
        name = current_generation(self.settings.index_dir)
        with self._lock:
            if self._index is None or (name is not None and name != self._index.generation):
                fresh = Index.open(self.settings)
                if self._index is not None:
                    log.info("index switched from %s to %s", self._index.generation, fresh.generation)
                self._index = fresh
            return self._index


def stats(index: Index) -> dict:
    return {**index.manifest, "path": str(index.path), "posts": [asdict(p) for p in index.posts()]}
