"""Tests for rlm_kernel.llm.service: the one `llm_query` service of runs and notebook cells."""

from __future__ import annotations

import threading
import time
from typing import Any

from rlm_kernel.config import RLMConfig
from rlm_kernel.control import Budget
from rlm_kernel.events import LLMQuery
from rlm_kernel.llm import Usage, register_scripted
from rlm_kernel.llm.service import SubLLM

from .helpers import client, unique


def _limits(**overrides: Any) -> Any:
    return RLMConfig().with_overrides({f"rlm.{k}": v for k, v in overrides.items()}).rlm


def _model(latency: float = 0.0) -> str:
    def respond(messages: list[dict[str, Any]], info: dict[str, Any]) -> str:
        prompt = messages[-1]["content"]
        if prompt.startswith("fail"):
            raise ValueError("cannot")
        return f"{info['kind']}:{prompt}"

    return register_scripted(unique("sub"), respond, latency_s=latency, cost_per_token=(0.01, 0.0))


def test_answers_in_order_errors_in_place_and_one_event_per_prompt() -> None:
    events: list[tuple[str | None, LLMQuery]] = []
    usage = Usage()
    service = SubLLM(client(), _model(), emit=lambda aid, q: events.append((aid, q)))
    out = service.query(
        ["a", "fail now", "c"], info={"kind": "llm_query"}, agent_id="root.1", usage=usage
    )
    assert out[0] == "llm_query:a" and out[2] == "llm_query:c"
    assert out[1].startswith("Error: scripted model") and "ValueError: cannot" in out[1]
    assert [aid for aid, _ in events] == ["root.1"] * 3
    by_prompt = {q.prompt: q for _, q in events}
    assert by_prompt["a"].response == "llm_query:a" and by_prompt["a"].error is None
    assert by_prompt["a"].usage is not None and by_prompt["a"].usage["llm_calls"] == 1
    assert by_prompt["fail now"].response is None and by_prompt["fail now"].usage is None
    assert "ValueError" in str(by_prompt["fail now"].error)
    assert usage.llm_calls == 2 and usage.cost_usd > 0  # the agent is charged for its answers


def test_the_budget_is_drawn_before_and_charged_after() -> None:
    budget = Budget(_limits(max_llm_calls=3), time.monotonic())
    service = SubLLM(client(), _model(), budget=lambda: budget)
    out = service.query([f"p{i}" for i in range(5)], info={"kind": "llm_query"})
    assert out[:3] == ["llm_query:p0", "llm_query:p1", "llm_query:p2"]
    assert out[3:] == ["Error: LLM call budget exhausted (max_llm_calls=3)"] * 2
    assert budget.usage is not None and budget.usage.llm_calls == 3
    assert budget.usage.prompt_tokens > 0 and budget.usage.cost_usd > 0
    cost_capped = Budget(_limits(max_cost_usd=0.0001), time.monotonic())
    spent = SubLLM(client(), _model(), budget=lambda: cost_capped)
    assert not spent.query(["x" * 100])[0].startswith("Error")
    assert spent.query(["again"]) == ["Error: cost budget exhausted (max_cost_usd=0.0001)"]


def test_the_budgets_time_caps_each_call() -> None:
    budget = Budget(_limits(global_timeout=0.5), time.monotonic())
    out = SubLLM(client(), _model(latency=5), budget=lambda: budget).query(["slow"])
    assert out[0].startswith("Error: LLM call to model") and "timed out after 0.5 s" in out[0]


def test_cancel_stops_a_batch_at_once() -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    start = time.monotonic()
    out = SubLLM(client(), _model(latency=30)).query(["a", "b", "c"], cancel=cancel)
    assert time.monotonic() - start < 10  # at the cancel (0.3 s), not at the replies (30 s)
    assert all(o.startswith("Error: LLM call to model") and "cancelled" in o for o in out)


def test_a_batch_runs_at_most_width_calls_at_once() -> None:
    lock = threading.Lock()
    running = [0, 0]

    def respond(messages: list[dict[str, Any]], info: dict[str, Any]) -> str:
        with lock:
            running[0] += 1
            running[1] = max(running)
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return "ok"

    name = register_scripted(unique("width"), respond)
    assert SubLLM(client(), name, width=4).query(["x"] * 16) == ["ok"] * 16
    assert running[1] <= 4


def test_runs_and_notebook_cells_build_the_client_from_config_alike() -> None:
    from rlm_kernel.llm import LLMClient

    cfg = RLMConfig().with_overrides(
        {"model.timeout": 12, "model.retries": 1, "model.api_base": "http://h/v1"}
    )
    c = LLMClient.from_config(cfg)
    assert (c.timeout, c.retries, c.api_base, c.stream) == (12.0, 1, "http://h/v1", True)
    assert not LLMClient.from_config(cfg.with_overrides({"model.stream": False})).stream
