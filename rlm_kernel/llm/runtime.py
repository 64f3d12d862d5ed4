"""litellm, imported once and in the background; the one event loop every LLM call runs on.

``import litellm`` costs seconds of CPU (and ~215 MB with the encodings it loads), so it happens
lazily, once per process, with the cost map bundled with litellm (nothing is fetched from the
network), and only where a call needs it: calls on the plain-HTTP path (`direct`) are priced from
that cost map read as data (`pricing`), so a process whose calls all go that way never imports
it. `prewarm()` starts it on a daemon thread so it overlaps other work (the kernel's start, the
CLI's sandbox creation); `client.prewarm_for(config)` does so only for a configuration with a
call that goes through litellm.

Every LLM call of the process is a task on one asyncio loop running on a daemon thread
(`submit`): litellm's async path keeps one HTTP client per provider, key and loop, concurrent
calls cost no thread each, and cancelling a task closes its HTTP stream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import warnings
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["Task", "import_litellm", "is_imported", "prewarm", "submit"]

T = TypeVar("T")

_LOCK = threading.Lock()
_LITELLM: Any = None
_PREWARM_STARTED = threading.Event()


def is_imported() -> bool:
    """Whether litellm has been imported and configured."""
    return _LITELLM is not None


def imported() -> Any:
    """litellm if it has been imported and configured, else None (never waits)."""
    return _LITELLM


def import_litellm() -> Any:
    """Import and configure litellm once (thread-safe); return the module."""
    global _LITELLM
    if _LITELLM is not None:
        return _LITELLM
    with _LOCK:
        if _LITELLM is None:
            # Use the cost map bundled with litellm: never fetch one from the internet.
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            import litellm

            litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners
            litellm.telemetry = False  # older versions only; there are no callbacks to remove
            # litellm's async path makes a provider's coroutine on an executor thread, then
            # awaits it: a call cancelled in between leaves that coroutine unawaited (and the
            # stream it would have opened, unopened). That is the cancel working, not a bug.
            warnings.filterwarnings(
                "ignore", r"coroutine '\S*acompletion' was never awaited", RuntimeWarning
            )
            from .providers import register_providers, warm_first_call

            register_providers(litellm)
            _LITELLM = litellm  # before the warm-up: its provider handler imports it too
            warm_first_call(litellm)
    return _LITELLM


def prewarm() -> None:
    """Start importing litellm (and the loop) on a daemon thread so the import overlaps other
    work; returns at once."""
    if _LITELLM is not None or _PREWARM_STARTED.is_set():
        return
    _PREWARM_STARTED.set()
    threading.Thread(target=_prewarm_quietly, name="rlm-litellm-import", daemon=True).start()


def _prewarm_quietly() -> None:
    with contextlib.suppress(Exception):  # the next real call raises it where someone sees it
        import_litellm()
        _loop()


# -- the loop --------------------------------------------------------------------------------

_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_PID = 0
_LOOP_LOCK = threading.Lock()


def _loop() -> asyncio.AbstractEventLoop:
    """The process's LLM loop, started on first use (and again in a forked child)."""
    global _LOOP, _LOOP_PID
    loop = _LOOP
    if loop is not None and os.getpid() == _LOOP_PID:
        return loop
    with _LOOP_LOCK:
        if _LOOP is None or os.getpid() != _LOOP_PID:
            ready = threading.Event()
            new = asyncio.new_event_loop()
            # litellm's async path hops through the loop's executor on every call: enough
            # threads that a batch's calls do not queue there
            new.set_default_executor(
                concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="rlm-llm-io")
            )

            def run() -> None:
                asyncio.set_event_loop(new)
                new.call_soon(ready.set)
                new.run_forever()

            threading.Thread(target=run, name="rlm-llm-loop", daemon=True).start()
            ready.wait()
            _LOOP, _LOOP_PID = new, os.getpid()
        return _LOOP


class Task:
    """A coroutine running on the LLM loop, seen from another thread: its result, and a cancel
    that is over only when the task is (its `finally` blocks ran, its streams are closed)."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.ended = threading.Event()
        self._loop = _loop()
        self._task: asyncio.Task[Any] | None = None
        self._loop.call_soon_threadsafe(self._start, coro)

    def _start(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._task = self._loop.create_task(coro)
        self._task.add_done_callback(self._end)

    def _end(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self.future.cancel()
        elif task.exception() is not None:
            self.future.set_exception(task.exception())
        else:
            self.future.set_result(task.result())
        self.ended.set()

    def cancel(self, wait_s: float) -> None:
        """Cancel the task and wait (up to `wait_s`) until it has ended."""
        self._loop.call_soon_threadsafe(self._cancel)
        self.ended.wait(wait_s)

    def _cancel(self) -> None:
        if self._task is not None:  # always set: _start was scheduled first
            self._task.cancel()


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Run `coro` on the LLM loop (for callers that never cancel it)."""
    return asyncio.run_coroutine_threadsafe(coro, _loop())
