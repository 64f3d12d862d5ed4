"""What a run serves its agents (`AgentServices`): LLM calls charged to the run's budget,
`llm_query`, `rlm_query` children within the depth and sandbox limits, host-side tools (whose
name and arguments come from model-written code), and the work slots that bound concurrency.
Scripted models through the real litellm call path; the run's callbacks are the test's."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import rlm_kernel
from rlm_kernel.agent import Agent
from rlm_kernel.config import RLMConfig
from rlm_kernel.control import Budget, BudgetExceeded
from rlm_kernel.events import BudgetHit, Event, EventType, LLMQuery, Payload
from rlm_kernel.llm import LLMError, register_scripted
from rlm_kernel.run_services import AgentServices, tool_specs
from rlm_kernel.runner import Run
from rlm_kernel.sandbox.bridge import BridgeRefused

Config = Callable[..., RLMConfig]


def tree_nodes(tree: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every agent of a result's tree."""
    return [tree, *(n for c in tree["children"] for n in tree_nodes(c))] if tree else []


@dataclass
class Services:
    """An `AgentServices` with the test as its run."""

    services: AgentServices
    run: Run  # never started: its agents are made by the test
    budget: Budget
    events: list[tuple[str | None, Payload]] = field(default_factory=list)
    children: list[Agent] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)


def _services(
    config: Config, respond: Any = None, tools: dict[str, Any] | None = None, **overrides: Any
) -> Services:
    name = f"svc-{uuid.uuid4().hex[:8]}"
    model = register_scripted(name, respond or (lambda _m, _i: "ok"), cost_per_token=(0.5, 0.5))
    cfg = config(model, **overrides)
    run = Run("t", config=cfg)
    budget = Budget(cfg.rlm, time.monotonic())
    s: Services

    def emit(payload: Payload, agent_id: str | None) -> None:
        s.events.append((agent_id, payload))

    def new_child(parent: Agent, task: str, context: Any) -> Agent:
        child = Agent(run, parent.next_child_id(), parent, task, context)
        s.children.append(child)
        return child

    services = AgentServices(
        cfg,
        run.llm,
        tools=tools or {},
        budget=lambda: budget,
        emit=emit,
        new_child=new_child,
        note_batch=lambda width: s.batches.append(width),
    )
    s = Services(services, run, budget)
    return s


# -- LLM calls --------------------------------------------------------------------------------------


def test_an_agents_llm_call_is_charged_to_the_run_and_the_agent(config: Config) -> None:
    seen: list[dict[str, Any]] = []

    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        seen.append(info)
        return "the reply"

    s = _services(config, respond, rlm__max_llm_calls=2)
    root = Agent(s.run, "root", None, "t")
    streamed: list[str] = []
    done = s.services.complete(
        root,
        [{"role": "user", "content": "hi"}],
        kind="agent",
        on_text=lambda _o, t: streamed.append(t),
    )
    assert done.text == "the reply" and "".join(streamed) == "the reply"
    assert seen[0]["agent_id"] == "root" and seen[0]["kind"] == "agent"
    assert s.budget.usage is not None and s.budget.usage.llm_calls == 1
    assert s.budget.usage.cost_usd == root.usage.cost_usd > 0
    assert root.usage.llm_calls == 1
    s.services.complete(root, [{"role": "user", "content": "again"}], kind="agent")
    with pytest.raises(BudgetExceeded, match=r"max_llm_calls=2"):
        s.services.complete(root, [{"role": "user", "content": "one more"}], kind="agent")
    assert len(seen) == 2  # the refused call was never made


def test_a_failed_llm_call_still_counts(config: Config) -> None:
    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        raise RuntimeError("provider down")

    s = _services(config, respond)
    root = Agent(s.run, "root", None, "t")
    with pytest.raises(LLMError):
        s.services.complete(root, [{"role": "user", "content": "hi"}], kind="agent")
    assert s.budget.usage is not None and s.budget.usage.llm_calls == 1
    assert root.usage.llm_calls == 0  # the agent is charged what it got


def test_llm_queries_answer_in_order_with_events_and_usage_for_the_agent(config: Config) -> None:
    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        prompt = messages[-1]["content"]
        if prompt == "fail":
            raise RuntimeError("no answer for you")
        return prompt.upper()

    s = _services(config, respond)
    child = Agent(s.run, "root.0", Agent(s.run, "root", None, "t"), "c")
    got = s.services.llm_queries(child, ["a", "fail", "c"], None)
    assert got[0] == "A" and got[2] == "C" and got[1].startswith("Error:")
    queries = [(a, p) for a, p in s.events if isinstance(p, LLMQuery)]
    assert [a for a, _ in queries] == ["root.0"] * 3
    assert child.usage.llm_calls == 2


# -- rlm_query children ---------------------------------------------------------------------------


