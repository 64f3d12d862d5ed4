"""Kernel processes and their clients: what a `KernelHandle` is made of.

A launched kernel is a `_Proc` (`_ManagedProc` for jupyter_client's `AsyncKernelManager`; the fork
server's `_ForkedProc` is in `forkclient`), talked to through a `_Client`, and ready once it has
bound its sockets and answered kernel_info with iopub subscribed (`_wait_bound`, `_wait_ready`).

jupyter_client has no public, thread-safe blocking call for some of what `_Client` needs: its
blocking wrappers (`run_sync`) leave an event loop per calling thread. `_Client` runs the public
coroutines of `AsyncKernelClient` on a private loop instead; only `_recv_reply` (what
`execute(reply=True)` waits with) has no public equivalent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from hmac import compare_digest
from typing import Any, Protocol, TypeVar, cast

import zmq
import zmq.asyncio
from jupyter_client.adapter import adapt
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.session import Session

from .forkchild import KERNEL_OPTIONS

_POLL_S = 0.05  # shell poll while waiting for kernel_info_reply
_IOPUB_RESEND_S = 0.2  # resend kernel_info when iopub has not shown our request by then
_LOG_TAIL_LINES = 25

# -- start-up deadlines -------------------------------------------------------------------------
# One budget bounds a kernel's whole start: starting a fork server when none runs, the fork, a
# confined kernel's set-up (its namespaces and mounts), binding its sockets and answering
# kernel_info. Every wait inside the start is derived from that one deadline, and the innermost
# wait gives up first, so the message the user reads names the step that hung:
#
#   the host waits for a new fork server's "ready"        until the deadline
#   the fork server waits for a confined kernel's set-up  until the deadline - setup_margin()
#   the host waits for the fork server's spawn reply      until the deadline
#   the host waits for the kernel's sockets, kernel_info  until the deadline
#
# The fork server gives up `setup_margin` earlier than the host so that its reason reaches the
# host before the host stops listening; it refuses (without forking) a request whose set-up
# deadline passed while earlier requests were served. Host and fork server share
# CLOCK_MONOTONIC (`time.monotonic()`), so the request carries the deadline itself. Every
# timeout's message says to raise START_TIMEOUT_ENV.
START_TIMEOUT_ENV = "RLM_KERNEL_START_TIMEOUT"
DEFAULT_START_TIMEOUT_S = 120.0  # generous: at load 20 on 2 cores a start took over 30 s
_SETUP_MARGIN_S = 5.0  # at most; a quarter of a smaller budget

T = TypeVar("T")

log = logging.getLogger(__name__)


class KernelStartError(RuntimeError):
    """A kernel could not be started or did not become ready."""


def start_timeout() -> float:
    """The start-up budget of a kernel, in seconds: ``$RLM_KERNEL_START_TIMEOUT`` or 120."""
    raw = os.environ.get(START_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_START_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise KernelStartError(
            f"${START_TIMEOUT_ENV} must be a number of seconds > 0 (how long a sandbox kernel "
            f"may take to start; default {DEFAULT_START_TIMEOUT_S:g}), got {raw!r}"
        )
    return value


def setup_margin(budget: float) -> float:
    """How much earlier than the host the fork server gives up on a kernel's set-up."""
    return min(_SETUP_MARGIN_S, budget / 4)


def start_timeout_hint(budget: float) -> str:
    """What to do when a start-up wait gives up (for the error message)."""
    return (
        f"the kernel start-up budget is {budget:g} s; a loaded machine may need more: "
        f"set {START_TIMEOUT_ENV}=<seconds> (e.g. {START_TIMEOUT_ENV}={max(2 * budget, 240):g})"
    )


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def _log_tail(path: str, max_lines: int = _LOG_TAIL_LINES) -> str:
    """Return the last lines of a log file (empty if missing)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            data = fh.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-max_lines:])


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """Return (state, starttime) from /proc/<pid>/stat, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[19])


_HAVE_PROC = os.path.isdir("/proc/self")


def _pid_alive(pid: int, starttime: int | None) -> bool:
    """Whether pid is a live (not zombie) process, and the same one if starttime is given."""
    if _HAVE_PROC:
        st = _proc_stat(pid)
        if st is None or st[0] in ("Z", "X", "x"):
            return False
        return starttime is None or st[1] == starttime
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _killpg(pgid: int, sig: int) -> None:
    """Signal a kernel's process group (the kernel leads it); ignore an empty group."""
    # No fallback to os.kill(pid): once the group is empty, the pid may belong to someone else.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a private event loop (in a helper thread if needed)."""

    async def _main() -> T:
        return await factory()

    def _run() -> T:
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(_main())
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run()
    box: dict[str, Any] = {}

    def _target() -> None:
        try:
            box["value"] = _run()
        except BaseException as exc:
            box["error"] = exc

    th = threading.Thread(target=_target, name="rlm-kernel-async", daemon=True)
    th.start()
    th.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


