"""Tests for rlm_kernel.llm: the litellm client, scripted models and replays (all offline)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
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
    Usage,
    register_scripted,
)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _script(tmp_path: Path, body: str, name: str = "model.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def _client(**kwargs: Any) -> LLMClient:
    client = LLMClient(**kwargs)
    client.backoff_base_s = 0.01
    return client


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------------------------
# import behaviour


def test_import_is_lazy_and_cost_map_is_local() -> None:
    code = textwrap.dedent(
        """
        import os, sys
        import rlm_kernel.llm as m
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
    # no cost-map fetch attempt, no banners
    assert "cost map" not in proc.stderr.lower(), proc.stderr
    assert "LiteLLM" not in proc.stderr, proc.stderr


def test_prewarm_then_call() -> None:
    llm.prewarm()
    name = register_scripted(_unique("warm"), lambda messages, info: "warm")
    assert _client().complete(_user("x"), model=name).text == "warm"


# ---------------------------------------------------------------------------------------------
# Usage


def test_usage_arithmetic() -> None:
    a = Usage(llm_calls=1, prompt_tokens=10, completion_tokens=5, cost_usd=0.5)
    b = Usage(llm_calls=2, prompt_tokens=1, completion_tokens=2, cost_usd=0.25)
    c = a + b
    assert c == Usage(llm_calls=3, prompt_tokens=11, completion_tokens=7, cost_usd=0.75)
    assert a == Usage(llm_calls=1, prompt_tokens=10, completion_tokens=5, cost_usd=0.5)
    a.add(b)
    assert a == c
    assert c.total_tokens == 18
    assert c.to_dict() == {
        "llm_calls": 3,
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "cost_usd": 0.75,
    }
    assert Usage.from_dict(c.to_dict()) == c
    assert Usage() + Usage() == Usage()


# ---------------------------------------------------------------------------------------------
# scripted models


def test_scripted_file_info_reaches_respond(tmp_path: Path) -> None:
    path = _script(
        tmp_path,
        """
        import json

        def respond(messages, info):
            return json.dumps({"messages": messages, "info": info})
        """,
    )
    messages = [
        {"role": "system", "content": "You are an RLM."},
        {"role": "user", "content": "Solve it."},
    ]
    info = {
        "agent_id": "root.1",
        "parent_id": "root",
        "depth": 1,
        "task": "Solve it.",
        "iteration": 2,
        "kind": "agent",
        "extra": {"nested": [1, 2]},
    }
    out = _client().complete(messages, model=f"scripted/{path}", info=info)
    assert isinstance(out, Completion)
    seen = json.loads(out.text)
    assert seen["info"] == info
    assert [(m["role"], m["content"]) for m in seen["messages"]] == [
        (m["role"], m["content"]) for m in messages
    ]
    assert out.model == f"scripted/{path}"
    assert out.attempts == 1
    assert out.usage.llm_calls == 1


def test_info_defaults_and_identity() -> None:
    seen: list[dict[str, Any]] = []

    def respond(messages: list[dict[str, Any]], info: dict[str, Any]) -> str:
        seen.append(info)
        return "ok"

    name = register_scripted(_unique("info"), respond)
    _client().complete(_user("x"), model=name)
    assert seen[0] == {
        "agent_id": None,
        "parent_id": None,
        "depth": 0,
        "task": None,
        "iteration": 0,
        "kind": "agent",
    }
    marker = object()
    _client().complete(_user("x"), model=name, info={"agent_id": "a", "obj": marker})
    assert seen[1]["agent_id"] == "a"
    assert seen[1]["obj"] is marker  # travels through litellm by reference


def test_scripted_relative_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(TESTS)
    out = _client().complete(
        _user("hello"),
        model="scripted/models/echo.py",
        info={"agent_id": "root", "iteration": 3, "kind": "llm_query"},
    )
    assert json.loads(out.text) == {
        "kind": "llm_query",
        "agent_id": "root",
        "iteration": 3,
        "last": "hello",
    }