def test_children_below_max_depth_are_refused_with_an_error_string(config: Config) -> None:
    s = _services(config, rlm__max_depth=1)
    parent = Agent(s.run, "root.0", Agent(s.run, "root", None, "t"), "c")
    replies = s.services.spawn_children(parent, ["x", "y"], [])
    assert [r["status"] for r in replies] == ["error", "error"]
    assert "not available at depth 1 (max_depth=1)" in replies[0]["text"]
    assert s.children == [] and s.batches == []


def test_children_over_the_sandbox_budget_are_refused_and_said(config: Config) -> None:
    s = _services(config, rlm__max_sandboxes=1)
    assert s.budget.take_sandbox() is None  # the root's
    root = Agent(s.run, "root", None, "t")
    replies = s.services.spawn_children(root, ["x", "y", "z"], [None, "ctx"])
    assert [r["status"] for r in replies] == ["budget"] * 3
    assert "max_sandboxes=1" in replies[0]["text"] and replies[0]["agent_id"] == ""
    hits = [(a, p) for a, p in s.events if isinstance(p, BudgetHit)]
    assert [(a, p.limit) for a, p in hits] == [("root", "max_sandboxes")] * 3
    assert s.children == [] and s.batches == [3]  # the pool still learns the batch's width


# -- tools ------------------------------------------------------------------------------------------


def lookup(key: str, n: int = 1) -> str:
    """Look a key up in the host's table."""
    return key * n


def later(x: Missing) -> None:  # noqa: F821
    """An annotation that cannot be resolved."""


def test_tool_specs_give_name_signature_and_doc() -> None:
    specs = tool_specs({"lookup": lookup, "later": later, "table": dict})
    assert specs == [
        {
            "name": "lookup",
            "signature": "(key: str, n: int = 1) -> str",
            "doc": "Look a key up in the host's table.",
        },
        {
            "name": "later",
            "signature": "(x: 'Missing') -> 'None'",
            "doc": "An annotation that cannot be resolved.",
        },
        {"name": "table", "signature": "(*args, **kwargs)", "doc": specs[2]["doc"]},
    ]


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "message"),
    [
        ("os.system", ["id"], {}, "no tool named 'os.system'"),
        ("__import__", ["os"], {}, "no tool named '__import__'"),
        ("lookup.__globals__", [], {}, "no tool named"),
        ("", [], {}, "no tool named ''"),
        ("lookup", [], {}, "tool lookup raised TypeError"),
        ("lookup", ["a"], {"__class__": 1}, "tool lookup raised TypeError"),
        ("boom", [], {}, "tool boom raised ValueError: secret table is locked"),
    ],
)
def test_a_tool_call_from_model_code_cannot_reach_beyond_the_tools(
    config: Config, name: str, args: list[Any], kwargs: dict[str, Any], message: str
) -> None:
    def boom() -> None:
        raise ValueError("secret table is locked")

    s = _services(config, tools={"lookup": lookup, "boom": boom})
    with pytest.raises(BridgeRefused, match=message.replace("(", r"\(")):
        s.services.call_tool(name, args, kwargs)


def test_tool_values_that_are_not_json_come_back_as_text(config: Config) -> None:
    loop: list[Any] = []
    loop.append(loop)
    values: dict[str, Any] = {"plain": {"a": [1, 2.5, None]}, "obj": object(), "loop": loop}
    s = _services(config, tools={k: (lambda v=v: v) for k, v in values.items()})
    assert s.services.call_tool("plain", [], {}) == {"a": [1, 2.5, None]}
    assert s.services.call_tool("obj", [], {}).startswith("<object object at")
    assert s.services.call_tool("loop", [], {}) == "[[...]]"
    json.dumps([s.services.call_tool(k, [], {}) for k in values])


# -- work slots -------------------------------------------------------------------------------------


def test_a_parked_agent_lends_its_slot_once_and_takes_it_back(config: Config) -> None:
    s = _services(config, rlm__max_concurrency=1)
    parent = Agent(s.run, "root", None, "t")
    release = threading.Event()

    def worker(got: threading.Event) -> threading.Thread:
        def work() -> None:
            with s.services.slot():
                got.set()
                assert release.wait(30)

        t = threading.Thread(target=work)
        t.start()
        return t

    first, second, third = threading.Event(), threading.Event(), threading.Event()
    with s.services.slot():
        t1 = worker(first)
        assert not first.wait(0.3)  # one slot, held by the parent
        with s.services.parked(parent), s.services.parked(parent):  # nested: lent once
            assert first.wait(30)
            t2 = worker(second)
            assert not second.wait(0.3)  # the one lent slot is taken
            release.set()
            t1.join(30)
            t2.join(30)
            assert second.is_set()
        t3 = worker(third)  # the parent has its slot back
        assert not third.wait(0.3)
    assert third.wait(30)
    t3.join(30)


# -- end to end: real runs --------------------------------------------------------------------------


def test_llm_query_batched_runs_in_parallel(config: Config) -> None:
    res = rlm_kernel.run("llm fan-out", config=config("speed.py"))
    assert res.status == "done", res.error
    elapsed, count, values = res.answer.split(" ", 2)
    assert count == "20" and values == "{'ok'}"
    # One after the other they take 20 x 0.5 s = 10 s; at once, 0.5 s and the host's CPU per
    # call (seconds on a loaded machine). Half the serial time leaves room for load and still
    # fails if at most two calls run at a time.
    assert float(elapsed) < 20 * 0.5 / 2, f"20 llm_query calls at 0.5 s took {elapsed} s"


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """How many of the (start, end) intervals hold at one moment, at most."""
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    most = now = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        now += step
        most = max(most, now)
    return most


def test_rlm_query_batched_runs_children_in_parallel(config: Config) -> None:
    seen: list[Event] = []
    res = rlm_kernel.run("rlm fan-out", config=config("speed.py"), on_event=seen.append)
    assert res.status == "done", res.error
    elapsed, count, _ = res.answer.split(" ", 2)
    assert count == "12"
    assert len(tree_nodes(res.tree)) == 13
    # Shown by the children's lifetimes overlapping (their events' timestamps), not by wall
    # time, which a loaded machine stretches: each child lives at least its 0.5 s LLM call and
    # its sandbox's start, and all 12 start within a blink of each other, so normally all 12
    # are alive together. One at a time, no two would be.
    started = {e.agent_id: e.ts for e in seen if e.type is EventType.AGENT_STARTED}
    finished = {e.agent_id: e.ts for e in seen if e.type is EventType.AGENT_FINISHED}
    children = sorted(a for a in started if a != "root")
    assert len(children) == 12 and set(children) <= set(finished)
    together = max_overlap([(started[a], finished[a]) for a in children])
    t0 = min(started[a] for a in children)
    assert together >= 6, (
        f"at most {together} of 12 children ran at once (the batch took {elapsed} s; "
        f"lifetimes from their start: "
        f"{[(round(started[a] - t0, 2), round(finished[a] - t0, 2)) for a in children]})"
    )


def test_max_depth_returns_an_error_string(config: Config) -> None:
    res = rlm_kernel.run("depth", config=config("limits.py", rlm__max_depth=1))
    assert res.status == "done", res.error
    assert "not available at depth 1 (max_depth=1)" in res.answer
    assert max(n["depth"] for n in tree_nodes(res.tree)) == 1
    assert "rlm_query / rlm_query_batched are NOT available" in _system_prompt_seen(res, "root.0")


def _system_prompt_seen(res: Any, agent_id: str) -> str:
    # The record keeps iterations, not prompts; rebuild the prompt the child was given.
    from rlm_kernel.prompts import AgentPromptInfo, system_prompt

    node = next(n for n in tree_nodes(res.tree) if n["agent_id"] == agent_id)
    return system_prompt(
        AgentPromptInfo(depth=node["depth"], max_depth=1, max_iterations=50, has_repo=False)
    )


def test_max_sandboxes_refuses_extra_children(config: Config) -> None:
    res = rlm_kernel.run("sandboxes", config=config("limits.py", rlm__max_sandboxes=2))
    assert res.status == "done", res.error
    got = json.loads(res.answer)
    assert got[0] == ["child a", "done"]
    assert got[1][1] == "budget" and "max_sandboxes=2" in got[1][0]
    assert got[2][1] == "budget"
    assert len(tree_nodes(res.tree)) == 2


def test_max_llm_calls(config: Config) -> None:
    res = rlm_kernel.run("llmcalls", config=config("limits.py", rlm__max_llm_calls=2))
    assert res.status == "budget"
    assert "max_llm_calls=2" in res.answer
    assert res.usage.llm_calls == 2


def test_max_cost_usd_stops_the_run(config: Config) -> None:
    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        return "```python\nprint('more')\n```"

    model = register_scripted("pricey", respond, cost_per_token=(0.001, 0.001))
    res = rlm_kernel.run("spend", config=config(model, rlm__max_cost_usd=1.0))
    assert res.status == "budget" and "max_cost_usd=1.0" in res.answer
    assert 1.0 <= res.usage.cost_usd < 3.0


def test_custom_tool_is_bridged_and_listed(config: Config) -> None:
    calls = []

    def lookup(key: str, n: int = 1) -> str:
        """Look a key up in the host's table."""
        calls.append((key, n))
        return key * n

    res = rlm_kernel.run("use the tool", config=config("tools.py"), tools=[lookup])
    assert res.status == "done", res.error
    assert res.answer == "abcabc|listed=True|doc=Look a key up in the host's table."
    assert calls == [("abc", 2)]
