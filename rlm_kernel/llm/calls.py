"""One LLM call on the LLM loop: the litellm request, retries within a deadline, the stream.

`run_call` is a coroutine: cancelling its task (the caller's cancel, or the deadline) stops the
request where it is — a streamed reply's HTTP response is closed, so the provider sees the
disconnect and stops generating (and billing). Text of a streamed reply reaches the caller
through a `TextBuffer`, which the caller's own thread drains (no caller code runs on the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import pricing, runtime
from .direct import DirectNoChoices, DirectStatus, direct_call, provider_error
from .errors import (
    CUSTOM_PROVIDERS,
    LLMError,
    describe,
    fatal_error,
    provider_of,
    timed_out,
)
from .providers import INFO_DEFAULTS, track_call
from .retry import RetryPolicy, is_transient
from .runtime import import_litellm
from .usage import Completion, Usage, usage_from_litellm

__all__ = ["CallSpec", "TextBuffer", "run_call"]

_CACHE_CONTROL = {"type": "ephemeral"}
_CACHE_PROVIDERS = ("anthropic",)
_CACHE_CLAUDE_ROUTES = ("bedrock", "bedrock_converse", "vertex_ai", "openrouter")


class TextBuffer:
    """The text of a streamed call so far, written by the loop and read by the caller's thread.

    A retried attempt starts over: `take` then hands out the whole new text with offset 0.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: list[str] = []
        self._size = 0
        self._taken = 0
        self._restarted = False

    def restart(self) -> None:
        """A new attempt begins."""
        with self._lock:
            if self._size or self._taken:
                self._restarted = True
            self._parts, self._size = [], 0

    def add(self, piece: str) -> None:
        """Text that just arrived."""
        with self._lock:
            self._parts.append(piece)
            self._size += len(piece)

    def take(self) -> tuple[int, str] | None:
        """`(offset, text)` not handed out yet, or None; offset 0 after a restart."""
        with self._lock:
            if self._restarted:
                self._restarted, self._taken = False, 0
            if self._size == self._taken:
                return None
            text = "".join(self._parts)
            self._parts = [text]
            offset, self._taken = self._taken, self._size
            return offset, text[offset:]


@dataclass
class CallSpec:
    """Everything one call needs: the model, the litellm arguments, the deadline, the policy."""

    model: str
    kwargs: dict[str, Any]
    limit_s: float
    retries: int
    retry: RetryPolicy
    stream: bool = False
    custom: bool = False
    has_key: bool = False
    fallback_key: str | None = None  # LLM_API_KEY: sent where the provider's variable is unset
    direct: Any = None  # a `direct.DirectRoute` while litellm is still being imported
    text: TextBuffer = field(default_factory=TextBuffer)


def build_kwargs(
    model: str,
    messages: list[dict[str, Any]],
    *,
    info: Mapping[str, Any] | None,
    timeout: float,
    temperature: float | None,
    max_tokens: int | None,
    api_base: str | None,
) -> dict[str, Any]:
    """litellm's arguments for a call. `timeout` is the client's (constant: litellm keeps one
    HTTP client per timeout); a call's own deadline is enforced on the loop."""
    kwargs: dict[str, Any] = {"model": model, "messages": messages, "timeout": timeout}
    if temperature is not None:
        kwargs["temperature"] = temperature
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    if provider_of(model) in CUSTOM_PROVIDERS:
        kwargs["metadata"] = {"rlm_info": {**INFO_DEFAULTS, **(info or {})}}
        return kwargs
    kwargs["max_retries"] = 0  # retries are ours; no hidden retries in the provider SDK
    if api_base:
        kwargs["api_base"] = api_base
    if uses_cache_breakpoints(model):
        kwargs["messages"] = with_cache_breakpoints(messages)
    return kwargs


def uses_cache_breakpoints(model: str) -> bool:
    """Whether the provider caches prompts only where told to (Anthropic's `cache_control`).

    OpenAI, DeepSeek and Gemini cache a repeated prefix by themselves; litellm strips the marks
    where a route does not take them, but not on every OpenAI-compatible server, so they are
    added only where they pay.
    """
    provider = provider_of(model)
    if provider in _CACHE_PROVIDERS:
        return True
    return provider in _CACHE_CLAUDE_ROUTES and "claude" in model.lower()


