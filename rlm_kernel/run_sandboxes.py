"""A run's sandboxes: each agent's made in the background (a sub-agent's from the pool of ready
ones when it has one), the notebook's lent to the root and given back, the ones kept after their
agent ended (`sandbox.keep`), and none left over when the run ends.

The `Run` owns one `RunSandboxes` and passes in everything it needs (config, event emitter,
budget, scope, step gate); it never reaches into the run, and the run never into it."""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .config import RLMConfig
from .control import Budget, Scope
from .events import Notice, Payload, SandboxReady
from .sandbox import backend_class, spare
from .sandbox.base import Handler, Sandbox, SandboxError, SandboxSpec
from .sandbox.bridge import BridgeRefused
from .sandbox.isolation import Isolation, announce
from .sandbox.isolation import resolve as resolve_isolation
from .sandbox.pool import SandboxPool, pool_target
from .sandbox.workspace import Target

if TYPE_CHECKING:
    from .agent import Agent

# A sub-agent's fresh sandbox is made once its first LLM request had this head start (or got its
# reply): both need the host's GIL, and ten sandboxes being made at once delayed the last of ten
# first requests by 0.2-0.5 s (W2 of bench_peers.py); the sandbox is still ready long before a
# reply of seconds comes, and after a fast reply nothing waits.
SANDBOX_HEAD_START_S = 0.05

__all__ = ["RootSource", "RunSandboxes", "wait_all_closed"]

log = logging.getLogger(__name__)

RootSource = Sandbox | Callable[[], Sandbox] | None
"""An existing REPL for the root agent (the notebook's), or the function that starts it."""


