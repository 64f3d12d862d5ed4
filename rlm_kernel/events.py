"""Typed engine events: the single source of truth for progress (DESIGN.md principle 3)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = ["Event", "EventSink", "EventType"]


class EventType(str, Enum):
    """The kinds of event a run emits, with the keys of their `data`."""

    RUN_STARTED = "run_started"  # task, repo, branch, commit, model, config, started_at, step
    AGENT_STARTED = "agent_started"  # parent_id, depth, task, started_at
    SANDBOX_READY = "sandbox_ready"  # sandbox: {backend, id, path}
    ITERATION_STARTED = "iteration_started"  # index
    LLM_TEXT = "llm_text"  # index, offset, text: a streamed reply as it comes (see below)
    LLM_RESPONSE = "llm_response"  # index, text, usage
    HISTORY_FOLDED = "history_folded"  # index, outputs, turns, tokens_before, tokens_after, budget
    STEP_WAITING = "step_waiting"  # index, code (the code the model proposes)
    STEP_RESUMED = "step_resumed"  # index, replaced (bool)
    CODE_EXECUTED = "code_executed"  # index, block, code, output, error, elapsed_s, spawned
    LLM_QUERY = "llm_query"  # prompt, response, model, usage, error
    ITERATION_FINISHED = "iteration_finished"  # index, namespace
    AGENT_FINISHED = "agent_finished"  # status, result, error, usage, finished_at, patch
    BUDGET_HIT = "budget_hit"  # limit, message
    NOTICE = "notice"  # level, message (kernel restarted, sandbox kept at …)
    RUN_FINISHED = "run_finished"  # status, answer, patch, usage, elapsed_s, finished_at


# LLM_TEXT: the reply of turn `index` so far is the text of the earlier LLM_TEXT events of that
# turn up to `offset` characters, then `text` (offset 0 starts it over: a retried call). At most
# one every 0.1 s per agent; LLM_RESPONSE then carries the whole reply. Records skip these.
# HISTORY_FOLDED: before turn `index`, the oldest turns were folded to fit the prompt budget
# (`budget` tokens): `outputs` turns show a note instead of their output, the first `turns` turns
# are one note; tokens are estimates. `retry: true` when it followed a context-length error.


@dataclass(frozen=True)
class Event:
    """One thing that happened in a run, addressed to an agent (or the run when agent_id is None)."""

    type: EventType
    run_id: str
    agent_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the widget and replay consume this)."""
        return {
            "type": self.type.value,
            "run_id": self.run_id,
            "agent_id": self.agent_id,
            "ts": self.ts,
            "data": self.data,
        }


EventSink = Callable[[Event], None]
