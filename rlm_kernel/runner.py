"""A run: the agent tree, budgets, concurrency, cancellation, the step gate, and the result."""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import inspect
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import llm as llm_mod
from .agent import SANDBOX_HEAD_START_S, Agent, AgentOutcome
from .config import RLMConfig, is_secret_env, load_config, load_dotenv_file
from .control import Budget, BudgetExceeded, Scope, StepGate
from .events import (
    BudgetHit,
    Event,
    EventSink,
    Notice,
    Payload,
    RunFinished,
    RunStarted,
    SandboxReady,
    StepMode,
    StepResumed,
    StepWaiting,
    Unsubscribe,
)
from .llm import LLMClient, OnText, Usage
from .llm.service import SubLLM
from .records import Recorder
from .sandbox import backend_class
from .sandbox.base import NO_CONTEXT, Handler, Sandbox, SandboxError, SandboxSpec
from .sandbox.bridge import BridgeRefused
from .sandbox.isolation import Isolation, announce
from .sandbox.isolation import resolve as resolve_isolation
from .sandbox.pool import SandboxPool, pool_target
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


def _tool_specs(tools: Mapping[str, Callable[..., Any]]) -> list[dict[str, Any]]:
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
        self.tool_specs = _tool_specs(self.tools)
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
        self.target = Target(None, None, None)
        self.isolation: Isolation | None = None  # prepare() resolves sandbox.isolation
        self.budget = Budget(self.config.rlm, time.monotonic())
        self.sub_llm = SubLLM(
            self.llm,
            self.config.sub_model_name,
            budget=lambda: self.budget,
            emit=lambda agent_id, query: self.emit(query, agent_id),
            width=4 * self.config.rlm.max_concurrency,
        )
        self.status = "created"
        self.root: Agent | None = None
        self._kept: list[Sandbox] = []
        # An existing REPL (the notebook's) to run the root agent in; the run neither creates nor
        # removes it, and the context may already live in it (context_desc describes it). Given
        # as a function, it is asked for in the background, so that starting it overlaps the
        # root's first LLM call (the notebook's first `%%rlm`).
        self._root_source = root_sandbox
        self.root_sandbox = root_sandbox if isinstance(root_sandbox, Sandbox) else None
        self.context_desc = context_desc
        self._root_prev_handler: Handler | None = None
        self._agents: dict[str, Agent] = {}
        self._slots = threading.Semaphore(self.config.rlm.max_concurrency)
        self._parked: dict[str, int] = {}
        self._parked_lock = threading.Lock()
        self._sandboxes: set[Sandbox] = set()
        self._sandbox_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=max(4, self.config.rlm.max_concurrency),
            thread_name_prefix=f"rlm-sandbox-{self.run_id}",
        )
        self._threads: list[threading.Thread] = []
        self._ready_pool: SandboxPool | None = None  # made when the root agent starts
        self._widest_batch = 0  # what an "auto" pool prepares for: a width seen twice (else 1 from
        # the second delegation on, 0 before)
        self._batch_widths: collections.Counter[int] = collections.Counter()
        self._closers: list[threading.Thread] = []  # ended agents' sandboxes being closed
        self._fresh_starting = 0  # agents' own sandboxes being made (the pool waits for them)
        self._thread: threading.Thread | None = None
        self._result: RunResult | None = None
        self._done = threading.Event()
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
        with self._sandbox_lock:
            kept, self._kept = self._kept, []
        n = 0
        for sb in kept:
            if sb.closed:
                continue
            if remove:
                sb.spec.keep = False  # close() then removes the workspace and its directory
            sb.close()
            n += 1
        return n

    def at_step_gate(self, agent: Agent, index: int, code: str) -> str | None:
        """Hold `agent` before it runs `code` while the run is paused; returns the code given
        with the step that let it through, if any (raises `Cancelled` when it is cancelled)."""
        if not self._gate.stepping:
            return None
        self.emit(StepWaiting(index, code), agent.agent_id)
        replacement = self._gate.wait(agent.agent_id, index, code, agent.scope)
        self.emit(StepResumed(index, replacement is not None), agent.agent_id)
        return replacement

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
    ) -> llm_mod.Completion:
        """One LLM call on behalf of `agent`, charged to the run's budget (`on_text`: stream it)."""
        refusal = self.budget.reserve_llm_call()
        if refusal:
            raise BudgetExceeded(refusal)
        name = model or (self.config.model.name if kind == "agent" else self.config.sub_model_name)
        timeout = max(0.1, min(self.config.model.timeout, self.budget.remaining_s()))
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
                self.budget.charge(Usage())
                raise
        self.budget.charge(completion.usage)
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
        # "auto" pools start at the run's second delegation and grow to the widest batch seen
        # twice: a run that delegates once (one batch: a map over a repository's modules) is
        # served by fresh sandboxes, and a pool made for a call that never comes would only cost
        # CPU and memory (two kernels nobody takes, on W2 of bench_peers.py).
        self._batch_widths[len(tasks)] += 1
        seen = sum(self._batch_widths.values())
        self._widest_batch = max(
            (w for w, n in self._batch_widths.items() if n >= 2), default=int(seen >= 2)
        )
        for i, task in enumerate(tasks):
            refusal = self.budget.take_sandbox()
            if refusal:
                self.emit(BudgetHit("max_sandboxes", refusal), parent.agent_id)
                replies[i] = {
                    "text": f"Error: {refusal}; no sub-agent was started for this task.",
                    "agent_id": "",
                    "patch": "",
                    "status": "budget",
                }
                continue
            ctx = contexts[i] if i < len(contexts) and contexts[i] is not None else NO_CONTEXT
            child = Agent(self, parent.next_child_id(), parent, task, ctx)
            self._agents[child.agent_id] = child
            children.append((i, child))
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

    # -- sandboxes --------------------------------------------------------------------------------
    def start_sandbox(self, agent: Agent) -> Future[Sandbox]:
        """Create the agent's sandbox in the background (it overlaps the first LLM call)."""
        spec = SandboxSpec(
            run_id=self.run_id,
            agent_id=agent.agent_id,
            target=self.target,
            handler=agent.handle,
            runtime_cfg={
                "agent_id": agent.agent_id,
                "depth": agent.depth,
                "tools": self.tool_specs,
            },
            context=agent.context,
            keep=self.config.sandbox.keep,
            snapshot=self.config.sandbox.snapshot,
            isolation=self.isolation,
        )
        cls = backend_class(self.config.sandbox.backend)
        pool = self._start_pool(cls) if agent.parent is None else self._ready_pool
        source = self._root_source
        if agent.parent is None and source is not None:
            if pool is not None:
                pool.start()

            def adopt() -> Sandbox:
                try:
                    sb = source if isinstance(source, Sandbox) else source()
                except SandboxError:
                    raise
                except Exception as exc:  # e.g. a configuration the backend refuses
                    raise SandboxError(f"could not start the notebook's sandbox: {exc}") from exc
                self._root_prev_handler = sb.spec.handler
                self.root_sandbox = sb
                sb.reset_agent()
                sb.set_handler(agent.handle)
                self.emit(SandboxReady(sb.info()), agent.agent_id)
                return sb

            if not isinstance(source, Sandbox):
                return self._pool.submit(adopt)
            done: Future[Sandbox] = Future()
            done.set_result(adopt())
            return done

        asked_at = time.monotonic()

        def create() -> Sandbox:
            pooled = pool.take(agent.scope, asked_at) if pool is not None and agent.parent else None
            if pooled is not None:
                with self._sandbox_lock:
                    self._sandboxes.add(pooled)
                try:
                    pooled.bind(spec)
                except Exception as exc:  # e.g. its kernel died while pooled: make a fresh one
                    log.warning("could not use a pooled sandbox for %s: %s", agent.agent_id, exc)
                    pooled.close()
                else:
                    agent.sandbox = pooled
                    self.emit(SandboxReady(pooled.info()), agent.agent_id)
                    return pooled
            if agent.parent is not None:
                # Its first LLM request goes out first (see SANDBOX_HEAD_START_S).
                agent.first_call.wait(10)  # set within ms (or at its end)
                agent.first_reply.wait(SANDBOX_HEAD_START_S)
            sb = cls(spec)
            sb.snapshot_on_end = True
            with self._sandbox_lock:
                self._sandboxes.add(sb)
                self._fresh_starting += 1  # the pool waits: this one is on an agent's path
            try:
                if agent.scope.is_set():
                    raise SandboxError("cancelled before the sandbox started")
                sb.start()
            except BaseException as exc:
                sb.close()
                if isinstance(exc, SandboxError):
                    raise
                raise SandboxError(
                    f"could not create the sandbox for {agent.agent_id}: {exc}"
                ) from exc
            finally:
                with self._sandbox_lock:
                    self._fresh_starting -= 1
                if self._ready_pool is not None:
                    self._ready_pool.poke()  # it may fill again
            agent.sandbox = sb  # reachable (e.g. `%rlm ns --live`) before its first code runs
            self.emit(SandboxReady(sb.info()), agent.agent_id)
            return sb

        future = self._pool.submit(create)
        if agent.parent is None and pool is not None:
            # Fill the pool once the root's own sandbox is made (not competing with it).
            future.add_done_callback(lambda _f: pool.start())
        return future

    def _start_pool(self, cls: type[Sandbox]) -> SandboxPool | None:
        """The pool of ready sandboxes for this run's sub-agents (None when off)."""
        limits = self.config.rlm
        setting = self.config.sandbox.pool_size

        def target() -> int:
            if self._gate.stepping or self.scope.is_set() or self._fresh_starting:
                return 0  # a paused or ending run, or agents waiting for sandboxes: not now
            return pool_target(
                setting, limits.max_concurrency, limits.max_depth, self._widest_batch
            )

        if (
            not cls.capabilities.pool
            or pool_target(setting, limits.max_concurrency, limits.max_depth, 1) <= 0
        ):
            return None

        def make(n: int) -> Sandbox:
            spec = SandboxSpec(
                run_id=self.run_id,
                agent_id=f"pool-{n}",
                target=self.target,
                handler=_unbound_handler,
                isolation=self.isolation,
            )
            sb = cls(spec)
            sb.snapshot_on_end = True
            return sb

        def room() -> int:
            return limits.max_sandboxes - self.budget.sandboxes

        self._ready_pool = SandboxPool(make, target, room)
        return self._ready_pool

    def release_sandbox(
        self, agent: Agent, sandbox: Sandbox | None, future: Future[Sandbox]
    ) -> None:
        """Remove (or keep, with sandbox.keep) an ended agent's sandbox."""
        if agent.parent is None and self._root_source is not None:
            # The notebook's sandbox is never closed: it gets its handler back (once it is there,
            # if the root ended while it was starting).
            future.add_done_callback(self._give_back_root)
            return
        if sandbox is None:
            future.add_done_callback(_close_when_ready)
            return
        if self.config.sandbox.keep:
            with self._sandbox_lock:
                self._kept.append(sandbox)
            self.emit(Notice("info", f"sandbox kept at {sandbox.path}"), agent.agent_id)
            return
        # Closed now, on a thread of its own: the kernel and the files go at once, and the
        # agent's answer does not wait for them (a parent's batch waits for its slowest child
        # and a kernel's stop, the workspace's removal take ~0.1 s). The run's end joins it.
        closer = threading.Thread(
            target=sandbox.close, name=f"rlm-close-{agent.agent_id}", daemon=True
        )
        with self._sandbox_lock:
            self._closers.append(closer)
        closer.start()

    def _give_back_root(self, future: Future[Sandbox]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        if self._root_prev_handler is not None:
            future.result().set_handler(self._root_prev_handler)

    def sandbox_of(self, agent_id: str, *, kept_only: bool = False) -> Sandbox | None:
        """The live sandbox of an agent: kept after it ended, or (unless `kept_only`) its
        running one; else None."""
        with self._sandbox_lock:
            kept = list(self._kept)
        for sb in kept:
            if sb.spec.agent_id == agent_id and not sb.closed:
                return sb
        if kept_only:
            return None
        agent = self._agents.get(agent_id)
        live = agent.sandbox if agent is not None else None
        return live if live is not None and not live.closed else None

    # -- the run ----------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Check everything a run needs before anything is created (raises with a clear message)."""
        self.target = resolve_target(self.repo, self.branch, self.commit)
        self.llm.check_ready(self.config.model.name)
        if self.config.model.sub_model:
            self.llm.check_ready(self.config.model.sub_model)
        backend_class(self.config.sandbox.backend).check(self.config)
        self.isolation = self._isolation()

    def _isolation(self) -> Isolation | None:
        """The sandboxes' isolation tier (said once on stderr; recorded); None on backends that
        run elsewhere."""
        if not backend_class(self.config.sandbox.backend).capabilities.isolation:
            return None
        iso = resolve_isolation(self.config.sandbox.isolation, self.config.sandbox.network)
        announce(iso)
        return iso

    def start(self) -> None:
        """Validate, then run in a background thread."""
        self.prepare()
        self._thread = threading.Thread(
            target=self._main, name=f"rlm-run-{self.run_id}", daemon=True
        )
        self._thread.start()

    def wait(self, timeout: float | None = None) -> RunResult:
        """Block until the run has finished and cleaned up; Ctrl-C cancels it (and still cleans up)."""
        try:
            if not self._done.wait(timeout):
                raise TimeoutError(f"run {self.run_id} still running")
        except KeyboardInterrupt:
            self.cancel(reason="interrupted (Ctrl-C)")
            self._done.wait(30)
            raise
        assert self._result is not None
        return self._result

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
        llm_mod.prewarm()
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
            kept=[sb.info() for sb in self._kept],
        )
        self._done.set()

    def _cleanup(self) -> None:
        """Make sure no sandbox outlives the run (unless kept)."""
        self.scope.cancel("the run ended") if not self.scope.is_set() else None
        if self._ready_pool is not None:
            self._ready_pool.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._sandbox_lock:
            leftovers = [
                sb
                for sb in self._sandboxes
                if not sb.closed and sb not in self._kept and sb is not self.root_sandbox
            ]
        for sb in leftovers:
            sb.close()
        with self._sandbox_lock:
            closers, self._closers = self._closers, []
        for t in closers:
            t.join()


def _deliver(sink: EventSink, ev: Event) -> None:
    try:
        sink(ev)
    except Exception:
        log.exception("event consumer %r failed on %s", sink, ev.type.value)


def _unbound_handler(op: str, args: dict[str, Any]) -> Any:
    raise BridgeRefused("this sandbox has no agent yet")


def _close_when_ready(future: Future[Sandbox]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


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
