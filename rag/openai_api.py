"""An OpenAI-compatible chat completions endpoint, so that existing clients (the `openai` package, chat
front-ends that speak the OpenAI API) can use the bot. It is mounted on the app's own server:

    POST /v1/chat/completions   {"model": "interview-prep", "messages": [...], "stream": false}
    GET  /v1/models

The last message is the question and earlier user/assistant pairs are the conversation (system messages
are ignored: the bot answers only from the posts). The reply's `content` is the answer with its [n]
markers and a list of the sources; the reply also carries `sources` (n, post_title, url, section, text),
`refused` and `mode`. Streaming sends the usual `chat.completion.chunk` events and `data: [DONE]`; a mode
whose draft is checked sentence by sentence after generation (e.g. `generate`) sends its checked answer
in one piece at the end, because a streamed draft could not be taken back.

Only loopback clients are served unless `api_key` is set, and then any client that sends it as a bearer
token. Extra request fields: `k` (sections to retrieve) and `post` (a post guid to search only it).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from ipaddress import ip_address
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .answer import Chat
from .chunking import section_title
from .errors import RagError
from .modes import MODES

log = logging.getLogger(__name__)

MODEL = "interview-prep"


class ApiError(RagError):
    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def model_names(default_mode: str) -> dict[str, str]:
    """Model name -> answer mode: `interview-prep` is the configured mode, `interview-prep-<mode>` each
    mode the app offers."""
    names = {MODEL: default_mode}
    names.update({f"{MODEL}-{m.name}": m.name for m in MODES.values() if m.offered or m.name == default_mode})
    return names


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of parts of which the text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    raise ApiError(f"{where}: content must be a string or a list of text parts", param="messages")


def conversation(messages: Any) -> tuple[str, list[list[str]]]:
    """(question, earlier [question, answer] pairs) from OpenAI-style messages."""
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages must be a non-empty list", param="messages")
    turns: list[list[str]] = []
    question = None
    for n, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise ApiError(f"messages[{n}] must be an object with a role of system, user or assistant",
                           param="messages")
        role, text = m["role"], _text(m.get("content"), f"messages[{n}]")
        if role == "user":
            if question is not None:  # two user messages in a row: the earlier one got no answer
                turns.append([question, ""])
            question = text
        elif role == "assistant" and question is not None:
            turns.append([question, text])
            question = None
    if question is None:
        raise ApiError("the last message must be the user's question", param="messages")
    return question, turns


def content_with_sources(answer: dict) -> str:
    return answer["answer"] + sources_footer(answer)


def sources_footer(answer: dict) -> str:
    if not answer["citations"]:
        return ""
    lines = [f"[{c['n']}] {c['post_title']} — {section_title(c['section'])} ({c['url']})" for c in answer["citations"]]
    return "\n\nSources:\n" + "\n".join(lines)


def _extras(answer: dict) -> dict:
    return {"sources": answer["citations"], "refused": answer["refused"], "mode": answer["mode"],
            "generator": answer.get("generator"), "timings": answer.get("timings", {})}


def _error(e: ApiError) -> JSONResponse:
    kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}.get(e.status,
                                                                                              "invalid_request_error")
    return JSONResponse({"error": {"message": str(e), "type": kind, "param": e.param, "code": e.code}},
                        status_code=e.status)


def router(chat: Chat, concurrency: int = 4, before_answer=None) -> APIRouter:
    """The /v1 routes over a loaded Chat; at most `concurrency` answers are computed at once.
    `before_answer(mode)` runs (in a worker thread) before each answer: the app waits there for a model
    that is still loading."""
    settings = chat.settings
    api = APIRouter(prefix="/v1")
    slots = Slots(concurrency)

    def allowed(request: Request) -> None:
        host = request.client.host if request.client else ""
        try:
            loopback = ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if loopback:
            return
        key = getattr(settings, "api_key", "")
        if not key:
            raise ApiError("the API answers only this machine (set api_key to allow other clients)", 403)
        if request.headers.get("authorization", "") != f"Bearer {key}":
            raise ApiError("missing or wrong API key", 401)

    @api.get("/models")
    def models(request: Request):
        try:
            allowed(request)
        except ApiError as e:
            return _error(e)
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "local",
                                             "mode": mode} for name, mode in model_names(settings.answer_mode).items()]}

    @api.post("/chat/completions")
    async def completions(request: Request):
        try:
            allowed(request)
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ApiError(f"the request body is not JSON ({e})") from e
            if not isinstance(body, dict):
                raise ApiError("the request body must be a JSON object")
            names = model_names(settings.answer_mode)
            model = body.get("model") or MODEL
            if model not in names:
                raise ApiError(f"unknown model {model!r}; one of {', '.join(names)}", 404, "model", "model_not_found")
            question, history = conversation(body.get("messages"))
            plan = chat.plan(question, history, post=body.get("post") or None, mode=names[model], k=body.get("k"))
        except ApiError as e:
            return _error(e)
        except RagError as e:  # a question too long, a bad history turn, k out of range
            return _error(ApiError(str(e), param="messages"))
        reply = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
        if before_answer is not None:
            await anyio.to_thread.run_sync(before_answer, plan.mode)
        if body.get("stream"):
            return StreamingResponse(_events(chat, plan, reply, slots), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            async with slots.get():
                answer = await anyio.to_thread.run_sync(_answer, chat, plan)
        except RagError as e:
            return _error(ApiError(str(e), 503 if "model" in str(e).lower() else 400))
        return {**reply, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content_with_sources(answer)},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}, **_extras(answer)}

    return api


def _answer(chat: Chat, plan) -> dict:
    answer = None
    for answer in chat.stream_plan(plan):
        pass
    return answer.to_json()


def _chunk(reply: dict, delta: dict, finish: str | None = None, **extra) -> bytes:
    event = {**reply, "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


async def _events(chat: Chat, plan, reply: dict, slots: "Slots"):
    """Server-sent events of one answer. A client that goes away closes this generator, which closes the
    answer's stream (in a thread: closing waits for the model's current step) and with it the generation."""
    yield _chunk(reply, {"role": "assistant", "content": ""})
    async with slots.get():
        stream = chat.stream_plan(plan)
        sent, answer = "", None
        try:
            while True:
                latest = await anyio.to_thread.run_sync(next, stream, None)
                if latest is None:
                    break
                answer = latest
                text = answer.answer
                if text.startswith(sent) and len(text) > len(sent):  # checked text only: it never changes
                    yield _chunk(reply, {"content": text[len(sent):]})
                    sent = text
            final = answer.to_json()
            if not final["answer"].startswith(sent):  # not expected: modes that stream keep their text
                log.warning("streamed text is not a prefix of the final answer; sending the final answer")
                yield _chunk(reply, {"content": "\n\n" + final["answer"]})
            yield _chunk(reply, {"content": sources_footer(final)})
            yield _chunk(reply, {}, "stop", **_extras(final))
            yield b"data: [DONE]\n\n"
        except RagError as e:
            yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n".encode()
        finally:
            threading.Thread(target=stream.close, name="close-answer", daemon=True).start()


class Slots:
    """An anyio semaphore made on first use (inside the server's event loop)."""

    def __init__(self, n: int):
        self.n, self._sem = n, None

    def get(self) -> anyio.Semaphore:
        if self._sem is None:
            self._sem = anyio.Semaphore(self.n)
        return self._sem
