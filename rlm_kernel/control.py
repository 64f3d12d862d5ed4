"""Run controls shared by agents: budgets held by the run, cancellation scopes and the step gate."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .config import RLMSettings
from .events import GateWaiter
from .llm import Usage

__all__ = ["Budget", "BudgetExceeded", "Cancelled", "Scope", "StepGate"]


class Cancelled(Exception):
    """The agent's scope was cancelled (user cancel, parent ended, or global timeout)."""


class BudgetExceeded(Exception):
    """A run-wide limit was reached; `limit` names the config key."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.limit = message.split("(")[-1].split("=")[0] if "(" in message else "budget"


class Scope(threading.Event):
    """A cancellation flag that is also set when any enclosing scope is set."""

    def __init__(self, *parents: threading.Event) -> None:
        super().__init__()
        self.parents = parents
        self.reason = ""

    def is_set(self) -> bool:
        """True when this scope or any parent scope was cancelled."""
        return super().is_set() or any(p.is_set() for p in self.parents)

    def cancel(self, reason: str = "cancelled") -> None:
        """Cancel this scope (and so every scope inside it)."""
        if not super().is_set():
            self.reason = reason
        self.set()

    def why(self) -> str:
        """The reason of the innermost cancelled scope."""
        if super().is_set():
            return self.reason or "cancelled"
        for p in self.parents:
            if p.is_set():
                return p.why() if isinstance(p, Scope) else "cancelled"
        return ""


@dataclass
class Budget:
    """The run's limits and what has been used; agents draw from it (the remainder is shared)."""

    limits: RLMSettings
    started: float
    sandboxes: int = 0
    usage: Usage | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.usage = Usage()

    @property
    def deadline(self) -> float:
        """time.monotonic() value at which the run times out."""
        return self.started + self.limits.global_timeout

    def remaining_s(self) -> float:
        """Seconds left before the global timeout."""
        return self.deadline - time.monotonic()

    def take_sandbox(self) -> str | None:
        """Reserve one sandbox; returns why not when the budget is spent."""
        with self._lock:
            if self.sandboxes >= self.limits.max_sandboxes:
                return f"sandbox budget exhausted (max_sandboxes={self.limits.max_sandboxes})"
            self.sandboxes += 1
            return None

    def llm_refusal(self) -> str | None:
        """Why no further LLM call may be made, or None."""
        lim = self.limits
        with self._lock:
            u = self.usage
            assert u is not None
            if lim.max_llm_calls is not None and u.llm_calls >= lim.max_llm_calls:
                return f"LLM call budget exhausted (max_llm_calls={lim.max_llm_calls})"
            if lim.max_tokens is not None and u.total_tokens >= lim.max_tokens:
                return f"token budget exhausted (max_tokens={lim.max_tokens})"
            if lim.max_cost_usd is not None and u.cost_usd >= lim.max_cost_usd:
                return f"cost budget exhausted (max_cost_usd={lim.max_cost_usd})"
        return None

    def reserve_llm_call(self) -> str | None:
        """Count one LLM call before it is made (so concurrent calls cannot overshoot)."""
        with self._lock:
            u = self.usage
            assert u is not None
            lim = self.limits.max_llm_calls
            if lim is not None and u.llm_calls >= lim:
                return f"LLM call budget exhausted (max_llm_calls={lim})"
            u.llm_calls += 1
        return self.llm_refusal_tokens()

    def llm_refusal_tokens(self) -> str | None:
        """Token and cost limits (checked before a call, charged after it)."""
        lim = self.limits
        with self._lock:
            u = self.usage
            assert u is not None
            if lim.max_tokens is not None and u.total_tokens >= lim.max_tokens:
                u.llm_calls -= 1
                return f"token budget exhausted (max_tokens={lim.max_tokens})"
            if lim.max_cost_usd is not None and u.cost_usd >= lim.max_cost_usd:
                u.llm_calls -= 1
                return f"cost budget exhausted (max_cost_usd={lim.max_cost_usd})"
        return None

    def charge(self, used: Usage) -> None:
        """Add the tokens and cost of a finished call (its call was counted by reserve_llm_call)."""
        with self._lock:
            u = self.usage
            assert u is not None
            u.prompt_tokens += used.prompt_tokens
            u.completion_tokens += used.completion_tokens
            u.cache_read_tokens += used.cache_read_tokens
            u.cost_usd += used.cost_usd

    def note(self) -> str:
        """A line for prompts: what is left of the shared budget."""
        lim = self.limits
        parts = [f"{max(0, lim.max_sandboxes - self.sandboxes)} sandboxes (sub-agents)"]
        if lim.max_llm_calls is not None:
            assert self.usage is not None
            parts.append(f"{max(0, lim.max_llm_calls - self.usage.llm_calls)} LLM calls")
        parts.append(f"{int(max(0, self.remaining_s()))} s")
        return "The run's remaining shared budget: " + ", ".join(parts) + "."


@dataclass
class _Waiter:
    agent_id: str
    index: int
    code: str


class StepGate:
    """Holds agents before they run code while the run is paused or stepping.

    `on_change` is called after every change of the gate's state (stepping, who waits, steps
    granted), outside the gate's lock, so the run can emit the state as an event.
    """

    def __init__(self, stepping: bool = False, on_change: Callable[[], None] | None = None) -> None:
        self._cond = threading.Condition()
        self.stepping = stepping
        self._tokens = 0
        self._replacements: deque[str | None] = deque()
        self._queue: deque[_Waiter] = deque()
        self.on_change = on_change

    def state(self) -> tuple[bool, tuple[GateWaiter, ...], int]:
        """Stepping, the agents waiting (oldest first, with the code they propose), and the
        steps granted that no agent has taken yet: one consistent reading."""
        with self._cond:
            waiting = tuple(
                GateWaiter(agent_id=w.agent_id, index=w.index, code=w.code) for w in self._queue
            )
            return self.stepping, waiting, self._tokens

    def _is_stepping(self) -> bool:
        return self.stepping  # (a call: mypy would take `stepping` for True inside the loop)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def wait(self, agent_id: str, index: int, code: str, cancel: threading.Event) -> str | None:
        """Block while paused; return replacement code given with the step, if any."""
        with self._cond:
            if not self.stepping:
                return None
            me = _Waiter(agent_id, index, code)
            self._queue.append(me)
        self._changed()
        try:
            with self._cond:
                while True:
                    if cancel.is_set():
                        raise Cancelled()
                    if not self._is_stepping():
                        return None
                    if self._tokens > 0 and self._queue[0] is me:
                        self._tokens -= 1
                        return self._replacements.popleft() if self._replacements else None
                    self._cond.wait(0.05)
        finally:
            with self._cond:
                self._queue.remove(me)
                self._cond.notify_all()
            self._changed()

    def step(self, code: str | None = None) -> None:
        """Let exactly one waiting (or the next arriving) iteration run, optionally with new code."""
        with self._cond:
            self.stepping = True
            self._tokens += 1
            self._replacements.append(code)
            self._cond.notify_all()
        self._changed()

    def pause(self) -> None:
        """Stop agents before their next code runs."""
        with self._cond:
            self.stepping = True
            self._cond.notify_all()
        self._changed()

    def resume(self) -> None:
        """Run freely again."""
        with self._cond:
            self.stepping = False
            self._tokens = 0
            self._replacements.clear()
            self._cond.notify_all()
        self._changed()
