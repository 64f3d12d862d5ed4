"""Helpers of the LLM-layer tests: script files, clients with a fast backoff, unique names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def run_python(code: str) -> dict[str, Any]:
    """Run `code` in a fresh interpreter from the project's root with a test API key and the local
    cost map; return the JSON object its last line of stdout prints (the script must succeed)."""
    env = {**os.environ, "OPENAI_API_KEY": "sk-direct-test", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
