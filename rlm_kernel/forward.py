"""Forwarding the RLM kernel's ordinary cells to the sandbox they run in (`CellForwarder`).

`Sandbox.execute` runs in a worker thread (the event loop stays free), under the frontend's msg_id
and with its ``user_expressions``; the sandbox kernel's reply gives the execute_reply's
``payload`` (``obj?``'s pager, ``set_next_input``) and ``user_expressions``. Output messages reach
the kernel's iopub with the request as parent: for a local sandbox through `comms.CommRouter` (the
thin hop, on the event loop, which also relays comms: ipywidgets, anywidget, tqdm.notebook), for a
Daytona sandbox from the worker thread. ``execute_result`` gets the kernel's execution count, which
the forwarder advances itself.

Interrupts. The kernelspec sets ``"interrupt_mode": "message"``: the Stop button sends an
``interrupt_request`` on the control channel, which is handled on the control thread even while
the shell is busy. When a forwarded cell runs, the kernel's `interrupt_request` only sets that
cell's cancel event (`CellForwarder.interrupt`); `LocalSandbox` then interrupts the sandbox's
kernel, whose ``KeyboardInterrupt`` traceback comes back as the cell's error (a cell that ignores
the interrupt for 3 s gets its sandbox restarted, and the user is told the variables are gone).
Without a forwarded cell, the stock behaviour applies (SIGINT to the kernel process: a ``%%rlm``
cell sees KeyboardInterrupt or CancelledError). Frontends that signal anyway (``interrupt_mode``
"signal", Ctrl-C in a terminal) are covered too: while a forwarded cell runs, SIGINT is routed to
the same cancel event instead of raising KeyboardInterrupt in the event loop, which would stop the
kernel.

Stdin. With ``allow_stdin``, the sandbox cell runs with stdin allowed, and each ``input_request``
of the sandbox kernel is answered by `relay.FrontendInput`: it sends the same ``input_request`` that
ipykernel's `raw_input` sends, on the kernel's stdin socket with the cell's parent and routing
identity, and waits for the frontend's reply. It runs in the worker thread (the main thread never
touches the stdin socket while a forwarded cell holds the shell) and polls instead of blocking,
because ipykernel's own `_input_request` stops waiting only on a KeyboardInterrupt, which a worker
thread never receives: here the Stop button ends the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from .comms import CommRouter
from .links import CellForward, SandboxLink
from .notebook_sandboxes import NotebookSandboxes
from .relay import FrontendInput, OutputRelay, prepare_repl, route_sigint
from .sandbox.base import CellResult, Sandbox

__all__ = ["CellForwarder", "MainLoop", "cell_reply", "flush_only_when_pending"]

log = logging.getLogger(__name__)

_FOREVER_S = 10.0**9  # a notebook cell runs until it ends or the user stops it
_CELL_DRAIN_S = 5.0  # after the cell's reply: wait this long for the relay to pass its outputs on


def flush_only_when_pending(stream: Any) -> None:
    """Make an ipykernel OutStream's flush() return at once when nothing is waiting to be sent.

    ipykernel flushes stdout and stderr after every request, each flush a round trip to its IOPub
    thread even when nothing was written; forwarded cells write nothing to this kernel's streams.
    Whatever was written sets `_flush_pending` until the IOPub thread sends it, and everything
    published later queues behind that send, so skipping the round trip keeps the order.
    """
    names = ("_flush_pending", "_subprocess_flush_pending", "echo", "flush")
    if not all(hasattr(stream, n) for n in names):
        return
    full = stream.flush

    def flush() -> None:
        if stream._flush_pending or stream._subprocess_flush_pending or stream.echo is not None:
            full()

    stream.flush = flush


class MainLoop:
    """The kernel's main thread and event loop (where the relay lives), for other threads."""

    def __init__(self) -> None:
        self.thread = threading.current_thread()
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """The kernel started: this thread and `loop` are the main ones from now on."""
        self.thread = threading.current_thread()
        self.loop = loop

    def is_current(self) -> bool:
        """Whether the caller runs on the main thread."""
        return threading.current_thread() is self.thread

    async def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Await `coro` on the main event loop, from any loop."""
        loop = self.loop
        if loop is None or self.is_current():
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def call_and_wait(self, fn: Callable[..., None], *args: Any, timeout: float = 0.5) -> None:
        """Run `fn` on the main event loop and wait for it (at most `timeout`); worker threads."""
        loop = self.loop
        if loop is None:
            return
        done = threading.Event()

        def run() -> None:
            try:
                fn(*args)
            finally:
                done.set()

        loop.call_soon_threadsafe(run)
        done.wait(timeout)


@dataclass(eq=False, kw_only=True)
class CellForwarder:
    """Runs ordinary cells in the notebook's sandbox and answers them as ipykernel would.

    `session`, `iopub`, `topic` and `stdin` are the kernel's; `shell` is its IPython shell, whose
    history and execution count the forwarded cells advance; `request` gives the shell request
    being answered and its routing identity (for ``input_request``).
    """

    session: Any
    iopub: Any
    topic: Callable[[str], bytes]
    stdin: Any
    shell: Any
    request: Callable[[], tuple[dict[str, Any], Any]]
    relay: CommRouter
    main: MainLoop
    sandboxes: NotebookSandboxes
    _cancels: list[threading.Event] = field(default_factory=list, init=False)
    """The cancel events of the running forwarded cells (more than one with subshells)."""

    # -- cancellation ---------------------------------------------------------------------------
    def interrupt(self) -> bool:
        """Stop the running forwarded cells (any thread); False when none runs."""
        cancels = list(self._cancels)
        for cancel in cancels:
            cancel.set()
        return bool(cancels)

    @property
    def current_cancel(self) -> threading.Event | None:
        """The cancel event of the latest running forwarded cell, if any."""
        return self._cancels[-1] if self._cancels else None

    # -- a cell ---------------------------------------------------------------------------------
    async def forward(
        self,
        code: str,
        *,
        silent: bool,
        store_history: bool,
        allow_stdin: bool,
        user_expressions: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run `code` of the request being answered in the sandbox; return the execute_reply's
        content."""
        parent, ident = self.request()
        cancel = threading.Event()
        restore_sigint = route_sigint(asyncio.get_running_loop(), cancel)
        self._cancels.append(cancel)
        shell = self.shell
        count = int(shell.execution_count)
        try:
            if store_history:
                shell.history_manager.store_inputs(count, code, code)
            publish = OutputRelay(self.session, self.iopub, self.topic, parent, count, silent)
            stdin = (ident, parent) if allow_stdin else None
            reply = await self._run_in_sandbox(
                code, cancel, publish, stdin, store_history, user_expressions
            )
        finally:
            self._cancels.remove(cancel)
            restore_sigint()
            if store_history:
                shell.execution_count = count + 1
        reply["execution_count"] = count
        return reply

    async def _run_in_sandbox(
        self,
        code: str,
        cancel: threading.Event,
        publish: OutputRelay,
        stdin: tuple[Any, dict[str, Any]] | None,
        store_history: bool,
        user_expressions: dict[str, Any] | None,
    ) -> dict[str, Any]:
        sb = self.sandboxes.for_cell()
        if sb is None:
            try:
                sb = await asyncio.to_thread(self.sandboxes.root)
            except Exception as exc:
                return publish.error("SandboxError", f"the notebook's sandbox did not start: {exc}")
        if cancel.is_set():
            return publish.error("KeyboardInterrupt", "interrupted before the cell started")
        link = await self.main.run(self.relay.link_for(sb))
        # With a link, the relay passes the cell's outputs on as they come (in order with its
        # comm messages); without (Daytona), the worker thread does.
        cell = await self.main.run(self._begin_cell(link, publish)) if link is not None else None
        ask = None
        if stdin is not None:
            ident, parent = stdin
            before = (lambda: self.main.call_and_wait(self.relay.flush, sb)) if link else None
            ask = FrontendInput(self.session, self.stdin, ident, parent, cancel, before)
        msg_id = publish.msg_id if link is not None else None
        try:
            res = await asyncio.to_thread(
                self._execute_in,
                sb,
                code,
                cancel,
                None if cell is not None else publish,
                ask,
                store_history,
                msg_id,
                user_expressions,
            )
            if cell is not None and isinstance(res, CellResult) and not res.namespace_lost:
                try:  # the sandbox's idle status came; the relay may still be on its way to it
                    await asyncio.wait_for(asyncio.wrap_future(cell.done), _CELL_DRAIN_S)
                except asyncio.TimeoutError:
                    log.warning("outputs of a cell did not all arrive from the sandbox")
        finally:
            if cell is not None:
                await self.main.run(self._end_cell(cell))
        publish.finish()
        if isinstance(res, Exception):  # e.g. the kernel shut the sandbox down under the cell
            return publish.error("SandboxError", f"the cell could not run in the sandbox: {res}")
        detached = res.status == "died" and self.sandboxes.detach(sb)
        return cell_reply(res, publish, interrupts=sb.capabilities.interrupt, detached=detached)

    async def _begin_cell(self, link: SandboxLink, publish: OutputRelay) -> CellForward:
        return self.relay.begin_cell(link, publish)

    async def _end_cell(self, cell: CellForward) -> None:
        self.relay.end_cell(cell)

    def _execute_in(
        self,
        sb: Sandbox,
        code: str,
        cancel: threading.Event,
        on_output: OutputRelay | None,
        ask: FrontendInput | None,
        store_history: bool,
        msg_id: str | None,
        user_expressions: dict[str, Any] | None,
    ) -> CellResult | Exception:
        """Run one cell in `sb` (worker thread); after a restart or death, put things right."""
        try:
            res = sb.execute(
                code,
                timeout=_FOREVER_S,
                cancel=cancel,
                on_output=on_output,
                store_history=store_history,
                stdin_hook=ask,
                msg_id=msg_id,
                user_expressions=user_expressions,
            )
        except Exception as exc:
            return exc
        if res.status == "restarted":
            with contextlib.suppress(Exception):
                prepare_repl(sb)
        elif res.status == "died":
            sb.close()
        return res


