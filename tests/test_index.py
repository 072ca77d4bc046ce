"""The index on disk: incremental updates, crash safety, locking, manifest checks. Real model, real files."""

import json
import re
import signal
import subprocess
import sys

import pytest
from filelock import FileLock

from rag.chunking import Chunker
from rag.feed import read_feed
from rag.index import SCHEMA_VERSION, Index, IndexUnavailable, current_generation, keyword_query
from rag.indexer import IndexBusy, update_index
from rag.embedder import embed, load_embedder

from .conftest import NEW_POST_HTML, run_rag, write_feed


def vectors_of(index: Index, guid: str) -> bytes:
    return b"".join(r[0] for r in index.db.execute(
        "SELECT embedding FROM chunks WHERE post_guid = ? ORDER BY position", (guid,)))


def test_full_build_then_unchanged_feed_embeds_nothing(full_index):
    settings, report = full_index
    assert len(report.added) == 10 and report.chunks_embedded == report.chunks_total > 300
    again = update_index(settings)
    assert again.chunks_embedded == 0 and len(again.unchanged) == 10 and again.generation is None
    index = Index.open(settings)
    assert index.manifest["counts"] == {"posts": 10, "chunks": report.chunks_total}
    assert index.manifest["embedder"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert index.manifest["dimension"] == 384 and index.manifest["schema_version"] == SCHEMA_VERSION


def test_index_is_queryable_dense_and_keyword(full_index):
    settings, _ = full_index
    index = Index.open(settings)
    model = load_embedder(settings.embedder)
    hits = index.dense_search(embed(model, ["What is out-of-bag error in random forest?"]), 5)
    top = index.chunks([hits[0][0]])[hits[0][0]]
    assert "Random Forest" in top.post_title
    kw = index.keyword_search("out-of-bag OOB error", 5)
    assert "OOB" in index.chunks([kw[0][0]])[kw[0][0]].text
    # user text is never FTS syntax: operators are plain words, punctuation is dropped
    assert index.keyword_search('" * -- ( ) :', 5) == []
    assert all(s > 0 for _, s in index.keyword_search('" OR NEAR( * -- AND', 5))


def test_keyword_search_reads_a_one_letter_compound_as_one_word(full_index):
    """"k-means" is one word to the keyword index, as to the rest of the chat: split, it was "k" and the everyday
    "means", so "k-means" found sections saying "this means" and a lone "k" found every clustering chunk."""
    settings, _ = full_index
    index = Index.open(settings)
    assert keyword_query("how do I pick k for k-means?") == '"pick" OR "k" OR "kmeans"'
    assert keyword_query("what's t-SNE? don't use 0-1 loss") == '"tsne" OR "use" OR "loss"'  # no "s", "t", "0"
    assert keyword_query("a norm, e.g. LayerNorm, i.e. per token") == '"norm" OR "layernorm" OR "per" OR "token"'
    assert keyword_query("Σ or σ? ΔW") == '"sigma" OR "delta" OR "w"'  # Greek letters by name, either case
    for term in ("k-means", "t-SNE"):
        hits = index.keyword_search(term, 20)
        texts = index.chunks([i for i, _ in hits])
        assert hits and all(term.lower() in texts[i].embed_text.lower() for i, _ in hits), term
    means = [index.chunks([i])[i].embed_text.lower() for i, _ in index.keyword_search("means", 50)]
    assert means and all(re.search(r"(?<!k-)\bmean", t) for t in means)  # "mean", "means", "meaning": stems
    # a lone "k" finds where the posts speak of k itself ("the optimal k?", "as a function of k")
    k_hits = [index.chunks([i])[i].embed_text for i, _ in index.keyword_search("k", 50)]
    assert any("optimal k" in t for t in k_hits)
    assert all(re.search(r"(?<![a-z-])k(?![a-z-])", t, re.IGNORECASE) for t in k_hits)  # "k", "p_k", "(k)"

def test_new_and_changed_posts_are_the_only_ones_embedded(tmp_path, settings_for):
    settings = settings_for(tmp_path / "index")
    first = update_index(settings, feed=write_feed(tmp_path / "v1.xml", keep=[7, 8, 9]))
    assert first.chunks_embedded == first.chunks_total and len(first.added) == 3
    before = Index.open(settings)
    posts = {p.title: p for p in read_feed(tmp_path / "v1.xml")}
    untouched = next(p for t, p in posts.items() if t.startswith("Weight"))
    untouched_vectors = vectors_of(before, untouched.guid)

    v2 = write_feed(tmp_path / "v2.xml", keep=[7, 8, 9], change={9: "<p>An extra paragraph on GELU.</p>"},
                    new=[("https://x/new-post", "Gradient Boosting: Interview Questions", NEW_POST_HTML)])
    report = update_index(settings, feed=v2)
    chunker = Chunker(load_embedder(settings.embedder).tokenizer)
    changed_or_new = [p for p in read_feed(v2) if p.guid == "https://x/new-post" or p.title.startswith("Activation")]
    expected = sum(len(chunker.chunk(p)) for p in changed_or_new)
    assert report.added == ["Gradient Boosting: Interview Questions"]
    assert report.changed == ["Activation Functions: Interview Questions & Answers"]
    assert len(report.unchanged) == 2 and report.chunks_embedded == expected
    after = Index.open(settings)
    assert vectors_of(after, untouched.guid) == untouched_vectors  # copied, not recomputed
    assert after.manifest["counts"]["posts"] == 4

    # a shorter feed is a window, not a deletion
    shorter = update_index(settings, feed=write_feed(tmp_path / "v3.xml", keep=[8]))
    assert shorter.chunks_embedded == 0 and len(shorter.retained) == 3
    assert Index.open(settings).manifest["counts"]["posts"] == 4

    removed = update_index(settings, remove=("https://x/new-post",))
    assert removed.removed == ["Gradient Boosting: Interview Questions"]
    assert Index.open(settings).manifest["counts"]["posts"] == len(posts)
    with pytest.raises(IndexUnavailable, match="no post with guid"):
        update_index(settings, remove=("nope",))


def test_mismatched_manifest_is_refused_with_rebuild_hint(full_index):
    settings, _ = full_index
    other = settings.replace(max_chunk_tokens=200)
    with pytest.raises(IndexUnavailable, match=r"max_tokens.*rag index --rebuild"):
        Index.open(other)
    result = run_rag("index", "--index", str(settings.index_dir), env={"RAG_MAX_CHUNK_TOKENS": "200"})
    assert result.returncode == 2 and "rag index --rebuild" in result.stderr


def test_index_built_by_older_chunker_code_is_refused(full_index, tmp_path):
    import shutil

    settings, _ = full_index
    copy = settings.replace(index_dir=tmp_path / "index")
    shutil.copytree(settings.index_dir, copy.index_dir)
    manifest_path = copy.index_dir / current_generation(copy.index_dir) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["chunking"]["chunker_version"] -= 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexUnavailable, match=r"chunker_version.*rag index --rebuild"):
        Index.open(copy)


