"""`rag index`: bring the index up to date with a feed, re-embedding only new or changed posts."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm import tqdm

from .chunking import Chunk, Chunker
from .errors import RagError
from .feed import Post, read_feed
from .index import (GenerationWriter, Index, IndexUnavailable, _checkpoint, current_generation,
                    prune_generations, read_posts)
from .embedder import chunk_tokenizer, embed, load_embedder
from .settings import Settings

log = logging.getLogger(__name__)


class IndexBusy(RagError):
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


def _stored_posts(settings: Settings, rebuild: bool) -> dict[str, Post]:
    """Posts of the latest generation, kept unless removed on purpose. A --rebuild of a damaged database
    goes on from the feed alone (there is nothing left to keep); an update stops and says so."""
    try:
        return {p.guid: p for p in read_posts(settings.index_dir)}
    except IndexUnavailable as e:
        if not rebuild:
            raise
        log.warning("%s; rebuilding from the feed only", e)
        return {}


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
                 remove: tuple[str, ...] = (), posts: list[Post] | None = None) -> UpdateReport:
    """Bring the index up to date with the feed (a path or URL; default: the settings' feed), or with
    `posts` already read from one (rag.watch fetches and parses the feed itself)."""
    settings.index_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(settings)
    try:
        prune_generations(settings.index_dir)  # also clears what a killed run left behind
        return _update(settings, feed, rebuild, remove, posts)
    finally:
        lock.release()


def _feed_posts(settings: Settings, feed, remove: tuple[str, ...], posts: list[Post] | None) -> dict[str, Post]:
    if posts is not None:
        return {p.guid: p for p in posts}
    if remove and feed is None:
        return {}
    return {p.guid: p for p in read_feed(feed or settings.feed, max_item_chars=settings.max_item_chars)}


def _update(settings: Settings, feed, rebuild: bool, remove: tuple[str, ...], posts: list[Post] | None
            ) -> UpdateReport:
    start = time.perf_counter()
    stored = _stored_posts(settings, rebuild)
    old = _open_old(settings, rebuild)
    feed_posts = _feed_posts(settings, feed, remove, posts)
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
    model = load_embedder(settings.embedder, settings.device, settings.embed_backend)
    chunker = Chunker(chunk_tokenizer(model), settings.max_chunk_tokens, settings.chunk_overlap_tokens,
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
            writer.add_chunks(*old.post_chunks(post.guid))
        for post in to_embed:
            writer.add_post(post)
        writer.add_chunks(chunks, vectors)
        total = writer.next_id
        return len(chunks), total, writer.commit()
    except BaseException:
        writer.abort()
        raise