def test_usage_tokens_and_cost(tmp_path: Path) -> None:
    path = _script(
        tmp_path,
        """
        COST_PER_TOKEN = (0.001, 0.002)

        def respond(messages, info):
            return "x" * 41
        """,
    )
    messages = [
        {"role": "system", "content": "a" * 10},
        {"role": "user", "content": "b" * 23},
    ]
    out = _client().complete(messages, model=f"scripted/{path}")
    assert out.usage.prompt_tokens == math.ceil(33 / 4) == 9
    assert out.usage.completion_tokens == math.ceil(41 / 4) == 11
    assert out.usage.llm_calls == 1
    assert out.usage.cost_usd == pytest.approx(9 * 0.001 + 11 * 0.002)


def test_usage_minimum_one_token_and_free_by_default(tmp_path: Path) -> None:
    path = _script(tmp_path, "def respond(messages, info):\n    return ''\n")
    out = _client().complete(_user(""), model=f"scripted/{path}")
    assert out.text == ""
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (1, 1)
    assert out.usage.cost_usd == 0.0


def test_latency_honoured(tmp_path: Path) -> None:
    path = _script(
        tmp_path,
        """
        LATENCY_S = 0.3

        def respond(messages, info):
            return "slow"
        """,
    )
    start = time.monotonic()
    out = _client().complete(_user("x"), model=f"scripted/{path}")
    assert time.monotonic() - start >= 0.3
    assert out.elapsed_s >= 0.3


def test_cancel_is_prompt(tmp_path: Path) -> None:
    path = _script(
        tmp_path,
        """
        LATENCY_S = 5

        def respond(messages, info):
            return "too late"
        """,
    )
    cancel = threading.Event()
    set_at: list[float] = []

    def fire() -> None:
        set_at.append(time.monotonic())
        cancel.set()

    timer = threading.Timer(0.3, fire)
    timer.start()
    with pytest.raises(LLMCancelled, match="cancelled"):
        _client().complete(_user("x"), model=f"scripted/{path}", cancel=cancel)
    assert time.monotonic() - set_at[0] < 0.2
    # an already-set cancel never starts a call
    with pytest.raises(LLMCancelled):
        _client().complete(_user("x"), model=f"scripted/{path}", cancel=cancel)


def test_timeout_caps_the_call(tmp_path: Path) -> None:
    path = _script(
        tmp_path,
        """
        LATENCY_S = 5

        def respond(messages, info):
            return "too late"
        """,
    )
    start = time.monotonic()
    with pytest.raises(LLMTimeout, match=r"timed out after 0\.3 s"):
        _client().complete(_user("x"), model=f"scripted/{path}", timeout=0.3)
    assert time.monotonic() - start < 1.0
    # the client-wide default applies when no per-call timeout is given
    with pytest.raises(LLMError, match=r"timed out after 0\.2 s"):
        _client(timeout=0.2).complete(_user("x"), model=f"scripted/{path}")


