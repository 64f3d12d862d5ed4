"""Helpers of the LLM-layer tests: script files, clients with a fast backoff, unique names."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path
from typing import Any

from rlm_kernel.llm import LLMClient

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent


def script(tmp_path: Path, body: str, name: str = "model.py") -> Path:
    """Write a scripted model file."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def client(**kwargs: Any) -> LLMClient:
    """A client whose retries back off for 10 ms only."""
    c = LLMClient(**kwargs)
    c.retry.base_s = 0.01
    return c


def user(text: str) -> list[dict[str, str]]:
    """One user message."""
    return [{"role": "user", "content": text}]


def unique(prefix: str) -> str:
    """A name no other test registers."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
