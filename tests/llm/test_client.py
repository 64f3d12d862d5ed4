"""Tests for rlm_kernel.llm.client and .calls: retries, deadlines, cancellation, streaming, real
providers' arguments (litellm.acompletion replaced: no network), batches, the lazy import."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rlm_kernel import llm
from rlm_kernel.llm import (
    Completion,
    LLMCancelled,
    LLMClient,
    LLMError,
    LLMTimeout,
    MissingAPIKey,
    register_scripted,
)
from rlm_kernel.llm.scripted import loaded_script

from .helpers import ROOT, client, script, unique, user

# ---------------------------------------------------------------------------------------------
# import behaviour


def test_import_is_lazy_and_cost_map_is_local() -> None:
    code = textwrap.dedent(
        """
        import os, sys
        import rlm_kernel.llm as m
        import rlm_kernel.runner, rlm_kernel.records, rlm_kernel.llm.service
        m.LLMClient(); m.Usage()
        assert "litellm" not in sys.modules, "imported too early"
        name = m.register_scripted("lazy", lambda messages, info: "ok")
        assert "litellm" not in sys.modules, "imported by register_scripted"
        out = m.LLMClient().complete([{"role": "user", "content": "hi"}], model=name)
        assert out.text == "ok"
        assert "litellm" in sys.modules
        assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
        print("OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK"
    # no cost-map fetch attempt, no banners, no complaints of litellm's logging at exit
    assert "cost map" not in proc.stderr.lower(), proc.stderr
    assert "LiteLLM" not in proc.stderr, proc.stderr


def test_prewarm_then_call() -> None:
    llm.prewarm()
    name = register_scripted(unique("warm"), lambda messages, info: "warm")
    assert client().complete(user("x"), model=name).text == "warm"


# ---------------------------------------------------------------------------------------------
# deadlines, cancellation, retries


def _slow(tmp_path: Path, seconds: float = 5) -> str:
    path = script(
        tmp_path,
        f"""
        LATENCY_S = {seconds}

        def respond(messages, info):
            return "too late"
        """,
    )
    return f"scripted/{path}"


def test_cancel_is_prompt(tmp_path: Path) -> None:
    model = _slow(tmp_path, 30)
    cancel = threading.Event()
    set_at: list[float] = []

    def fire() -> None:
        set_at.append(time.monotonic())
        cancel.set()

    timer = threading.Timer(0.3, fire)
    timer.start()
    with pytest.raises(LLMCancelled, match="cancelled"):
        client().complete(user("x"), model=model, cancel=cancel)
    # Abandoned at once (the client polls every 50 ms), not when the reply comes 30 s later;
    # the bound leaves a loaded machine room.
    assert time.monotonic() - set_at[0] < 10
    # an already-set cancel never starts a call
    with pytest.raises(LLMCancelled):
        client().complete(user("x"), model=model, cancel=cancel)
    with pytest.raises(LLMCancelled):
        client().complete_many([user("x")], model=model, cancel=cancel)


def _tasks_on_the_loop() -> set[str]:
    from rlm_kernel.llm import runtime

    async def names() -> set[str]:
        me = asyncio.current_task()
        return {t.get_coro().__qualname__ for t in asyncio.all_tasks() if t is not me}  # type: ignore[union-attr]

    return runtime.submit(names()).result(5)


def test_a_cancelled_call_leaves_nothing_running(tmp_path: Path) -> None:
    model = _slow(tmp_path)
    for streamed in (False, True):
        cancel = threading.Event()
        threading.Timer(0.2, cancel.set).start()
        with pytest.raises(LLMCancelled):
            client().complete(
                user("x"),
                model=model,
                cancel=cancel,
                on_text=(lambda _o, _t: None) if streamed else None,
            )
        assert "run_call" not in _tasks_on_the_loop()  # the call's task has ended
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    with pytest.raises(LLMCancelled):
        client().complete_many([user("x")] * 20, model=model, cancel=cancel)
    left = _tasks_on_the_loop()
    assert not {"run_call", "LLMClient.complete_many.<locals>.run_all"} & left, left


def test_timeout_caps_the_call(tmp_path: Path) -> None:
    model = _slow(tmp_path, 30)
    start = time.monotonic()
    with pytest.raises(LLMTimeout, match=r"timed out after 0\.3 s"):
        client().complete(user("x"), model=model, timeout=0.3)
    assert time.monotonic() - start < 10  # at 0.3 s, not when the reply comes (30 s)
    # the client-wide default applies when no per-call timeout is given
    with pytest.raises(LLMError, match=r"timed out after 0\.2 s"):
        client(timeout=0.2).complete(user("x"), model=model)
    # in a batch, each slot times out on its own
    outs = client(timeout=0.2).complete_many([user("x")] * 3, model=model)
    assert all(isinstance(o, LLMTimeout) for o in outs)


def test_transient_errors_are_retried(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        """
        import litellm

        CALLS = 0

        def respond(messages, info):
            global CALLS
            CALLS += 1
            if CALLS <= 2:
                raise litellm.RateLimitError("slow down", llm_provider="scripted", model="m")
            return f"answer after {CALLS} calls"
        """,
    )
    out = client().complete(user("x"), model=f"scripted/{path}")
    assert out.text == "answer after 3 calls"
    assert out.attempts == 3
    assert out.usage.llm_calls == 1


def test_a_retried_stream_starts_its_text_over() -> None:
    calls: list[int] = []

    def respond(messages: list[dict[str, Any]], info: dict[str, Any]) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise llm.import_litellm().APIConnectionError(
                "reset", llm_provider="scripted", model="m"
            )
        return "second try"

    name = register_scripted(unique("restream"), respond, stream_chunk_s=0.01, stream_chunk_chars=3)
    seen: list[tuple[int, str]] = []
    out = client().complete(user("x"), model=name, on_text=lambda o, t: seen.append((o, t)))
    assert out.text == "second try" and out.attempts == 2
    text = ""
    for offset, piece in seen:
        text = text[:offset] + piece
    assert text == "second try"


def test_transient_errors_exhaust_retries(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        """
        import litellm

        CALLS = 0

        def respond(messages, info):
            global CALLS
            CALLS += 1
            raise litellm.ServiceUnavailableError("down", llm_provider="scripted", model="m")
        """,
    )
    with pytest.raises(LLMError, match="failed after 3 attempts") as err:
        client(retries=2).complete(user("x"), model=f"scripted/{path}")
    assert f"scripted/{path}" in str(err.value)
    loaded = loaded_script(str(path))
    assert loaded is not None and loaded.module is not None and loaded.module.CALLS == 3


def test_non_transient_error_is_not_retried(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        """
        import litellm

        CALLS = 0

        def respond(messages, info):
            global CALLS
            CALLS += 1
            raise litellm.NotFoundError("no such model", llm_provider="scripted", model="m")
        """,
    )
    model = f"scripted/{path}"
    with pytest.raises(LLMError, match="was not found") as err:
        client().complete(user("x"), model=model)
    assert model in str(err.value)
    assert "provider/model" in str(err.value)
    loaded = loaded_script(str(path))
    assert loaded is not None and loaded.module is not None and loaded.module.CALLS == 1


def test_auth_error_says_which_key() -> None:
    def respond(messages: list[dict[str, Any]], info: dict[str, Any]) -> str:
        raise llm.import_litellm().AuthenticationError(
            "bad key", llm_provider="scripted", model="m"
        )

    name = register_scripted(unique("auth"), respond)
    with pytest.raises(LLMError, match="LLM_API_KEY or SCRIPTED_API_KEY") as err:
        client().complete(user("x"), model=name)
    assert name in str(err.value)


class _ChildEvent(threading.Event):
    """An event that also counts as set when its parent is (like the engine's scopes)."""

    def __init__(self, parent: threading.Event) -> None:
        super().__init__()
        self.parent = parent

    def is_set(self) -> bool:
        return super().is_set() or self.parent.is_set()


def test_cancel_during_backoff() -> None:
    def respond(messages: list[dict[str, Any]], info: dict[str, Any]) -> str:
        raise llm.import_litellm().RateLimitError("slow down", llm_provider="scripted", model="m")

    name = register_scripted(unique("backoff"), respond)
    c = LLMClient()
    c.retry.base_s = 30  # the first backoff lasts 15-30 s
    for parent_cancels in (False, True):
        parent = threading.Event()
        cancel = _ChildEvent(parent)
        threading.Timer(0.2, (parent if parent_cancels else cancel).set).start()
        start = time.monotonic()
        with pytest.raises(LLMCancelled):
            c.complete(user("x"), model=name, cancel=cancel)
        assert time.monotonic() - start < 10  # cancelled at 0.2 s, not after the backoff


# ---------------------------------------------------------------------------------------------
# batches and concurrency


def test_complete_many_keeps_order_and_errors_in_place() -> None:
    lock = threading.Lock()
    running = [0, 0]  # now, most at once

    def respond(messages: list[dict[str, Any]], info: dict[str, Any]) -> str:
        with lock:
            running[0] += 1
            running[1] = max(running)
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        prompt = messages[-1]["content"]
        if prompt == "bad":
            raise ValueError("no")
        return prompt.upper()

    name = register_scripted(unique("many"), respond)
    outs = client().complete_many([user(p) for p in ["a", "bad", "c"] * 20], model=name, limit=3)
    assert [o.text if isinstance(o, Completion) else "E" for o in outs] == ["A", "E", "C"] * 20
    assert "ValueError: no" in str(outs[1])
    assert 2 <= running[1] <= 3  # concurrent, and never more than the limit
    assert client().complete_many([], model=name) == []


def test_concurrent_calls_run_in_parallel() -> None:
    name = register_scripted(
        unique("par"), lambda messages, info: f"#{info['agent_id']}", latency_s=0.3
    )
    c = client()
    results: dict[int, str] = {}

    def one(i: int) -> None:
        results[i] = c.complete(user("x"), model=name, info={"agent_id": i}).text

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One after the other: 16 x 0.3 s = 4.8 s; at once, 0.3 s and the host's CPU per call. Half
    # the serial time leaves a loaded machine room and fails if two at a time is the most.
    assert time.monotonic() - start < 16 * 0.3 / 2
    assert results == {i: f"#{i}" for i in range(16)}


# ---------------------------------------------------------------------------------------------
# API keys and real providers (litellm.acompletion replaced: no network; `direct=False`: these
# are litellm's path, which `model.direct` skips for OpenAI-compatible providers)


def test_check_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("LLM_API_KEY", raising=False)
    with pytest.raises(MissingAPIKey) as err:
        LLMClient().check_ready("openai/gpt-4o-mini")
    assert str(err.value) == (
        "No API key for model 'openai/gpt-4o-mini': set LLM_API_KEY or OPENAI_API_KEY "
        "in the environment or in a .env file"
    )
    LLMClient(api_key="sk-given").check_ready("openai/gpt-4o-mini")
    LLMClient().check_ready("scripted//no/such/file.py")
    LLMClient().check_ready("replay/run.detail.json")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    LLMClient().check_ready("openai/gpt-4o-mini")
    with pytest.raises(LLMError, match="provider/model"):
        LLMClient().check_ready("no-such-provider/some-model")


def test_missing_key_fails_fast_on_the_real_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    c = LLMClient()
    c.retry.base_s = 30  # a retry would wait 15-30 s first
    start = time.monotonic()
    with pytest.raises(MissingAPIKey, match="OPENAI_API_KEY"):
        c.complete(user("x"), model="openai/gpt-4o-mini")
    assert time.monotonic() - start < 10  # not retried


class _FakeCompletion:
    """Stands in for litellm.acompletion and records its keyword arguments."""

    def __init__(
        self, errors: list[BaseException] | None = None, model: str = "gpt-4o-mini"
    ) -> None:
        self.calls: list[dict[str, Any]] = []
        self.errors = list(errors or [])
        self.model = model

    async def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if self.errors:
            raise self.errors.pop(0)
        return llm.import_litellm().ModelResponse(
            model=self.model,
            choices=[{"message": {"role": "assistant", "content": "hello"}}],
            usage={"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100},
        )


def test_real_provider_kwargs_and_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    litellm = llm.import_litellm()
    fake = _FakeCompletion()
    monkeypatch.setattr(litellm, "acompletion", fake)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    c = LLMClient(api_key="sk-given", temperature=0.2, max_tokens=50, timeout=120, direct=False)
    out = c.complete(user("x"), model="openai/gpt-4o-mini", info={"agent_id": "a"}, timeout=7)
    assert out.text == "hello"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (1000, 100)
    assert out.usage.cost_usd > 0  # priced from litellm's bundled cost map
    kwargs = fake.calls[0]
    assert kwargs["api_key"] == "sk-given"
    assert kwargs["max_retries"] == 0
    assert kwargs["temperature"] == 0.2
    assert kwargs["max_tokens"] == 50
    # the same timeout on every call (litellm keeps one HTTP client per timeout); the call's own
    # 7 s deadline is kept on our side
    assert kwargs["timeout"] == 120
    assert "metadata" not in kwargs and "stream" not in kwargs
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")  # the provider's own variable wins
    c.complete(user("x"), model="openai/gpt-4o-mini")
    assert "api_key" not in fake.calls[1]


def test_unpriced_model_costs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    litellm = llm.import_litellm()
    monkeypatch.setattr(litellm, "acompletion", _FakeCompletion(model="nobody/unpriced-model-xyz"))
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-test")
    out = LLMClient(direct=False).complete(user("x"), model="openrouter/nobody/unpriced-model-xyz")
    assert out.usage.cost_usd == 0.0
    assert out.usage.prompt_tokens == 1000


def test_real_provider_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    litellm = llm.import_litellm()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-bad")
    auth = litellm.AuthenticationError("invalid key", llm_provider="openai", model="gpt-4o-mini")
    fake = _FakeCompletion([auth])
    monkeypatch.setattr(litellm, "acompletion", fake)
    with pytest.raises(LLMError, match="LLM_API_KEY or OPENAI_API_KEY") as err:
        client(direct=False).complete(user("x"), model="openai/gpt-4o-mini")
    assert "openai/gpt-4o-mini" in str(err.value)
    assert len(fake.calls) == 1

    conn = litellm.APIConnectionError("reset", llm_provider="openai", model="gpt-4o-mini")
    fake = _FakeCompletion([conn, conn])
    monkeypatch.setattr(litellm, "acompletion", fake)
    out = client(direct=False).complete(user("x"), model="openai/gpt-4o-mini")
    assert (out.text, out.attempts, len(fake.calls)) == ("hello", 3, 3)


def test_api_base_is_passed_to_real_providers_only(monkeypatch: pytest.MonkeyPatch) -> None:
    litellm = llm.import_litellm()
    fake = _FakeCompletion()
    monkeypatch.setattr(litellm, "acompletion", fake)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    c = LLMClient(api_base="http://127.0.0.1:9/v1", direct=False)
    c.complete(user("x"), model="openai/gpt-4o-mini")
    assert fake.calls[0]["api_base"] == "http://127.0.0.1:9/v1"
    monkeypatch.undo()  # scripted models have no API: the real acompletion again
    out = c.complete(user("x"), model=register_scripted(unique("base"), lambda _m, _i: "hi"))
    assert out.text == "hi" and len(fake.calls) == 1


def test_cache_breakpoints_for_anthropic_only(monkeypatch: pytest.MonkeyPatch) -> None:
    litellm = llm.import_litellm()
    fake = _FakeCompletion()
    monkeypatch.setattr(litellm, "acompletion", fake)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "task"},
        {"role": "assistant", "content": "code 1"},
        {"role": "user", "content": "output 1"},
        {"role": "assistant", "content": "code 2"},
        {"role": "user", "content": "output 2"},
    ]
    LLMClient(direct=False).complete(messages, model="anthropic/claude-sonnet-4-5")
    sent = fake.calls[0]["messages"]
    marked = [i for i, m in enumerate(sent) if isinstance(m["content"], list)]
    assert marked == [0, 3, 5]  # the system prompt and the last two user messages
    assert sent[5]["content"] == [
        {"type": "text", "text": "output 2", "cache_control": {"type": "ephemeral"}}
    ]
    assert messages[5]["content"] == "output 2"  # the caller's messages are not changed
    LLMClient(direct=False).complete(messages, model="openai/gpt-4o-mini")  # caches by itself
    assert fake.calls[1]["messages"] == messages