def with_cache_breakpoints(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of `messages` with cache breakpoints on the system prompt and the last two user
    messages (the prefix this turn writes to the cache, and the one the last turn wrote)."""
    marked = {i for i, m in enumerate(messages) if m.get("role") == "system"}
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    marked.update(users[-2:])
    out = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if i in marked and isinstance(content, str) and content:
            part = {"type": "text", "text": content, "cache_control": dict(_CACHE_CONTROL)}
            message = {**message, "content": [part]}
        out.append(message)
    return out


async def run_call(litellm: Any, spec: CallSpec) -> Completion:
    """Make the call, retrying transient errors until `spec.limit_s` has passed.

    With a direct route (`spec.direct`) attempts go out as plain HTTP requests and are priced
    from litellm's cost map read as data: litellm is not imported for them. An HTTP error is
    mapped to litellm's exception for it (same retries, `Retry-After`, messages: litellm is
    imported then, once per process), and a reply that is not a whole one sends the call over
    to litellm's path for the rest of its attempts. `litellm` is None while it is not imported
    (only a direct call starts then)."""
    start = time.monotonic()
    deadline = start + spec.limit_s
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise timed_out(spec.model, spec.limit_s, attempt - 1, None)
        try:
            if spec.direct is not None:
                completion = await asyncio.wait_for(_direct(spec), remaining)
                if completion is None:  # litellm's path makes this attempt, and the next ones
                    spec.direct = None
                    attempt -= 1
                    continue
                if completion.usage.cost_usd <= 0:  # no bill from the provider: the cost map's
                    completion.usage.cost_usd = await _direct_price(spec.model, completion.usage)
                completion.model = spec.model
            else:
                if litellm is None:
                    litellm = await asyncio.to_thread(import_litellm)
                _ready(litellm, spec)
                completion = await asyncio.wait_for(_attempt(litellm, spec), remaining)
        except asyncio.TimeoutError:
            raise timed_out(spec.model, spec.limit_s, attempt, None) from None
        except LLMError:
            raise
        except Exception as exc:
            if litellm is None:
                litellm = await asyncio.to_thread(import_litellm)
            if isinstance(exc, DirectStatus):
                exc = provider_error(litellm, spec.model, exc)
            missing = [] if spec.custom or spec.has_key else missing_keys(litellm, spec.model)
            if not is_transient(litellm, exc) or _about_keys(exc, missing):
                raise fatal_error(spec.model, exc, missing, spec.has_key) from exc
            if attempt > spec.retries:
                raise LLMError(
                    f"LLM call to model '{spec.model}' failed after {attempt} attempts: "
                    f"{describe(exc)}; the provider is overloaded or unreachable - try "
                    "again later, or raise `retries`"
                ) from exc
            delay = spec.retry.delay(exc, attempt)
            remaining = deadline - time.monotonic()
            if delay >= remaining:
                await asyncio.sleep(max(0.0, remaining))
                raise timed_out(spec.model, spec.limit_s, attempt, exc) from exc
            await asyncio.sleep(delay)
            continue
        completion.elapsed_s = time.monotonic() - start
        completion.attempts = attempt
        return completion


async def _direct(spec: CallSpec) -> Completion | None:
    """A direct attempt's reply; None when litellm's path should make the call instead (the
    reply was not a whole one). An HTTP error status raises `DirectStatus`."""
    options: dict[str, Any] = {
        k: spec.kwargs[k] for k in ("temperature", "max_tokens") if k in spec.kwargs
    }
    try:
        return await direct_call(
            spec.direct,
            spec.kwargs["messages"],
            stream=spec.stream,
            text=spec.text,
            timeout=spec.kwargs["timeout"],
            options=options,
        )
    except DirectNoChoices:
        raise _no_choices(spec.model) from None
    except (DirectStatus, asyncio.CancelledError):
        raise
    except Exception:  # anything else: litellm's path knows what it means
        return None


async def _direct_price(model: str, usage: Usage) -> float:
    """The price of a direct call per litellm's cost map, read as data (`pricing`: litellm is
    not imported for it). A model's first look-up reads the map (~0.1 s of CPU) on a worker
    thread, so the loop's other calls go on meanwhile; a model priced in a way only litellm's
    calculator follows is priced by litellm (imported then). Once litellm is imported (another
    model, an HTTP error), litellm prices: it also knows the prices given to it at run time
    (`litellm.register_model`)."""
    litellm = runtime.imported()
    if litellm is not None:
        return _price(litellm, model, usage) if ensure_priced(litellm, model) else 0.0
    args = (model, usage.prompt_tokens, usage.completion_tokens, usage.cache_read_tokens)
    if pricing.looked_up(model):
        cost = pricing.price(*args)
    else:
        cost = await asyncio.to_thread(pricing.price, *args)
    if cost != pricing.NEEDS_LITELLM:
        return cost
    litellm = await asyncio.to_thread(import_litellm)
    return _price(litellm, model, usage)


def _ready(litellm: Any, spec: CallSpec) -> None:
    """What needs litellm: LLM_API_KEY where the provider's variable is unset; a price."""
    if spec.custom:
        return
    ensure_priced(litellm, spec.model)
    if spec.fallback_key and missing_keys(litellm, spec.model):
        spec.kwargs["api_key"] = spec.fallback_key


def _about_keys(exc: BaseException, missing: list[str]) -> bool:
    if not missing:
        return False
    text = str(exc).lower()
    return any(w in text for w in ("credential", "api_key", "api key", "auth"))


