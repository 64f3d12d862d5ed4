"""`notebook_bridge`: what a plain cell's bridge calls get: `llm_query` with the notebook's
configuration (read at each call), run-only calls refused with what to do. From a sandbox cell:
test_kernel_protocol.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest

from rlm_kernel.config import ConfigError, RLMConfig
from rlm_kernel.notebook_bridge import NotebookBridge
from rlm_kernel.sandbox.bridge import BridgeRefused


def test_llm_query_uses_the_configuration_of_the_moment(config: Callable[..., RLMConfig]) -> None:
    current = [config("echo.py")]
    bridge = NotebookBridge(lambda: current[0], lambda: None)
    (answer,) = bridge("llm_query", {"prompts": ["ping"]})
    reply = json.loads(answer)
    assert reply["kind"] == "llm_query" and reply["last"] == "ping"
    answers = bridge("llm_query", {"prompts": ["a", "b"]})  # llm_query_batched
    assert [json.loads(a)["last"] for a in answers] == ["a", "b"]

    def broken() -> RLMConfig:
        raise ConfigError("model.name: is not set")

    bridge = NotebookBridge(broken, lambda: None)
    with pytest.raises(BridgeRefused, match=r"^llm_query: model.name: is not set"):
        bridge("llm_query", {"prompts": ["ping"]})


def test_a_stopped_cell_gets_no_answer(config: Callable[..., RLMConfig]) -> None:
    stop = threading.Event()
    stop.set()
    bridge = NotebookBridge(lambda: config("echo.py"), lambda: stop)
    (answer,) = bridge("llm_query", {"prompts": ["ping"]})
    assert answer.startswith("Error:") and "ping" not in answer


@pytest.mark.parametrize(
    ("op", "args", "name"),
    [
        ("rlm_query", {"prompt": "sub"}, "rlm_query"),
        ("final", {"via": "FINAL_VAR"}, "FINAL_VAR"),
        ("final", {}, "FINAL"),
        ("submit", {}, "SUBMIT"),
        ("tool", {"name": "grep"}, "the tool 'grep'"),
        ("frobnicate", {}, "frobnicate"),
    ],
)
def test_run_only_calls_are_refused_with_what_to_do(
    op: str, args: dict[str, str], name: str
) -> None:
    bridge = NotebookBridge(RLMConfig, lambda: None)
    with pytest.raises(BridgeRefused) as exc:
        bridge(op, args)
    assert str(exc.value) == f"{name} is available inside %%rlm runs; start one with %%rlm"


def test_answer_ready_in_a_plain_cell_is_harmless() -> None:
    assert NotebookBridge(RLMConfig, lambda: None)("final", {"via": "answer"}) is True
