"""Tests for rlm_kernel.llm.retry: backoff and the provider's Retry-After."""

from __future__ import annotations

import email.utils
import time

from rlm_kernel.llm.retry import RetryPolicy, retry_after


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy()
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (10, 30.0)]:
        delays = [policy.backoff(attempt) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len(set(delays)) > 1


class _Exc(Exception):
    def __init__(self, value: str | None) -> None:
        self.litellm_response_headers = {} if value is None else {"retry-after": value}


def test_retry_after_header_seconds_and_dates() -> None:
    assert retry_after(_Exc("2"), 30) == 2.0
    assert retry_after(_Exc("120"), 30) == 30  # capped
    assert retry_after(_Exc("-1"), 30) == 0.0
    assert retry_after(_Exc("soon"), 30) is None
    assert retry_after(_Exc("nan"), 30) is None
    assert retry_after(_Exc(None), 30) is None
    assert retry_after(Exception("no headers"), 30) is None
    date = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 2 <= (retry_after(_Exc(date), 30) or 0) <= 5


def test_the_providers_wait_wins_over_backoff() -> None:
    policy = RetryPolicy(base_s=10)
    assert policy.delay(_Exc("1"), 1) == 1.0
    assert 5 <= policy.delay(_Exc(None), 1) <= 10
