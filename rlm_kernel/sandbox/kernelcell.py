"""A cell on a Jupyter kernel (the local backend's REPL): send it, read its channels into a
`CellCollector`, answer stdin, stop it (interrupt, then restart); and a second client, on a
kernel subshell, for completion and inspection while a cell runs."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from .base import CellResult, SandboxError, StdinHook
from .cells import CellCollector
from .kernelproc import _Client, _zmq_context
from .kernels import KernelHandle
from .runtime import CELL_PREFIX

__all__ = ["QueryClient", "run_cell"]

log = logging.getLogger(__name__)

INTERRUPT_GRACE_S = 3.0  # how long an interrupted cell may take to stop before the kernel restarts
LOST_IDLE_S = 2.0  # the cell replied but its idle status has not come: iopub lost it
QUERY_TIMEOUT_S = 5.0  # completion / inspection requests
# The first one a kernel answers loads its completer (jedi's caches): 2 CPU-s, 4 s at load 5,
# where the 5 s made the first Tab of a notebook come back empty one time in four.
FIRST_QUERY_TIMEOUT_S = 30.0
REPLY_TIMEOUT_S = 2.0  # the execute_reply of a cell whose idle status arrived (sent before it)

# What jupyter_client raises for a message it cannot decode (bad signature, not JSON, no header).
_MALFORMED = (ValueError, KeyError, TypeError)


def run_cell(
    kernel: KernelHandle,
    code: str,
    col: CellCollector,
    *,
    name: str,
    exec_id: str,
    silent: bool,
    wrap: bool,
    snapshot_on_end: bool,
    restart: Callable[[], None],
    store_history: bool = False,
    stdin_hook: StdinHook | None = None,
    msg_id: str | None = None,
    user_expressions: dict[str, str] | None = None,
) -> CellResult:
    """Send `code` as an execute_request and collect it until its idle status (see `_Cell`).

    A visible wrapped cell is wrapped by the runtime's IPython hooks (one request, `exec_id` in
    its cellId); a silent wrapped one by `__rlm__.begin/end` requests around it. `restart`
    restarts the kernel and reinstalls the runtime (a cell that ignores interrupts)."""
    kc = kernel.client
    ids: list[str] = []
    hooked = wrap and not silent
    if wrap and not hooked:
        ids.append(kc.execute(f"__rlm__.begin({exec_id!r})", silent=True, store_history=False))
    content = {
        "code": code,
        "silent": silent,
        "store_history": store_history and not silent,
        "user_expressions": user_expressions or {},
        "allow_stdin": stdin_hook is not None,
        "stop_on_error": False,
    }
    meta = {}
    if hooked:
        meta["cellId"] = f"{CELL_PREFIX}{exec_id}:{int(snapshot_on_end)}"
    msg = kc.session.msg("execute_request", content, metadata=meta)
    if msg_id is not None:
        msg["header"]["msg_id"] = msg["msg_id"] = msg_id
    kc.shell_channel.send(msg)
    main = msg["header"]["msg_id"]
    ids.append(main)
    if wrap and not hooked:
        ids.append(kc.execute("__rlm__.end()", silent=True, store_history=False))
    try:
        res = _Cell(name, kernel, main, ids, col, restart, stdin_hook).collect()
        if msg_id is not None and not res.namespace_lost and not res.reply:
            reply = reply_to(kc.get_shell_msg, main, REPLY_TIMEOUT_S)
            if reply is not None:
                res.reply = dict(reply.get("content") or {})
        return res
    finally:
        _drain(kc)


class _Cell:
    """The wait for one cell's requests: iopub into the collector, stdin to the hook, cancel and
    timeout as an interrupt, a restart when the interrupt is ignored, death noticed."""

    def __init__(
        self,
        name: str,
        kernel: KernelHandle,
        main: str,
        ids: list[str],
        col: CellCollector,
        restart: Callable[[], None],
        stdin_hook: StdinHook | None,
    ) -> None:
        self.name, self.kernel, self.kc = name, kernel, kernel.client
        self.main, self.ids = main, ids
        self.col, self.restart, self.stdin_hook = col, restart, stdin_hook
        self.waiting = set(ids)
        self.interrupted_at: float | None = None
        self.replied_at: float | None = None  # when the main request's execute_reply came

    def handle(self, msg: dict[str, Any]) -> None:
        parent = msg.get("parent_header", {}).get("msg_id")
        if parent not in self.ids:
            return
        mtype, content = msg["msg_type"], msg["content"]
        if mtype == "status":
            if content.get("execution_state") == "idle":
                self.waiting.discard(parent)
        elif mtype == "stream":
            name = str(content.get("name") or "stdout")
            self.col.stream(name, content.get("text", ""), show=parent == self.main)
        elif parent == self.main:
            self.col.message(msg)

    def stop(self, status: str | None) -> None:
        if status is not None and (status != "cancelled" or self.col.result.status == "ok"):
            self.col.result.status = status
        self.kernel.interrupt()
        self.interrupted_at = time.monotonic()

    def collect(self) -> CellResult:
        kernel, res = self.kernel, self.col.result
        last_alive_check = self.col.t0
        while self.waiting:
            now = time.monotonic()
            if self.interrupted_at is None:
                reason = self.col.stop_reason()
                if reason is not None:
                    res.status = reason
                    self.stop(None)
            elif now - self.interrupted_at > INTERRUPT_GRACE_S:
                # The cell ignores interrupts: restart, the namespace is lost.
                self.col.bridge.end()
                self.restart()
                res.status = "restarted"
                break
            if now - last_alive_check > 0.2:
                last_alive_check = now
                if not kernel.is_alive():
                    res.status = "died"
                    break
            if self.stdin_hook is not None and self.interrupted_at is None and self.answer_stdin():
                continue
            self.read_iopub()
        res = self.col.finish()
        if res.status == "died":
            res.error = (res.error or "") + (
                f"The sandbox's Python process died during this cell: {kernel.death()} "
                "(its variables are lost; no other agent is affected)."
            )
        return res

    def answer_stdin(self) -> bool:
        """Answer an input_request of the cell, if one waits; True when there was one."""
        assert self.stdin_hook is not None
        request = _input_request(self.kc, self.main)
        if request is None:
            return False
        # Show what the cell printed before it asked (iopub and stdin race).
        for msg in pending(self.kc.get_iopub_msg):
            self.handle(msg)
        try:
            value = self.stdin_hook(str(request.get("prompt", "")), bool(request.get("password")))
        except Exception:
            self.stop("cancelled")  # the hook gave up (the user interrupted): stop the cell
        else:
            self.kc.input(value)
        return True

    def read_iopub(self) -> None:
        try:
            msg = self.kc.get_iopub_msg(timeout=0.05)
        except queue.Empty:
            # iopub is quiet: if the cell replied long ago, its idle status was lost (a zmq queue
            # overflowed); do not wait for it for ever.
            if self.main not in self.waiting:
                return
            if self.replied_at is None:
                for reply in pending(self.kc.get_shell_msg):
                    if reply.get("parent_header", {}).get("msg_id") == self.main:
                        self.replied_at = time.monotonic()
                        self.col.result.reply = dict(reply.get("content") or {})
            elif time.monotonic() - self.replied_at > LOST_IDLE_S:
                log.warning("sandbox %s: a cell's idle status was lost", self.name)
                self.waiting.clear()
            return
        except _MALFORMED:  # the cell can publish anything on its kernel's iopub: skip it
            return
        self.handle(msg)


class QueryClient:
    """Completion and inspection on a second client and a kernel subshell, so that they are
    answered while a cell runs and their replies never mix with the executing client's."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._query: tuple[str, _Client, str | None] | None = None  # (connection file, ...)
        self._answered = False  # the kernel of this client has answered a request

    def request(
        self, kernel: KernelHandle | None, msg_type: str, content: dict[str, Any]
    ) -> dict[str, Any]:
        """The reply content of a shell request; SandboxError when it does not come in time."""
        with self._lock:
            if kernel is None:
                raise SandboxError(f"sandbox {self.name} is not running")
            client, subshell = self._client(kernel)
            msg = client.session.msg(msg_type, content)
            if subshell is not None:
                msg["header"]["subshell_id"] = subshell
            client.shell_channel.send(msg)
            timeout = QUERY_TIMEOUT_S if self._answered else FIRST_QUERY_TIMEOUT_S
            reply = reply_to(client.get_shell_msg, msg["header"]["msg_id"], timeout)
            if reply is None:
                self._stop()  # a late reply must not answer the next request
                raise SandboxError(f"sandbox {self.name} did not answer {msg_type} in time")
            self._answered = True
            return dict(reply["content"])

    def _client(self, kernel: KernelHandle) -> tuple[_Client, str | None]:
        """The client for the kernel's current connection file (a restart changes it)."""
        if self._query is not None and self._query[0] == kernel.connection_file:
            return self._query[1], self._query[2]
        self._stop()
        client = _Client(context=_zmq_context())
        client.load_connection_file(kernel.connection_file)
        client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=True)
        subshell: str | None = None
        msg = client.session.msg("create_subshell_request", {})
        client.control_channel.send(msg)
        reply = reply_to(client.get_control_msg, msg["header"]["msg_id"], QUERY_TIMEOUT_S)
        if reply is not None and reply["content"].get("status") == "ok":
            subshell = reply["content"].get("subshell_id")
        self._query = (kernel.connection_file, client, subshell)
        return client, subshell

    def _stop(self) -> None:
        self._answered = False
        if self._query is not None:
            with contextlib.suppress(Exception):
                self._query[1].stop_channels()
            self._query = None

    def close(self) -> None:
        """Stop the client's channels."""
        with self._lock:
            self._stop()


