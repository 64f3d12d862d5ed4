"""`LLMClient`: the synchronous face of the LLM loop (agents and the bridge run on threads).

A call is a task on the process's LLM loop (`runtime.submit`). The calling thread waits for it,
checking its cancel event every `poll_s`, and hands a streamed reply's text to `on_text` at
most every `text_interval_s` — on its own thread, so no caller code runs on the loop. A
cancelled call's task is cancelled and waited for (its HTTP stream is closed) before
`LLMCancelled` is raised: nothing is left running, or billed, in the background.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import runtime
from .calls import CallSpec, TextBuffer, build_kwargs, missing_keys, run_call
from .direct import direct_route
from .errors import (
    CUSTOM_PROVIDERS,
    LLMError,
    MissingAPIKey,
    cancelled,
    no_key_message,
    provider_of,
    unknown_provider,
)
from .pricing import PRICED_PROVIDERS
from .retry import RetryPolicy
from .usage import Completion

if TYPE_CHECKING:
    from ..config import RLMConfig

__all__ = ["LLMClient", "OnText", "prewarm_for"]

_KEY_VARIABLES = {
    "openai": "OPENAI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "groq": "GROQ_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "xai": "XAI_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
}
"""The key variable of providers litellm routes by name alone (their model names need no more)."""

OnText = Callable[[int, str], None]
"""Receives a streamed reply's text as it comes: `(offset, text)`; offset 0 starts it over."""

_CANCEL_GRACE_S = 5.0  # longest wait for a cancelled call's task to close its stream


