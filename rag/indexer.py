"""`rag index`: bring the index up to date with a feed, re-embedding only new or changed posts."""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from tqdm import tqdm

from .chunking import Chunk, Chunker
from .feed import Post, read_feed
from .index import (DB_FILE, GenerationWriter, Index, IndexUnavailable, _checkpoint, current_generation,
                    latest_generation, prune_generations)
from .models import embed, load_embedder
from .settings import Settings

log = logging.getLogger(__name__)


class IndexBusy(Exception):
    """Another `rag index` holds the lock."""


@dataclass
class UpdateReport:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    retained: list[str] = field(default_factory=list)  # in the index, not in this feed: kept on purpose
    removed: list[str] = field(default_factory=list)
    chunks_embedded: int = 0
    chunks_total: int = 0
    generation: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"added {len(self.added)}, changed {len(self.changed)}, unchanged {len(self.unchanged)}, "
                 f"kept though missing from the feed {len(self.retained)}, removed {len(self.removed)}; "
                 f"embedded {self.chunks_embedded} chunks; {self.chunks_total} chunks in the index; "
                 f"{self.seconds:.1f}s"]
        for label, titles in (("added", self.added), ("changed", self.changed),
                              ("kept (not in feed)", self.retained), ("removed", self.removed)):
            lines += [f"  {label}: {t}" for t in titles]
        lines.append(f"serving generation {self.generation}" if self.generation else "index already up to date")
        return "\n".join(lines)


def _stored_posts(settings: Settings) -> dict[str, Post]:
    """Posts of the current generation, read straight from SQLite so that even an index built with other
    settings hands its posts on to a rebuild (nothing is lost because a feed is shorter)."""
    name = latest_generation(settings.index_dir)
    if name is None:
        return {}
    try:
        db = sqlite3.connect(f"file:{settings.index_dir / name / DB_FILE}?mode=ro", uri=True)
        rows = db.execute("SELECT guid, title, url, date, author, markdown FROM posts").fetchall()
        db.close()
    except sqlite3.Error as e:
        log.warning("cannot read posts of the current index (%s); rebuilding from the feed only", e)
        return {}
    return {r[0]: Post(*r) for r in rows}


def _open_old(settings: Settings, rebuild: bool) -> Index | None:
    if rebuild or current_generation(settings.index_dir) is None:
        return None
    return Index.open(settings)  # raises with "run rag index --rebuild" when settings or files differ


def _lock(settings: Settings) -> FileLock:
    lock = FileLock(settings.index_dir / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise IndexBusy(f"another `rag index` is updating {settings.index_dir}; "
                        f"wait for it to finish and run this again") from None
    return lock


def update_index(settings: Settings, feed: str | Path | None = None, rebuild: bool = False,
                 remove: tuple[str, ...] = ()) -> UpdateReport:
    settings.index_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(settings)
    try:
        prune_generations(settings.index_dir)  # also clears what a killed run left behind
        return _update(settings, feed, rebuild, remove)
    finally:
        lock.release()


def _update(settings: Settings, feed, rebuild: bool, remove: tuple[str, ...]) -> UpdateReport:
    start = time.perf_counter()
    stored = _stored_posts(settings)
    old = _open_old(settings, rebuild)
    feed_posts = {} if remove and feed is None else {p.guid: p for p in read_feed(feed or settings.feed)}
    unknown = [g for g in remove if g not in stored and g not in feed_posts]
    if unknown:
        raise IndexUnavailable(f"no post with guid {', '.join(unknown)} in the index")

    report = UpdateReport()
    to_embed: list[Post] = []
    to_copy: list[Post] = []
    for guid, post in feed_posts.items():
        if guid in remove:
            continue
        before = stored.get(guid)
        status = "added" if before is None else "unchanged" if before.content_hash == post.content_hash else "changed"
        getattr(report, status).append(post.title)
        (to_copy if status == "unchanged" and old is not None else to_embed).append(post)
    for guid, post in stored.items():
        if guid in remove:
            report.removed.append(post.title)
        elif guid not in feed_posts:
            report.retained.append(post.title)
            (to_copy if old is not None else to_embed).append(post)

    if old is not None and not to_embed and not report.removed:
        report.chunks_total = old.vectors.ntotal
        report.seconds = time.perf_counter() - start
        return report
    report.chunks_embedded, report.chunks_total, report.generation = _write(settings, old, to_copy, to_embed)
    prune_generations(settings.index_dir)
    report.seconds = time.perf_counter() - start
    return report


def _write(settings: Settings, old: Index | None, to_copy: list[Post], to_embed: list[Post]):
    model = load_embedder(settings.embedder, settings.device)
    chunker = Chunker(model.tokenizer, settings.max_chunk_tokens, settings.chunk_overlap_tokens,
                      settings.min_chunk_tokens)
    chunks: list[Chunk] = []
    for post in tqdm(to_embed, desc="chunking", unit="post", disable=not to_embed):
        chunks += chunker.chunk(post)
    log.info("embedding %d chunks of %d posts", len(chunks), len(to_embed))
    vectors = embed(model, [c.embed_text for c in chunks], settings.embed_batch_size, progress=True)
    _checkpoint("embedded")

    writer = GenerationWriter(settings, model.get_embedding_dimension())
    try:
        for post in to_copy:
            writer.add_post(post)
            copied, copied_vectors = _copy_chunks(old, post)
            writer.add_chunks(copied, copied_vectors)
        for post in to_embed:
            writer.add_post(post)
        writer.add_chunks(chunks, vectors)
        total = writer.next_id
        return len(chunks), total, writer.commit()
    except BaseException:
        writer.abort()
        raise


def _copy_chunks(old: Index, post: Post):
    """An unchanged post's chunks and vectors, exactly as the old generation has them."""
    rows = old.db.execute("SELECT c.section, c.section_no, c.url, c.text, c.position, f.body, c.embedding "
                          "FROM chunks c JOIN chunks_fts f ON f.rowid = c.id "
                          "WHERE c.post_guid = ? ORDER BY c.position", (post.guid,)).fetchall()
    # the keyword index body is context + text: recover the context the chunk was embedded with
    chunks = [Chunk(post.guid, post.title, *r[:5], r[5][: len(r[5]) - len(r[3])]) for r in rows]
    vectors = np.frombuffer(b"".join(r[6] for r in rows), dtype="float32").reshape(len(rows), -1)
    return chunks, vectors