def missing_keys(litellm: Any, model: str) -> list[str]:
    """Credentials litellm misses for `model` (API base URLs with defaults don't count)."""
    try:
        env = litellm.validate_environment(model=model)
    except Exception:
        return []
    if env.get("keys_in_environment"):
        return []
    return [k for k in env.get("missing_keys") or [] if not str(k).endswith("_API_BASE")]


async def _attempt(litellm: Any, spec: CallSpec) -> Completion:
    kwargs = dict(spec.kwargs)
    tracking: Any = contextlib.nullcontext()
    if spec.custom:
        kwargs["metadata"] = dict(kwargs["metadata"])
        tracking = track_call(kwargs["metadata"])
    with tracking as state:
        try:
            if spec.stream:
                return await _streamed(litellm, spec, kwargs)
            response = await litellm.acompletion(**kwargs)
        except Exception:
            if state is not None and state.error is not None:
                raise state.error from None
            raise
    return _completion(litellm, spec.model, response)


async def _streamed(litellm: Any, spec: CallSpec, kwargs: dict[str, Any]) -> Completion:
    """Read a streamed reply into `spec.text`; the stream is closed however this ends."""
    spec.text.restart()
    stream = await litellm.acompletion(
        **kwargs, stream=True, stream_options={"include_usage": True}
    )
    parts: list[str] = []
    raw_usage: Any = None
    answered = False  # a chunk with a choice came (a stream of none is no completion)
    try:
        async for chunk in stream:
            choices = getattr(chunk, "choices", None)
            if choices:
                answered = True
                piece = getattr(choices[0].delta, "content", None)
                if piece:
                    parts.append(piece)
                    spec.text.add(piece)
            found = getattr(chunk, "usage", None)
            if found is not None:
                raw_usage = found
    finally:
        await stream.aclose()
    if not answered:
        raise _no_choices(spec.model)
    text = "".join(parts)
    usage = usage_from_litellm(raw_usage)
    billed = getattr(raw_usage, "cost", None)
    if isinstance(billed, (int, float)) and not isinstance(billed, bool) and billed > 0:
        usage.cost_usd = float(billed)
    else:
        usage.cost_usd = _price(litellm, spec.model, usage)
    return Completion(text=text, usage=usage, model=spec.model)


def _price(litellm: Any, model: str, usage: Usage) -> float:
    """What `usage` costs on `model` per litellm's cost map (cached prompt tokens at their
    price); 0 for a model litellm cannot price."""
    try:
        prompt, completion = litellm.cost_per_token(
            model=model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cache_read_input_tokens=usage.cache_read_tokens,
        )
        return float(prompt) + float(completion)
    except Exception:  # litellm cannot price every model; never fail on pricing
        return 0.0


def _completion(litellm: Any, model: str, response: Any) -> Completion:
    """Text, usage and cost of a whole (not streamed) litellm response."""
    try:
        text = response.choices[0].message.content
    except (AttributeError, IndexError, KeyError, TypeError) as exc:
        raise _no_choices(model) from exc
    usage = usage_from_litellm(getattr(response, "usage", None))
    hidden = getattr(response, "_hidden_params", None) or {}
    billed = hidden.get("response_cost") if isinstance(hidden, dict) else None
    if isinstance(billed, (int, float)) and not isinstance(billed, bool):
        usage.cost_usd = float(billed)  # litellm priced it already
    else:
        usage.cost_usd = _price(litellm, model, usage)
    return Completion(text=text if isinstance(text, str) else "", usage=usage, model=model)


def _no_choices(model: str) -> LLMError:
    return LLMError(
        f"Model '{model}' returned a response without choices (no completion); "
        "try again, or check the provider's status"
    )


_PRICED: dict[str, bool] = {}


def ensure_priced(litellm: Any, model: str) -> bool:
    """Give a model litellm has no price for a price of 0, once.

    litellm prices every call; for a model missing from its cost map (a local server's) it
    searches its whole map for a near match each time, which costs more CPU than the rest of
    the call. Known models are left alone. Returns whether litellm has a price for it (a model
    priced 0 here costs nothing: no need to ask litellm for each call's cost).
    """
    if provider_of(model) in CUSTOM_PROVIDERS:
        return False
    if model in _PRICED:
        return _PRICED[model]
    try:
        litellm.get_model_info(model)
        _PRICED[model] = True
        return True
    except Exception:
        _PRICED[model] = False
    provider = provider_of(model) or "openai"
    with contextlib.suppress(Exception):
        litellm.register_model(
            {
                model: {
                    "input_cost_per_token": 0.0,
                    "output_cost_per_token": 0.0,
                    "cache_creation_input_token_cost": 0.0,
                    "cache_read_input_token_cost": 0.0,
                    "litellm_provider": provider,
                    "mode": "chat",
                }
            }
        )
    return False