def test_missing_and_corrupt_index_errors(tmp_path, settings_for):
    with pytest.raises(IndexUnavailable, match="no index at"):
        Index.open(settings_for(tmp_path / "none"))
    settings = settings_for(tmp_path / "index")
    update_index(settings, feed=write_feed(tmp_path / "f.xml", keep=[8]))
    gen = settings.index_dir / current_generation(settings.index_dir)
    (gen / "vectors.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexUnavailable, match="corrupt.*--rebuild"):
        Index.open(settings)
    with pytest.raises(IndexUnavailable, match="--rebuild"):
        update_index(settings, feed=tmp_path / "f.xml")
    report = update_index(settings, feed=tmp_path / "f.xml", rebuild=True)
    assert report.unchanged and Index.open(settings).vectors.ntotal == report.chunks_total


@pytest.mark.parametrize("stage", ["signal", "embedded", "written", "renamed"])
def test_killed_rebuild_leaves_old_index_serving(tmp_path, settings_for, stage):
    settings = settings_for(tmp_path / "index")
    small = write_feed(tmp_path / "small.xml", keep=[8])
    update_index(settings, feed=small)
    old_generation = current_generation(settings.index_dir)
    posts = list(range(10)) if stage == "signal" else [0, 5, 8]  # all posts: embedding lasts seconds, not ms
    cmd = [sys.executable, "-m", "rag.cli", "index", "--rebuild", "--index", str(settings.index_dir),
           "--feed", str(write_feed(tmp_path / "big.xml", keep=posts))]
    if stage == "signal":  # SIGKILL from outside as soon as it starts embedding (all posts: seconds)
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:
            if "embedding" in line:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        code = proc.returncode
    else:
        code = subprocess.run(cmd, env={**__import__("os").environ, "RAG_KILL_AT": stage},
                              capture_output=True, timeout=300).returncode
    assert code == -signal.SIGKILL
    assert current_generation(settings.index_dir) == old_generation
    index = Index.open(settings)
    hits = index.dense_search(embed(load_embedder(settings.embedder), ["Xavier initialization"]), 3)
    assert len(hits) == 3 and index.manifest["counts"]["posts"] == 1

    result = run_rag("index", "--index", str(settings.index_dir), "--feed", str(tmp_path / "big.xml"))
    assert result.returncode == 0, result.stderr
    assert Index.open(settings).manifest["counts"]["posts"] == len(posts)
    assert not list(settings.index_dir.glob(".tmp-*"))


def test_second_concurrent_run_exits_with_clear_message(tmp_path, settings_for):
    settings = settings_for(tmp_path / "index")
    settings.index_dir.mkdir(parents=True)
    with FileLock(settings.index_dir / ".lock"):
        with pytest.raises(IndexBusy):
            update_index(settings, feed=write_feed(tmp_path / "f.xml", keep=[8]))
        result = run_rag("index", "--index", str(settings.index_dir), "--feed", str(tmp_path / "f.xml"))
    assert result.returncode == 2 and "another `rag index` is updating" in result.stderr
    assert current_generation(settings.index_dir) is None


def test_status_shows_manifest_and_posts(full_index):
    settings, report = full_index
    result = run_rag("index", "--status", "--index", str(settings.index_dir))
    status = json.loads(result.stdout)
    assert status["counts"]["chunks"] == report.chunks_total and len(status["posts"]) == 10
    assert status["built_at"] and status["chunking"]["max_tokens"] == 256


def test_bad_feed_never_touches_the_index(full_index, tmp_path):
    settings, report = full_index
    generation = current_generation(settings.index_dir)
    (tmp_path / "bad.xml").write_text("<rss><channel><title>x</title></channel></rss>")
    result = run_rag("index", "--index", str(settings.index_dir), "--feed", str(tmp_path / "bad.xml"))
    assert result.returncode == 2, result.stderr
    assert "no items" in result.stderr.lower() or "not an rss" in result.stderr.lower(), result.stderr
    assert current_generation(settings.index_dir) == generation
    assert Index.open(settings).vectors.ntotal == report.chunks_total



NO_MODEL_SCRIPT = """
import sys
from rag.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:  # --help
    code = e.code
heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers", "openvino") if m in sys.modules)
print("HEAVY", ",".join(heavy) or "-", "CODE", code)
"""


@pytest.mark.parametrize("args", [["--help"], ["index", "--help"], ["index", "--status"], ["index"]],
                         ids=["help", "index-help", "status", "unchanged-feed"])
def test_commands_that_need_no_model_import_no_model_library(full_index, args):
    """`rag --help`, `rag index --status` and an unchanged feed answer without importing torch, transformers
    or OpenVINO: the feed is compared with the index before any embedder is loaded."""
    settings, _ = full_index
    result = subprocess.run([sys.executable, "-c", NO_MODEL_SCRIPT, *args, *(["--index", str(settings.index_dir)]
                                                                           if args[-1] != "--help" else [])],
                            capture_output=True, text=True, timeout=120)
    last = result.stdout.strip().splitlines()[-1]
    assert last == "HEAVY - CODE 0", (last, result.stderr[-2000:])
    if args == ["index"]:
        assert "index already up to date" in result.stdout


def test_an_index_built_with_another_embed_backend_is_refused_with_a_clear_message(full_index):
    settings, _ = full_index
    other = "torch" if settings.embed_backend != "torch" else "openvino"
    with pytest.raises(IndexUnavailable, match=rf"embed_backend: index has '{settings.embed_backend}', "
                                               rf"settings want '{other}'.*rag index --rebuild"):
        Index.open(settings.replace(embed_backend=other))
    result = run_rag("ask", "What is bagging?", "--index", str(settings.index_dir), env={"RAG_EMBED_BACKEND": other})
    assert result.returncode == 2 and "embed_backend" in result.stderr and "Traceback" not in result.stderr


def test_unknown_embed_backend_and_watch_interval_are_clear_settings_errors():
    from rag.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="unknown embed backend 'onnx'; one of torch, openvino"):
        load_settings(config="/nonexistent", embed_backend="onnx")
    with pytest.raises(SettingsError, match="watch_interval must be above 0 seconds, not -1"):
        load_settings(config="/nonexistent", watch_interval=-1.0)
    result = run_rag("index", "--watch", "--interval", "0", "--index", "/nonexistent/index")
    assert result.returncode == 2 and "watch_interval must be above 0" in result.stderr
