"""Usage counters and the result of one LLM call; reading both out of a litellm response."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["USAGE_KEYS", "Completion", "Usage", "usage_from_litellm"]

USAGE_KEYS = ("llm_calls", "prompt_tokens", "completion_tokens", "cache_read_tokens", "cost_usd")
"""The keys of a usage dict in records, events and the widget."""


@dataclass
class Usage:
    """LLM usage counters: calls, tokens (prompt tokens read from the provider's cache among
    them) and cost in USD."""

    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cache_read_tokens: int = 0
    """Prompt tokens the provider served from its prompt cache (billed lower; part of
    `prompt_tokens`)."""

    def __add__(self, other: Usage) -> Usage:
        """Return the sum of two usages."""
        if not isinstance(other, Usage):
            return NotImplemented
        out = Usage()
        out.add(self)
        out.add(other)
        return out

    def add(self, other: Usage) -> None:
        """Add another usage to this one in place."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int | float]:
        """Return the counters as a JSON-ready dict (the run record's ``usage``)."""
        return {k: getattr(self, k) for k in USAGE_KEYS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        """Build a usage from a dict as written by ``to_dict`` (missing keys count as 0)."""
        return cls(
            llm_calls=int(data.get("llm_calls", 0) or 0),
            prompt_tokens=int(data.get("prompt_tokens", 0) or 0),
            completion_tokens=int(data.get("completion_tokens", 0) or 0),
            cost_usd=float(data.get("cost_usd", 0.0) or 0.0),
            cache_read_tokens=int(data.get("cache_read_tokens", 0) or 0),
        )


@dataclass
class Completion:
    """The result of one successful LLM call (possibly after retries)."""

    text: str
    usage: Usage = field(default_factory=lambda: Usage(llm_calls=1))
    model: str = ""
    elapsed_s: float = 0.0
    attempts: int = 1


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def usage_from_litellm(raw: Any) -> Usage:
    """One call's `Usage` from a litellm usage object (or dict): tokens and cached tokens.

    Cached prompt tokens come as OpenAI's `prompt_tokens_details.cached_tokens` or Anthropic's
    `cache_read_input_tokens` (litellm fills both where it can).
    """
    usage = Usage(llm_calls=1)
    if raw is None:
        return usage
    usage.prompt_tokens = _int(_get(raw, "prompt_tokens"))
    usage.completion_tokens = _int(_get(raw, "completion_tokens"))
    details = _get(raw, "prompt_tokens_details")
    cached = _int(_get(details, "cached_tokens")) if details is not None else 0
    usage.cache_read_tokens = max(cached, _int(_get(raw, "cache_read_input_tokens")))
    return usage
