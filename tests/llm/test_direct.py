"""Tests for rlm_kernel.llm.direct: a process's first calls, made while litellm is still being
imported, go out directly to OpenAI-compatible providers; litellm's path takes over otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from rlm_kernel.llm.direct import direct_route

from .helpers import ROOT, TESTS


def test_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "OPENROUTER_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(var, raising=False)
    assert direct_route("openai/gpt-4o-mini", None, None) is None  # no key: litellm says so
    monkeypatch.setenv("OPENAI_API_KEY", "sk-a")
    r = direct_route("openai/gpt-4o-mini", None, "sk-fallback")
    assert r is not None
    assert (r.url, r.key, r.model) == (
        "https://api.openai.com/v1/chat/completions",
        "sk-a",  # the provider's own variable wins over LLM_API_KEY
        "gpt-4o-mini",
    )
    r = direct_route("openai/local-model", "http://127.0.0.1:8000/v1/", None)
    assert r is not None and r.url == "http://127.0.0.1:8000/v1/chat/completions"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://proxy/v1")
    r = direct_route("openai/gpt-4o-mini", None, None)
    assert r is not None and r.url == "http://proxy/v1/chat/completions"
    r = direct_route("openrouter/google/gemini-3-flash-preview", None, "sk-llm")
    assert r is not None
    assert (r.url, r.key, r.model) == (
        "https://openrouter.ai/api/v1/chat/completions",
        "sk-llm",
        "google/gemini-3-flash-preview",
    )
    for model in ("anthropic/claude-sonnet-4-5", "scripted/x.py", "gpt-4o", "openai/"):
        assert direct_route(model, None, "sk") is None


_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
from faults.openai_server import FaultServer, error, reply
srv = FaultServer().start()
srv.script(*[eval(b) for b in {script!r}])
import rlm_kernel.llm as m
from rlm_kernel.llm import runtime
runtime.prewarm()  # the background import, as `rlm run` and the kernel start it
c = m.LLMClient(api_base=srv.api_base, retries=1)
c.retry.base_s = 0.01
seen = []
out = []
for i in range({calls}):
    r = c.complete([{{"role": "user", "content": "hi"}}], model="openai/fault-model",
                   on_text=lambda o, t: seen.append((o, t)))
    out.append([r.text, r.usage.prompt_tokens, r.usage.completion_tokens, r.attempts])
agents = [q.headers.get("User-Agent", "") for q in srv.requests]
print(json.dumps({{"out": out, "seen": seen, "kinds": srv.kinds(), "agents": agents,
                  "streams": [q.stream for q in srv.requests]}}))
srv.stop()
"""


def _run(script: list[str], calls: int) -> dict[str, object]:
    code = textwrap.dedent(_SCRIPT.format(tests=str(TESTS), script=script, calls=calls))
    env = {**os.environ, "OPENAI_API_KEY": "sk-direct-test", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_the_first_call_goes_out_before_litellm_is_imported_and_streams() -> None:
    reply = "word " * 40
    got = _run([f"reply({reply!r}, chunk_s=0.01, chunk_chars=9)", "reply('second')"], calls=2)
    assert got["kinds"] == ["reply", "reply"]
    first, second = got["agents"]  # type: ignore[misc]
    assert first.startswith("rlm-kernel/") and "(direct)" in first
    assert "rlm-kernel" not in second  # litellm (the openai SDK) made the next call
    assert got["streams"] == [True, True]
    out = got["out"]
    assert out[0][0] == reply and out[0][1] > 0 and out[0][2] > 0  # type: ignore[index]
    assert out[1][0] == "second"  # type: ignore[index]
    text = ""
    for offset, piece in got["seen"]:  # type: ignore[attr-defined]
        text = text[:offset] + piece
    assert text.endswith("second") and len(got["seen"]) >= 2  # type: ignore[arg-type]


def test_a_failed_direct_call_is_made_again_on_litellms_path() -> None:
    got = _run(["error(500, message='not now')", "reply('recovered')"], calls=1)
    assert got["kinds"] == ["error", "reply"]
    assert "(direct)" in got["agents"][0] and "rlm-kernel" not in got["agents"][1]  # type: ignore[index]
    assert got["out"][0][0] == "recovered"  # type: ignore[index]
