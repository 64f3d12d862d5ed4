"""LLM faults through litellm's real HTTP path: a local OpenAI-compatible server injects them.

Each test runs a real engine run (real sandboxes, real litellm → openai SDK → httpx) against
tests/faults/openai_server.py. A fault a retry can fix must not change the answer; any other
fault ends the agent with an error that says what happened and what to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rlm_kernel
from rlm_kernel.config import RLMConfig

from .conftest import FAKE_KEY
from .openai_server import (
    FaultServer,
    drop,
    empty,
    error,
    error_in_body,
    hang,
    malformed,
    no_choices,
    reply,
)

Config = Callable[..., RLMConfig]
FINAL_OK = reply("```python\nFINAL('ok')\n```")


def _gap(server: FaultServer, i: int) -> float:
    return server.requests[i + 1].at - server.requests[i].at


def test_429_with_retry_after_is_honoured_and_the_run_recovers(
    llm_server: FaultServer, fault_config: Config
) -> None:
    llm_server.script(error(429, retry_after=2), FINAL_OK)
    res = rlm_kernel.run("rate limited", config=fault_config())
    assert (res.status, res.answer) == ("done", "ok"), res.error
    assert llm_server.kinds() == ["error", "reply"]
    # the client's own first backoff is 0.5-1 s; waiting at least 2 s means it read Retry-After
    assert _gap(llm_server, 0) >= 2.0
    assert res.usage.llm_calls == 1  # a refused attempt is not a call


def test_429_beyond_the_retries_ends_the_agent_with_a_clear_error(
    llm_server: FaultServer, fault_config: Config
) -> None:
    llm_server.default = error(429, retry_after=0, message="Rate limit reached for fault-model")
    res = rlm_kernel.run("always limited", config=fault_config(model__retries=1))
    assert res.status == "error"
    assert llm_server.kinds() == ["error", "error"]
    msg = res.error or ""
    assert "openai/fault-model" in msg and "failed after 2 attempts" in msg
    assert "Rate limit reached" in msg and "raise `retries`" in msg
    assert res.answer.startswith("[partial answer: error:")


def test_500s_are_retried_with_backoff(llm_server: FaultServer, fault_config: Config) -> None:
    llm_server.script(error(500), error(503, retry_after=0), FINAL_OK)
    res = rlm_kernel.run("flaky provider", config=fault_config())
    assert (res.status, res.answer) == ("done", "ok"), res.error
    assert llm_server.kinds() == ["error", "error", "reply"]
    assert _gap(llm_server, 0) >= 0.5  # exponential backoff with jitter: 0.5-1 s first


def test_a_request_past_the_timeout_ends_the_agent_with_a_clear_error(
    llm_server: FaultServer, fault_config: Config
) -> None:
    llm_server.script(hang(60))
    start = time.monotonic()
    res = rlm_kernel.run("hung provider", config=fault_config(model__timeout=1.5))
    assert time.monotonic() - start < 30  # the run did not wait for the hung reply
    assert res.status == "error"
    msg = res.error or ""
    assert "timed out after 1.5 s" in msg and "raise the timeout" in msg


def test_malformed_json_and_dropped_connections_are_retried(
    llm_server: FaultServer, fault_config: Config
) -> None:
    llm_server.script(malformed(), drop(), FINAL_OK)
    res = rlm_kernel.run("garbled replies", config=fault_config(model__retries=3))
    assert (res.status, res.answer) == ("done", "ok"), res.error
    assert llm_server.kinds() == ["malformed", "drop", "reply"]


def test_malformed_json_every_time_gives_up_with_the_parse_error(
    llm_server: FaultServer, fault_config: Config
) -> None:
    llm_server.default = malformed()
    res = rlm_kernel.run("garbled always", config=fault_config(model__retries=0))
    assert res.status == "error"
    msg = res.error or ""
    assert "openai/fault-model" in msg and "failed after 1 attempts" in msg
    assert "Expecting value" in msg  # the JSON decoder's complaint, not a bare exception name


def test_an_error_object_in_a_200_reply_is_retried_by_its_code(
    llm_server: FaultServer, fault_config: Config
) -> None:
    # Gateways such as OpenRouter report upstream failures as HTTP 200 + {"error": {...}}.
    llm_server.script(error_in_body(502, "upstream overloaded"), FINAL_OK)
    res = rlm_kernel.run("gateway hiccup", config=fault_config())
    assert (res.status, res.answer) == ("done", "ok"), res.error
    assert llm_server.kinds() == ["error_in_body", "reply"]


def test_a_reply_without_choices_ends_the_agent_with_a_clear_error(
    llm_server: FaultServer, fault_config: Config
) -> None:
    llm_server.script(no_choices())
    res = rlm_kernel.run("no completion", config=fault_config(model__stream=False))
    assert res.status == "error"
    assert res.error == (
        "Model 'openai/fault-model' returned a response without choices (no completion); "
        "try again, or check the provider's status"
    )


def test_a_stream_without_choices_is_retried(llm_server: FaultServer, fault_config: Config) -> None:
    # A stream that ends before any finish_reason is a connection that broke: try again.
    llm_server.script(no_choices(), no_choices())
    res = rlm_kernel.run("no completion", config=fault_config())
    assert (res.status, res.answer) == ("done", "default reply"), res.error
    assert llm_server.kinds() == ["no_choices", "no_choices", "reply"]
    llm_server.reset()
    llm_server.default = no_choices()
    res = rlm_kernel.run("never a completion", config=fault_config(model__retries=1))
    assert res.status == "error"
    assert "failed after 2 attempts" in (res.error or "")
    assert "Stream ended before a finish_reason was received" in (res.error or "")


def test_empty_content_and_a_reply_without_code_get_corrective_turns(
    llm_server: FaultServer, fault_config: Config
) -> None:
    llm_server.script(empty(), reply("I think the answer is 4."), FINAL_OK)
    res = rlm_kernel.run("chatty model", config=fault_config())
    assert (res.status, res.answer) == ("done", "ok"), res.error
    third = llm_server.requests[2].messages
    corrective = [m["content"] for m in third if m["role"] == "user"][1:]
    assert len(corrective) == 2 and all("no ```python code block" in c for c in corrective)
    assert [i["llm_response"] for i in res.tree["iterations"]][:2] == [
        "",
        "I think the answer is 4.",
    ]


def test_three_empty_replies_in_a_row_end_the_agent(
    llm_server: FaultServer, fault_config: Config
) -> None:
    llm_server.script(empty(), reply("thinking..."), empty(), empty())  # the prose resets the count
    llm_server.default = empty()
    res = rlm_kernel.run("silent model", config=fault_config(rlm__max_iterations=20))
    assert res.status == "error"
    assert res.error == (
        "the model returned 3 empty replies in a row; check the model name, model.max_tokens "
        "and the provider's status"
    )
    assert len(llm_server.requests) == 5
    assert res.answer.startswith("[partial answer: error: the model returned 3 empty replies")


def test_a_model_that_never_writes_code_ends_at_max_iterations(
    llm_server: FaultServer, fault_config: Config
) -> None:
    llm_server.default = reply("I would rather talk about it.")
    res = rlm_kernel.run("chatty model", config=fault_config(rlm__max_iterations=3))
    assert res.status == "budget"
    assert res.error == "max_iterations (3) reached"
    assert len(llm_server.requests) == 3


def test_code_with_a_syntax_error_is_reported_to_the_model(
    llm_server: FaultServer, fault_config: Config
) -> None:
    def respond(body: dict[str, Any]) -> Any:
        last = body["messages"][-1]["content"]
        if "SyntaxError" in last:
            return reply("```python\nFINAL('fixed')\n```")
        return reply("```python\nx = 1\ndef broken(:\n    pass\n```")

    llm_server.default = respond
    res = rlm_kernel.run("typo", config=fault_config())
    assert (res.status, res.answer) == ("done", "fixed"), res.error
    block = res.tree["iterations"][0]["code_blocks"][0]
    assert "SyntaxError" in block["output"]


def test_an_authentication_failure_is_not_retried_and_names_the_keys(
    llm_server: FaultServer, fault_config: Config
) -> None:
    # The provider echoes the key it was given (some proxies do): it must not reach the record.
    llm_server.default = error(401, message=f"Incorrect API key provided: {FAKE_KEY}")
    res = rlm_kernel.run("bad key", config=fault_config())
    assert res.status == "error"
    assert llm_server.kinds() == ["error"]
    msg = res.error or ""
    assert "Authentication failed" in msg and "OPENAI_API_KEY" in msg
    assert FAKE_KEY not in msg and "***" in msg
    assert FAKE_KEY not in Path(res.record_path or "").read_text()


def test_a_failing_llm_query_returns_an_error_string_to_the_code(
    llm_server: FaultServer, fault_config: Config
) -> None:
    def respond(body: dict[str, Any]) -> Any:
        messages = body["messages"]
        if len(messages) == 1:  # llm_query: one user message
            return error(500, message="sub-model is down")
        if "Error:" in messages[-1]["content"]:
            return reply("```python\nFINAL('coped')\n```")
        return reply("```python\nprint(llm_query('summarise'))\n```")

    llm_server.default = respond
    res = rlm_kernel.run("use a sub-llm", config=fault_config(model__retries=0))
    assert (res.status, res.answer) == ("done", "coped"), res.error
    out = res.tree["iterations"][0]["code_blocks"][0]["output"]
    assert out.startswith("Error: LLM call to model 'openai/fault-model' failed after 1 attempts")
    assert "sub-model is down" in out


def test_a_child_whose_llm_fails_gives_its_parent_an_error_result(
    llm_server: FaultServer, fault_config: Config
) -> None:
    def respond(body: dict[str, Any]) -> Any:
        task = body["messages"][1]["content"]
        if "doomed child" in task:
            return error(503, retry_after=0, message="child's provider is down")
        if "status=" in body["messages"][-1]["content"]:
            return reply("```python\nFINAL(seen)\n```")
        return reply(
            "```python\nr = rlm_query('doomed child')\nseen = f'status={r.status}'\nprint(seen, r)\n```"
        )

    llm_server.default = respond
    res = rlm_kernel.run("delegate", config=fault_config(model__retries=0))
    assert (res.status, res.answer) == ("done", "status=error"), res.error
    (child,) = res.tree["children"]
    assert child["status"] == "error" and "child's provider is down" in child["error"]