def cell_reply(
    res: CellResult, publish: OutputRelay, *, interrupts: bool, detached: bool
) -> dict[str, Any]:
    """The execute_reply content for a cell the sandbox ran; errors the sandbox did not report
    itself (a restart, a death, an interrupt) are published through `publish`.

    `interrupts`: the backend interrupts cells (else a restart after a timeout lost the
    variables); `detached`: the cell's sandbox died and was the attached one.
    """
    errors = [o["content"] for o in res.outputs if o["msg_type"] == "error"]
    payload = res.reply.get("payload")
    expressions = res.reply.get("user_expressions")
    extra = {
        "payload": [p for p in payload if isinstance(p, dict)] if isinstance(payload, list) else [],
        "user_expressions": expressions if isinstance(expressions, dict) else {},
    }
    if res.reply.get("status") == "error" and not errors:
        errors = [res.reply]  # the error message itself was lost in a burst of output
    if res.status == "ok" and not errors:
        return {"status": "ok", **extra}
    if res.status in ("ok", "error") and errors:
        return _error_reply(errors[-1], "Error", extra)
    if res.status == "restarted":
        if not interrupts and res.error:  # e.g. Daytona restarted it empty
            return publish.error("SandboxRestarted", res.error)
        return publish.error(
            "KeyboardInterrupt",
            "the cell did not stop when interrupted, so its Python process was restarted: "
            "the notebook's variables are gone",
        )
    if res.status == "died":
        if detached:
            why = "the following cells run in the notebook's root sandbox again"
        else:
            why = "the next cell starts a fresh one"
        return publish.error(
            "SandboxDied",
            f"the sandbox's Python process died and its variables are lost; {why}",
        )
    if errors:  # cancelled: the sandbox's KeyboardInterrupt traceback was published already
        return _error_reply(errors[-1], "KeyboardInterrupt", extra)
    return publish.error("KeyboardInterrupt", res.error or "interrupted")


def _error_reply(err: dict[str, Any], ename: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": "error",
        "ename": str(err.get("ename", ename)),
        "evalue": str(err.get("evalue", "")),
        "traceback": list(err.get("traceback", [])),
        **extra,
    }
