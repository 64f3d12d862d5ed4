"""A run's pool of ready sandboxes: workspace and kernel made in the background, before a
sub-agent asks for one, so `rlm_query` does not wait for `git worktree add` and a kernel start.

A pooled sandbox is *prepared* (its worktree at the run's base commit, its kernel started with the
same environment as any other) but belongs to no agent; `take()` hands it to a child, which
*binds* it (its spec, then the REPL runtime: one round trip). The pool is filled by one
background thread at low priority (nice 10), and sized from the run's budget: it never holds more
sandboxes than the run may still create (`max_sandboxes` minus those taken), so agents plus the
pool never exceed the limit, and a sandbox only counts against the budget when an agent takes it.
The run closes the pool when it ends (done, error, cancel or timeout): every unused sandbox is
removed.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable

from .base import Sandbox

__all__ = ["AUTO_INITIAL", "AUTO_MAX", "SandboxPool", "pool_target"]

log = logging.getLogger(__name__)

AUTO_INITIAL = 2  # "auto": ready sandboxes once the run has delegated twice
AUTO_MAX = 8  # "auto" grows to the widest batch seen, up to this (and max_concurrency)
FILLERS = 1  # sandboxes made at once: one, so the pool takes little CPU from working agents
POOL_NICE = 10  # the filler thread (and the git it runs) yields the CPU to agents' own work


def pool_target(setting: int | str, max_concurrency: int, max_depth: int, widest: int) -> int:
    """How many ready sandboxes to aim for (before the budget cap), from `sandbox.pool_size`."""
    if max_depth < 1:
        return 0  # nobody can start a sub-agent
    if setting == "auto":
        if widest == 0:
            return 0  # before the run delegates a second time: nothing (most runs pay nothing)
        return min(max(AUTO_INITIAL, widest), AUTO_MAX, max_concurrency)
    return int(setting)


class SandboxPool:
    """Ready, unbound sandboxes for the sub-agents of one run."""

    def __init__(
        self,
        make: Callable[[int], Sandbox],
        target: Callable[[], int],
        room: Callable[[], int],
    ) -> None:
        """`make(n)` returns a new unprepared sandbox; `target()` is the wanted size; `room()` is
        how many more sandboxes the run's budget allows (the pool never holds more)."""
        self._make = make
        self._target = target
        self._room = room
        self._ready: collections.deque[Sandbox] = collections.deque()
        self._cond = threading.Condition()
        self._creating = 0
        self._creating_since: list[float] = []  # when each creation in progress started
        self._claims = 0  # takers waiting for the sandbox being created
        self._closed = False
        self._closing = threading.Event()  # set with _closed: stops a sandbox being made
        self._broken = False  # a creation failed: stop filling (children create their own)
        self._count = 0
        self._threads: list[threading.Thread] = []
        self.created = 0
        self.taken = 0

    # -- filling ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start filling in the background (call once the root's own sandbox is ready)."""
        with self._cond:
            if self._threads or self._closed:
                return
            for i in range(FILLERS):
                t = threading.Thread(target=self._fill, name=f"rlm-sandbox-pool-{i}", daemon=True)
                self._threads.append(t)
                t.start()

    def _wanted(self) -> int:
        return max(0, min(self._target(), self._room()))

    def poke(self) -> None:
        """Re-check the wanted size (the budget or the target changed)."""
        with self._cond:
            extra = self._trim()
            self._cond.notify_all()
        for sb in extra:
            sb.close()

    def _fill(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # Linux: niceness is per thread
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), POOL_NICE)
        while True:
            with self._cond:
                while not self._closed and (
                    self._broken or len(self._ready) + self._creating >= self._wanted()
                ):
                    self._cond.wait(0.5)  # also re-reads the budget now and then
                if self._closed:
                    return
                self._creating += 1
                started = time.monotonic()
                self._creating_since.append(started)
                n = self._count
                self._count += 1
            sb: Sandbox | None = None
            try:
                sb = self._make(n)
                sb.prepare(self._closing)
            except Exception as exc:
                if not self._closing.is_set():
                    log.warning("sandbox pool: could not prepare a sandbox (%s); pool off", exc)
                if sb is not None:
                    sb.close()
                sb = None
            with self._cond:
                self._creating -= 1
                self._creating_since.remove(started)
                if sb is None:
                    self._broken = True
                elif not self.closed:
                    self._ready.append(sb)
                    self.created += 1
                    sb = None
                extra = self._trim()
                self._cond.notify_all()
            if sb is not None:  # closed while it was being made
                sb.close()
            for other in extra:
                other.close()

    def _trim(self) -> list[Sandbox]:
        """Ready sandboxes beyond the budget's room, out of the pool (lock held; caller closes)."""
        extra: list[Sandbox] = []
        while self._ready and len(self._ready) + self._creating > max(0, self._room()):
            extra.append(self._ready.pop())
        return extra

    # -- taking ----------------------------------------------------------------------------------
    def take(
        self, cancel: threading.Event | None = None, asked_at: float | None = None
    ) -> Sandbox | None:
        """A ready sandbox for a new agent (waiting for one being made), or None: make your own.

        Call it after the agent's sandbox was taken from the budget. A sandbox being made is
        waited for only if its making started before `asked_at` (`time.monotonic()` when the
        agent asked): one the filler began just now, at low priority, comes later than the
        agent's own would.
        """
        with self._cond:
            if self._closed:
                return None
            if len(self._ready) > self._claims:
                return self._pop()
            earlier = sum(1 for t in self._creating_since if asked_at is None or t < asked_at)
            if earlier <= self._claims:
                return None
            self._claims += 1  # it started earlier than a fresh one would: wait for it
            try:
                while not self._ready and self._creating > 0 and not self._closed:
                    if cancel is not None and cancel.is_set():
                        return None
                    self._cond.wait(0.05)
                if self._closed or not self._ready:
                    return None
                return self._pop()
            finally:
                self._claims -= 1

    def _pop(self) -> Sandbox:
        sb = self._ready.popleft()
        self.taken += 1
        self._cond.notify_all()  # refill
        return sb

    # -- closing ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop filling and remove every sandbox still in the pool (waits for one being made)."""
        with self._cond:
            self._closed = True
            self._closing.set()
            leftovers = list(self._ready)
            self._ready.clear()
            self._cond.notify_all()
            threads = list(self._threads)
        for t in threads:
            t.join()
        closers = [threading.Thread(target=sb.close, daemon=True) for sb in leftovers]
        for t in closers:
            t.start()
        for t in closers:
            t.join()

    @property
    def closed(self) -> bool:
        """True once the run closed the pool."""
        return self._closed

    @property
    def ready(self) -> int:
        """Sandboxes ready now."""
        with self._cond:
            return len(self._ready)
