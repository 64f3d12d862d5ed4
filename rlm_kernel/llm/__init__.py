"""The LLM layer: litellm calls with retries, timeouts, cancellation, streaming, usage and cost;
scripted and replay models.

- `client` — `LLMClient`, the synchronous API agents and the bridge call (`complete`,
  `complete_many`); `calls` — one call as a task on the LLM loop (retries, the stream);
  `runtime` — litellm's one-time import (`prewarm`) and the loop; `direct` — calls to
  OpenAI-compatible providers as plain HTTP requests, priced by `pricing` from litellm's cost
  map read as data (a run whose calls all go that way never imports litellm).
- `providers` — the `scripted` and `replay` custom providers of litellm; `scripted`, `replay` —
  what they answer with.
- `usage` — `Usage`, `Completion`; `errors` — `LLMError` and friends; `retry` — backoff.
- `service` — `SubLLM`, the `llm_query` service of runs and notebook cells (import it from
  there: it uses the run's budget). Fitting an agent's messages into the context window is
  `rlm_kernel.history`.

litellm is imported lazily (``import litellm`` costs seconds and ~215 MB), once per process, with
the local cost map so nothing is fetched from the network; `prewarm_for(config)` starts it in
the background only where a call may go through it.
"""

from __future__ import annotations

from .client import LLMClient, OnText, prewarm_for
from .errors import (
    ContextWindowExceeded,
    LLMCancelled,
    LLMError,
    LLMTimeout,
    MissingAPIKey,
)
from .replay import clear_replays
from .runtime import import_litellm, prewarm
from .scripted import clear_scripts, register_scripted
from .usage import USAGE_KEYS, Completion, Usage

__all__ = [
    "USAGE_KEYS",
    "Completion",
    "ContextWindowExceeded",
    "LLMCancelled",
    "LLMClient",
    "LLMError",
    "LLMTimeout",
    "MissingAPIKey",
    "OnText",
    "Usage",
    "clear_caches",
    "import_litellm",
    "prewarm",
    "prewarm_for",
    "register_scripted",
]


def clear_caches() -> None:
    """Forget loaded scripts, parsed replays and in-process registrations."""
    clear_scripts()
    clear_replays()
