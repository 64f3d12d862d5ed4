"""Tests for rlm_kernel.llm.usage: counters and reading them from litellm's usage objects."""

from __future__ import annotations

from rlm_kernel.llm import USAGE_KEYS, Usage
from rlm_kernel.llm.runtime import import_litellm
from rlm_kernel.llm.usage import usage_from_litellm


def test_usage_arithmetic() -> None:
    a = Usage(llm_calls=1, prompt_tokens=10, completion_tokens=5, cost_usd=0.5, cache_read_tokens=4)
    b = Usage(llm_calls=2, prompt_tokens=1, completion_tokens=2, cost_usd=0.25)
    c = a + b
    assert c == Usage(
        llm_calls=3, prompt_tokens=11, completion_tokens=7, cost_usd=0.75, cache_read_tokens=4
    )
    assert a == Usage(
        llm_calls=1, prompt_tokens=10, completion_tokens=5, cost_usd=0.5, cache_read_tokens=4
    )
    a.add(b)
    assert a == c
    assert c.total_tokens == 18
    assert c.to_dict() == {
        "llm_calls": 3,
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "cache_read_tokens": 4,
        "cost_usd": 0.75,
    }
    assert tuple(c.to_dict()) == USAGE_KEYS
    assert Usage.from_dict(c.to_dict()) == c
    assert Usage.from_dict({"llm_calls": 1}) == Usage(llm_calls=1)  # old records: no cache key
    assert Usage() + Usage() == Usage()


def test_cached_tokens_from_openai_and_anthropic_shapes() -> None:
    litellm = import_litellm()
    openai_style = litellm.Usage(
        prompt_tokens=1000,
        completion_tokens=10,
        total_tokens=1010,
        prompt_tokens_details={"cached_tokens": 768},
    )
    u = usage_from_litellm(openai_style)
    assert (u.llm_calls, u.prompt_tokens, u.completion_tokens, u.cache_read_tokens) == (
        1,
        1000,
        10,
        768,
    )
    anthropic_style = {"prompt_tokens": 900, "completion_tokens": 5, "cache_read_input_tokens": 512}
    assert usage_from_litellm(anthropic_style).cache_read_tokens == 512
    assert usage_from_litellm(None) == Usage(llm_calls=1)
    assert usage_from_litellm({"prompt_tokens": "x"}).prompt_tokens == 0  # junk counts as 0
