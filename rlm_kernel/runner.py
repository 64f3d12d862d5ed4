"""A run: the agent tree, budgets, concurrency, cancellation, the step gate, and the result."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import llm as llm_mod
from .agent import Agent, AgentOutcome
from .config import RLMConfig, is_secret_env, load_config, load_dotenv_file
from .control import Budget, Scope, StepGate
from .events import (
    Event,
    EventSink,
    Payload,
    RunFinished,
    RunStarted,
    StepMode,
    StepResumed,
    StepWaiting,
    Unsubscribe,
)
from .llm import LLMClient, Usage
from .records import Recorder
from .run_sandboxes import RunSandboxes
from .run_services import AgentServices, tool_specs
from .sandbox.base import NO_CONTEXT, Sandbox
from .sandbox.isolation import Isolation
from .sandbox.workspace import Target, resolve_target
from .signature import Signature

__all__ = ["Run", "RunResult", "run"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run produced: the answer, the patch, and where the record is."""

    run_id: str
    status: str
    answer: Any
    patch: str
    usage: Usage
    elapsed_s: float
    record_path: str | None
    tree: dict[str, Any] | None
    patch_path: str | None = None
    error: str | None = None
    kept: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        return self.answer if isinstance(self.answer, str) else json.dumps(self.answer, default=str)


def new_run_id() -> str:
    """A sortable, unique run id."""
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


