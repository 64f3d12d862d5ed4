"""The first calls of a process, while litellm is still being imported: a plain HTTP request to
an OpenAI-compatible provider.

``import litellm`` costs about 4 s of CPU, so a fresh `rlm run` (or a `%%rlm` cell right after the
kernel started) would wait that long before its first request. Until the import (started in the
background by `prewarm`) is done, a call to OpenAI, OpenRouter or an OpenAI-compatible server
(`model.api_base`) goes out directly over httpx, streamed like the rest. Anything unusual (an
HTTP error, a broken stream, an unknown provider) is left to litellm: the call is made again on
litellm's path, which maps errors and retries. Usage is the provider's; the price comes from
litellm once it is there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from .. import __version__
from .calls import TextBuffer
from .usage import Completion, usage_from_litellm

__all__ = ["DirectRoute", "direct_call", "direct_route"]

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
        if response.status_code != 200:
            raise DirectFailed(f"HTTP {response.status_code}")
        if not stream:
            data = json.loads(await response.aread())
            try:
                content = data["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError) as exc:
                raise DirectFailed("no choices") from exc
            return Completion(text=content or "", usage=usage_from_litellm(data.get("usage")))
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
        if not finished:
            raise DirectFailed("the stream ended before a finish_reason")
    return Completion(text="".join(parts), usage=usage_from_litellm(usage))