_zmq_lock = threading.Lock()
_zmq_ctx: zmq.Context[zmq.Socket[bytes]] | None = None


def _zmq_context() -> zmq.Context[zmq.Socket[bytes]]:
    """Return this module's zmq context, shared by all kernel clients (one IO thread)."""
    global _zmq_ctx
    with _zmq_lock:
        if _zmq_ctx is None or _zmq_ctx.closed:
            ctx = zmq.Context()
            # Reconnect quickly to a kernel that binds late (default 100 ms).
            ctx.setsockopt(zmq.RECONNECT_IVL, 20)
            _zmq_ctx = ctx
        return _zmq_ctx


# ---------------------------------------------------------------------------------------------
# kernel processes (one class per launcher)
# ---------------------------------------------------------------------------------------------
class _Proc(Protocol):
    """What a KernelHandle needs from a launched kernel process."""

    pid: int

    def alive(self) -> bool:
        """Whether the kernel process is running."""

    def wait_dead(self, timeout: float) -> bool:
        """Wait until the process is dead; return whether it is."""

    def release(self) -> None:
        """Free the launcher's resources for a dead process."""

    def exit_status(self) -> int | None:
        """The exit code (negative: killed by that signal), when known."""


class _ManagedProc:
    """A kernel started by jupyter_client's AsyncKernelManager (a child of this process)."""

    def __init__(self, km: Any) -> None:
        self.km = km
        self.process: subprocess.Popen[bytes] = km.provisioner.process
        self.pid = int(self.process.pid)

    def alive(self) -> bool:
        """Whether the kernel process is running."""
        return self.process.poll() is None

    def wait_dead(self, timeout: float) -> bool:
        """Wait until the process is dead (and reaped); return whether it is."""
        try:
            self.process.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            return False
        return True

    def exit_status(self) -> int | None:
        """The exit code (negative: killed by that signal), when known."""
        return self.process.poll()

    def release(self) -> None:
        """Let jupyter_client close its control socket and forget the process."""
        km = self.km
        _run_async(lambda: km.cleanup_resources())


class _HostSession(Session):
    """The Session of the host's clients of sandbox kernels: jupyter_client's, whose
    `deserialize` does not turn the header's and parent header's ISO dates into datetimes.

    jupyter_client walks both headers of every message it reads and parses each date string
    with dateutil (`extract_dates`: ~30 µs per message, 3 or 4 messages per agent cell); nothing
    on the host reads a sandbox message's dates. Everything else, the signature check and the
    replay guard included, is jupyter_client's own (the same steps, in the same order)."""

    def deserialize(self, msg_list: Any, content: bool = True, copy: bool = True) -> dict[str, Any]:
        minlen = 5
        if not copy:  # pyzmq did not copy the first parts: copy them
            msg_list = [bytes(m.bytes) for m in msg_list[:minlen]] + list(msg_list[minlen:])
        if self.auth is not None:
            signature = msg_list[0]
            if not signature:
                raise ValueError("Unsigned Message")
            if signature in self.digest_history:
                raise ValueError(f"Duplicate Signature: {signature!r}")
            if content:
                self._add_digest(signature)
            if not compare_digest(signature, self.sign(msg_list[1:5])):
                raise ValueError(f"Invalid Signature: {signature!r}")
        if len(msg_list) < minlen:
            raise TypeError(f"malformed message, must have at least {minlen} elements")
        header = self.unpack(msg_list[1])
        message: dict[str, Any] = {
            "header": header,
            "msg_id": header["msg_id"],
            "msg_type": header["msg_type"],
            "parent_header": self.unpack(msg_list[2]),
            "metadata": self.unpack(msg_list[3]),
            "content": self.unpack(msg_list[4]) if content else msg_list[4],
        }
        buffers = [memoryview(b) for b in msg_list[5:]]
        if buffers and buffers[0].shape is None:  # pyzmq #646: force a copy
            buffers = [memoryview(bytes(b.bytes)) for b in msg_list[5:]]
        message["buffers"] = buffers
        return adapt(message)