class RunSandboxes:
    """The sandboxes of one run: made, lent, kept, released and closed."""

    def __init__(
        self,
        run_id: str,
        config: RLMConfig,
        *,
        tool_specs: list[dict[str, Any]],
        emit: Callable[[Payload, str | None], None],
        budget: Callable[[], Budget],
        scope: Scope,
        paused: Callable[[], bool],
        root: RootSource = None,
    ) -> None:
        """`emit(payload, agent_id)` sends an event; `budget()` is the run's current budget;
        `scope` is the run's (set when it ends); `paused()` says whether the step gate holds
        agents; `root` is the notebook's REPL for the root agent, if any (see `RootSource`)."""
        self.run_id = run_id
        self.config = config
        self.target = Target(None, None, None)  # prepare() resolves it
        self.isolation: Isolation | None = None  # prepare() resolves sandbox.isolation
        self.root = root if isinstance(root, Sandbox) else None  # the notebook's, once adopted
        # Given as a function, the notebook's REPL is asked for in the background, so that
        # starting it overlaps the root's first LLM call (the notebook's first `%%rlm`).
        self._root_source = root
        self._root_prev_handler: Handler | None = None
        self.pool: SandboxPool | None = None  # made when the root agent starts
        self._tool_specs = tool_specs
        self._emit = emit
        self._budget = budget
        self._scope = scope
        self._paused = paused
        self._made: set[Sandbox] = set()
        self._kept: list[Sandbox] = []
        self._sandbox_lock = threading.Lock()
        self._makers = ThreadPoolExecutor(
            max_workers=max(4, config.rlm.max_concurrency),
            thread_name_prefix=f"rlm-sandbox-{run_id}",
        )
        self._widest_batch = 0  # what an "auto" pool prepares for: a width seen twice (else 1
        # from the run's second delegation on, 0 before)
        self._batch_widths: collections.Counter[int] = collections.Counter()
        self._fresh_starting = 0  # agents' own sandboxes being made (the pool waits for them)
        self._closers: list[threading.Thread] = []  # ended agents' sandboxes being closed
        self._spare_key: spare.SpareKey | None = None  # set when the root may use a spare
        self._spare_due = False  # the root got its sandbox: the next run's spare is due

    def prepare(self, target: Target) -> None:
        """Check the backend and resolve the isolation tier for sandboxes on `target` (raises
        with a clear message)."""
        cls = backend_class(self.config.sandbox.backend)
        cls.check(self.config)
        self.target = target
        self.isolation = None
        if cls.capabilities.isolation:  # else the sandboxes run elsewhere
            self.isolation = resolve_isolation(
                self.config.sandbox.isolation, self.config.sandbox.network
            )
            announce(self.isolation)  # said once on stderr; recorded

    def note_batch(self, width: int) -> None:
        """An `rlm_query` batch of `width` tasks: "auto" pools start at the run's second
        delegation and grow to the widest batch seen twice (a run that delegates once, one wide
        batch over a repository's modules, is served by fresh sandboxes: a pool made for a call
        that never comes would only cost CPU and memory, two kernels nobody took on W2 of
        bench_peers.py)."""
        self._batch_widths[width] += 1
        seen = sum(self._batch_widths.values())
        self._widest_batch = max(
            (w for w, n in self._batch_widths.items() if n >= 2), default=int(seen >= 2)
        )

    # -- an agent's sandbox -----------------------------------------------------------------------
    def start(self, agent: Agent) -> Future[Sandbox]:
        """Create the agent's sandbox in the background (it overlaps the first LLM call)."""
        spec = SandboxSpec(
            run_id=self.run_id,
            agent_id=agent.agent_id,
            target=self.target,
            handler=agent.handle,
            runtime_cfg={
                "agent_id": agent.agent_id,
                "depth": agent.depth,
                "tools": self._tool_specs,
            },
            context=agent.context,
            keep=self.config.sandbox.keep,
            snapshot=self.config.sandbox.snapshot,
            isolation=self.isolation,
        )
        cls = backend_class(self.config.sandbox.backend)
        pool = self._start_pool(cls) if agent.parent is None else self.pool
        source = self._root_source
        if agent.parent is None and source is not None:
            if pool is not None:
                pool.start()
            return self._lend_root(agent, source)

        asked_at = time.monotonic()
        key = self._spare_key = self._spare_key_for(cls) if agent.parent is None else None

        def create() -> Sandbox:
            if key is not None:
                adopted = self._adopt_spare(agent, spec, key)
                if adopted is not None:
                    return adopted
            elif agent.parent is not None:
                self._spare_room()
            pooled = pool.take(agent.scope, asked_at) if pool is not None and agent.parent else None
            if pooled is not None:
                with self._sandbox_lock:
                    self._made.add(pooled)
                try:
                    pooled.bind(spec)
                except Exception as exc:  # e.g. its kernel died while pooled: make a fresh one
                    log.warning("could not use a pooled sandbox for %s: %s", agent.agent_id, exc)
                    pooled.close()
                else:
                    agent.sandbox = pooled
                    self._emit(SandboxReady(pooled.info()), agent.agent_id)
                    return pooled
            if agent.parent is not None:
                # Its first LLM request goes out first (see SANDBOX_HEAD_START_S).
                agent.first_call.wait(10)  # set within ms (or at its end)
                agent.first_reply.wait(SANDBOX_HEAD_START_S)
            sb = cls(spec)
            sb.snapshot_on_end = True
            with self._sandbox_lock:
                self._made.add(sb)
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
                if self.pool is not None:
                    self.pool.poke()  # it may fill again
            agent.sandbox = sb  # reachable (e.g. `%rlm ns --live`) before its first code runs
            self._emit(SandboxReady(sb.info()), agent.agent_id)
            if key is not None:
                self._make_spare(key, cls)
            return sb

        future = self._makers.submit(create)
        if agent.parent is None and pool is not None:
            # Fill the pool once the root's own sandbox is made (not competing with it).
            future.add_done_callback(lambda _f: pool.start())
        return future

    # -- the process's spare root sandbox (sandbox.spare) ----------------------------------------
    def _spare_key_for(self, cls: type[Sandbox]) -> spare.SpareKey | None:
        """The key of the spare this run's root may adopt, or None (off, or not local)."""
        if not self.config.sandbox.spare or not cls.capabilities.pool:
            return None  # off, or sandboxes that cost money (Daytona): none kept ahead of need
        return spare.spare_key(cls.backend, self.isolation, self._tool_specs)

    def _adopt_spare(self, agent: Agent, spec: SandboxSpec, key: spare.SpareKey) -> Sandbox | None:
        """The spare root sandbox, given to the root agent; None: start your own."""
        sb = spare.take(key)
        if sb is None:
            return None
        with self._sandbox_lock:
            self._made.add(sb)
        try:
            if agent.scope.is_set():
                raise SandboxError("cancelled before the sandbox started")
            sb.adopt(spec)
        except Exception as exc:
            if agent.scope.is_set():
                sb.close()
                raise
            log.warning("could not use the spare root sandbox: %s; starting a fresh one", exc)
            sb.close()
            return None
        sb.snapshot_on_end = True
        agent.sandbox = sb
        self._emit(SandboxReady(sb.info()), agent.agent_id)
        self._make_spare(key, type(sb))
        return sb

    def _make_spare(self, key: spare.SpareKey, cls: type[Sandbox], *, ending: bool = False) -> None:
        """Start the next run's spare in the background: while this run goes on only if its
        sandbox budget has room for one more (`rlm.max_sandboxes`), else when it ends."""
        self._spare_due = True
        if not ending and (
            self.config.rlm.max_sandboxes - self._budget().sandboxes < 1 or self._scope.is_set()
        ):
            return
        tools = self._tool_specs
        isolation = self.isolation

        def factory() -> Sandbox:
            sb = cls(
                SandboxSpec(
                    run_id=f"spare-{os.urandom(4).hex()}",
                    agent_id="root",
                    target=Target(None, None, None),
                    handler=_unbound_handler,
                    runtime_cfg={"agent_id": "root", "depth": 0, "tools": tools},
                    isolation=isolation,
                )
            )
            sb.snapshot_on_end = True
            return sb

        spare.make(key, factory, owner="" if ending else self.run_id)

    def _spare_room(self, wanted: int = 1) -> None:
        """This run needs `wanted` more sandboxes (a sub-agent's, the pool's) than its budget
        leaves beside the spare it had made: the spare goes (it is made again when the run
        ends), so the run's agents, its pool and the spare stay within `rlm.max_sandboxes`, and
        the run's own needs come first. Waits for it to be closed."""
        if self.config.rlm.max_sandboxes - self._budget().sandboxes < wanted and spare.pending(
            self.run_id
        ):
            spare.discard(owner=self.run_id)

    def _lend_root(self, agent: Agent, source: Sandbox | Callable[[], Sandbox]) -> Future[Sandbox]:
        """The notebook's REPL for the root agent (the run neither creates nor removes it, and
        the context may already live in it)."""

        def adopt() -> Sandbox:
            try:
                sb = source if isinstance(source, Sandbox) else source()
            except SandboxError:
                raise
            except Exception as exc:  # e.g. a configuration the backend refuses
                raise SandboxError(f"could not start the notebook's sandbox: {exc}") from exc
            self._root_prev_handler = sb.spec.handler
            self.root = sb
            sb.reset_agent()
            sb.set_handler(agent.handle)
            self._emit(SandboxReady(sb.info()), agent.agent_id)
            return sb

        if not isinstance(source, Sandbox):
            return self._makers.submit(adopt)
        done: Future[Sandbox] = Future()
        done.set_result(adopt())
        return done

    def _start_pool(self, cls: type[Sandbox]) -> SandboxPool | None:
        """The pool of ready sandboxes for this run's sub-agents (None when off)."""
        limits = self.config.rlm
        setting = self.config.sandbox.pool_size

        def target() -> int:
            if self._paused() or self._scope.is_set() or self._fresh_starting:
                return 0  # a paused or ending run, or agents waiting for sandboxes: not now
            wanted = pool_target(
                setting, limits.max_concurrency, limits.max_depth, self._widest_batch
            )
            room = limits.max_sandboxes - self._budget().sandboxes
            if wanted > 0 and room <= wanted and spare.pending(self.run_id):
                threading.Thread(  # the pool comes first: see _spare_room
                    target=self._spare_room, args=(wanted + 1,), name="rlm-spare-yield", daemon=True
                ).start()
            return wanted

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
            held = 1 if spare.pending(self.run_id) else 0  # the next run's spare, made by this one
            return limits.max_sandboxes - self._budget().sandboxes - held

        self.pool = SandboxPool(make, target, room)
        return self.pool

    def release(self, agent: Agent, sandbox: Sandbox | None, future: Future[Sandbox]) -> None:
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
            self._emit(Notice("info", f"sandbox kept at {sandbox.path}"), agent.agent_id)
            return
        # Closed now, on a thread of its own: the kernel and the files go at once, and the
        # agent's answer does not wait for them (a parent's batch waits for its slowest child,
        # and a kernel's stop and the workspace's removal take ~0.1 s). close() joins it.
        closer = threading.Thread(
            target=_close_tracked, args=(sandbox,), name=f"rlm-close-{agent.agent_id}", daemon=True
        )
        with self._sandbox_lock:
            self._closers.append(closer)
        with _CLOSING_LOCK:
            _CLOSING.add(closer)
        closer.start()

    def _give_back_root(self, future: Future[Sandbox]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        if self._root_prev_handler is not None:
            future.result().set_handler(self._root_prev_handler)

    # -- kept sandboxes ---------------------------------------------------------------------------
    def kept(self) -> list[Sandbox]:
        """The sandboxes kept after their agent ended (`sandbox.keep`), oldest first."""
        with self._sandbox_lock:
            return list(self._kept)

    def kept_of(self, agent_id: str) -> Sandbox | None:
        """The open kept sandbox of an agent, else None."""
        return next(
            (sb for sb in self.kept() if sb.spec.agent_id == agent_id and not sb.closed), None
        )

    def release_kept(self, *, remove: bool = True) -> int:
        """Close the kept sandboxes: their REPLs stop and, unless `remove=False`, their
        workspaces are removed too. Returns how many were closed."""
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

    # -- the end of the run -----------------------------------------------------------------------
    def close(self, *, wait: bool = True) -> None:
        """Make sure no sandbox outlives the run (unless kept, or the notebook's); call once
        the run's scope is set. Without `wait`, the sandboxes its agents released may still be
        closing on their threads when it returns (the root's, ~10 ms: its kernel's stop and
        its files' removal): `wait_closed()` waits for them (and process exit does)."""
        if self.pool is not None:
            self.pool.close()
        self._makers.shutdown(wait=True, cancel_futures=True)
        with self._sandbox_lock:
            leftovers = [
                sb
                for sb in self._made
                if not sb.closed and sb not in self._kept and sb is not self.root
            ]
        for sb in leftovers:
            sb.close()
        if wait:
            self.wait_closed()
        key = self._spare_key
        if key is not None and self._spare_due and not spare.pending():
            self._make_spare(key, backend_class(self.config.sandbox.backend), ending=True)

    def wait_closed(self) -> None:
        """Wait until the sandboxes the run's agents released are closed."""
        with self._sandbox_lock:
            closers, self._closers = self._closers, []
        for t in closers:
            t.join()


# Released sandboxes being closed, process-wide: the process waits for them when it exits.
_CLOSING: set[threading.Thread] = set()
_CLOSING_LOCK = threading.Lock()


def _close_tracked(sb: Sandbox) -> None:
    try:
        sb.close()
    finally:
        with _CLOSING_LOCK:
            _CLOSING.discard(threading.current_thread())


def wait_all_closed(timeout: float | None = None) -> None:
    """Wait until every sandbox a run of this process released is closed (at exit, too)."""
    with _CLOSING_LOCK:
        closing = list(_CLOSING)
    for t in closing:
        t.join(timeout)


atexit.register(wait_all_closed)


def _unbound_handler(op: str, args: dict[str, Any]) -> Any:
    raise BridgeRefused("this sandbox has no agent yet")


def _close_when_ready(future: Future[Sandbox]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()
