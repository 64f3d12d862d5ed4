"""Start, interrupt, restart and stop the local IPython kernels that serve as agents' REPLs.

Two launchers:

- ``"fork"`` (default where ``os.fork`` exists): a fork server (:mod:`.forkserver`), started
  lazily once per host process with a minimal environment, pre-imports ipykernel and forks one
  kernel per request. A kernel then costs ~0.1 CPU-s instead of ~0.45.
- ``"subprocess"``: jupyter_client's ``AsyncKernelManager`` (ipc transport) runs
  ``python -m ipykernel_launcher``.

``RLM_KERNEL_LAUNCHER`` overrides the default. If the fork server cannot start, kernels fall
back to ``"subprocess"`` (one warning through `logging`).

Every kernel gets a private directory for its connection file and ipc sockets (under
``runtime_dir``, or under a short ``/tmp/rlm-k*`` directory when socket paths would be too long),
is a session and process-group leader (signals reach what it spawned), and writes stdout/stderr to
``<runtime_dir>/k-*.log``, which :meth:`KernelHandle.shutdown` keeps; everything else is removed.
"""

from __future__ import annotations

import array
import asyncio
import atexit
import contextlib
import json
import logging
import os
import queue
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import zmq
import zmq.asyncio
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.client import KernelClient
from jupyter_client.connect import write_connection_file
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from . import isolation as iso_mod
from .confine import recv_pid
from .forkserver import KERNEL_OPTIONS
from .isolation import Isolation

__all__ = [
    "LAUNCHERS",
    "KernelHandle",
    "KernelStartError",
    "live_kernel_pids",
    "shutdown_all",
    "start_kernel",
]

log = logging.getLogger(__name__)

LAUNCHERS = ("fork", "subprocess")
LAUNCHER_ENV = "RLM_KERNEL_LAUNCHER"
IPC_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS; stay well below
_IPC_NAME = "ipc"  # socket files are <dir>/ipc-<n>, n = 1..5
_ZYGOTE_ENV_KEYS = ("PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV")
_ZYGOTE_READY_TIMEOUT = 30.0
_SPAWN_TIMEOUT = 15.0
_POLL_S = 0.05  # shell poll while waiting for kernel_info_reply
_IOPUB_RESEND_S = 0.2  # resend kernel_info when iopub has not shown our request by then
_LOG_TAIL_LINES = 25
_FORKSERVER_MODULE = "rlm_kernel.sandbox.forkserver"

T = TypeVar("T")


class KernelStartError(RuntimeError):
    """A kernel could not be started or did not become ready."""


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


class _ForkedProc:
    """A kernel forked by the fork server (the zygote reaps it and reports its exit)."""

    def __init__(
        self, server: _ForkServer, pid: int, exited: threading.Event, key: int | None = None
    ) -> None:
        self.server = server
        self.pid = pid  # in this process's PID namespace
        self.key = pid if key is None else key  # the fork server's child (a confined kernel's init)
        self.exited = exited
        st = _proc_stat(pid) if _HAVE_PROC else None
        self.starttime = st[1] if st else None

    def alive(self) -> bool:
        """Whether the kernel process is running."""
        return not self.exited.is_set() and _pid_alive(self.pid, self.starttime)

    def wait_dead(self, timeout: float) -> bool:
        """Wait until the process is dead; return whether it is."""
        deadline = time.monotonic() + timeout
        while self.alive():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.exited.wait(min(left, 0.01))
        return True

    def release(self) -> None:
        """Forget the pid in the fork server's table."""
        self.server.forget(self.key)

    def exit_status(self) -> int | None:
        """The exit code (negative: killed by that signal), when known."""
        status = self.server.exit_status(self.key)
        if status is not None and self.server.confined and status > 128:
            return 128 - status  # the kernel's init exits with 128 + the signal that killed it
        return status


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


class _Client(BlockingKernelClient):
    """A BlockingKernelClient whose blocking calls leave no asyncio loop behind."""

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
        return _run_async(lambda: KernelClient._async_execute_interactive(self, *args, **kwargs))

    def _recv_reply(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Wait for the reply to a request (used by ``execute(..., reply=True)``)."""
        return _run_async(lambda: KernelClient._async_recv_reply(self, *args, **kwargs))

    def wait_for_ready(self, timeout: float | None = None) -> None:
        """Wait for the kernel to answer kernel_info (slow; start_kernel already did this)."""
        _run_async(lambda: KernelClient._async_wait_for_ready(self, timeout=timeout))

    def is_alive(self) -> bool:
        """Whether the kernel looks alive to this client (prefer KernelHandle.is_alive)."""
        return bool(_run_async(lambda: KernelClient._async_is_alive(self)))


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
# the fork server, host side
# ---------------------------------------------------------------------------------------------
class _ForkServerDown(RuntimeError):
    """The fork server is not running (any more)."""


def _package_root() -> str:
    """Return the directory that contains the ``rlm_kernel`` package."""
    return str(Path(__file__).resolve().parents[2])


def _zygote_env() -> dict[str, str]:
    """Return the fork server's minimal environment (never the host's secrets)."""
    env = {k: os.environ[k] for k in _ZYGOTE_ENV_KEYS if os.environ.get(k)}
    env.setdefault("PATH", os.defpath)
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # debugpy's frozen-modules notice, once per zygote
    return env


class _Pending:
    """A spawn request waiting for its reply."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: dict[str, Any] = {}


class _ForkServer:
    """Host side of the zygote: start it, send spawn requests, track its children's exits."""

    def __init__(
        self, ready_timeout: float = _ZYGOTE_READY_TIMEOUT, isolation: Isolation | None = None
    ) -> None:
        self.isolation = isolation or iso_mod.NONE
        self.confined = self.isolation.confined
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._children: dict[int, threading.Event] = {}
        self._exit_status: dict[int, int] = {}  # kept for the host's error messages
        self._next_id = 0
        self._down = False
        self._ready = threading.Event()
        self.pid = 0
        host_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = host_sock
        life_r = _lifeline_read_end()
        argv = [
            sys.executable,
            "-m",
            _FORKSERVER_MODULE,
            "--fd",
            str(child_sock.fileno()),
            "--lifeline",
            str(life_r),
        ]
        if self.confined:
            # Messages carry the sender's credentials: pids arrive in our PID namespace.
            host_sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            argv = [*iso_mod.zygote_command(self.isolation), *argv, "--confined"]
        try:
            self._proc = subprocess.Popen(
                argv,
                pass_fds=(child_sock.fileno(), life_r),
                env=_zygote_env(),
                # `-m` finds the package through sys.path[0] = cwd even when it is not installed;
                # the zygote removes that entry (no PYTHONPATH entry shadows the stdlib).
                cwd=_package_root(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,  # no terminal SIGINT; it exits on EOF instead
            )
        except BaseException:
            host_sock.close()
            raise
        finally:
            child_sock.close()
        assert self._proc.stderr is not None
        self._stderr = self._proc.stderr
        self._reader = threading.Thread(target=self._read_loop, name="rlm-forkserver", daemon=True)
        self._reader.start()
        answered = self._ready.wait(ready_timeout)
        if not answered or self._down:
            self.stop(timeout=1.0)
            if answered:
                reason = f"exited during start-up with code {self._proc.returncode}"
            else:
                reason = f"did not become ready within {ready_timeout:.0f} s"
            raise _ForkServerDown(f"the fork server (pid {self._proc.pid}) {reason}")

    def alive(self) -> bool:
        """Whether the zygote is running and talking."""
        return not self._down and self._proc.poll() is None

    # -- reader thread --------------------------------------------------------------------------
    def _read_loop(self) -> None:
        """Reader thread: dispatch the zygote's messages and log its stderr, until EOF."""
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ, "sock")
        sel.register(self._stderr, selectors.EVENT_READ, "stderr")
        bufs = {"sock": b"", "stderr": b""}
        open_streams = 2
        sender: int | None = None  # the credentials of the last chunk (confined servers)
        try:
            while open_streams:
                for key, _ in sel.select():
                    name = str(key.data)
                    try:
                        if name == "sock" and self.confined:
                            # A read never spans two senders' credentials, so a line that ends
                            # in this chunk was sent with these credentials.
                            data, sender = recv_pid(self._sock)
                        elif name == "sock":
                            data = self._sock.recv(1 << 16)
                        else:
                            data = os.read(self._stderr.fileno(), 1 << 16)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(key.fileobj)
                        open_streams -= 1
                        if name == "sock":
                            self._mark_down()
                        elif bufs[name]:
                            self._on_stderr(bufs[name])
                        continue
                    bufs[name] += data
                    while b"\n" in bufs[name]:
                        line, bufs[name] = bufs[name].split(b"\n", 1)
                        if name == "sock":
                            self._on_message(line, sender)
                        else:
                            self._on_stderr(line)
        except Exception:
            log.exception("fork server reader failed")
        finally:
            sel.close()
            self._mark_down()

    def _on_stderr(self, line: bytes) -> None:
        """Forward one line of the zygote's stderr to logging."""
        text = line.decode("utf-8", "replace").rstrip()
        if text:
            log.warning("kernel fork server: %s", text)

    def _on_message(self, line: bytes, sender: int | None = None) -> None:
        """Handle one message from the zygote: ready, exit event, or a reply (`sender`: the pid
        its credentials name, in our PID namespace; confined servers only)."""
        try:
            msg = json.loads(line)
        except ValueError:
            log.warning("kernel fork server sent garbage: %r", line[:200])
            return
        event = msg.get("event")
        if self.confined and "kernel_nspid" in msg:
            if sender is None or sender == self.pid:
                msg = {"id": msg.get("id"), "error": "the kernel's pid did not reach the host"}
            else:
                msg["host_pid"] = sender
        if event == "ready":
            self.pid = sender if self.confined and sender else int(msg.get("pid", 0))
            if int(msg.get("threads", 1)) != 1:
                log.warning("kernel fork server has %s threads before forking", msg.get("threads"))
            self._ready.set()
        elif event == "exit":
            with self._lock:
                self._exit_status[int(msg["pid"])] = int(msg.get("status", 0))
                ev = self._children.get(int(msg["pid"]))
            if ev is not None:
                ev.set()
        elif "id" in msg:
            with self._lock:
                pending = self._pending.pop(int(msg["id"]), None)
                if pending is not None and "pid" in msg:
                    # Registered here, in order: an exit event for this pid can only come later.
                    self._children[int(msg["pid"])] = threading.Event()
            if pending is not None:
                pending.reply = msg
                pending.done.set()

    def _mark_down(self) -> None:
        """Note that the zygote is gone and fail the requests waiting for it."""
        with self._lock:
            self._down = True
            pending = list(self._pending.values())
            self._pending.clear()
        for p in pending:
            p.reply = {"down": True}
            p.done.set()
        self._ready.set()

    # -- requests -------------------------------------------------------------------------------
    def spawn(
        self,
        cwd: str,
        env: Mapping[str, str],
        connection_file: str,
        log_path: str,
        view: Mapping[str, Any] | None = None,
    ) -> _ForkedProc:
        """Fork a kernel; _ForkServerDown if the zygote is gone, KernelStartError if refused."""
        req: dict[str, Any] = {
            "op": "spawn",
            "cwd": cwd,
            "env": dict(env),
            "connection_file": connection_file,
            "log_path": log_path,
        }
        fds: list[int] = []
        if self.confined:
            req["view"] = dict(view or {})
            # The server's view is read-only: it gets the log file open.
            fds.append(
                os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            )
        try:
            reply = self._request(req, _SPAWN_TIMEOUT, fds)
        finally:
            for fd in fds:
                os.close(fd)
        if "error" in reply:
            raise KernelStartError(f"the fork server could not start the kernel: {reply['error']}")
        key = int(reply["pid"])
        pid = int(reply.get("host_pid", key))
        with self._lock:
            exited = self._children.get(key) or threading.Event()
        return _ForkedProc(self, pid, exited, key)

    def inject(self, key: int, ro: list[str], rw: list[str], hide: list[str]) -> None:
        """Change a running confined kernel's view (`key`: its _ForkedProc.key)."""
        req = {"op": "inject", "pid": key, "ro": ro, "rw": rw, "hide": hide}
        reply = self._request(req, _SPAWN_TIMEOUT)
        if "error" in reply:
            raise KernelStartError(f"could not extend the kernel's view: {reply['error']}")

    def _request(
        self, req: dict[str, Any], timeout: float, fds: list[int] | None = None
    ) -> dict[str, Any]:
        """Send one request and wait for its reply; _ForkServerDown if the zygote is gone."""
        pending = _Pending()
        with self._lock:
            if self._down:
                raise _ForkServerDown("the fork server is not running")
            self._next_id += 1
            rid = self._next_id
            self._pending[rid] = pending
        req = {"id": rid, **req}
        try:
            with self._send_lock:
                data = json.dumps(req).encode() + b"\n"
                if fds:
                    sent = self._sock.sendmsg(
                        [data],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())],
                    )
                    if sent < len(data):
                        self._sock.sendall(data[sent:])
                else:
                    self._sock.sendall(data)
        except OSError as exc:
            with self._lock:
                self._pending.pop(rid, None)
            raise _ForkServerDown(f"cannot talk to the fork server: {exc}") from exc
        if not pending.done.wait(timeout):
            with self._lock:
                self._pending.pop(rid, None)
            raise _ForkServerDown(f"the fork server did not answer within {timeout:.0f} s")
        reply = pending.reply
        if reply.get("down"):
            raise _ForkServerDown("the fork server exited")
        return reply

    def forget(self, pid: int) -> None:
        """Drop a dead kernel's exit event."""
        with self._lock:
            self._children.pop(pid, None)
            self._exit_status.pop(pid, None)

    def exit_status(self, pid: int) -> int | None:
        """How a kernel forked here exited (negative: the signal), if the zygote saw it."""
        with self._lock:
            return self._exit_status.get(pid)

    def stop(self, timeout: float = 5.0) -> None:
        """Close our end (the zygote then stops its kernels and exits) and reap it."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=2.0)
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(OSError):
            self._stderr.close()
        self._mark_down()


_lifeline_lock = threading.Lock()
_lifeline: tuple[int, int] | None = None


def _lifeline_read_end() -> int:
    """The read end of this process's lifeline pipe, passed to every fork server.

    Both ends stay open, and the write end is never written, for as long as this process lives:
    every kernel holds the read end and kills itself when it reads EOF, that is when this process
    is gone. Nothing closes it when a fork server stops or dies, so kernels outlive their zygote.
    """
    global _lifeline
    with _lifeline_lock:
        if _lifeline is None:
            _lifeline = os.pipe()  # close-on-exec: only the fork servers get the read end
        return _lifeline[0]


_server: _ForkServer | None = None  # the unconfined fork server
_confined: dict[tuple[str, bool], _ForkServer] = {}  # bwrap fork servers, by Isolation.key
_server_lock = threading.Lock()
_fork_disabled = False  # the fork server could not start: use the subprocess launcher


def _get_confined_server(ready_timeout: float, isolation: Isolation) -> _ForkServer:
    """The running bwrap fork server for `isolation`, started if needed (no fallback: a kernel
    of the bwrap tier never runs unconfined)."""
    with _server_lock:
        server = _confined.get(isolation.key)
        if server is not None and server.alive():
            return server
        _confined.pop(isolation.key, None)
        if server is not None:
            log.warning("confined fork server (pid %s) died; starting a new one", server.pid)
            server.stop(timeout=1.0)
        try:
            server = _ForkServer(min(ready_timeout, _ZYGOTE_READY_TIMEOUT), isolation)
        except Exception as exc:
            raise KernelStartError(
                f"cannot start the bubblewrap fork server ({exc}); set sandbox.isolation: none "
                "to run sandboxes unconfined"
            ) from exc
        _confined[isolation.key] = server
        return server


def _get_fork_server(ready_timeout: float) -> _ForkServer | None:
    """Return the running fork server, starting it if needed; None means: use subprocess."""
    global _server, _fork_disabled
    with _server_lock:
        if _fork_disabled:
            return None
        if _server is not None and _server.alive():
            return _server
        old, _server = _server, None
        if old is not None:
            log.warning("kernel fork server (pid %s) died; starting a new one", old.pid)
            old.stop(timeout=1.0)
        try:
            _server = _ForkServer(min(ready_timeout, _ZYGOTE_READY_TIMEOUT))
        except Exception as exc:
            _fork_disabled = True
            log.warning(
                "cannot start the kernel fork server (%s); falling back to the subprocess launcher",
                exc,
            )
            return None
        return _server


def _stop_fork_server() -> None:
    """Stop the fork servers (a later fork launch starts a fresh one)."""
    global _server, _fork_disabled
    with _server_lock:
        servers = [s for s in (_server, *_confined.values()) if s is not None]
        _server = None
        _confined.clear()
        _fork_disabled = False
    for server in servers:
        server.stop()


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
    while not all(os.path.exists(p) for p in paths):
        if time.monotonic() > deadline:
            raise _NotReady("it did not bind its sockets in time")
        if not proc.alive():
            raise _NotReady("the kernel process exited during start-up")
        time.sleep(0.005)


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


# ---------------------------------------------------------------------------------------------
# handles
# ---------------------------------------------------------------------------------------------
_handles: set[KernelHandle] = set()
_handles_lock = threading.Lock()


class KernelHandle:
    """A running kernel process and a started, ready client connected to it (see start_kernel)."""

    pid: int
    cwd: str
    connection_file: str
    client: BlockingKernelClient
    log_path: str
    launcher: str

    def __init__(
        self,
        cwd: str,
        env: Mapping[str, str],
        *,
        runtime_dir: str,
        ready_timeout: float,
        launcher: str,
        isolation: Isolation | None = None,
        view: Mapping[str, Any] | None = None,
    ) -> None:
        """Record the launch parameters; start_kernel then launches the process."""
        self.cwd = cwd
        self.isolation = isolation or iso_mod.NONE
        self._view: dict[str, Any] = {
            k: list(v) if isinstance(v, list) else v for k, v in (view or {}).items()
        }
        self.pid = 0
        self.connection_file = ""
        self.log_path = ""
        self.launcher = launcher
        self._env = dict(env)
        self._runtime_dir = runtime_dir
        self._ready_timeout = ready_timeout
        self._requested_launcher = launcher
        self._lock = threading.RLock()
        self._proc: _Proc | None = None
        self._dirs: list[str] = []

    def __repr__(self) -> str:
        state = "alive" if self.is_alive() else "dead"
        return f"<KernelHandle pid={self.pid} launcher={self.launcher} {state} cwd={self.cwd!r}>"

    def __enter__(self) -> KernelHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- public API -----------------------------------------------------------------------------
    def interrupt(self) -> None:
        """Send SIGINT to the kernel process (a KeyboardInterrupt in the running cell)."""
        proc = self._proc
        if proc is not None and proc.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, signal.SIGINT)

    def is_alive(self) -> bool:
        """Whether the kernel process is running (false as soon as it died, zombies included)."""
        proc = self._proc
        return proc is not None and proc.alive()

    def death(self) -> str:
        """How the kernel process ended, in words (for an agent's error)."""
        proc = self._proc
        status = proc.exit_status() if proc is not None else None
        if status is None:
            return f"its kernel process (pid {self.pid}) ended"
        if status < 0:
            try:
                name = signal.Signals(-status).name
            except ValueError:
                name = f"signal {-status}"
            return f"its kernel process (pid {self.pid}) was killed by {name}"
        return f"its kernel process (pid {self.pid}) exited with code {status}"

    def shutdown(self, timeout: float = 2.0) -> None:
        """Stop the kernel and its process group and remove its files (idempotent, never raises)."""
        try:
            with self._lock:
                self._teardown(timeout)
        except Exception:
            log.exception("error while shutting down kernel %s", self.pid)
        with _handles_lock:
            _handles.discard(self)

    def add_paths(
        self, *, readable: Sequence[str], writable: Sequence[str], hidden: Sequence[str] = ()
    ) -> None:
        """Change a confined kernel's view (now, and after a restart): hide `hidden`, then show
        `readable` read-only and `writable` writable; no-op unconfined."""
        if not self.isolation.confined:
            return
        with self._lock:
            self._view["hide"] = [*self._view.get("hide", []), *hidden]
            self._view["ro"] = [*self._view.get("ro", []), *readable]
            self._view["rw"] = [*self._view.get("rw", []), *writable]
            proc = self._proc
            if isinstance(proc, _ForkedProc) and proc.alive():
                proc.server.inject(proc.key, list(readable), list(writable), list(hidden))

    def restart(self) -> None:
        """Replace the kernel with a fresh one (same cwd, env, launcher); the namespace is lost."""
        with self._lock:
            try:
                self._teardown(2.0)
            except Exception:
                log.exception("error while stopping kernel %s for a restart", self.pid)
            self._launch()

    # -- internals ------------------------------------------------------------------------------
    def _launch(self) -> None:
        """Launch a kernel process and wait until its client is ready (caller holds the lock)."""
        deadline = time.monotonic() + self._ready_timeout
        kdir = tempfile.mkdtemp(prefix="k-", dir=self._runtime_dir)
        dirs = [kdir]
        if not self.log_path:
            self.log_path = kdir + ".log"
        ipc_dir = kdir
        if len(os.path.join(kdir, _IPC_NAME)) + len("-65535") > IPC_PATH_MAX:
            ipc_dir = tempfile.mkdtemp(prefix="rlm-k", dir="/tmp")
            dirs.append(ipc_dir)
        ipc_prefix = os.path.join(ipc_dir, _IPC_NAME)
        cf = os.path.join(kdir, "kernel.json")
        self._dirs = dirs
        self.connection_file = cf
        proc: _Proc | None = None
        client: Any = None
        launcher = self._requested_launcher
        try:
            try:
                if self.isolation.confined:
                    if launcher != "fork":
                        raise KernelStartError(
                            "sandbox.isolation: bwrap needs the fork launcher "
                            f"(unset ${LAUNCHER_ENV}, or set sandbox.isolation: none)"
                        )
                    proc = self._spawn_confined(cf, ipc_prefix, dirs)
                elif launcher == "fork":
                    proc = self._spawn_forked(cf, ipc_prefix)
                    if proc is None:
                        launcher = "subprocess"
                if proc is None:
                    proc = self._spawn_subprocess(cf, ipc_prefix)
            except KernelStartError:
                raise
            except Exception as exc:
                raise KernelStartError(
                    self._describe(f"could not launch a kernel process: {exc}", launcher)
                ) from exc
            self._proc, self.pid, self.launcher = proc, proc.pid, launcher
            client = _Client(context=_zmq_context())
            client.load_connection_file(cf)
            self.client = client
            try:
                _wait_bound(cf, proc, deadline)
                client.start_channels(shell=True, iopub=True, stdin=True, hb=False, control=True)
                _wait_ready(client, proc, deadline)
            except _NotReady as exc:
                if not proc.alive():
                    proc.wait_dead(0.5)  # let the log be complete
                raise KernelStartError(
                    self._describe(
                        f"kernel pid {proc.pid} did not become ready: {exc} "
                        f"(ready_timeout={self._ready_timeout:g} s)",
                        launcher,
                    )
                ) from None
        except BaseException:
            try:
                self._teardown(0.5)
            except Exception:
                log.exception("cleanup after a failed kernel start")
            if proc is None:
                for d in dirs:
                    shutil.rmtree(d, ignore_errors=True)
            raise
        with _handles_lock:
            _handles.add(self)

    def _describe(self, what: str, launcher: str) -> str:
        """Return an error message with the kernel log's tail."""
        tail = _log_tail(self.log_path)
        msg = f"{what} [launcher={launcher}, cwd={self.cwd}, log={self.log_path}]"
        return msg + (
            "\n--- kernel log (tail) ---\n" + tail if tail else "\n(the kernel log is empty)"
        )

    def _spawn_forked(self, cf: str, ipc_prefix: str) -> _Proc | None:
        """Fork a kernel from the fork server; None when only the subprocess launcher works."""
        for attempt in range(2):
            server = _get_fork_server(self._ready_timeout)
            if server is None:
                return None
            if not os.path.exists(cf):
                write_connection_file(
                    cf,
                    ip=ipc_prefix,
                    transport="ipc",
                    key=secrets.token_hex(32).encode(),
                    kernel_name="python3",
                )
            try:
                return server.spawn(self.cwd, self._env, cf, self.log_path)
            except _ForkServerDown as exc:
                if attempt:
                    log.warning("kernel fork server failed twice (%s); using subprocess", exc)
        return None

    def _spawn_confined(self, cf: str, ipc_prefix: str, dirs: list[str]) -> _Proc:
        """Fork a kernel from the bwrap fork server, in a view that adds its runtime dirs."""
        for attempt in range(2):
            server = _get_confined_server(self._ready_timeout, self.isolation)
            write_connection_file(
                cf,
                ip=ipc_prefix,
                transport="ipc",
                key=secrets.token_hex(32).encode(),
                kernel_name="python3",
            )
            view = dict(self._view)
            if not view:
                tmp = os.path.join(self._runtime_dir, "tmp")
                os.makedirs(os.path.join(tmp, "home"), mode=0o700, exist_ok=True)
                view = iso_mod.kernel_view(writable=[self.cwd], private_tmp=tmp)
            # The kernel binds its sockets in its dirs; the connection file stays as we wrote it.
            view["rw"] = [*view.get("rw", []), *dirs]
            view["ro"] = [*view.get("ro", []), cf]
            try:
                return server.spawn(self.cwd, self._env, cf, self.log_path, view)
            except _ForkServerDown as exc:
                if attempt:
                    raise KernelStartError(
                        f"the bubblewrap fork server failed twice: {exc}"
                    ) from exc
        raise AssertionError("unreachable")

    def _spawn_subprocess(self, cf: str, ipc_prefix: str) -> _Proc:
        """Start a kernel with jupyter_client's AsyncKernelManager."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(cf)  # written for a fork attempt: let the manager write its own
        km = AsyncKernelManager(
            kernel_name="python3",
            kernel_spec_manager=_SpecManager(),
            transport="ipc",
            ip=ipc_prefix,
            connection_file=cf,
            context=zmq.asyncio.Context.shadow(_zmq_context().underlying),
        )
        with open(self.log_path, "ab") as logf:
            os.chmod(self.log_path, 0o600)
            _run_async(
                lambda: km.start_kernel(
                    env=dict(self._env),
                    cwd=self.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                )
            )
        return _ManagedProc(km)

    def _teardown(self, timeout: float) -> None:
        """Stop client and process group, release launcher resources, remove files."""
        proc, self._proc = self._proc, None
        client = getattr(self, "client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.stop_channels()
        if proc is not None:
            _killpg(proc.pid, signal.SIGTERM)
            proc.wait_dead(timeout)
            _killpg(proc.pid, signal.SIGKILL)  # stragglers that ignore SIGTERM
            if not proc.wait_dead(2.0):
                log.warning("kernel %s did not die after SIGKILL", proc.pid)
            with contextlib.suppress(Exception):
                proc.release()
        dirs, self._dirs = self._dirs, []
        if self.connection_file:
            with contextlib.suppress(OSError):
                os.unlink(self.connection_file)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------------
def _resolve_launcher(launcher: str | None) -> str:
    """Pick the launcher: the argument, else $RLM_KERNEL_LAUNCHER, else fork where possible."""
    chosen = (launcher or os.environ.get(LAUNCHER_ENV, "")).strip().lower()
    if not chosen:
        chosen = "fork" if hasattr(os, "fork") and sys.platform != "win32" else "subprocess"
    if chosen not in LAUNCHERS:
        raise ValueError(f"unknown kernel launcher {chosen!r} (expected one of {LAUNCHERS})")
    if chosen == "fork" and not hasattr(os, "fork"):
        chosen = "subprocess"
    return chosen


def start_kernel(
    cwd: str,
    env: Mapping[str, str],
    *,
    runtime_dir: str,
    ready_timeout: float = 30.0,
    launcher: str | None = None,
    isolation: Isolation | None = None,
    view: Mapping[str, Any] | None = None,
) -> KernelHandle:
    """Start a kernel in `cwd` with exactly `env`, and return its handle once it is ready.

    With a confined `isolation` (the bwrap tier) the kernel runs in `view` (see
    :func:`.isolation.kernel_view`; default: `cwd` writable and a private /tmp under
    `runtime_dir`), plus its own runtime directories.
    """
    chosen = _resolve_launcher(launcher)
    runtime_dir = os.path.abspath(runtime_dir)
    os.makedirs(runtime_dir, mode=0o700, exist_ok=True)
    handle = KernelHandle(
        os.path.abspath(cwd),
        env,
        runtime_dir=runtime_dir,
        ready_timeout=ready_timeout,
        launcher=chosen,
        isolation=isolation,
        view=view,
    )
    with handle._lock:
        handle._launch()
    return handle


def live_kernel_pids() -> list[int]:
    """Return the pids of kernels started by this process that are still alive."""
    with _handles_lock:
        handles = list(_handles)
    return sorted(h.pid for h in handles if h.is_alive())


def shutdown_all() -> None:
    """Shut down every kernel this process started, then stop the fork server."""
    with _handles_lock:
        handles = list(_handles)
    for h in handles:
        h.shutdown()
    try:
        _stop_fork_server()
    except Exception:
        log.exception("error while stopping the kernel fork server")


atexit.register(shutdown_all)