class Run:
    """One RLM run. Use `execute()` (blocking) or `start()` then `wait()`; follow it with
    `subscribe()` (events are the only way out of the engine) and control it with `pause()`,
    `step()`, `resume()`, `cancel()` and `release()` from any thread."""

    def __init__(
        self,
        task: str,
        repo: str | os.PathLike[str] | None = None,
        *,
        branch: str | None = None,
        commit: str | None = None,
        config: RLMConfig | None = None,
        context: Any = NO_CONTEXT,
        signature: str | Signature | None = None,
        tools: Mapping[str, Callable[..., Any]] | Sequence[Callable[..., Any]] | None = None,
        on_event: EventSink | Sequence[EventSink] | None = None,
        step: bool = False,
        llm: LLMClient | None = None,
        root_sandbox: Sandbox | Callable[[], Sandbox] | None = None,
        context_desc: str | None = None,
    ) -> None:
        load_dotenv_file()
        self.config = config if config is not None else load_config()
        self.run_id = new_run_id()
        self.task = task
        self.repo = None if repo is None else str(repo)
        self.branch = branch
        self.commit = commit
        self.context = context
        self.signature = Signature.parse(signature) if isinstance(signature, str) else signature
        if tools is None:
            self.tools: dict[str, Callable[..., Any]] = {}
        elif isinstance(tools, Mapping):
            self.tools = dict(tools)
        else:
            self.tools = {fn.__name__: fn for fn in tools}
        self.tool_specs = tool_specs(self.tools)
        self.llm = llm or LLMClient.from_config(self.config)
        self.scope = Scope()
        # Events: every one goes to the log (replayed to late subscribers) and to the sinks,
        # under one lock, so a subscriber sees each event once and in the same order as all others.
        self._emit_lock = threading.RLock()
        self._log: list[Event] = []
        self._sinks: tuple[EventSink, ...] = ()
        self._gate = StepGate(step, on_change=self._gate_changed)
        self._gate_last = StepMode(step)
        self._ended = False  # RUN_FINISHED was emitted: nothing follows it
        self._recorder = Recorder(self.config.results_dir)
        self.subscribe(self._recorder)
        if on_event is not None:
            for sink in on_event if isinstance(on_event, Sequence) else [on_event]:
                self.subscribe(sink)
        self.target = Target(None, None, None)  # prepare() resolves it
        self.budget = Budget(self.config.rlm, time.monotonic())
        self.status = "created"
        self.root: Agent | None = None
        # root_sandbox: an existing REPL (the notebook's) to run the root agent in, or the
        # function that starts it; context_desc describes the context already living in it.
        self._sandboxes = RunSandboxes(
            self.run_id,
            self.config,
            tool_specs=self.tool_specs,
            emit=self.emit,
            budget=lambda: self.budget,
            scope=self.scope,
            paused=lambda: self._gate.stepping,
            root=root_sandbox,
        )
        self.context_desc = context_desc
        self._agents: dict[str, Agent] = {}
        self._services = AgentServices(
            self.config,
            self.llm,
            tools=self.tools,
            budget=lambda: self.budget,
            emit=self.emit,
            new_child=self._new_child,
            note_batch=self._sandboxes.note_batch,
        )
        # What the run's agents ask of it, answered by its parts: their sandboxes (started in the
        # background, released when they end); their LLM calls, charged to the budget;
        # llm_query; rlm_query's children; host tools; and the `max_concurrency` work slots.
        self.start_sandbox = self._sandboxes.start
        self.release_sandbox = self._sandboxes.release
        self.complete = self._services.complete
        self.llm_queries = self._services.llm_queries
        self.spawn_children = self._services.spawn_children
        self.call_tool = self._services.call_tool
        self.slot = self._services.slot
        self.sub_llm = self._services.sub_llm  # llm_query's service
        self._thread: threading.Thread | None = None
        self._result: RunResult | None = None
        self._done = threading.Event()
        self._closed = threading.Event()  # and its released sandboxes closed (wait_closed)
        self._started_wall = time.time()

    # -- events -----------------------------------------------------------------------------------
    def emit(self, payload: Payload, agent_id: str | None = None) -> None:
        """Send an event to every consumer (recorder, progress, widget…); consumer errors are logged."""
        ev = Event(payload, self.run_id, agent_id)
        with self._emit_lock:
            self._log.append(ev)
            for sink in self._sinks:
                _deliver(sink, ev)

    def subscribe(self, sink: EventSink, *, replay: bool = True) -> Unsubscribe:
        """Deliver the run's events to `sink`: with `replay`, every event so far first (the
        state so far), then each new one as it happens. No event is missed or delivered twice
        between the two, however many agents emit meanwhile. Returns the function that stops
        the delivery. `sink` runs on engine threads, one event at a time; it must be quick and
        must not mutate the payloads."""
        with self._emit_lock:
            if replay:
                for ev in list(self._log):
                    _deliver(sink, ev)
            self._sinks = (*self._sinks, sink)

        def unsubscribe() -> None:
            with self._emit_lock:
                sinks = list(self._sinks)
                for i, s in enumerate(sinks):
                    if s is sink:
                        del sinks[i]
                        self._sinks = tuple(sinks)
                        return

        return unsubscribe

    def _gate_changed(self) -> None:
        """The step gate changed: emit its whole state (only when it differs from the last)."""
        with self._emit_lock:
            stepping, waiting, pending = self._gate.state()
            payload = StepMode(stepping, waiting, pending)
            if payload != self._gate_last and not self._ended:
                self._gate_last = payload
                self.emit(payload)

    def log_exception(self, agent_id: str) -> None:
        """Log an engine bug with its traceback."""
        log.exception("agent %s failed", agent_id)

    # -- controls ---------------------------------------------------------------------------------
    def pause(self) -> None:
        """Hold every agent before its next code runs (a `StepMode` event says who waits)."""
        self._gate.pause()

    def step(self, code: str | None = None) -> None:
        """Let one iteration run (with `code` instead of the model's, if given)."""
        self._gate.step(code)

    def resume(self) -> None:
        """Run freely (leave step mode)."""
        self._gate.resume()

    def cancel(self, agent_id: str | None = None, reason: str = "cancelled by the user") -> None:
        """Cancel the whole run, or one agent and its sub-tree."""
        if agent_id is None or (self.root is not None and agent_id == self.root.agent_id):
            self.scope.cancel(reason)
            return
        agent = self._agents.get(agent_id)
        if agent is not None:
            agent.scope.cancel(reason)

    def release(self, *, remove: bool = True) -> int:
        """Close the sandboxes this run kept (`sandbox.keep`): their REPLs stop and, unless
        `remove=False`, their workspaces are removed too. Returns how many were closed."""
        return self._sandboxes.release_kept(remove=remove)

    def at_step_gate(self, agent: Agent, index: int, code: str) -> str | None:
        """Hold `agent` before it runs `code` while the run is paused; returns the code given
        with the step that let it through, if any (raises `Cancelled` when it is cancelled)."""
        if not self._gate.stepping:
            return None
        self.emit(StepWaiting(index, code), agent.agent_id)
        replacement = self._gate.wait(agent.agent_id, index, code, agent.scope)
        self.emit(StepResumed(index, replacement is not None), agent.agent_id)
        return replacement

    # -- agents ----------------------------------------------------------------------------------
    def _new_child(self, parent: Agent, task: str, context: Any) -> Agent:
        child = Agent(self, parent.next_child_id(), parent, task, context)
        self._agents[child.agent_id] = child
        return child

    # -- sandboxes --------------------------------------------------------------------------------
    def sandbox_of(self, agent_id: str, *, kept_only: bool = False) -> Sandbox | None:
        """The live sandbox of an agent: kept after it ended, or (unless `kept_only`) its
        running one; else None."""
        kept = self._sandboxes.kept_of(agent_id)
        if kept is not None or kept_only:
            return kept
        agent = self._agents.get(agent_id)
        live = agent.sandbox if agent is not None else None
        return live if live is not None and not live.closed else None

    @property
    def isolation(self) -> Isolation | None:
        """The sandboxes' isolation tier (once prepared); None on backends that run elsewhere."""
        return self._sandboxes.isolation

    @property
    def root_sandbox(self) -> Sandbox | None:
        """The notebook's REPL the root agent runs in (once it is there), if any."""
        return self._sandboxes.root

    # -- the run ----------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Check everything a run needs before anything is created (raises with a clear message)."""
        self.target = resolve_target(self.repo, self.branch, self.commit)
        self.llm.check_ready(self.config.model.name)
        if self.config.model.sub_model:
            self.llm.check_ready(self.config.model.sub_model)
        self._sandboxes.prepare(self.target)

    def start(self) -> None:
        """Validate, then run in a background thread."""
        self.prepare()
        self._thread = threading.Thread(
            target=self._main, name=f"rlm-run-{self.run_id}", daemon=True
        )
        self._thread.start()

    def wait(self, timeout: float | None = None) -> RunResult:
        """Block until the run has finished; Ctrl-C cancels it (and still cleans up).

        Every sandbox is stopped by then except the ones its agents released last (the root's):
        their kernels' stop and their files' removal go on on threads of their own for ~10 ms,
        off the result's path; `wait_closed()` waits for them, and so does the process's exit."""
        try:
            if not self._done.wait(timeout):
                raise TimeoutError(f"run {self.run_id} still running")
        except KeyboardInterrupt:
            self.cancel(reason="interrupted (Ctrl-C)")
            deadline = time.monotonic() + 30
            self._done.wait(30)  # an interrupted run is over once its sandboxes are gone
            self._closed.wait(max(0.0, deadline - time.monotonic()))
            raise
        assert self._result is not None
        return self._result

    @property
    def closed(self) -> bool:
        """True once the run has finished and no sandbox of it is left (unless kept)."""
        return self._closed.is_set()

    def wait_closed(self, timeout: float | None = None) -> None:
        """Block until the run has finished and no sandbox of it is left (unless kept)."""
        if not self._closed.wait(timeout):
            raise TimeoutError(f"run {self.run_id} is still closing its sandboxes")

    def execute(self) -> RunResult:
        """Run to the end in this thread's control (validate, start, wait)."""
        self.start()
        return self.wait()

    @property
    def started(self) -> bool:
        """True once start() has launched the run's thread."""
        return self._thread is not None

    @property
    def done(self) -> bool:
        """True once the run has finished."""
        return self._done.is_set()

    @property
    def result(self) -> RunResult | None:
        """The result, once done."""
        return self._result

    def _main(self) -> None:
        t0 = time.monotonic()
        self.budget = Budget(self.config.rlm, t0)
        llm_mod.prewarm_for(self.config)  # litellm's import, if a call of the run may need it
        self.status = "running"
        cfg = self.config.to_dict()
        with self._emit_lock:  # `step` and the step-mode events stay in order
            self.emit(
                RunStarted(
                    task=self.task,
                    repo=self.repo,
                    branch=self.branch,
                    commit=self.target.commit,
                    model=self.config.model.name,
                    config=_redact(cfg),
                    isolation=self.isolation.to_dict() if self.isolation is not None else None,
                    started_at=dt.datetime.now().isoformat(timespec="seconds"),
                    step=self._gate.stepping,
                )
            )
        timer = threading.Timer(
            self.config.rlm.global_timeout,
            lambda: self.scope.cancel(
                f"global_timeout ({self.config.rlm.global_timeout:g} s) reached"
            ),
        )
        timer.daemon = True
        timer.name = "rlm-global-timeout"
        timer.start()
        outcome: AgentOutcome | None = None
        error: str | None = None
        try:
            self.budget.take_sandbox()
            self.root = Agent(self, "root", None, self.task, self.context)
            self._agents["root"] = self.root
            outcome = self.root.run_loop()
        except Exception as exc:
            error = f"internal error: {exc!r}"
            log.exception("run %s failed", self.run_id)
        finally:
            timer.cancel()
            timer.join()  # no thread outlives the run (a cancelled Timer ends at once)
            self._cleanup()
        status = outcome.status if outcome else "error"
        if status == "cancelled" and "timeout" in self.scope.why():
            status = "timeout"
        elapsed = time.monotonic() - t0
        patch = outcome.patch if outcome else ""
        patch_path = None
        if patch:
            p = Path(self.config.results_dir) / f"{self.run_id}.patch"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(patch, encoding="utf-8")
            patch_path = str(p)
        answer = outcome.value if outcome else None
        assert self.budget.usage is not None
        self.status = status
        with self._emit_lock:
            self.emit(
                RunFinished(
                    status=status,
                    answer=answer,
                    patch=patch,
                    usage=self.budget.usage.to_dict(),
                    elapsed_s=round(elapsed, 3),
                    finished_at=dt.datetime.now().isoformat(timespec="seconds"),
                    patch_path=patch_path,
                )
            )
            self._ended = True
        self._result = RunResult(
            run_id=self.run_id,
            status=status,
            answer=answer,
            patch=patch,
            usage=self.budget.usage,
            elapsed_s=elapsed,
            record_path=str(self._recorder.path) if self._recorder.path else None,
            tree=self._recorder.state.to_dict().get("root"),
            patch_path=patch_path,
            error=error or (outcome.error if outcome and status != "done" else None),
            kept=[sb.info() for sb in self._sandboxes.kept()],
        )
        self._done.set()
        try:
            self._sandboxes.wait_closed()
        finally:
            self._closed.set()

    def _cleanup(self) -> None:
        """Make sure no sandbox outlives the run (unless kept): closes every sandbox, the ones
        its agents released finish closing after the result (`wait_closed`)."""
        self.scope.cancel("the run ended") if not self.scope.is_set() else None
        self._sandboxes.close(wait=False)


def _deliver(sink: EventSink, ev: Event) -> None:
    try:
        sink(ev)
    except Exception:
        log.exception("event consumer %r failed on %s", sink, ev.type.value)


def _redact(cfg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out[k] = _redact(v)
        else:
            out[k] = "***" if is_secret_env(k) and v else v
    return out


def run(
    task: str,
    repo: str | os.PathLike[str] | None = None,
    *,
    branch: str | None = None,
    commit: str | None = None,
    config: RLMConfig | None = None,
    context: Any = NO_CONTEXT,
    signature: str | Signature | None = None,
    tools: Mapping[str, Callable[..., Any]] | Sequence[Callable[..., Any]] | None = None,
    on_event: EventSink | Sequence[EventSink] | None = None,
) -> RunResult:
    """Run an RLM on `task` (optionally over a repository) and return its result."""
    r = Run(
        task,
        repo,
        branch=branch,
        commit=commit,
        config=config,
        context=context,
        signature=signature,
        tools=tools,
        on_event=on_event,
    )
    return r.execute()
