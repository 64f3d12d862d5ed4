"""Tests for scripted models (rlm_kernel.llm.scripted and the providers): files, registrations,
knobs, errors; all through litellm's real call path, offline."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest

from rlm_kernel.llm import Completion, LLMError, register_scripted
from rlm_kernel.llm.scripted import loaded_script

from .helpers import TESTS, client, script, unique, user


def test_scripted_file_info_reaches_respond(tmp_path: Path) -> None:
    path = script(
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
    out = client().complete(messages, model=f"scripted/{path}", info=info)
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

    name = register_scripted(unique("info"), respond)
    client().complete(user("x"), model=name)
    assert seen[0] == {
        "agent_id": None,
        "parent_id": None,
        "depth": 0,
        "task": None,
        "iteration": 0,
        "kind": "agent",
    }
    marker = object()
    client().complete(user("x"), model=name, info={"agent_id": "a", "obj": marker})
    assert seen[1]["agent_id"] == "a"
    assert seen[1]["obj"] is marker  # travels through litellm by reference


def test_scripted_relative_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(TESTS)
    out = client().complete(
        user("hello"),
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
    path = script(
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
    for on_text in (None, lambda _o, _t: None):  # whole and streamed
        out = client().complete(messages, model=f"scripted/{path}", on_text=on_text)
        assert out.usage.prompt_tokens == math.ceil(33 / 4) == 9
        assert out.usage.completion_tokens == math.ceil(41 / 4) == 11
        assert out.usage.llm_calls == 1
        assert out.usage.cost_usd == pytest.approx(9 * 0.001 + 11 * 0.002)


def test_usage_minimum_one_token_and_free_by_default(tmp_path: Path) -> None:
    path = script(tmp_path, "def respond(messages, info):\n    return ''\n")
    out = client().complete(user(""), model=f"scripted/{path}")
    assert out.text == ""
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (1, 1)
    assert out.usage.cost_usd == 0.0


def test_latency_honoured(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        """
        LATENCY_S = 0.3

        def respond(messages, info):
            return "slow"
        """,
    )
    start = time.monotonic()
    out = client().complete(user("x"), model=f"scripted/{path}")
    assert time.monotonic() - start >= 0.3
    assert out.elapsed_s >= 0.3


def test_a_scripted_reply_streams_in_pieces(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        """
        STREAM_CHUNK_S = 0.05
        STREAM_CHUNK_CHARS = 10

        def respond(messages, info):
            return "".join(f"line {i:02d}\\n" for i in range(20))  # 160 characters
        """,
    )
    seen: list[tuple[float, int, str]] = []
    start = time.monotonic()
    out = client().complete(
        user("x"),
        model=f"scripted/{path}",
        on_text=lambda offset, text: seen.append((time.monotonic() - start, offset, text)),
    )
    assert out.text == "".join(f"line {i:02d}\n" for i in range(20))
    assert time.monotonic() - start >= 14 * 0.05  # 15 pieces (10 and 11 characters), 14 pauses
    # the text came in order, in several deliveries, and adds up to the reply
    assert len(seen) >= 3
    offsets = [o for _, o, _ in seen]
    assert offsets == sorted(offsets) and offsets[0] == 0
    assert "".join(t for _, _, t in seen) == out.text
    assert seen[0][0] < seen[-1][0] - 0.3  # the first text arrived well before the end


def test_a_long_run_of_one_character_streams_whole() -> None:
    # litellm takes 100 identical chunks in a row for a model stuck in a loop; pieces of two
    # sizes in turn never look like that
    name = register_scripted(
        unique("repeat"), lambda _m, _i: "x" * 5000, stream_chunk_s=0.0001, stream_chunk_chars=8
    )
    out = client(retries=0).complete(user("x"), model=name, on_text=lambda _o, _t: None)
    assert out.text == "x" * 5000


def test_bad_knobs_are_reported(tmp_path: Path) -> None:
    path = script(
        tmp_path, "STREAM_CHUNK_S = 'fast'\ndef respond(messages, info):\n    return 'x'\n"
    )
    with pytest.raises(LLMError, match="STREAM_CHUNK_S must be a number"):
        client().complete(user("x"), model=f"scripted/{path}", on_text=lambda _o, _t: None)
    path = script(
        tmp_path, "COST_PER_TOKEN = 3\ndef respond(messages, info):\n    return 'x'\n", "c.py"
    )
    with pytest.raises(LLMError, match="COST_PER_TOKEN must be a pair"):
        client().complete(user("x"), model=f"scripted/{path}")


def test_script_exception_becomes_llm_error(tmp_path: Path) -> None:
    path = script(
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
        client().complete(user("x"), model=f"scripted/{path}")
    assert str(path) in str(err.value)
    assert "ValueError: no idea" in str(err.value)
    loaded = loaded_script(str(path))
    assert loaded is not None and loaded.module is not None
    assert loaded.module.CALLS == 1  # a script bug is not retried


def test_non_str_reply(tmp_path: Path) -> None:
    path = script(tmp_path, "def respond(messages, info):\n    return 42\n")
    with pytest.raises(LLMError, match="must return a str, got int"):
        client().complete(user("x"), model=f"scripted/{path}")


def test_missing_script(tmp_path: Path) -> None:
    path = tmp_path / "nope.py"
    with pytest.raises(LLMError, match="not found") as err:
        client().complete(user("x"), model=f"scripted/{path}")
    assert str(path) in str(err.value)


def test_script_without_respond(tmp_path: Path) -> None:
    path = script(tmp_path, "def answer(messages, info):\n    return 'x'\n")
    with pytest.raises(LLMError, match="must define respond") as err:
        client().complete(user("x"), model=f"scripted/{path}")
    assert str(path) in str(err.value)


def test_script_syntax_error(tmp_path: Path) -> None:
    path = script(tmp_path, "def respond(messages, info)\n    return 'x'\n")
    with pytest.raises(LLMError, match="syntax error at line 1") as err:
        client().complete(user("x"), model=f"scripted/{path}")
    assert str(path) in str(err.value)


def test_script_reloaded_when_changed(tmp_path: Path) -> None:
    path = script(tmp_path, "def respond(messages, info):\n    return 'v1'\n")
    model = f"scripted/{path}"
    c = client()
    assert c.complete(user("x"), model=model).text == "v1"
    first = loaded_script(str(path))
    assert c.complete(user("x"), model=model).text == "v1"
    assert loaded_script(str(path)) is first  # cached while unchanged
    path.write_text("def respond(messages, info):\n    return 'v2'\n", encoding="utf-8")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert c.complete(user("x"), model=model).text == "v2"


def test_register_scripted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = unique("dup")
    script(tmp_path, "def respond(messages, info):\n    return 'file'\n", name=f"{base}.py")
    c = client()
    assert c.complete(user("x"), model=f"scripted/{base}.py").text == "file"

    calls: list[str] = []

    def respond(messages: list[dict[str, Any]], info: dict[str, Any]) -> str:
        calls.append(messages[-1]["content"])
        return f"registered:{info['kind']}"

    name = register_scripted(f"{base}.py", respond, latency_s=0.1)
    assert name == f"scripted/{base}.py"
    start = time.monotonic()
    out = c.complete(user("hi"), model=name, info={"kind": "llm_query"})
    assert time.monotonic() - start >= 0.1
    assert out.text == "registered:llm_query"  # registration wins over the file
    assert calls == ["hi"]
    priced = register_scripted(unique("priced"), respond, cost_per_token=(0.5, 1.0))
    usage = c.complete(user("abcd"), model=priced).usage
    assert usage.cost_usd == pytest.approx(
        0.5 * usage.prompt_tokens + 1.0 * usage.completion_tokens
    )
    with pytest.raises(ValueError, match="non-empty name"):
        register_scripted("", respond)
