"""The `scripted` and `replay` custom providers of litellm (`litellm.custom_provider_map`).

Both go through litellm's real call path (`acompletion`, streamed or not), so retries, usage and
``completion_cost`` run as for any provider. A script's ``respond`` runs on a worker thread (it may
block); its latency and the pauses of a streamed reply are asyncio sleeps, so a cancelled call
stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import uuid
import warnings
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import CUSTOM_PROVIDERS, LLMError, is_litellm_exception
from .replay import replay_respond
from .scripted import Script, register_scripted, resolve_script

__all__ = ["CallState", "content_chars", "register_providers", "track_call", "warm_first_call"]

INFO_DEFAULTS: dict[str, Any] = {
    "agent_id": None,
    "parent_id": None,
    "depth": 0,
    "task": None,
    "iteration": 0,
    "kind": "agent",
}
_PREWARM_NAME = "__rlm_prewarm__"


@dataclass
class CallState:
    """What a custom provider hands back beside litellm's result, for one attempt: the real
    error (litellm would turn any exception into a retried APIConnectionError)."""

    error: LLMError | None = None


_CALLS: dict[str, CallState] = {}
_CALLS_LOCK = threading.Lock()


@contextlib.contextmanager
def track_call(metadata: dict[str, Any]) -> Any:
    """Give one attempt of a custom-provider call a side channel (`metadata["rlm_call"]`)."""
    token = uuid.uuid4().hex
    state = CallState()
    metadata["rlm_call"] = token
    with _CALLS_LOCK:
        _CALLS[token] = state
    try:
        yield state
    finally:
        with _CALLS_LOCK:
            _CALLS.pop(token, None)


def content_chars(message: Any) -> int:
    """Characters of a message's content (text parts of a multi-part content are summed)."""
    content = message.get("content") if isinstance(message, Mapping) else None
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                total += len(part["text"])
            elif isinstance(part, str):
                total += len(part)
        return total
    return len(str(content))


def _tokens(messages: list[Any], text: str) -> dict[str, int]:
    prompt = max(1, math.ceil(sum(content_chars(m) for m in messages) / 4))
    completion = max(1, math.ceil(len(text) / 4))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class _Call:
    """One call as the provider sees it: which model, the info for `respond`, the side channel."""

    def __init__(self, model: str, kwargs: Mapping[str, Any]) -> None:
        params = kwargs.get("litellm_params") or {}
        self.provider = str(params.get("custom_llm_provider") or "scripted")
        self.model = model
        metadata = params.get("metadata") or {}
        info = metadata.get("rlm_info")
        self.info: dict[str, Any] = info if isinstance(info, dict) else dict(INFO_DEFAULTS)
        self.state = _CALLS.get(str(metadata.get("rlm_call")))
        self.script: Script | None = None

    def fail(self, exc: Exception) -> LLMError:
        """The error to raise for `exc` (litellm's own pass through: it maps them)."""
        if is_litellm_exception(exc):
            raise exc
        error = (
            exc
            if isinstance(exc, LLMError)
            else LLMError(f"{self.provider} model {self.model}: {type(exc).__name__}: {exc}")
        )
        if self.state is not None:
            self.state.error = error
        return error

    def latency(self) -> float:
        if self.provider == "replay":
            return 0.0
        self.script = resolve_script(self.model)
        return self.script.latency_s()

    def respond(self, messages: list[Any]) -> str:
        if self.provider == "replay":
            text = replay_respond(self.model, messages, self.info)
            _ensure_cost(f"replay/{self.model}", (0.0, 0.0))
            return text
        assert self.script is not None
        text = self.script.call(messages, self.info)
        _ensure_cost(f"{self.provider}/{self.model}", self.script.cost_per_token())
        return text

    async def text(self, messages: list[Any]) -> str:
        """Wait the latency, then run `respond` on a worker thread."""
        try:
            latency = self.latency()
            if latency > 0:
                await asyncio.sleep(latency)
            return await asyncio.to_thread(self.respond, messages)
        except Exception as exc:
            error = self.fail(exc)
            if error is exc:
                raise
            raise error from exc


def _fill(model_response: Any, model: str, messages: list[Any], text: str) -> Any:
    from .runtime import import_litellm

    model_response.choices[0].message.content = text
    model_response.model = model
    model_response.usage = import_litellm().Usage(**_tokens(messages, text))
    return model_response