def _input_request(kc: Any, main: str) -> dict[str, Any] | None:
    """The content of an `input_request` of cell `main` waiting on the stdin channel, if any."""
    for msg in pending(kc.get_stdin_msg):
        if msg["msg_type"] == "input_request" and msg["parent_header"].get("msg_id") == main:
            return dict(msg["content"])
    return None


def pending(get: Any) -> list[dict[str, Any]]:
    """Every message already waiting on a channel (`get` is a client's get_*_msg); malformed
    ones are skipped."""
    out: list[dict[str, Any]] = []
    while True:
        try:
            out.append(get(timeout=0))
        except queue.Empty:
            return out
        except _MALFORMED:
            continue


def reply_to(get: Any, msg_id: str, timeout: float) -> dict[str, Any] | None:
    """The reply to request `msg_id` from a channel (`get` is a client's get_*_msg); None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            msg: dict[str, Any] = get(timeout=left)
        except queue.Empty:
            return None
        if msg.get("parent_header", {}).get("msg_id") == msg_id:
            return msg


def _drain(kc: Any) -> None:
    """Discard shell replies and stale stdin requests; nobody reads them and they would pile up."""
    for get in (kc.get_shell_msg, kc.get_stdin_msg):
        with contextlib.suppress(Exception):
            pending(get)