def test_transient_errors_are_retried(tmp_path: Path) -> None:
    path = _script(
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
    out = _client().complete(_user("x"), model=f"scripted/{path}")
    assert out.text == "answer after 3 calls"
    assert out.attempts == 3
    assert out.usage.llm_calls == 1


def test_transient_errors_exhaust_retries(tmp_path: Path) -> None:
    path = _script(
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
        _client(retries=2).complete(_user("x"), model=f"scripted/{path}")
    assert f"scripted/{path}" in str(err.value)
    module = llm._SCRIPTS[str(path)][1].module
    assert module is not None and module.CALLS == 3


def test_backoff_is_exponential_capped_and_jittered() -> None:
    client = LLMClient()
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (10, 30.0)]:
        delays = [client._backoff(attempt) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len(set(delays)) > 1


def test_non_transient_error_is_not_retried(tmp_path: Path) -> None:
    path = _script(
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
        _client().complete(_user("x"), model=model)
    assert model in str(err.value)
    assert "provider/model" in str(err.value)
    module = llm._SCRIPTS[str(path)][1].module
    assert module is not None and module.CALLS == 1


def test_auth_error_says_which_key() -> None:
    def respond(messages: list[dict[str, Any]], info: dict[str, Any]) -> str:
        raise llm._litellm().AuthenticationError("bad key", llm_provider="scripted", model="m")

    name = register_scripted(_unique("auth"), respond)
    with pytest.raises(LLMError, match="LLM_API_KEY or SCRIPTED_API_KEY") as err:
        _client().complete(_user("x"), model=name)
    assert name in str(err.value)


def test_script_exception_becomes_llm_error(tmp_path: Path) -> None:
    path = _script(
        tmp_path,
        """
        CALLS = 0

        def respond(messages, info):
            global CALLS
            CALLS += 1
            raise ValueError("no idea")
        """,
    )
    with pytest.raises(LLMError) as err:
        _client().complete(_user("x"), model=f"scripted/{path}")
    assert str(path) in str(err.value)
    assert "ValueError: no idea" in str(err.value)
    module = llm._SCRIPTS[str(path)][1].module
    assert module is not None and module.CALLS == 1  # a script bug is not retried


def test_non_str_reply(tmp_path: Path) -> None:
    path = _script(tmp_path, "def respond(messages, info):\n    return 42\n")
    with pytest.raises(LLMError, match="must return a str, got int"):
        _client().complete(_user("x"), model=f"scripted/{path}")


def test_missing_script(tmp_path: Path) -> None:
    path = tmp_path / "nope.py"
    with pytest.raises(LLMError, match="not found") as err:
        _client().complete(_user("x"), model=f"scripted/{path}")
    assert str(path) in str(err.value)


def test_script_without_respond(tmp_path: Path) -> None:
    path = _script(tmp_path, "def answer(messages, info):\n    return 'x'\n")
    with pytest.raises(LLMError, match="must define respond") as err:
        _client().complete(_user("x"), model=f"scripted/{path}")
    assert str(path) in str(err.value)


def test_script_syntax_error(tmp_path: Path) -> None:
    path = _script(tmp_path, "def respond(messages, info)\n    return 'x'\n")
    with pytest.raises(LLMError, match="syntax error at line 1") as err:
        _client().complete(_user("x"), model=f"scripted/{path}")
    assert str(path) in str(err.value)


def test_script_reloaded_when_changed(tmp_path: Path) -> None:
    path = _script(tmp_path, "def respond(messages, info):\n    return 'v1'\n")
    model = f"scripted/{path}"
    client = _client()
    assert client.complete(_user("x"), model=model).text == "v1"
    first = llm._SCRIPTS[str(path)][1]
    assert client.complete(_user("x"), model=model).text == "v1"
    assert llm._SCRIPTS[str(path)][1] is first  # cached while unchanged
    path.write_text("def respond(messages, info):\n    return 'v2'\n", encoding="utf-8")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert client.complete(_user("x"), model=model).text == "v2"


def test_register_scripted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = _unique("dup")
    _script(tmp_path, "def respond(messages, info):\n    return 'file'\n", name=f"{base}.py")
    client = _client()
    assert client.complete(_user("x"), model=f"scripted/{base}.py").text == "file"

    calls: list[str] = []

    def respond(messages: list[dict[str, Any]], info: dict[str, Any]) -> str:
        calls.append(messages[-1]["content"])
        return f"registered:{info['kind']}"

    name = register_scripted(f"{base}.py", respond, latency_s=0.1)
    assert name == f"scripted/{base}.py"
    start = time.monotonic()
    out = client.complete(_user("hi"), model=name, info={"kind": "llm_query"})
    assert time.monotonic() - start >= 0.1
    assert out.text == "registered:llm_query"  # registration wins over the file
    assert calls == ["hi"]
    priced = register_scripted(_unique("priced"), respond, cost_per_token=(0.5, 1.0))
    usage = client.complete(_user("abcd"), model=priced).usage
    assert usage.cost_usd == pytest.approx(
        0.5 * usage.prompt_tokens + 1.0 * usage.completion_tokens
    )


def test_concurrent_calls_run_in_parallel() -> None:
    name = register_scripted(
        _unique("par"), lambda messages, info: f"#{info['agent_id']}", latency_s=0.3
    )
    client = _client()
    results: dict[int, str] = {}

    def one(i: int) -> None:
        results[i] = client.complete(_user("x"), model=name, info={"agent_id": i}).text

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - start < 1.5
    assert results == {i: f"#{i}" for i in range(16)}


# ---------------------------------------------------------------------------------------------
# replays


def _record(tmp_path: Path) -> Path:
    record = {
        "run_id": "r1",
        "task": "t",
        "root": {
            "agent_id": "root",
            "parent_id": None,
            "depth": 0,
            "iterations": [
                {"index": 0, "llm_response": "root turn 0", "code_blocks": []},
                {"index": 1, "llm_response": "root turn 1", "code_blocks": []},
            ],
            "llm_queries": [
                {"prompt": "p1", "response": "a1"},
                {"prompt": "p2", "response": "a2"},
                {"prompt": "p1", "response": "a1 again"},
                {"prompt": "p3", "response": "a3"},
                {"prompt": "p4", "response": None, "error": "budget exhausted"},
            ],
            "children": [
                {
                    "agent_id": "root.1",
                    "parent_id": "root",
                    "depth": 1,
                    "iterations": [{"index": 0, "llm_response": "child turn 0"}],
                    "children": [],
                }
            ],
        },
    }
    path = tmp_path / "r1.detail.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def test_replay_agent_turns(tmp_path: Path) -> None:
    model = f"replay/{_record(tmp_path)}"
    client = _client()

    def turn(agent_id: str, iteration: int) -> str:
        info = {"agent_id": agent_id, "iteration": iteration, "kind": "agent"}
        return client.complete(_user("go"), model=model, info=info).text

    assert turn("root", 1) == "root turn 1"
    assert turn("root", 0) == "root turn 0"
    assert turn("root.1", 0) == "child turn 0"
    with pytest.raises(LLMError, match="no recorded response for agent root iteration 5"):
        turn("root", 5)
    with pytest.raises(LLMError, match="no recorded response for agent ghost iteration 0"):
        turn("ghost", 0)


def test_replay_llm_queries_by_prompt(tmp_path: Path) -> None:
    model = f"replay/{_record(tmp_path)}"
    client = _client()

    def query(prompt: str, run_id: str | None = "run-a") -> str:
        messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": prompt}]
        info = {"agent_id": "root", "iteration": 1, "kind": "llm_query"}
        if run_id is not None:
            info["run_id"] = run_id
        return client.complete(messages, model=model, info=info).text

    assert query("p2") == "a2"
    assert query("p1") == "a1"
    assert query("p1") == "a1 again"
    with pytest.raises(LLMError, match="recorded llm_query failed: budget exhausted"):
        query("p4")  # a failed recorded call fails again
    assert query("never asked") == "a3"  # falls back to the next unused query of the agent
    with pytest.raises(LLMError, match="no recorded llm_query response for agent root"):
        query("p1")
    assert query("p1", run_id="run-b") == "a1"  # another run replays from the start
    # an agent's first turn starts its queries over (for callers that pass no run_id)
    assert query("p1", run_id=None) == "a1"
    assert query("p1", run_id=None) == "a1 again"
    client.complete(_user("go"), model=model, info={"agent_id": "root", "iteration": 0})
    assert query("p1", run_id=None) == "a1"


def test_replay_missing_record(tmp_path: Path) -> None:
    with pytest.raises(LLMError, match="not found"):
        _client().complete(_user("x"), model=f"replay/{tmp_path / 'none.detail.json'}")


# ---------------------------------------------------------------------------------------------
# API keys and real providers (litellm.completion replaced: no network)


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
    start = time.monotonic()
    with pytest.raises(MissingAPIKey, match="OPENAI_API_KEY"):
        LLMClient().complete(_user("x"), model="openai/gpt-4o-mini")
    assert time.monotonic() - start < 2.0  # not retried


class _FakeCompletion:
    """Stands in for litellm.completion and records its keyword arguments."""

    def __init__(
        self, errors: list[BaseException] | None = None, model: str = "gpt-4o-mini"
    ) -> None:
        self.calls: list[dict[str, Any]] = []
        self.errors = list(errors or [])
        self.model = model

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if self.errors:
            raise self.errors.pop(0)
        return llm._litellm().ModelResponse(
            model=self.model,
            choices=[{"message": {"role": "assistant", "content": "hello"}}],
            usage={"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100},
        )


def test_real_provider_kwargs_and_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    litellm = llm._litellm()
    fake = _FakeCompletion()
    monkeypatch.setattr(litellm, "completion", fake)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    client = LLMClient(api_key="sk-given", temperature=0.2, max_tokens=50)
    out = client.complete(_user("x"), model="openai/gpt-4o-mini", info={"agent_id": "a"})
    assert out.text == "hello"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (1000, 100)
    assert out.usage.cost_usd > 0  # priced from litellm's bundled cost map
    kwargs = fake.calls[0]
    assert kwargs["api_key"] == "sk-given"
    assert kwargs["max_retries"] == 0
    assert kwargs["temperature"] == 0.2
    assert kwargs["max_tokens"] == 50
    assert 0 < kwargs["timeout"] <= 600
    assert "metadata" not in kwargs
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")  # the provider's own variable wins
    client.complete(_user("x"), model="openai/gpt-4o-mini")
    assert "api_key" not in fake.calls[1]


def test_unpriced_model_costs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    litellm = llm._litellm()
    monkeypatch.setattr(litellm, "completion", _FakeCompletion(model="nobody/unpriced-model-xyz"))
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-test")
    out = LLMClient().complete(_user("x"), model="openrouter/nobody/unpriced-model-xyz")
    assert out.usage.cost_usd == 0.0
    assert out.usage.prompt_tokens == 1000


def test_real_provider_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    litellm = llm._litellm()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-bad")
    auth = litellm.AuthenticationError("invalid key", llm_provider="openai", model="gpt-4o-mini")
    fake = _FakeCompletion([auth])
    monkeypatch.setattr(litellm, "completion", fake)
    with pytest.raises(LLMError, match="LLM_API_KEY or OPENAI_API_KEY") as err:
        _client().complete(_user("x"), model="openai/gpt-4o-mini")
    assert "openai/gpt-4o-mini" in str(err.value)
    assert len(fake.calls) == 1

    conn = litellm.APIConnectionError("reset", llm_provider="openai", model="gpt-4o-mini")
    fake = _FakeCompletion([conn, conn])
    monkeypatch.setattr(litellm, "completion", fake)
    out = _client().complete(_user("x"), model="openai/gpt-4o-mini")
    assert (out.text, out.attempts, len(fake.calls)) == ("hello", 3, 3)


class _ChildEvent(threading.Event):
    """An event that also counts as set when its parent is (like the engine's scopes)."""

    def __init__(self, parent: threading.Event) -> None:
        super().__init__()
        self.parent = parent

    def is_set(self) -> bool:
        return super().is_set() or self.parent.is_set()


def test_cancel_during_backoff() -> None:
    def respond(messages: list[dict[str, Any]], info: dict[str, Any]) -> str:
        raise llm._litellm().RateLimitError("slow down", llm_provider="scripted", model="m")

    name = register_scripted(_unique("backoff"), respond)
    client = LLMClient()  # the default 1 s base backoff
    for parent_cancels in (False, True):
        parent = threading.Event()
        cancel = _ChildEvent(parent)
        threading.Timer(0.2, (parent if parent_cancels else cancel).set).start()
        start = time.monotonic()
        with pytest.raises(LLMCancelled):
            client.complete(_user("x"), model=name, cancel=cancel)
        assert time.monotonic() - start < 0.5


def test_api_base_is_passed_to_real_providers_only(monkeypatch: pytest.MonkeyPatch) -> None:
    litellm = llm._litellm()
    fake = _FakeCompletion()
    monkeypatch.setattr(litellm, "completion", fake)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    client = LLMClient(api_base="http://127.0.0.1:9/v1")
    client.complete(_user("x"), model="openai/gpt-4o-mini")
    assert fake.calls[0]["api_base"] == "http://127.0.0.1:9/v1"
    client.complete(_user("x"), model=register_scripted(_unique("base"), lambda _m, _i: "hi"))
    assert "api_base" not in fake.calls[1]  # scripted models have no API


def test_retry_after_header_seconds_and_dates() -> None:
    import email.utils

    class _Exc(Exception):
        def __init__(self, value: str | None) -> None:
            self.litellm_response_headers = {} if value is None else {"retry-after": value}

    assert llm._retry_after(_Exc("2"), 30) == 2.0
    assert llm._retry_after(_Exc("120"), 30) == 30  # capped
    assert llm._retry_after(_Exc("-1"), 30) == 0.0
    assert llm._retry_after(_Exc("soon"), 30) is None
    assert llm._retry_after(_Exc(None), 30) is None
    assert llm._retry_after(Exception("no headers"), 30) is None
    date = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 2 <= (llm._retry_after(_Exc(date), 30) or 0) <= 5