def _completion(self: Any, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> Any:
    """`CustomLLM.completion` (litellm's sync path; the engine itself calls `acompletion`)."""
    call = _Call(model, kwargs)
    try:
        latency = call.latency()
        if latency > 0:
            threading.Event().wait(latency)
        text = call.respond(messages)
    except Exception as exc:
        error = call.fail(exc)
        if error is exc:
            raise
        raise error from exc
    return _fill(kwargs["model_response"], model, messages, text)


async def _acompletion(
    self: Any, model: str, messages: list[Any], *args: Any, **kwargs: Any
) -> Any:
    """`CustomLLM.acompletion` of the scripted and replay providers."""
    call = _Call(model, kwargs)
    text = await call.text(messages)
    return _fill(kwargs["model_response"], model, messages, text)


async def _astreaming(
    self: Any, model: str, messages: list[Any], *args: Any, **kwargs: Any
) -> AsyncIterator[Any]:
    """`CustomLLM.astreaming`: the reply in pieces (``STREAM_CHUNK_S`` apart), then usage."""
    call = _Call(model, kwargs)
    text = await call.text(messages)
    pause, size = call.script.stream_chunks() if call.script is not None else (0.0, 0)
    for n, piece in enumerate(_pieces(text, size if pause > 0 else 0)):
        if n and pause > 0:
            await asyncio.sleep(pause)
        yield {"text": piece, "is_finished": False, "finish_reason": "", "usage": None, "index": 0}
    usage = _tokens(messages, text)
    yield {"text": "", "is_finished": True, "finish_reason": "stop", "usage": usage, "index": 0}


def _pieces(text: str, size: int) -> list[str]:
    """`text` in pieces of `size` and `size + 1` characters in turn (0: one piece). Alternating
    sizes: litellm takes 100 identical chunks in a row ("xxxx…") for a model stuck in a loop."""
    if size <= 0 or len(text) <= size:
        return [text]
    out: list[str] = []
    i = 0
    while i < len(text):
        step = size + len(out) % 2
        out.append(text[i : i + step])
        i += step
    return out


def register_providers(litellm: Any) -> None:
    """Add the ``scripted`` and ``replay`` custom providers to litellm."""
    handler_cls = type(
        "RLMCustomProvider",
        (litellm.CustomLLM,),
        {
            "completion": _completion,
            "acompletion": _acompletion,
            "astreaming": _astreaming,
            "__module__": __name__,
        },
    )
    present = {item.get("provider") for item in litellm.custom_provider_map}
    for provider in CUSTOM_PROVIDERS:
        if provider not in present:
            litellm.custom_provider_map.append(
                {"provider": provider, "custom_handler": handler_cls()}
            )
    setup = getattr(litellm.utils, "custom_llm_setup", None)
    if setup is not None:
        setup()
    else:  # pragma: no cover - older litellm
        for provider in CUSTOM_PROVIDERS:
            if provider not in litellm.provider_list:
                litellm.provider_list.append(provider)
            if provider not in litellm._custom_providers:
                litellm._custom_providers.append(provider)


def warm_first_call(litellm: Any) -> None:
    """Make litellm's first calls now (they build pydantic models, ~0.35 s) instead of in an agent.

    pydantic warns about one of litellm's TypedDicts while it builds them; that warning is
    litellm's, not the user's, and under warnings-as-errors it would fail whichever call came
    first — so it is silenced here, once, while the import lock is held.
    """
    from .runtime import submit

    model = register_scripted(_PREWARM_NAME, lambda _m, _i: "ok")
    messages = [{"role": "user", "content": "ok"}]

    async def calls() -> None:
        await litellm.acompletion(model=model, messages=messages)
        stream = await litellm.acompletion(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True}
        )
        async for _chunk in stream:
            pass

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Item 'summary' on TypedDict class")
        with contextlib.suppress(Exception):
            submit(calls()).result(60)


_COSTS: dict[str, tuple[float, float]] = {}
_COSTS_LOCK = threading.Lock()


def _ensure_cost(model: str, cost: tuple[float, float]) -> None:
    """Register the price of a custom model with litellm so ``completion_cost`` can see it."""
    if _COSTS.get(model) == cost:
        return
    from .runtime import import_litellm

    with _COSTS_LOCK:
        if _COSTS.get(model) == cost:
            return
        provider = model.split("/", 1)[0]
        import_litellm().register_model(
            {
                model: {
                    "input_cost_per_token": float(cost[0]),
                    "output_cost_per_token": float(cost[1]),
                    # given explicitly so litellm does not warn that cache pricing defaults to 0
                    "cache_creation_input_token_cost": 0.0,
                    "cache_read_input_token_cost": 0.0,
                    "litellm_provider": provider,
                    "mode": "chat",
                }
            }
        )
        _COSTS[model] = cost
