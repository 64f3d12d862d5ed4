"""Typed engine events: the single source of truth for progress (DESIGN.md principle 3).

An `Event` says who (`run_id`, `agent_id`) and when (`ts`); its `payload` says what, as one
frozen dataclass per kind (`AgentStarted`, `CodeExecuted`, …). Consumers narrow with
`isinstance` (or `match`), so mypy checks every field they read; `event.type` names the kind and
`event.to_dict()` is the JSON form. Payloads hold references to the engine's values (no copies:
events are on the hot path of every iteration), so consumers must not mutate them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, TypedDict

__all__ = [
    "PAYLOAD_TYPES",
    "AgentFinished",
    "AgentStarted",
    "BudgetHit",
    "CodeExecuted",
    "Event",
    "EventPayload",
    "EventSink",
    "EventType",
    "GateState",
    "GateWaiter",
    "HistoryFolded",
    "IterationFinished",
    "IterationStarted",
    "LLMQuery",
    "LLMResponse",
    "LLMText",
    "Notice",
    "Payload",
    "RunFinished",
    "RunStarted",
    "SandboxReady",
    "StepMode",
    "StepResumed",
    "StepWaiting",
    "Unsubscribe",
]


class EventType(str, Enum):
    """The kinds of event a run emits (the `type` of their JSON form)."""

    RUN_STARTED = "run_started"
    AGENT_STARTED = "agent_started"
    SANDBOX_READY = "sandbox_ready"
    ITERATION_STARTED = "iteration_started"
    LLM_TEXT = "llm_text"
    LLM_RESPONSE = "llm_response"
    HISTORY_FOLDED = "history_folded"
    STEP_WAITING = "step_waiting"
    STEP_RESUMED = "step_resumed"
    STEP_MODE = "step_mode"
    CODE_EXECUTED = "code_executed"
    LLM_QUERY = "llm_query"
    ITERATION_FINISHED = "iteration_finished"
    AGENT_FINISHED = "agent_finished"
    BUDGET_HIT = "budget_hit"
    NOTICE = "notice"
    RUN_FINISHED = "run_finished"


UsageCounts = Mapping[str, int | float]
"""`llm_calls`, `prompt_tokens`, `completion_tokens`, `cache_read_tokens`, `cost_usd` (the
record's `usage`: `rlm_kernel.llm.usage.USAGE_KEYS`)."""


class GateWaiter(TypedDict):
    """An agent held at the step gate, with the code it proposes to run."""

    agent_id: str
    index: int
    code: str


class EventPayload:
    """Base of the payloads: `kind` is the event's type; fields are the JSON form's `data`."""

    __slots__ = ()
    kind: ClassVar[EventType]
    __match_args__: ClassVar[tuple[str, ...]]

    def fields(self) -> dict[str, Any]:
        """The payload's fields as a new (shallow) dict: the JSON form's `data`."""
        return {name: getattr(self, name) for name in self.__match_args__}


@dataclass(frozen=True, slots=True)
class RunStarted(EventPayload):
    """The run began (its record's header fields; `step`: it starts paused in step mode;
    `isolation`: the local sandboxes' tier, None on other backends)."""

    kind = EventType.RUN_STARTED
    task: str
    repo: str | None
    branch: str | None
    commit: str | None
    model: str
    config: dict[str, Any]
    started_at: str
    step: bool = False
    isolation: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class AgentStarted(EventPayload):
    """An agent began its loop (`started_at`: epoch seconds)."""

    kind = EventType.AGENT_STARTED
    parent_id: str | None
    depth: int
    task: str
    started_at: float


@dataclass(frozen=True, slots=True)
class SandboxReady(EventPayload):
    """The agent's sandbox can run code: `{backend, id, path}`."""

    kind = EventType.SANDBOX_READY
    sandbox: dict[str, Any]


@dataclass(frozen=True, slots=True)
class IterationStarted(EventPayload):
    """An iteration (one LLM turn and its code) began; `index` counts from 0."""

    kind = EventType.ITERATION_STARTED
    index: int


@dataclass(frozen=True, slots=True)
class LLMText(EventPayload):
    """A streamed reply as it comes: the reply of turn `index` so far is the text of the
    earlier `llm_text` events of that turn up to `offset` characters, then `text` (offset 0
    starts it over: a retried call). At most one every 0.1 s per agent; `llm_response` then
    carries the whole reply. Records skip these."""

    kind = EventType.LLM_TEXT
    index: int
    offset: int
    text: str


@dataclass(frozen=True, slots=True)
class LLMResponse(EventPayload):
    """The model's reply of an iteration, and what the call used."""

    kind = EventType.LLM_RESPONSE
    index: int
    text: str
    usage: UsageCounts


@dataclass(frozen=True, slots=True)
class HistoryFolded(EventPayload):
    """Before turn `index`, the oldest turns were folded to fit the prompt budget (`budget`
    tokens): `outputs` turns show a note instead of their output, the first `turns` turns are
    one note; tokens are estimates. `retry`: it followed a context-length error."""

    kind = EventType.HISTORY_FOLDED
    index: int
    outputs: int
    turns: int
    tokens_before: int
    tokens_after: int
    budget: int
    retry: bool = False


@dataclass(frozen=True, slots=True)
class StepWaiting(EventPayload):
    """The agent stops at the step gate before running `code` (what the model proposes)."""

    kind = EventType.STEP_WAITING
    index: int
    code: str


@dataclass(frozen=True, slots=True)
class StepResumed(EventPayload):
    """The agent passed the step gate; `replaced`: it runs code given with the step."""

    kind = EventType.STEP_RESUMED
    index: int
    replaced: bool


@dataclass(frozen=True, slots=True)
class StepMode(EventPayload):
    """The step gate changed: whether the run is paused (stepping), who waits (oldest first)
    and how many granted steps no agent has taken yet. Each one is the gate's whole state."""

    kind = EventType.STEP_MODE
    stepping: bool
    waiting: tuple[GateWaiter, ...] = ()
    pending_steps: int = 0


@dataclass(frozen=True, slots=True)
class CodeExecuted(EventPayload):
    """One code block ran in the agent's sandbox (`spawned`: agent ids it started)."""

    kind = EventType.CODE_EXECUTED
    index: int
    block: int
    code: str
    output: str
    error: str | None
    elapsed_s: float
    status: str = "ok"
    spawned: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LLMQuery(EventPayload):
    """An `llm_query` of the agent's code: the answer, or the error its code received."""

    kind = EventType.LLM_QUERY
    prompt: str
    response: str | None
    model: str
    error: str | None = None
    usage: UsageCounts | None = None


@dataclass(frozen=True, slots=True)
class IterationFinished(EventPayload):
    """An iteration ended; `namespace`: the REPL's variables after it (None: no code ran)."""

    kind = EventType.ITERATION_FINISHED
    index: int
    namespace: list[dict[str, Any]] | None
    no_code: bool = False


@dataclass(frozen=True, slots=True)
class AgentFinished(EventPayload):
    """An agent ended with an answer (`result`), or a partial one and the reason (`error`)."""

    kind = EventType.AGENT_FINISHED
    status: str
    result: Any
    error: str | None
    usage: UsageCounts
    finished_at: float
    patch: str = ""


@dataclass(frozen=True, slots=True)
class BudgetHit(EventPayload):
    """A limit (`limit` names the config key) refused something."""

    kind = EventType.BUDGET_HIT
    limit: str
    message: str


@dataclass(frozen=True, slots=True)
class Notice(EventPayload):
    """Something worth telling the user (a kept sandbox, a patch that could not be made…)."""

    kind = EventType.NOTICE
    level: str
    message: str


@dataclass(frozen=True, slots=True)
class RunFinished(EventPayload):
    """The run ended and its sandboxes are gone (unless kept); the last event of a run."""

    kind = EventType.RUN_FINISHED
    status: str
    answer: Any
    patch: str
    usage: UsageCounts
    elapsed_s: float
    finished_at: str
    patch_path: str | None = None


Payload = (
    RunStarted
    | AgentStarted
    | SandboxReady
    | IterationStarted
    | LLMText
    | LLMResponse
    | HistoryFolded
    | StepWaiting
    | StepResumed
    | StepMode
    | CodeExecuted
    | LLMQuery
    | IterationFinished
    | AgentFinished
    | BudgetHit
    | Notice
    | RunFinished
)
"""Every payload type (narrow an event's `payload` with isinstance)."""

PAYLOAD_TYPES: dict[EventType, type[EventPayload]] = {
    cls.kind: cls
    for cls in (
        RunStarted,
        AgentStarted,
        SandboxReady,
        IterationStarted,
        LLMText,
        LLMResponse,
        HistoryFolded,
        StepWaiting,
        StepResumed,
        StepMode,
        CodeExecuted,
        LLMQuery,
        IterationFinished,
        AgentFinished,
        BudgetHit,
        Notice,
        RunFinished,
    )
}
"""The payload class of each event type."""


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened in a run, about an agent (or the run when agent_id is None)."""

    payload: Payload
    run_id: str
    agent_id: str | None = None
    ts: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not isinstance(self.payload, EventPayload):
            raise TypeError(
                f"Event(payload, run_id, agent_id): the payload must be one of the typed payloads "
                f"of rlm_kernel.events (e.g. Notice(level, message)), not {self.payload!r}; "
                "build an event from its JSON form with Event.from_dict"
            )

    @property
    def type(self) -> EventType:
        """The event's kind."""
        return self.payload.kind

    @property
    def data(self) -> dict[str, Any]:
        """The payload's fields as a dict (a new shallow copy each time)."""
        return self.payload.fields()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: `type`, `run_id`, `agent_id`, `ts`, `data`."""
        return {
            "type": self.type.value,
            "run_id": self.run_id,
            "agent_id": self.agent_id,
            "ts": self.ts,
            "data": self.payload.fields(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        """The event of a `to_dict()` form; unknown `data` keys are dropped, missing ones raise."""
        ptype = PAYLOAD_TYPES[EventType(d["type"])]
        data = d.get("data") or {}
        known = {k: v for k, v in data.items() if k in ptype.__match_args__}
        if ptype is StepMode and "waiting" in known:
            known["waiting"] = tuple(known["waiting"])
        payload: Payload = ptype(**known)  # type: ignore[assignment]
        ts = d.get("ts")
        return cls(payload, str(d["run_id"]), d.get("agent_id"), time.time() if ts is None else ts)


@dataclass(frozen=True, slots=True)
class GateState:
    """The step gate as a consumer knows it from events: `after(event)` folds one event in."""

    stepping: bool = False
    waiting: tuple[GateWaiter, ...] = ()
    pending_steps: int = 0
    ended: bool = False

    def after(self, ev: Event) -> GateState:
        """The state once `ev` happened (`self` when `ev` does not change it)."""
        p = ev.payload
        if isinstance(p, StepMode):
            return GateState(p.stepping, p.waiting, p.pending_steps, self.ended)
        if isinstance(p, RunStarted):
            return GateState(p.step, self.waiting, self.pending_steps, self.ended)
        if isinstance(p, RunFinished):
            return GateState(ended=True)
        return self

    @property
    def paused(self) -> bool:
        """True while the run goes on in step mode (agents stop before their code)."""
        return self.stepping and not self.ended


EventSink = Callable[[Event], None]
"""A consumer of events (called on engine threads, one event at a time, in order)."""

Unsubscribe = Callable[[], None]
"""Returned by `Run.subscribe`: stop delivering events to that sink."""
