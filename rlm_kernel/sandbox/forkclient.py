"""The host side of the kernel fork servers (:mod:`.forkserver`): start a zygote (unconfined, or
one per bubblewrap isolation), ask it to fork kernels, and track their exits.

Every wait here ends at the deadline of the kernel start it serves (see "start-up deadlines" in
:mod:`.kernelproc`)."""

from __future__ import annotations

import array
import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import isolation as iso_mod
from .confine import recv_pid
from .isolation import Isolation
from .kernelproc import (
    _HAVE_PROC,
    KernelStartError,
    _pid_alive,
    _proc_stat,
    setup_margin,
    start_timeout,
    start_timeout_hint,
)

_ZYGOTE_ENV_KEYS = ("PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV")
_FORKSERVER_MODULE = "rlm_kernel.sandbox.forkserver"

log = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------------------------
# the fork server, host side
# ---------------------------------------------------------------------------------------------
class _ForkServerDown(RuntimeError):
    """The fork server is not running (any more)."""


class _ForkServerSlow(KernelStartError):
    """The fork server did not become ready before the start's deadline (it may be running)."""


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

    def __init__(self, deadline: float, isolation: Isolation | None = None) -> None:
        """Start the zygote and wait for it to be ready, until `deadline` (time.monotonic())."""
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
        waited = max(deadline - time.monotonic(), 0.0)
        answered = self._ready.wait(waited)
        if not answered or self._down:
            self.stop(timeout=1.0)
            if not answered:
                raise _ForkServerSlow(
                    f"the kernel fork server (pid {self._proc.pid}) did not become ready within "
                    f"{waited:.0f} s"
                )
            reason = f"exited during start-up with code {self._proc.returncode}"
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
                ev = self._children.get(int(msg["pid"]))
                if ev is not None:  # not a kernel whose start was given up (see _stop_late)
                    self._exit_status[int(msg["pid"])] = int(msg.get("status", 0))
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
            elif "pid" in msg:
                self._stop_late(msg)

    def _stop_late(self, msg: dict[str, Any]) -> None:
        """Kill the kernel of a spawn reply that came after the host gave up waiting for it."""
        pid = int(msg.get("host_pid", 0) if self.confined else msg["pid"])
        log.warning(
            "kernel fork server answered a start after its deadline; stopping that kernel (pid %s)",
            pid or "unknown",
        )
        if pid > 0:  # the kernel leads its process group (a confined one: its init goes with it)
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)

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
        *,
        deadline: float,
        budget: float,
        runtime_file: str | None = None,
    ) -> _ForkedProc:
        """Fork a kernel by `deadline` (time.monotonic(); `budget`: the whole start's seconds, for
        messages); _ForkServerDown if the zygote is gone, KernelStartError if refused or late.
        `runtime_file`: see `forkchild.install_runtime`."""
        req: dict[str, Any] = {
            "op": "spawn",
            "cwd": cwd,
            "env": dict(env),
            "connection_file": connection_file,
            "log_path": log_path,
            # the fork server's own deadline for a confined kernel's set-up: it answers first
            "setup_deadline": deadline - setup_margin(budget),
        }
        if runtime_file:
            req["runtime_file"] = runtime_file
        fds: list[int] = []
        if self.confined:
            req["view"] = dict(view or {})
            # The server's view is read-only: it gets the log file open.
            fds.append(
                os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            )
        try:
            reply = self._request(req, deadline, budget, fds)
        finally:
            for fd in fds:
                os.close(fd)
        if "error" in reply:
            hint = f"; {start_timeout_hint(budget)}" if reply.get("timeout") else ""
            raise KernelStartError(
                f"the fork server could not start the kernel: {reply['error']}{hint}"
            )
        key = int(reply["pid"])
        pid = int(reply.get("host_pid", key))
        with self._lock:
            exited = self._children.get(key) or threading.Event()
        return _ForkedProc(self, pid, exited, key)

    def inject(self, key: int, ro: list[str], rw: list[str], hide: list[str]) -> None:
        """Change a running confined kernel's view (`key`: its _ForkedProc.key)."""
        req = {"op": "inject", "pid": key, "ro": ro, "rw": rw, "hide": hide}
        budget = start_timeout()
        reply = self._request(req, time.monotonic() + budget, budget)
        if "error" in reply:
            raise KernelStartError(f"could not extend the kernel's view: {reply['error']}")

    def _request(
        self, req: dict[str, Any], deadline: float, budget: float, fds: list[int] | None = None
    ) -> dict[str, Any]:
        """Send one request and wait for its reply until `deadline`; _ForkServerDown if the
        zygote is gone, KernelStartError (naming the budget) if it does not answer in time."""
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
        if not pending.done.wait(max(deadline - time.monotonic(), 0.0)):
            with self._lock:
                # A reply that still comes is for nobody: its kernel is stopped (_stop_late).
                given_up = self._pending.pop(rid, None) is not None
            if not given_up:  # the reader thread took the reply just now and sets it next
                pending.done.wait()
            else:
                raise KernelStartError(
                    f"the kernel fork server (pid {self.pid}) did not answer a {req['op']} "
                    f"request in time (busy with other kernels' starts, or stuck); "
                    f"{start_timeout_hint(budget)}"
                )
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


def _get_confined_server(deadline: float, budget: float, isolation: Isolation) -> _ForkServer:
    """The running bwrap fork server for `isolation`, started (by `deadline`) if needed (no
    fallback: a kernel of the bwrap tier never runs unconfined)."""
    with _server_lock:
        server = _confined.get(isolation.key)
        if server is not None and server.alive():
            return server
        _confined.pop(isolation.key, None)
        if server is not None:
            log.warning("confined fork server (pid %s) died; starting a new one", server.pid)
            server.stop(timeout=1.0)
        try:
            server = _ForkServer(deadline, isolation)
        except _ForkServerSlow as exc:
            raise KernelStartError(f"{exc}; {start_timeout_hint(budget)}") from exc
        except Exception as exc:
            raise KernelStartError(
                f"cannot start the bubblewrap fork server ({exc}); set sandbox.isolation: none "
                "to run sandboxes unconfined"
            ) from exc
        _confined[isolation.key] = server
        return server


def _get_fork_server(deadline: float, budget: float) -> _ForkServer | None:
    """Return the running fork server, starting it (by `deadline`) if needed; None means: use
    subprocess (the fork server cannot start here)."""
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
            _server = _ForkServer(deadline)
        except _ForkServerSlow as exc:  # slow (a loaded machine), not broken: no fallback
            raise KernelStartError(f"{exc}; {start_timeout_hint(budget)}") from exc
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