class _Client(BlockingKernelClient):
    """A BlockingKernelClient whose blocking calls leave no asyncio loop behind, with a
    `_HostSession`."""

    def _session_default(self) -> Session:
        return _HostSession(parent=self)

    # jupyter_client's blocking wrappers (`run_sync`) create an event loop per calling thread and
    # never close it: a ResourceWarning ("unclosed event loop") once a worker thread ends. Here
    # `get_*_msg` read the channels directly and the coroutine-based calls run on a private loop
    # that is closed afterwards.

    def get_shell_msg(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Get a message from the shell channel (queue.Empty on timeout)."""
        return cast("dict[str, Any]", self.shell_channel.get_msg(*args, **kwargs))

    def get_iopub_msg(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Get a message from the iopub channel (queue.Empty on timeout)."""
        return cast("dict[str, Any]", self.iopub_channel.get_msg(*args, **kwargs))

    def get_stdin_msg(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Get a message from the stdin channel (queue.Empty on timeout)."""
        return cast("dict[str, Any]", self.stdin_channel.get_msg(*args, **kwargs))

    def get_control_msg(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Get a message from the control channel (queue.Empty on timeout)."""
        return cast("dict[str, Any]", self.control_channel.get_msg(*args, **kwargs))

    def execute_interactive(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Execute code and relay its output (see KernelClient.execute_interactive)."""
        return _run_async(lambda: AsyncKernelClient.execute_interactive(self, *args, **kwargs))

    def _recv_reply(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Wait for the reply to a request (used by ``execute(..., reply=True)``; jupyter_client
        has no public coroutine for it, so this one private name stays)."""
        return _run_async(lambda: AsyncKernelClient._recv_reply(self, *args, **kwargs))

    def wait_for_ready(self, timeout: float | None = None) -> None:
        """Wait for the kernel to answer kernel_info (slow; start_kernel already did this)."""
        _run_async(lambda: AsyncKernelClient.wait_for_ready(self, timeout=timeout))

    def is_alive(self) -> bool:
        """Whether the kernel looks alive to this client (prefer KernelHandle.is_alive)."""
        return bool(_run_async(lambda: AsyncKernelClient.is_alive(self)))


class _SpecManager(KernelSpecManager):
    """Kernel specs for the subprocess launcher: always this interpreter's ipykernel."""

    def get_kernel_spec(self, kernel_name: str, **kwargs: Any) -> Any:
        """Return the python3 spec for sys.executable."""
        return KernelSpec(
            name="python3",
            argv=[
                sys.executable,
                "-m",
                "ipykernel_launcher",
                "-f",
                "{connection_file}",
                *KERNEL_OPTIONS,
            ],
            display_name="Python 3 (ipykernel)",
            language="python",
            resource_dir=os.path.dirname(sys.executable),
        )


# ---------------------------------------------------------------------------------------------
# readiness
# ---------------------------------------------------------------------------------------------
class _NotReady(Exception):
    """The kernel died or timed out before answering."""


def _wait_bound(connection_file: str, proc: _Proc, deadline: float) -> None:
    """Wait until the kernel has bound its ipc sockets, so that the client connects at once."""
    # A zmq client that connects before the socket file exists retries later (100 ms by
    # default), and an iopub subscription that comes late loses messages (slow joiner).
    with open(connection_file) as fh:
        info = json.load(fh)
    if info.get("transport") != "ipc":
        return
    paths = [
        f"{info['ip']}-{info[k]}"
        for k in ("shell_port", "iopub_port", "stdin_port", "control_port")
    ]
    # Polled every 1 ms (the kernel binds ~20 ms after its fork, much later under load): only
    # the paths not yet seen are looked at, and the clock and the process every 10th round.
    rounds = 0
    while True:
        paths = [p for p in paths if not os.path.exists(p)]
        if not paths:
            return
        rounds += 1
        if rounds % 10 == 0:
            if time.monotonic() > deadline:
                raise _NotReady("it did not bind its sockets in time")
            if not proc.alive():
                raise _NotReady("the kernel process exited during start-up")
        time.sleep(0.001)


def _wait_ready(client: Any, proc: _Proc, deadline: float) -> None:
    """Wait for a kernel_info_reply on shell and for proof that iopub is subscribed."""
    # The proof is ipykernel's `iopub_welcome` or a status message for one of our requests;
    # without it kernel_info is sent again (after _IOPUB_RESEND_S), so no output of the first
    # cell is lost to the zmq slow-joiner problem.
    sent: list[str] = []
    pending: set[str] = set()
    iopub_ok = False

    def send() -> float:
        msg_id = str(client.kernel_info())
        sent.append(msg_id)
        pending.add(msg_id)
        return time.monotonic()

    last = send()
    while True:
        if time.monotonic() > deadline:
            raise _NotReady("it did not answer kernel_info in time")
        if not proc.alive():
            raise _NotReady("the kernel process exited during start-up")
        if pending:
            try:
                msg = client.shell_channel.get_msg(timeout=_POLL_S)
            except queue.Empty:
                msg = None
            parent = msg["parent_header"].get("msg_id") if msg is not None else None
            if parent in pending and msg is not None and msg["msg_type"] == "kernel_info_reply":
                pending.discard(parent)
                last = time.monotonic()
        timeout = 0.0 if pending else 0.01
        while True:
            try:
                m = client.iopub_channel.get_msg(timeout=timeout)
            except queue.Empty:
                break
            timeout = 0.0
            if m["msg_type"] == "iopub_welcome" or (
                m["msg_type"] == "status" and m["parent_header"].get("msg_id") in sent
            ):
                iopub_ok = True
        if not pending and iopub_ok:
            return
        if not pending and time.monotonic() - last > _IOPUB_RESEND_S:
            last = send()  # iopub was not subscribed yet
