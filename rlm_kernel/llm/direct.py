"""Calls to OpenAI-compatible providers as plain HTTP requests (`model.direct`, on by default).

A call to OpenAI, OpenRouter or an OpenAI-compatible server (`openai/<model>` with
`model.api_base`) goes out directly over one shared httpx client, streamed or not. Two reasons:
- litellm's call path costs ~7 ms of host CPU per call (~17 ms streamed, most of it per chunk:
  stream wrappers, logging objects, cost calculation on executor threads) against ~1 ms (~2 ms)
  here — measured in bench/RESULTS.md; it is most of the engine's CPU when 100 `llm_query`
  calls are in flight, and of its time per iteration at low latency.
- ``import litellm`` costs about 4 s of CPU, so a fresh `rlm run` (or a `%%rlm` cell right after
  the kernel started) would wait that long before its first request; the import goes on in the
  background (`prewarm`) while the first calls go out.
An HTTP error status becomes the exception litellm raises for it (`provider_error`), so retries,
`Retry-After` and messages are the same on both paths; anything unusual (a broken stream, a
reply that is not JSON) is left to litellm: the call is made again on litellm's path, which
makes the rest of the call's attempts. Usage is the
provider's; the price is the provider's bill where it sends one, else litellm's cost map.
"""

from __future__ import annotations

import json
import os
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

    def __init__(self, response: Any, body: bytes) -> None:
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
    original = getattr(openai, name)(message, response=response, body=body)
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


def _client() -> Any:
    """One httpx client for the loop (its connections are kept for the next calls)."""
    import asyncio

    import httpx

    global _CLIENT, _CLIENT_LOOP
    loop = asyncio.get_running_loop()
    if _CLIENT is None or _CLIENT_LOOP is not loop:
        _CLIENT = httpx.AsyncClient(http2=False, follow_redirects=False)
        _CLIENT_LOOP = loop
    return _CLIENT


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
    client = _client()
    async with client.stream(
        "POST", route.url, json=body, headers=headers, timeout=timeout
    ) as response:
        if response.status_code >= 400:
            raise DirectStatus(response, await response.aread())
        if response.status_code != 200:
            raise DirectFailed(f"HTTP {response.status_code}")
        if not stream:
            data = json.loads(await response.aread())
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
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
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


def _completion(text: str, raw_usage: Any) -> Completion:
    """The reply with its usage; the price is the provider's where it says (OpenRouter's
    `usage.cost`), else litellm's cost map prices it (`calls.run_call`)."""
    usage = usage_from_litellm(raw_usage)
    billed = raw_usage.get("cost") if isinstance(raw_usage, dict) else None
    if isinstance(billed, (int, float)) and not isinstance(billed, bool) and billed > 0:
        usage.cost_usd = float(billed)
    return Completion(text=text, usage=usage)
