"""Soak (issue 14): 30 concurrent chats for two minutes against the real app, through Gradio's `/ask` API
(extractive two-turn conversations and the generator mode) and the OpenAI-compatible endpoint, with 0
errors, 0 mixed answers and bounded memory (the app's RSS at the start and the end, and its timeline,
are printed; run with -s).

Marked `soak` (and `slow`): `make test` runs it (about four minutes); `pytest -m "not soak"` skips it.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from .test_app import TOPICS, client, start_full_app

pytestmark = [pytest.mark.slow, pytest.mark.soak]

SECONDS = 120
CHATS = 30
GENERATOR_CHATS = 5  # of the 30, asking in the generator mode
OPENAI_CHATS = 5  # of the 30, through /v1/chat/completions
FOLLOW_UP = "and why does it matter?"
GENERATE_QUESTIONS = [(q, w) for q, w in TOPICS if w in ("Out-of-Bag", "KV Cache", "LoRA")]
WARM_UP_SECONDS = 30
MAX_RSS_GROWTH_MB = 200  # after the warm-up


@pytest.fixture(scope="module")
def soak_app(full_index, tmp_path_factory):
    app = start_full_app(full_index, tmp_path_factory, "soak_app", second_look=True)  # the model in the app too
    yield app
    app.stop()


def test_thirty_concurrent_chats_for_two_minutes(soak_app):
    warm = client(soak_app).predict(GENERATE_QUESTIONS[0][0], "[]", "generate", "", 0, api_name="/ask")
    assert warm["answer"]  # the model is loaded before the start figure is taken
    rss_start = soak_app.rss_mb()
    timeline: list[tuple[float, float]] = [(0.0, rss_start)]  # (seconds since the start, RSS MB)
    deadline = time.monotonic() + SECONDS
    answers: dict[tuple, list[tuple]] = defaultdict(list)  # (route, mode, question, history) -> results
    errors: list[str] = []
    lock = threading.Lock()

    def record(key: tuple, result: tuple) -> None:
        with lock:
            answers[key].append(result)

    def gradio_chat(n: int) -> int:
        api, done, mode = client(soak_app), 0, "generate" if n < GENERATOR_CHATS else "extractive"
        topics = GENERATE_QUESTIONS if mode == "generate" else TOPICS
        # a model answer takes up to a minute on a busy machine: none starts in the last 30 s of the run
        while time.monotonic() < deadline - (30 if mode == "generate" and done else 0):
            q, _ = topics[(n + done) % len(topics)]
            first = api.predict(q, "[]", mode, "", 0, api_name="/ask")
            record(("ask", mode, q, ""), (first["answer"], json.dumps(first["citations"]), first["retrieved"][0]["section"]))
            if mode == "extractive":
                history = json.dumps([[q, first["answer"]]])
                second = api.predict(FOLLOW_UP, history, mode, "", 0, api_name="/ask")
                record(("ask", mode, FOLLOW_UP, history), (second["answer"], json.dumps(second["citations"]), ""))
            done += 1
        return done

    def openai_chat(n: int) -> int:
        api, done = openai.OpenAI(base_url=f"{soak_app.url}v1", api_key="local", max_retries=0, timeout=600), 0
        while time.monotonic() < deadline:
            q, _ = TOPICS[(n + done) % len(TOPICS)]
            stream = done % 2 == 1
            reply = api.chat.completions.create(model="interview-prep-extractive", stream=stream,
                                                messages=[{"role": "user", "content": q}])
            if stream:
                pieces, last = [], None
                for chunk in reply:
                    if chunk.choices and chunk.choices[0].delta.content:
                        pieces.append(chunk.choices[0].delta.content)
                    last = chunk
                content, sources = "".join(pieces), last.sources
            else:
                content, sources = reply.choices[0].message.content, reply.sources
            record(("v1", "extractive", q, ""), (content, json.dumps(sources), sources[0]["section"]))
            done += 1
        return done

    def chat(n: int) -> int:
        try:
            return openai_chat(n) if n >= CHATS - OPENAI_CHATS else gradio_chat(n)
        except Exception as e:  # noqa: BLE001 - every failure is counted and shown
            with lock:
                errors.append(f"chat {n}: {type(e).__name__}: {e}")
            return 0

    sampling_over = threading.Event()

    def sample_memory() -> None:
        while not sampling_over.wait(5) and soak_app.proc.poll() is None:
            timeline.append((time.monotonic() - start, soak_app.rss_mb()))

    start = time.monotonic()
    threading.Thread(target=sample_memory, daemon=True).start()
    with ThreadPoolExecutor(CHATS) as pool:
        rounds = list(pool.map(chat, range(CHATS)))
    elapsed = time.monotonic() - start
    sampling_over.set()  # stop sampling before the fixture stops the app
    rss_end = soak_app.rss_mb()
    total = sum(len(v) for v in answers.values())
    generated = sum(len(v) for k, v in answers.items() if k[1] == "generate")
    print(f"\nsoak: {CHATS} chats for {elapsed:.0f}s: {total} answers ({generated} by the generator), "
          f"conversations per chat {min(rounds)}-{max(rounds)}, errors {len(errors)}; app RSS start "
          f"{rss_start:.0f} MB, end {rss_end:.0f} MB, peak {max(r for _, r in timeline):.0f} MB")
    print("RSS timeline (s, MB):", [(round(t), round(r)) for t, r in timeline])

    assert errors == [], errors[:5]
    assert generated >= GENERATOR_CHATS and min(rounds) >= 1  # every chat was answered, the model ones too
    # no mixed answers: the same question (with the same history) always got the same answer and sources,
    # whichever chat asked it and whatever ran beside it, and its best section is on its own topic
    for (route, mode, q, history), results in answers.items():
        assert len(set(results)) == 1, (route, mode, q, set(results))
        if not history:
            assert dict(TOPICS)[q].lower() in results[0][2].lower(), (route, mode, q, results[0][2])
    # bounded memory: RSS rises while the first concurrent requests warm up (threads, the model's caches),
    # then stays level; growth after the first 30 s must stay small
    settled = next(r for t, r in timeline if t >= WARM_UP_SECONDS)
    assert rss_end - settled < MAX_RSS_GROWTH_MB, timeline
    assert "Traceback" not in soak_app.output()
