"""Calls to OpenAI-compatible providers as plain HTTP requests (`model.direct`, on by default).

A call to OpenAI, OpenRouter or an OpenAI-compatible server (`openai/<model>` with
`model.api_base`) goes out directly over one shared aiohttp session, streamed or not. Two reasons:
- litellm's call path costs ~7 ms of host CPU per call (~17 ms streamed, most of it per chunk:
  stream wrappers, logging objects, cost calculation on executor threads) against ~1 ms (~2 ms)
  here — measured in bench/RESULTS.md; it is most of the engine's CPU when 100 `llm_query`
  calls are in flight, and of its time per iteration at low latency. The transport is aiohttp
  (C-accelerated HTTP parsing; litellm depends on it too): ~0.25 ms of CPU per request with 100
  in flight, against ~2.5 ms for httpx's pure-Python one (bench/RESULTS.md).
- ``import litellm`` costs about 4 s of CPU and ~200 MB: the plain-HTTP path never needs it (prices
  come from litellm's cost map read as data, `pricing.py`), so a fresh `rlm run` sends its first
  request at once; `prewarm_for(config)` imports litellm in the background only where a call may
  need it (another provider, `model.direct: false`).
An HTTP error status becomes the exception litellm raises for it (`provider_error`), so retries,
`Retry-After` and messages are the same on both paths; anything unusual (a broken stream, a
reply that is not JSON) is left to litellm: the call is made again on litellm's path, which
makes the rest of the call's attempts. Usage is the
provider's; the price is the provider's bill where it sends one, else litellm's cost map.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import __version__
from .usage import Completion, usage_from_litellm

if TYPE_CHECKING:
    from .calls import TextBuffer

__all__ = [
    "DirectFailed",
    "DirectNoChoices",
    "DirectRoute",
    "DirectStatus",
    "direct_call",
    "direct_route",
    "provider_error",
]

_ROUTES = {
    "openai": (
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
        ("OPENAI_BASE_URL", "OPENAI_API_BASE"),
    ),
    "openrouter": ("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", ("OPENROUTER_API_BASE",)),
}
_CLIENT: Any = None
_CLIENT_LOOP: Any = None


class DirectFailed(Exception):
    """The direct request did not give a whole reply; litellm's path takes over."""


class DirectStatus(Exception):
    """The provider answered with an HTTP error status: an error to map, not to send again."""

    def __init__(self, response: _Response, body: bytes) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        self.body = body


class DirectNoChoices(Exception):
    """The provider's reply had no choices (a reply, so not one to send again)."""


_STATUS_ERRORS = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
}
"""The openai SDK's error class per status (>= 500: InternalServerError), as its client maps them."""


def provider_error(litellm: Any, model: str, failed: DirectStatus) -> Exception:
    """The exception litellm raises for the same HTTP error (RateLimitError with the response's
    headers, ContextWindowExceededError, AuthenticationError, …), so that the retries, the
    provider's Retry-After and the messages are the same as on litellm's path."""
    import openai

    response = failed.response
    try:
        body: Any = json.loads(failed.body)
    except ValueError:
        body = failed.body.decode("utf-8", "replace")
    error = body.get("error", body) if isinstance(body, dict) else body
    detail = error.get("message") if isinstance(error, dict) else None
    message = f"Error code: {response.status_code} - {detail or body or response.reason_phrase}"
    status = response.status_code
    name = _STATUS_ERRORS.get(status, "InternalServerError" if status >= 500 else "APIStatusError")
    original = getattr(openai, name)(message, response=response.as_httpx(failed.body), body=body)
    provider, _, name = model.partition("/")
    try:
        mapped = litellm.exception_type(
            model=name or model, original_exception=original, custom_llm_provider=provider
        )
    except Exception as exc:  # exception_type raises the mapped exception
        return exc
    return mapped if isinstance(mapped, Exception) else original


@dataclass(frozen=True)
class DirectRoute:
    """Where and how to send a call directly."""

    url: str
    key: str
    model: str  # the provider's name for it (no `openai/` prefix)


