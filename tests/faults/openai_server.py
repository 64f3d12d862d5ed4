"""A local OpenAI-compatible chat-completions server with fault injection, for litellm's real path.

``POST /v1/chat/completions`` (and ``/chat/completions``) answers each request with the next
behaviour of a script (``FaultServer.script(...)``), or with ``default`` when the script is empty.
A behaviour is one of:

- ``reply(text)``: a normal completion whose message content is ``text`` (with usage);
- ``error(status, retry_after=None, message=...)``: an HTTP error with an OpenAI-style error body
  (429 + ``Retry-After``, 500, 503, 401, ...);
- ``hang(seconds)``: wait (past the client's timeout) before replying ``text``;
- ``malformed()``: HTTP 200 with a body that is not JSON;
- ``empty()``: HTTP 200 with ``content: null`` (an empty reply);
- ``no_choices()``: HTTP 200 with an empty ``choices`` list;
- ``error_in_body(code)``: HTTP 200 whose body is an error object with that code (as some
  gateways, e.g. OpenRouter, report upstream failures);
- ``drop()``: close the connection without a response.

A behaviour may also be a callable ``(request_json) -> behaviour`` (a scripted model answering by
the messages). Every request is logged in ``requests`` (path, headers, JSON body, behaviour kind).
The server runs its own event loop on a daemon thread; ``start()`` picks a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = [
    "Behaviour",
    "FaultServer",
    "LoggedRequest",
    "drop",
    "empty",
    "error",
    "error_in_body",
    "hang",
    "malformed",
    "no_choices",
    "reply",
]


@dataclass(frozen=True)
class Behaviour:
    """What the server does with one request."""

    kind: str  # reply | error | hang | malformed | empty | no_choices | error_in_body | drop
    text: str = ""
    status: int = 200
    retry_after: str | None = None
    seconds: float = 0.0
    message: str = ""


Script = Behaviour | Callable[[dict[str, Any]], Behaviour]


def reply(text: str) -> Behaviour:
    """A normal completion with `text` as the assistant's content."""
    return Behaviour("reply", text=text)


def error(status: int, *, retry_after: float | str | None = None, message: str = "") -> Behaviour:
    """An HTTP error (OpenAI error body); `retry_after` becomes the Retry-After header."""
    return Behaviour(
        "error",
        status=status,
        retry_after=None if retry_after is None else str(retry_after),
        message=message or f"injected HTTP {status}",
    )


def hang(seconds: float, text: str = "too late") -> Behaviour:
    """Reply `text` only after `seconds` (longer than the client waits)."""
    return Behaviour("hang", text=text, seconds=seconds)


def malformed() -> Behaviour:
    """HTTP 200 whose body is not JSON."""
    return Behaviour("malformed")


def empty() -> Behaviour:
    """HTTP 200 with an empty (null) message content."""
    return Behaviour("empty")


def no_choices() -> Behaviour:
    """HTTP 200 with an empty choices list."""
    return Behaviour("no_choices")


def error_in_body(code: int, message: str = "") -> Behaviour:
    """HTTP 200 with ``{"error": {"message", "code"}}`` instead of a completion."""
    return Behaviour("error_in_body", status=code, message=message or f"injected error {code}")


def drop() -> Behaviour:
    """Close the connection without sending a response."""
    return Behaviour("drop")


@dataclass
class LoggedRequest:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    body: Any
    kind: str
    at: float = field(default_factory=time.monotonic)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The request's chat messages ([] when the body was not a chat request)."""
        return list(self.body.get("messages") or []) if isinstance(self.body, dict) else []


class FaultServer:
    """The server: `script(...)` queues behaviours, `requests` logs what arrived."""

    def __init__(self) -> None:
        self.default: Script = reply("```python\nFINAL('default reply')\n```")
        self.requests: list[LoggedRequest] = []
        self.port = 0
        self._queue: list[Script] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._hangs: set[asyncio.Task[Any]] = set()

    # -- control ------------------------------------------------------------------------------
    @property
    def api_base(self) -> str:
        """The base URL to give litellm (`model.api_base`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *behaviours: Script) -> None:
        """Queue behaviours for the next requests, in order."""
        with self._lock:
            self._queue.extend(behaviours)

    def reset(self) -> None:
        """Forget queued behaviours and logged requests; restore the default reply."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()
        self.default = reply("```python\nFINAL('default reply')\n```")

    def kinds(self) -> list[str]:
        """The behaviour kind of every request so far, in order."""
        with self._lock:
            return [r.kind for r in self.requests]

    def start(self) -> FaultServer:
        """Serve on a free port of 127.0.0.1 (returns self once listening)."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="fault-llm-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault-injection LLM server did not start")
        return self

    def stop(self) -> None:
        """Stop serving (hanging requests are cancelled) and join the thread."""
        loop = self._loop
        if loop is not None:
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            with contextlib.suppress(Exception):
                fut.result(10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    # -- server -------------------------------------------------------------------------------
    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        loop.run_until_complete(site.start())
        self._ready.set()
        loop.run_forever()
        loop.close()

    async def _shutdown(self) -> None:
        for task in list(self._hangs):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    def _next(self, body: Any) -> Behaviour:
        with self._lock:
            item = self._queue.pop(0) if self._queue else self.default
        if callable(item) and not isinstance(item, Behaviour):
            return item(body if isinstance(body, dict) else {})
        return item

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        behaviour = self._next(body)
        with self._lock:
            self.requests.append(
                LoggedRequest(request.path, dict(request.headers), body, behaviour.kind)
            )
        model = body.get("model", "fault-model") if isinstance(body, dict) else "fault-model"
        if behaviour.kind == "error":
            headers = {}
            if behaviour.retry_after is not None:
                headers["Retry-After"] = behaviour.retry_after
            err = {
                "error": {
                    "message": behaviour.message,
                    "type": "rate_limit_error" if behaviour.status == 429 else "server_error",
                    "code": str(behaviour.status),
                }
            }
            return web.json_response(err, status=behaviour.status, headers=headers)
        if behaviour.kind == "malformed":
            return web.Response(
                text='{"id": "x", "choices": [ this is not JSON', content_type="application/json"
            )
        if behaviour.kind == "error_in_body":
            err = {"error": {"message": behaviour.message, "code": behaviour.status}}
            return web.json_response(err)
        if behaviour.kind == "no_choices":
            return web.json_response({**_completion(model, ""), "choices": []})
        if behaviour.kind == "drop":
            transport = request.transport
            if transport is not None:
                transport.close()
            return web.Response(status=500)  # never sent: the connection is gone
        if behaviour.kind == "hang":
            task = asyncio.current_task()
            if task is not None:
                self._hangs.add(task)
            try:
                await asyncio.sleep(behaviour.seconds)
            finally:
                if task is not None:
                    self._hangs.discard(task)
        content = None if behaviour.kind == "empty" else behaviour.text
        return web.json_response(_completion(model, content))


def _completion(model: str, content: str | None) -> dict[str, Any]:
    prompt_tokens, completion_tokens = 20, max(1, len(content or "") // 4)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