class LLMClient:
    """Calls LLMs through litellm: retries, a wall-time cap, cancellation, streaming, usage/cost."""

    poll_s: float = 0.05
    """How often a waiting caller checks its cancel event."""
    text_interval_s: float = 0.1
    """Least time between two `on_text` calls of one streamed reply."""

    def __init__(
        self,
        *,
        timeout: float = 600,
        retries: int = 3,
        temperature: float | None = None,
        max_tokens: int | None = None,
        api_key: str | None = None,
        api_base: str | None = None,
        stream: bool = True,
        direct: bool = True,
    ) -> None:
        """Configure defaults for every call made with this client (`direct`: OpenAI-compatible
        calls as plain HTTP requests, `llm.direct`)."""
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.api_key = api_key or None
        self.api_base = api_base or None
        self.stream = stream
        self.direct = direct
        self.retry = RetryPolicy()

    @classmethod
    def from_config(cls, config: RLMConfig) -> LLMClient:
        """The client a configuration asks for (runs and notebook cells build it here)."""
        m = config.model
        return cls(
            timeout=m.timeout,
            retries=m.retries,
            temperature=m.temperature,
            max_tokens=m.max_tokens,
            api_key=os.environ.get("LLM_API_KEY") or None,
            api_base=m.api_base,
            stream=m.stream,
            direct=m.direct,
        )

    # -- readiness ---------------------------------------------------------------------------

    def check_ready(self, model: str) -> None:
        """Raise MissingAPIKey (or LLMError for an unknown provider) before a run starts.

        A common provider whose key variable is set is ready without asking litellm (whose
        import takes seconds and goes on in the background meanwhile); OpenAI and OpenRouter
        (the plain-HTTP path's) never ask it: their one variable is what litellm would name."""
        provider = provider_of(model)
        if provider in CUSTOM_PROVIDERS or self.api_key:
            return
        variable = _KEY_VARIABLES.get(provider, "")
        if os.environ.get(variable):
            return
        if provider in PRICED_PROVIDERS:  # litellm's answer for them, without importing it
            raise MissingAPIKey(no_key_message(model, [variable]))
        litellm = runtime.import_litellm()
        try:
            litellm.get_llm_provider(model)
        except Exception as exc:
            raise unknown_provider(model) from exc
        missing = missing_keys(litellm, model)
        if missing:
            raise MissingAPIKey(no_key_message(model, missing))

    def needs_litellm(self, model: str) -> bool:
        """Whether calls to `model` go through litellm (so its import is worth starting early):
        all but the plain-HTTP path's (`direct` on, an `openai/` or `openrouter/` model; without
        its key, `check_ready` says what to set without litellm). Scripted and replay models
        are litellm's custom providers."""
        provider, _, name = model.partition("/")
        return not (self.direct and provider in PRICED_PROVIDERS and name)

    # -- calls -------------------------------------------------------------------------------

    def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str,
        info: Mapping[str, Any] | None = None,
        cancel: threading.Event | None = None,
        timeout: float | None = None,
        on_text: OnText | None = None,
    ) -> Completion:
        """Call `model`; retry transient errors; honour timeout and cancel. With `on_text`
        (and `stream` on), the reply is streamed and its text handed to `on_text` as it comes."""
        if cancel is not None and cancel.is_set():
            raise cancelled(model)
        spec = self._spec(messages, model, info, timeout, stream=on_text is not None)
        litellm = runtime.imported()
        if spec.direct is None and litellm is None:
            litellm = runtime.import_litellm()  # the one-time import is not counted in the timeout
        task = runtime.Task(run_call(litellm, spec))
        return self._wait(task, spec.text, cancel, model, on_text)  # type: ignore[no-any-return]

    def complete_many(
        self,
        batch: Sequence[list[dict[str, Any]]],
        *,
        model: str,
        info: Mapping[str, Any] | None = None,
        cancel: threading.Event | None = None,
        timeout: float | None = None,
        limit: int | None = None,
    ) -> list[Completion | LLMError]:
        """Make one call per message list at once (at most `limit` in flight), on the loop.

        Each slot holds its Completion or its LLMError, in order; a cancelled batch stops every
        call still running and raises LLMCancelled.
        """
        if cancel is not None and cancel.is_set():
            raise cancelled(model)
        if not batch:
            return []
        specs = [self._spec(m, model, info, timeout, stream=False) for m in batch]
        litellm = runtime.imported()
        if litellm is None and specs[0].direct is None:
            litellm = runtime.import_litellm()
        width = max(1, limit or len(specs))

        async def run_all() -> list[Completion | LLMError]:
            gate = asyncio.Semaphore(width)

            async def one(spec: CallSpec) -> Completion | LLMError:
                async with gate:
                    try:
                        return await run_call(litellm, spec)
                    except LLMError as exc:
                        return exc

            return list(await asyncio.gather(*(one(s) for s in specs)))

        task = runtime.Task(run_all())
        return self._wait(task, None, cancel, model, None)  # type: ignore[no-any-return]

    def _spec(
        self,
        messages: list[dict[str, Any]],
        model: str,
        info: Mapping[str, Any] | None,
        timeout: float | None,
        *,
        stream: bool,
    ) -> CallSpec:
        custom = provider_of(model) in CUSTOM_PROVIDERS
        kwargs = build_kwargs(
            model,
            messages,
            info=info,
            timeout=self.timeout,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            api_base=self.api_base,
        )
        return CallSpec(
            model=model,
            kwargs=kwargs,
            limit_s=self.timeout if timeout is None else float(timeout),
            retries=self.retries,
            retry=self.retry,
            stream=stream and self.stream,
            custom=custom,
            has_key=bool(self.api_key),
            fallback_key=None if custom else self.api_key,
            direct=direct_route(model, self.api_base, self.api_key) if self.direct else None,
        )

    def _wait(
        self,
        task: runtime.Task,
        text: TextBuffer | None,
        cancel: threading.Event | None,
        model: str,
        on_text: OnText | None,
    ) -> Any:
        """The task's result; on cancel, stop the task, wait until it has ended, raise."""
        if cancel is None and on_text is None:
            return task.future.result()
        last = time.monotonic()
        while True:
            try:
                result = task.future.result(timeout=self.poll_s)
                break
            except concurrent.futures.TimeoutError:
                pass
            if cancel is not None and cancel.is_set():
                task.cancel(_CANCEL_GRACE_S)
                raise cancelled(model) from None
            now = time.monotonic()
            if on_text is not None and text is not None and now - last >= self.text_interval_s:
                last = now
                _deliver(text, on_text)
        if on_text is not None and text is not None:
            _deliver(text, on_text)
        return result


def _deliver(text: TextBuffer, on_text: OnText) -> None:
    taken = text.take()
    if taken is not None:
        on_text(*taken)


def prewarm_for(config: RLMConfig) -> bool:
    """Start litellm's import in the background (`runtime.prewarm`) if a call of a run with
    `config` may go through litellm (its model or sub-model is not on the plain-HTTP path);
    returns whether it did. A run whose calls are all plain HTTP never imports litellm: ~215 MB
    and ~4 CPU-s less in the host (litellm is imported later only to map an HTTP error, or to
    price a model whose pricing only it follows)."""
    client = LLMClient.from_config(config)
    models = {config.model.name, config.model.sub_model or config.model.name}
    if any(client.needs_litellm(m) for m in models):
        runtime.prewarm()
        return True
    return False