def direct_route(model: str, api_base: str | None, api_key: str | None) -> DirectRoute | None:
    """The direct route of `model`, or None (a provider litellm alone knows how to call)."""
    provider, _, name = model.partition("/")
    found = _ROUTES.get(provider)
    if found is None or not name:
        return None
    default, key_var, base_vars = found
    key = os.environ.get(key_var) or api_key
    if not key:
        return None
    base = api_base or next((os.environ[v] for v in base_vars if os.environ.get(v)), default)
    return DirectRoute(url=base.rstrip("/") + "/chat/completions", key=key, model=name)


def _session() -> Any:
    """One aiohttp session for the loop: its connections are kept for the next calls, as many
    as are in flight (the engine's own limits bound them). Proxies and netrc from the
    environment, as httpx and the openai SDK do."""
    import asyncio

    import aiohttp

    global _CLIENT, _CLIENT_LOOP, _CLOSE_REGISTERED
    loop = asyncio.get_running_loop()
    if _CLIENT is None or _CLIENT_LOOP is not loop or _CLIENT.closed:
        if _CLIENT is not None and not _CLIENT.closed:
            # Its loop ended (a forked child, a loop made for a test): its connections cannot
            # be closed from this one; keep them from their finalizers' warnings.
            _RETIRED.append(_CLIENT.connector)
            _CLIENT.detach()
        connector = aiohttp.TCPConnector(limit=0, resolver=aiohttp.ThreadedResolver())
        # trust_env=False: aiohttp would look up the environment's proxy and ~/.netrc on a
        # worker thread for every request (two thread hops each); `_proxy_for` does it once per
        # URL and proxy settings. The Authorization header is ours, never netrc's.
        _CLIENT = aiohttp.ClientSession(connector=connector, trust_env=False)
        _CLIENT_LOOP = loop
        if not _CLOSE_REGISTERED:
            _CLOSE_REGISTERED = True
            atexit.register(_close_at_exit)
    return _CLIENT


_RETIRED: list[Any] = []  # connectors of sessions whose loop ended, kept from their finalizers
_CLOSE_REGISTERED = False  # `_close_at_exit` is registered with atexit


def _close_at_exit() -> None:
    """Close the session on its loop (the LLM loop's thread still runs at exit), so that its
    kept connections end cleanly and nothing reports an unclosed session."""
    import asyncio
    import concurrent.futures

    session, loop = _CLIENT, _CLIENT_LOOP
    if session is None or session.closed or loop is None or not loop.is_running():
        return
    with contextlib.suppress(RuntimeError, concurrent.futures.TimeoutError):
        asyncio.run_coroutine_threadsafe(session.close(), loop).result(timeout=1.0)


def _ssl_context() -> ssl.SSLContext:
    """The context for https: certifi's roots (as httpx and the openai SDK use), or the ones
    `SSL_CERT_FILE` / `SSL_CERT_DIR` name."""
    global _SSL
    if _SSL is None:
        cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
        if not cafile and not capath:
            import certifi

            cafile = certifi.where()
        _SSL = ssl.create_default_context(cafile=cafile or None, capath=capath or None)
    return _SSL


_SSL: ssl.SSLContext | None = None


