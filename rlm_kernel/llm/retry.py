"""Which provider errors are worth another try, and how long to wait before it."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["RetryPolicy", "is_transient", "retry_after"]

_TRANSIENT = (
    "RateLimitError",
    "APIConnectionError",
    "Timeout",
    "InternalServerError",
    "ServiceUnavailableError",
    "BadGatewayError",
)


def is_transient(litellm: Any, exc: BaseException) -> bool:
    """True for rate limits, connection failures, timeouts and 5xx errors."""
    types = tuple(t for t in (getattr(litellm, n, None) for n in _TRANSIENT) if isinstance(t, type))
    if isinstance(exc, types):
        return True
    # Unclassified provider failures with a 5xx status are worth another try.
    status = getattr(exc, "status_code", None)
    return type(exc).__name__ == "APIError" and isinstance(status, int) and status >= 500


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter, capped; a provider's Retry-After wins."""

    base_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 30.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based), jittered."""
        delay = min(self.cap_s, self.base_s * self.factor ** (attempt - 1))
        return delay / 2 + random.uniform(0.0, delay / 2)

    def delay(self, exc: BaseException, attempt: int) -> float:
        """The provider's Retry-After (capped) if it sent one, else `backoff(attempt)`."""
        asked = retry_after(exc, self.cap_s)
        return self.backoff(attempt) if asked is None else asked


def retry_after(exc: BaseException, cap: float) -> float | None:
    """Seconds the provider asked to wait (a Retry-After header of a 429/503), capped; else None."""
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    try:
        value = None if headers is None else headers.get("retry-after", headers.get("Retry-After"))
    except Exception:
        return None
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        try:  # an HTTP date
            from email.utils import parsedate_to_datetime

            seconds = parsedate_to_datetime(str(value)).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(cap, max(0.0, seconds))
