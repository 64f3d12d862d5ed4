"""One spare root sandbox per process, made ahead of need (`sandbox.spare`, local backend only).

A run whose root agent starts its own sandbox (CLI, `Engine`, `Run`) waits for a workspace and a
kernel forked under bwrap (~60-80 ms): at LLM latency 0 nothing hides that. So once a run's root
has its sandbox, a spare one is started in the background (nice 10, like the pool's), and the next
run's root adopts it (`LocalSandbox.adopt`: its spec, its workspace as `set_workspace` gives one,
its context) instead of starting a kernel.

Rules:

- ONE spare per process, and only where it can be used: it is kept with a `SpareKey` of
  everything that shapes the sandbox (backend, isolation tier, the kernel's environment and
  launcher, the temporary root, the runtime's tool specs); a run with another key closes it and
  starts its own. Daytona: no spare (it costs money).
- Fresh: the spare's kernel is forked from the fork server, never from an agent's kernel, and no
  agent ran code in it before the root that takes it; taken once, never given back.
- A spare that died while idle is found dead when taken: closed, and the root starts its own.
- Never left behind: closed at process exit (atexit), by `LocalSandbox.shutdown()` (the kernel
  host's shutdown), by `LocalSandbox.cleanup()`, and by `discard()`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import sandbox_env
from ..paths import tmp_root
from .base import Sandbox
from .isolation import Isolation

__all__ = ["SPARE_NICE", "SpareKey", "discard", "make", "pending", "spare_key", "stats", "take"]

log = logging.getLogger(__name__)

SPARE_NICE = 10  # the thread that makes it (and the git it runs) yields the CPU to agents' work


@dataclass(frozen=True)
class SpareKey:
    """Everything that shapes a root sandbox before its run is known: a spare serves a run only
    when its key is equal."""

    backend: str
    isolation: Isolation | None
    env: tuple[tuple[str, str], ...]  # the kernel's environment (allowlisted from os.environ)
    launcher: str  # $RLM_KERNEL_LAUNCHER
    tmp_root: str  # where sandboxes live ($TMPDIR)
    tools: str  # the runtime's tool specs, as JSON


def spare_key(
    backend: str, isolation: Isolation | None, tool_specs: list[dict[str, Any]]
) -> SpareKey:
    """The key of a root sandbox made now for these settings."""
    return SpareKey(
        backend=backend,
        isolation=isolation,
        env=tuple(sorted(sandbox_env().items())),
        launcher=os.environ.get("RLM_KERNEL_LAUNCHER", ""),
        tmp_root=str(tmp_root()),
        tools=json.dumps(tool_specs, sort_keys=True, default=str),
    )


class _Spare:
    """The process's spare: at most one sandbox, ready or being made."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._sandbox: Sandbox | None = None  # ready
        self._key: SpareKey | None = None  # of the ready one, or of the one being made
        self._owner = ""  # the run that had it made (see discard(owner=...))
        self._maker: threading.Thread | None = None
        self._stop = threading.Event()  # set by discard(): a spare being made is closed
        self.made = 0  # counters, for tests and benches
        self.taken = 0

    def make(self, key: SpareKey, factory: Callable[[], Sandbox], owner: str = "") -> None:
        """Start making a spare for `key` in the background, unless one (ready or being made)
        with that key is there; one with another key is closed first."""
        with self._cond:
            if self._key == key and (self._sandbox is not None or self._maker is not None):
                return
            if self._maker is not None:
                return  # one with another key is being made: taking it decides
            old, self._sandbox = self._sandbox, None
            self._key, self._owner = key, owner
            self._stop = stop = threading.Event()
            t = threading.Thread(
                target=self._make, args=(factory, stop), name="rlm-spare-sandbox", daemon=True
            )
            self._maker = t
            t.start()
        if old is not None:
            _close_quietly(old)

    def _make(self, factory: Callable[[], Sandbox], stop: threading.Event) -> None:
        with contextlib.suppress(AttributeError, OSError):  # Linux: niceness is per thread
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SPARE_NICE)
        sb: Sandbox | None = None
        try:
            sb = factory()
            if not stop.is_set():
                sb.start()
        except Exception as exc:
            log.warning("could not make a spare root sandbox (%s); runs start their own", exc)
            if sb is not None:
                _close_quietly(sb)
            sb = None
        with self._cond:
            self._maker = None
            if sb is not None and not stop.is_set():
                self._sandbox, sb = sb, None
                self.made += 1
            else:
                self._key = None
            self._cond.notify_all()
        if sb is not None:  # discarded while it was being made
            _close_quietly(sb)

    def take(self, key: SpareKey, timeout: float = 120.0) -> Sandbox | None:
        """The spare if it has `key` and is alive (waiting for one being made with that key),
        else None: start your own. A spare of another key, or a dead one, is closed."""
        with self._cond:
            if self._key != key:
                if self._maker is None and self._sandbox is not None:
                    stale, self._sandbox, self._key = self._sandbox, None, None
                    threading.Thread(target=_close_quietly, args=(stale,), daemon=True).start()
                return None
            # Being made: it started before this run asked, so it is ready sooner than a fresh one.
            self._cond.wait_for(lambda: self._maker is None, timeout)
            sb = self._sandbox if self._key == key else None
            if sb is None:
                return None
            self._sandbox, self._key, self._owner = None, None, ""
        if not _alive(sb):
            log.warning("the spare root sandbox %s died while idle; starting a fresh one", sb.id)
            _close_quietly(sb)
            return None
        with self._cond:
            self.taken += 1
        return sb

    def pending(self, owner: str | None = None) -> bool:
        """Whether a spare is ready or being made (by `owner`'s run, if given)."""
        with self._cond:
            there = self._sandbox is not None or self._maker is not None
            return there and (owner is None or self._owner == owner)

    def discard(self, owner: str | None = None) -> None:
        """Close the spare (and stop one being made; only `owner`'s, if given); waits for it."""
        with self._cond:
            if owner is not None and self._owner != owner:
                return
            self._stop.set()
            sb, self._sandbox, self._key = self._sandbox, None, None
            maker = self._maker
        if sb is not None:
            _close_quietly(sb)
        if maker is not None and maker is not threading.current_thread():
            maker.join()


def _alive(sb: Sandbox) -> bool:
    kernel = getattr(sb, "kernel", None)
    return not sb.closed and (kernel is None or bool(kernel.is_alive()))


def _close_quietly(sb: Sandbox) -> None:
    try:
        sb.close()
    except Exception:
        log.exception("could not close the spare root sandbox")


_SPARE = _Spare()
make = _SPARE.make
take = _SPARE.take
pending = _SPARE.pending
discard = _SPARE.discard


def stats() -> tuple[int, int]:
    """(made, taken) since the process started."""
    return _SPARE.made, _SPARE.taken


atexit.register(discard)  # registered after kernels' shutdown_all: runs before it