async def direct_call(
    route: DirectRoute,
    messages: list[dict[str, Any]],
    *,
    stream: bool,
    text: TextBuffer,
    timeout: float,
    options: dict[str, Any],
) -> Completion:
    """One request; the reply (streamed into `text` when `stream`) or DirectFailed."""
    body: dict[str, Any] = {"model": route.model, "messages": messages, **options}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    headers = {
        "Authorization": f"Bearer {route.key}",
        "User-Agent": f"rlm-kernel/{__version__} (direct)",
    }
    text.restart()
    import aiohttp

    session = _session()
    per_read = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
    extra: dict[str, Any] = {"ssl": _ssl_context()} if route.url.startswith("https:") else {}
    proxy, proxy_auth = await _proxy_for(route.url)
    if proxy is not None:
        extra.update(proxy=proxy, proxy_auth=proxy_auth)
    async with session.post(
        route.url,
        data=json.dumps(body).encode(),
        headers=headers,
        timeout=per_read,
        allow_redirects=False,
        **extra,
    ) as response:
        if response.status >= 400:
            raise DirectStatus(_Response(route.url, response), await response.read())
        if response.status != 200:
            raise DirectFailed(f"HTTP {response.status}")
        if not stream:
            data = json.loads(await response.read())
            if not isinstance(data, dict) or "error" in data:
                raise DirectFailed("an error in the reply")
            try:
                content = data["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError) as exc:
                raise DirectNoChoices() from exc
            return _completion(content or "", data.get("usage"))
        parts: list[str] = []
        usage: Any = None
        finished = False
        async for line in _lines(response.content):
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                await _drain(response)
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                raise DirectFailed("an error in the stream")
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    parts.append(piece)
                    text.add(piece)
                finished = finished or bool(choice.get("finish_reason"))
            usage = chunk.get("usage") or usage
        if not finished:  # (litellm's path sends a stream without choices again too)
            raise DirectFailed("the stream ended before a finish_reason")
    return _completion("".join(parts), usage)


_PROXIES: dict[tuple[str, tuple[str | None, ...]], tuple[Any, Any]] = {}
# What aiohttp's proxy lookup reads (urllib's getproxies for http/https/ws/wss, no_proxy; the
# netrc file; urllib ignores HTTP_PROXY in a CGI request).
_PROXY_SETTINGS = (
    *(f"{scheme}_proxy" for scheme in ("http", "https", "ws", "wss", "no")),
    *(f"{scheme}_PROXY" for scheme in ("HTTP", "HTTPS", "WS", "WSS", "NO")),
    "NETRC",
    "HOME",
    "REQUEST_METHOD",
)


async def _proxy_for(url: str) -> tuple[Any, Any]:
    """The proxy (and its netrc credentials) the environment names for `url`, as aiohttp's
    `trust_env` finds them (`HTTPS_PROXY`, `NO_PROXY`, ... and ~/.netrc), or (None, None);
    looked up once per URL and proxy settings (the netrc file is read on a worker thread)."""
    import asyncio

    settings = tuple(os.environ.get(name) for name in _PROXY_SETTINGS)
    key = (url, settings)
    found = _PROXIES.get(key)
    if found is None:
        from aiohttp.helpers import get_env_proxy_for_url
        from yarl import URL

        looked: tuple[Any, Any] = (None, None)
        with contextlib.suppress(LookupError):
            looked = await asyncio.to_thread(get_env_proxy_for_url, URL(url))
        _PROXIES[key] = found = looked
    return found


async def _drain(response: Any) -> None:
    """Read what follows [DONE] (the end of the chunked body), so that the connection is kept
    for the next call instead of being reset with bytes unread."""
    import asyncio

    if response.content.is_eof():  # the end came with [DONE]: nothing to wait for
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(response.content.read(), DRAIN_S)


DRAIN_S = 0.5


async def _lines(content: Any) -> AsyncIterator[str]:
    """The lines of a server-sent event stream, however long (aiohttp's own readline refuses
    lines over its buffer's size; one event may carry a long tool call)."""
    pending = b""
    async for data in content.iter_any():
        pending += data
        if b"\n" not in data:
            continue
        *whole, pending = pending.split(b"\n")
        for raw in whole:
            yield raw.rstrip(b"\r").decode("utf-8")
    if pending:
        yield pending.rstrip(b"\r").decode("utf-8")


class _Response:
    """What `provider_error` needs of an error response: status, reason, headers (Retry-After),
    and an httpx.Response for the openai SDK's error classes, made only on this path."""

    def __init__(self, url: str, response: Any) -> None:
        self.url = url
        self.status_code = int(response.status)
        self.reason_phrase = str(response.reason or "")
        self.headers = list(response.headers.items())

    def as_httpx(self, body: bytes) -> Any:
        import httpx

        request = httpx.Request("POST", self.url)
        return httpx.Response(self.status_code, headers=self.headers, content=body, request=request)


def _completion(text: str, raw_usage: Any) -> Completion:
    """The reply with its usage; the price is the provider's where it says (OpenRouter's
    `usage.cost`), else litellm's cost map prices it (`calls.run_call`)."""
    usage = usage_from_litellm(raw_usage)
    billed = raw_usage.get("cost") if isinstance(raw_usage, dict) else None
    if isinstance(billed, (int, float)) and not isinstance(billed, bool) and billed > 0:
        usage.cost_usd = float(billed)
    return Completion(text=text, usage=usage)
