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

Like a real provider:

- a request with ``"stream": true`` gets its reply as server-sent events: content deltas of
  ``chunk_chars`` characters ``chunk_s`` apart (``reply(text, chunk_s=, chunk_chars=)``), then,
  with ``stream_options.include_usage``, a usage chunk, then ``[DONE]``. A client that closes the
  stream early is seen: the request's ``disconnected`` is set, ``completed`` stays False;
- usage counts prompt tokens as characters / 4 and reports the prompt's cached tokens
  (``prompt_tokens_details.cached_tokens``): the leading messages identical to those of an earlier
  request, as OpenAI's automatic prefix caching does (``prompt_cache = False`` turns it off);
- with ``context_limit`` set, a prompt of more tokens gets OpenAI's HTTP 400
  ``context_length_exceeded`` error (kind ``context_error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
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
    chunk_s: float = 0.0  # a streamed reply: seconds between deltas
    chunk_chars: int = 16  # a streamed reply: characters per delta


Script = Behaviour | Callable[[dict[str, Any]], Behaviour]


def reply(text: str, *, chunk_s: float = 0.0, chunk_chars: int = 16) -> Behaviour:
    """A normal completion with `text` as the assistant's content (streamed, when asked, in
    pieces of `chunk_chars` characters `chunk_s` apart)."""
    return Behaviour("reply", text=text, chunk_s=chunk_s, chunk_chars=max(1, chunk_chars))


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
    prompt_tokens: int = 0
    cached_tokens: int = 0
    stream: bool = False
    completed: bool = False  # the whole reply was sent
    disconnected: bool = False  # the client closed the connection before the end
    peer: str = ""  # the client's address and port: one per connection

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
        self.context_limit: int | None = None
        self.prompt_cache = True
        self._prefixes: set[str] = set()

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
            self._prefixes.clear()
        self.default = reply("```python\nFINAL('default reply')\n```")
        self.context_limit = None
        self.prompt_cache = True

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

    def _count(self, body: Any) -> tuple[int, int]:
        """(prompt tokens, cached tokens) of a request; remembers its prefixes for the next."""
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list):
            return 0, 0
        prompt = cached = 0
        digest = hashlib.sha256()
        hit = self.prompt_cache
        with self._lock:
            for message in messages:
                digest.update(json.dumps(message, sort_keys=True).encode())
                key = digest.hexdigest()
                tokens = _chars(message) // 4
                prompt += tokens
                if hit and key in self._prefixes:
                    cached += tokens
                else:
                    hit = False
                self._prefixes.add(key)
        return max(1, prompt), cached

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        prompt_tokens, cached = self._count(body)
        limit = self.context_limit
        stream = isinstance(body, dict) and bool(body.get("stream"))
        if limit is not None and prompt_tokens > limit:
            log = LoggedRequest(
                request.path,
                dict(request.headers),
                body,
                "context_error",
                prompt_tokens=prompt_tokens,
            )
            with self._lock:
                self.requests.append(log)
            err = {
                "error": {
                    "message": f"This model's maximum context length is {limit} tokens. However, "
                    f"your messages resulted in {prompt_tokens} tokens. Please reduce the length "
                    "of the messages.",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            }
            return web.json_response(err, status=400)
        behaviour = self._next(body)
        log = LoggedRequest(
            request.path,
            dict(request.headers),
            body,
            behaviour.kind,
            prompt_tokens=prompt_tokens,
            cached_tokens=cached,
            stream=stream,
            peer=str(request.transport.get_extra_info("peername") if request.transport else ""),
        )
        with self._lock:
            self.requests.append(log)
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
            garbage = '{"id": "x", "choices": [ this is not JSON'
            if stream:
                return await _sse(request, [f"data: {garbage}\n\n"])
            return web.Response(text=garbage, content_type="application/json")
        if behaviour.kind == "error_in_body":
            err = {"error": {"message": behaviour.message, "code": behaviour.status}}
            if stream:  # as OpenRouter reports an upstream failure in a stream
                return await _sse(request, [f"data: {json.dumps(err)}\n\n"])
            return web.json_response(err)
        if behaviour.kind == "no_choices":
            empty = {**_completion(model, "", prompt_tokens, cached), "choices": []}
            if stream:
                empty["object"] = "chat.completion.chunk"
                return await _sse(request, [f"data: {json.dumps(empty)}\n\n", "data: [DONE]\n\n"])
            return web.json_response(empty)
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
        if stream:
            return await self._stream(request, log, behaviour, model, content, body)
        log.completed = True
        return web.json_response(_completion(model, content, prompt_tokens, cached))

    async def _stream(
        self,
        request: web.Request,
        log: LoggedRequest,
        behaviour: Behaviour,
        model: str,
        content: str | None,
        body: dict[str, Any],
    ) -> web.StreamResponse:
        """Send the reply as server-sent events; notice a client that goes away."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion.chunk"}
        base.update(created=int(time.time()), model=model)
        text = content or ""
        # pieces of chunk_chars and chunk_chars + 1 characters in turn: a run of one character
        # ("AAAA…") never makes 100 identical chunks in a row, which litellm takes for a model
        # stuck in a loop (and retries)
        pieces, i = [], 0
        while i < len(text):
            size = behaviour.chunk_chars + len(pieces) % 2
            pieces.append(text[i : i + size])
            i += size
        events = [
            {"index": 0, "delta": {"role": "assistant", "content": piece}} for piece in pieces
        ] or [{"index": 0, "delta": {"role": "assistant", "content": content}}]
        task = asyncio.current_task()
        if task is not None:
            self._hangs.add(task)
        try:
            for n, choice in enumerate(events):
                if n and behaviour.chunk_s > 0:
                    await asyncio.sleep(behaviour.chunk_s)
                await self._event(
                    request, resp, {**base, "choices": [{**choice, "finish_reason": None}]}
                )
            stop = {"index": 0, "delta": {}, "finish_reason": "stop"}
            await self._event(request, resp, {**base, "choices": [stop]})
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = _completion(model, content, log.prompt_tokens, log.cached_tokens)["usage"]
                await self._event(request, resp, {**base, "choices": [], "usage": usage})
            await resp.write(b"data: [DONE]\n\n")
            if behaviour.chunk_s > 0:  # the body's end comes apart from [DONE], as from servers
                await asyncio.sleep(behaviour.chunk_s)  # that flush each event
            await resp.write_eof()
            log.completed = True
        except ConnectionError:  # ConnectionResetError among them: the client went away
            log.disconnected = True
        finally:
            if task is not None:
                self._hangs.discard(task)
        return resp

    async def _event(self, request: web.Request, resp: web.StreamResponse, data: Any) -> None:
        if _closing(request):
            raise ConnectionResetError("the client closed the stream")
        await resp.write(b"data: " + json.dumps(data).encode() + b"\n\n")


async def _sse(request: web.Request, events: list[str]) -> web.StreamResponse:
    """A stream of the given raw server-sent events."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for event in events:
        await resp.write(event.encode())
    await resp.write_eof()
    return resp


def _closing(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _chars(message: Any) -> int:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    return 0


def _completion(
    model: str, content: str | None, prompt_tokens: int = 20, cached: int = 0
) -> dict[str, Any]:
    completion_tokens = max(1, len(content or "") // 4)
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
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }
