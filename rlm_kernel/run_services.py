"""What a run serves its agents: their own LLM calls, charged to the run's budget; `llm_query`;
`rlm_query` children; custom tools; and the work slots that bound how many agents work at once.

The `Run` owns one `AgentServices` and answers its agents through it, passing in what it needs
(config, LLM client, budget, emitter, how to make a child agent); it never reaches into the run,
and the run never into it."""

from __future__ import annotations

import contextlib
import inspect
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .agent import Agent, AgentOutcome
from .config import RLMConfig
from .control import Budget, BudgetExceeded
from .events import BudgetHit, Payload
from .llm import Completion, LLMClient, OnText, Usage
from .llm.service import SubLLM
from .sandbox.base import NO_CONTEXT
from .sandbox.bridge import BridgeRefused

__all__ = ["AgentServices", "tool_specs"]


def tool_specs(tools: Mapping[str, Callable[..., Any]]) -> list[dict[str, Any]]:
    """The name, signature and docstring of each custom tool (for the prompt and the REPL)."""
    specs = []
    for name, fn in tools.items():
        try:
            sig = str(inspect.signature(fn, eval_str=True))
        except (TypeError, ValueError, NameError):
            try:
                sig = str(inspect.signature(fn))
            except (TypeError, ValueError):
                sig = "(*args, **kwargs)"
        specs.append({"name": name, "signature": sig, "doc": inspect.getdoc(fn) or ""})
    return specs


class AgentServices:
    """Answers a run's agents: LLM calls, `llm_query`, `rlm_query`, tools and work slots."""

    def __init__(
        self,
        config: RLMConfig,
        llm: LLMClient,
        *,
        tools: Mapping[str, Callable[..., Any]],
        budget: Callable[[], Budget],
        emit: Callable[[Payload, str | None], None],
        new_child: Callable[[Agent, str, Any], Agent],
        note_batch: Callable[[int], None],
    ) -> None:
        """`budget()` is the run's current budget (a run replaces its own when it starts);
        `emit(payload, agent_id)` sends an event; `new_child(parent, task, context)` makes (and
        registers) a child agent; `note_batch(width)` tells the sandboxes how wide an
        `rlm_query` batch was."""
        self.config = config
        self.llm = llm
        self.tools = tools
        self.sub_llm = SubLLM(
            llm,
            config.sub_model_name,
            budget=budget,
            emit=lambda agent_id, query: emit(query, agent_id),
            width=4 * config.rlm.max_concurrency,
        )
        self._budget = budget
        self._emit = emit
        self._new_child = new_child
        self._note_batch = note_batch
        self._slots = threading.Semaphore(config.rlm.max_concurrency)
        self._parked: dict[str, int] = {}
        self._parked_lock = threading.Lock()

    # -- work slots -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of `max_concurrency` work slots."""
        self._slots.acquire()
        try:
            yield
        finally:
            self._slots.release()

    @contextlib.contextmanager
    def parked(self, agent: Agent) -> Iterator[None]:
        """Give the agent's slot back while it waits for its children (so deep trees cannot deadlock)."""
        with self._parked_lock:
            n = self._parked.get(agent.agent_id, 0)
            self._parked[agent.agent_id] = n + 1
            if n == 0:
                self._slots.release()
        try:
            yield
        finally:
            with self._parked_lock:
                n = self._parked[agent.agent_id] - 1
                self._parked[agent.agent_id] = n
                last = n == 0
            if last:
                self._slots.acquire()

    # -- LLM calls --------------------------------------------------------------------------------
    def complete(
        self,
        agent: Agent,
        messages: list[dict[str, str]],
        *,
        kind: str,
        model: str | None = None,
        on_text: OnText | None = None,
    ) -> Completion:
        """One LLM call on behalf of `agent`, charged to the run's budget (`on_text`: stream it)."""
        budget = self._budget()
        refusal = budget.reserve_llm_call()
        if refusal:
            raise BudgetExceeded(refusal)
        name = model or (self.config.model.name if kind == "agent" else self.config.sub_model_name)
        timeout = max(0.1, min(self.config.model.timeout, budget.remaining_s()))
        cm = self.slot() if kind == "agent" else contextlib.nullcontext()
        with cm:
            try:
                completion = self.llm.complete(
                    messages,
                    model=name,
                    info=agent.llm_info(kind),
                    cancel=agent.scope,
                    timeout=timeout,
                    on_text=on_text,
                )
            except BaseException:
                budget.charge(Usage())
                raise
        budget.charge(completion.usage)
        agent.usage.add(completion.usage)
        return completion

    def llm_queries(self, agent: Agent, prompts: list[str], model: str | None) -> list[str]:
        """Answer `llm_query(_batched)`: every prompt concurrently; failures become error strings."""
        return self.sub_llm.query(
            prompts,
            model,
            info=agent.llm_info("llm_query"),
            cancel=agent.scope,
            agent_id=agent.agent_id,
            usage=agent.usage,
        )

    # -- children ---------------------------------------------------------------------------------
    def spawn_children(
        self, parent: Agent, tasks: list[str], contexts: list[Any]
    ) -> list[dict[str, Any]]:
        """Answer `rlm_query(_batched)`: run one child per task concurrently, order kept."""
        limits = self.config.rlm
        if parent.depth >= limits.max_depth:
            msg = (
                f"Error: rlm_query is not available at depth {parent.depth} (max_depth={limits.max_depth}); "
                "do this sub-task yourself or use llm_query."
            )
            return [{"text": msg, "agent_id": "", "patch": "", "status": "error"} for _ in tasks]
        replies: list[dict[str, Any] | None] = [None] * len(tasks)
        children: list[tuple[int, Agent]] = []
        self._note_batch(len(tasks))
        budget = self._budget()
        for i, task in enumerate(tasks):
            refusal = budget.take_sandbox()
            if refusal:
                self._emit(BudgetHit("max_sandboxes", refusal), parent.agent_id)
                replies[i] = {
                    "text": f"Error: {refusal}; no sub-agent was started for this task.",
                    "agent_id": "",
                    "patch": "",
                    "status": "budget",
                }
                continue
            ctx = contexts[i] if i < len(contexts) and contexts[i] is not None else NO_CONTEXT
            children.append((i, self._new_child(parent, task, ctx)))
        outcomes: dict[int, AgentOutcome] = {}

        def work(i: int, child: Agent) -> None:
            outcomes[i] = child.run_loop()

        threads = [
            threading.Thread(target=work, args=(i, c), name=f"rlm-agent-{c.agent_id}", daemon=True)
            for i, c in children
        ]
        parent.child_threads.extend(threads)
        with self.parked(parent):
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        for i, child in children:
            out = outcomes.get(i) or AgentOutcome(
                child.agent_id, "Error: the sub-agent did not finish", "error"
            )
            replies[i] = out.to_reply(limits.result_truncation_limit)
        return [r for r in replies if r is not None]

    # -- tools ------------------------------------------------------------------------------------
    def call_tool(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Run a host-side custom tool for the REPL; exceptions become the REPL's error."""
        fn = self.tools.get(name)
        if fn is None:
            raise BridgeRefused(f"no tool named {name!r}")
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            raise BridgeRefused(f"tool {name} raised {type(exc).__name__}: {exc}") from exc
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            return str(value)
        return value
