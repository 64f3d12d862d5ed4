"""Kernel fork server (zygote): pre-imports ipykernel once, then forks one kernel per request.

Run as ``python -m rlm_kernel.sandbox.forkserver --fd N`` by :mod:`rlm_kernel.sandbox.forkclient`,
with a minimal environment (no API keys: a sandbox can read ``/proc/<zygote>/environ``).

Protocol: JSON lines over the Unix stream socket inherited as fd ``N``.

- zygote → host, once imports are done: ``{"event": "ready", "pid": P, "threads": T}``.
- host → zygote: ``{"id": I, "op": "spawn", "cwd": ..., "env": {...}, "connection_file": ...,
  "log_path": ..., "setup_deadline": D, "runtime_file": R}``; reply ``{"id": I, "pid": P}`` or ``{"id": I, "error":
  "...", "timeout": B}`` (``B``: the start ran out of time). ``D`` is a ``time.monotonic()`` value
  (the host's clock is ours): a confined kernel's set-up must report by then, and a request read
  after it is refused without forking (the host is about to give up on it). ``R`` (optional):
  a JSON file of the agent runtime's configuration, installed by the kernel before it serves
  (``forkchild.install_runtime``); only its path passes through here, never its secret.
- zygote → host, whenever a kernel exits (the zygote reaps it): ``{"event": "exit", "pid": P,
  "status": S}`` (``S`` as ``os.waitstatus_to_exitcode``: negative for a signal).

The zygote creates no threads and no zmq context, so ``os.fork()`` is safe. Each child becomes a
session leader (``setsid``: its subprocesses share its process group), changes directory, replaces
``os.environ`` with the requested environment, sends stdout and stderr to its log file and runs
``IPKernelApp``. On EOF (the host is done) or SIGTERM the zygote SIGTERMs the process groups of
its live kernels, SIGKILLs what is left after a grace period, and exits.

Kernels do not depend on the zygote staying alive: agent code can kill it (``os.kill(os.getppid(),
9)`` from any kernel), and that must not take the other agents' kernels down. Instead every
kernel holds the read end of the host's *lifeline* pipe (``--lifeline N``, kept as fd 3 in the
kernel), whose write end only the host holds: when the host process dies, for any reason, the
pipe reaches EOF and each kernel kills its own process group. The host starts a new zygote for
the next kernel when the old one is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from . import confine
from .forkchild import KERNEL_OPTIONS, become_kernel, set_comm
from .forkpreload import PRELOAD_MODULES, preload

__all__ = ["KERNEL_OPTIONS", "PRELOAD_MODULES", "main"]


SHUTDOWN_GRACE_S = 1.0  # SIGTERM → SIGKILL for kernels left when the zygote exits
# A spawn request without a set-up deadline (an older host) gets this long for a confined
# kernel's set-up; the host's deadlines: kernelproc, "start-up deadlines".
_DEFAULT_SETUP_S = 60.0
_MAX_LINE = 16 * 1024 * 1024


class _StartTimeout(RuntimeError):
    """The start of a kernel ran out of time (the reply says so: the host adds what to do)."""


def _log(msg: str) -> None:
    """Write one diagnostic line to stderr (the host forwards it to `logging`)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"forkserver[{os.getpid()}]: {msg}\n")
        sys.stderr.flush()


def _launcher_path() -> str:
    """Return the path of ``ipykernel_launcher.py``, for the kernel's ``sys.argv[0]``."""
    import ipykernel

    return os.path.join(
        os.path.dirname(os.path.dirname(ipykernel.__file__)), "ipykernel_launcher.py"
    )


class _Zygote:
    """The fork server's state and its single-threaded event loop."""

    def __init__(
        self,
        sock: socket.socket,
        import_env: Mapping[str, str],
        lifeline: int | None = None,
        confined: bool = False,
    ) -> None:
        self.sock = sock
        self.lifeline = lifeline
        self.confined = confined  # under bubblewrap: every kernel gets its own namespaces
        self.fds: list[int] = []  # received log-file descriptors, oldest first
        self.import_env = dict(import_env)
        self.pid = os.getpid()
        self.children: set[int] = set()
        self.stopping = False
        self.inbuf = b""
        self.argv0 = _launcher_path()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ)
        self.sel.register(self.wake_r, selectors.EVENT_READ)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _on_signal(self, signum: int, frame: Any) -> None:
        """Note the signal; the work happens in the loop (woken up through the wakeup fd)."""
        if signum in (signal.SIGTERM, signal.SIGHUP):
            self.stopping = True

    def send(self, msg: Mapping[str, Any], as_pid: int | None = None) -> None:
        """Send one JSON line to the host (with `as_pid` as its credentials: the host reads that
        pid in its own namespace); a vanished host means we stop."""
        data = json.dumps(msg).encode() + b"\n"
        try:
            if as_pid is None:
                self.sock.sendall(data)
            else:
                confine.send_pid(self.sock, as_pid, data)
        except OSError:
            self.stopping = True

    # -- main loop ------------------------------------------------------------------------------
    def serve(self) -> int:
        """Serve spawn requests until EOF or SIGTERM, then stop the kernels; return 0."""
        self.send({"event": "ready", "pid": self.pid, "threads": threading.active_count()})
        while not self.stopping:
            for key, _ in self.sel.select():
                if key.fileobj is self.sock:
                    self._read_requests()
                else:
                    with contextlib.suppress(OSError):
                        while os.read(self.wake_r, 512):
                            pass
            self._reap()
        self._stop_children()
        return 0

    def _read_requests(self) -> None:
        """Read from the host socket and handle every complete line."""
        try:
            if self.confined:
                # Spawn requests come with the kernel's log file as a descriptor (this server
                # cannot open files for writing: its view is read-only), in request order.
                data, ancdata, _, _ = self.sock.recvmsg(
                    1 << 16, socket.CMSG_SPACE(64 * 4), socket.MSG_CMSG_CLOEXEC
                )
                for level, kind, raw in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        usable = len(raw) - len(raw) % 4
                        self.fds.extend(struct.unpack(f"{usable // 4}i", raw[:usable]))
            else:
                data = self.sock.recv(1 << 16)
        except InterruptedError:
            return
        except OSError:
            data = b""
        if not data:
            self.stopping = True
            return
        self.inbuf += data
        if len(self.inbuf) > _MAX_LINE:
            _log("request too long; closing")
            self.stopping = True
            return
        while b"\n" in self.inbuf:
            line, self.inbuf = self.inbuf.split(b"\n", 1)
            if line.strip():
                self._handle(line)

    def _handle(self, line: bytes) -> None:
        """Handle one request line and send its reply."""
        rid: Any = None
        try:
            req = json.loads(line)
            rid = req.get("id")
            op = req.get("op")
            if op == "inject":
                self._inject(
                    int(req["pid"]),
                    [str(p) for p in req.get("ro") or []],
                    [str(p) for p in req.get("rw") or []],
                    [str(p) for p in req.get("hide") or []],
                )
                self.send({"id": rid, "ok": True})
                return
            if op != "spawn":
                raise ValueError(f"unknown op {op!r}")
            view = req.get("view")
            log_fd: int | None = None
            if self.confined:
                if not self.fds:
                    raise ValueError("the spawn request came without its log file descriptor")
                log_fd = self.fds.pop(0)
                if not isinstance(view, dict):
                    os.close(log_fd)
                    raise ValueError("this fork server confines every kernel: no view was sent")
            setup_deadline = float(req.get("setup_deadline") or time.monotonic() + _DEFAULT_SETUP_S)
            if time.monotonic() >= setup_deadline:
                if log_fd is not None:
                    os.close(log_fd)
                raise _StartTimeout(
                    "its start-up deadline passed while the fork server was starting other "
                    "kernels; nothing was forked"
                )
            pid, kernel = self._spawn(
                str(req["cwd"]),
                {str(k): str(v) for k, v in dict(req["env"]).items()},
                str(req["connection_file"]),
                str(req["log_path"]),
                view if self.confined else None,
                log_fd,
                setup_deadline,
                str(req.get("runtime_file") or "") or None,
            )
        except _StartTimeout as exc:
            self.send({"id": rid, "error": str(exc), "timeout": True})
        except Exception as exc:
            self.send({"id": rid, "error": f"{type(exc).__name__}: {exc}"})
        else:
            if kernel is None:
                self.send({"id": rid, "pid": pid})
            else:  # the credentials carry the kernel's pid into the host's PID namespace
                self.send({"id": rid, "pid": pid, "kernel_nspid": kernel}, as_pid=kernel)

    def _reap(self) -> None:
        """Reap exited children and report their exits to the host."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            self.children.discard(pid)
            self.send({"event": "exit", "pid": pid, "status": os.waitstatus_to_exitcode(status)})

    def _stop_children(self) -> None:
        """SIGTERM every live kernel's process group, then SIGKILL what is left."""
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self._signal_children(signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.01)
        if self.children:
            self._signal_children(signal.SIGKILL)
            deadline = time.monotonic() + SHUTDOWN_GRACE_S
            while self.children and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.01)

    def _signal_children(self, sig: int) -> None:
        """Send sig to the process group of every live kernel."""
        for pid in list(self.children):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            except OSError as exc:
                _log(f"cannot signal kernel {pid}: {exc}")

    # -- spawning -------------------------------------------------------------------------------
    def _spawn(
        self,
        cwd: str,
        env: dict[str, str],
        connection_file: str,
        log_path: str,
        view: dict[str, Any] | None = None,
        log_fd: int | None = None,
        setup_deadline: float | None = None,
        runtime_file: str | None = None,
    ) -> tuple[int, int | None]:
        """Fork one kernel; return its pid and, when confined, the kernel's own pid (the child
        forked is then the init of the kernel's PID namespace), which its set-up reports by
        `setup_deadline` (time.monotonic()). `log_fd` (taken over) replaces opening
        `log_path`."""
        try:
            if not os.path.isdir(cwd):
                raise FileNotFoundError(errno.ENOENT, "kernel cwd is not a directory", cwd)
            if not os.path.isfile(connection_file):
                raise FileNotFoundError(errno.ENOENT, "connection file not found", connection_file)
        except BaseException:
            if log_fd is not None:
                os.close(log_fd)
            raise
        if log_fd is None:
            log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        report: socket.socket | None = None
        child_end: socket.socket | None = None
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            if view is None:
                pid = os.fork()
            else:
                # SEQPACKET, not DGRAM: a set-up that dies before it reports is an EOF at once
                # (a datagram socket pair never tells; the wait lasted its whole timeout).
                report, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                report.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                pid = confine.fork_in_new_pid_namespace()
            if pid == 0:  # pragma: no cover - runs in the child, which never returns
                become_kernel(
                    self, cwd, env, connection_file, log_fd, view, child_end, runtime_file
                )
        finally:
            os.close(log_fd)
            if child_end is not None:
                child_end.close()
        self.children.add(pid)
        if report is None:
            return pid, None
        if setup_deadline is None:
            setup_deadline = time.monotonic() + _DEFAULT_SETUP_S
        waited = max(setup_deadline - time.monotonic(), 0.001)
        try:
            with report:
                report.settimeout(waited)
                try:
                    data, kernel = confine.recv_pid(report)
                except TimeoutError:
                    raise _StartTimeout(
                        f"the kernel's set-up (its namespaces and mounts) did not finish within "
                        f"{waited:.0f} s"
                    ) from None
                except OSError as exc:
                    raise RuntimeError(f"the kernel's set-up did not report: {exc}") from None
            if not data:
                raise RuntimeError(
                    "the kernel's set-up ended without reporting (its process exited; the "
                    "kernel's log may say why)"
                )
            if not data.startswith(b"ok") or kernel is None:
                raise RuntimeError(data.decode("utf-8", "replace") or "the kernel's set-up failed")
        except BaseException:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)  # a hung or broken set-up: reaped and reported later
            raise
        return pid, kernel

    def _inject(self, pid: int, ro: list[str], rw: list[str], hide: list[str]) -> None:
        """Change the view of the kernel whose init is `pid` (a forked helper does it)."""
        if not self.confined or pid not in self.children:
            raise ValueError(f"no confined kernel with pid {pid}")
        r, w = os.pipe()
        try:
            helper = os.fork()
            if helper == 0:  # pragma: no cover - the helper never returns
                code = 0
                try:
                    os.close(r)
                    confine.inject(pid, ro, rw, hide)
                except BaseException as exc:
                    with contextlib.suppress(OSError):
                        os.write(w, f"{type(exc).__name__}: {exc}".encode()[:4000])
                    code = 1
                os._exit(code)
            os.close(w)
            w = -1
            chunks = []
            while chunk := os.read(r, 4096):
                chunks.append(chunk)
            while True:
                try:
                    _, status = os.waitpid(helper, 0)
                    break
                except InterruptedError:
                    continue
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(b"".join(chunks).decode("utf-8", "replace") or "inject failed")


def main(argv: list[str] | None = None) -> int:
    """Run the fork server on the socket given by ``--fd``."""
    parser = argparse.ArgumentParser(prog="python -m rlm_kernel.sandbox.forkserver")
    parser.add_argument("--fd", type=int, required=True, help="inherited Unix stream socket")
    parser.add_argument(
        "--lifeline", type=int, help="inherited read end of the host's lifeline pipe"
    )
    parser.add_argument(
        "--confined", action="store_true", help="under bubblewrap: confine every kernel"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_comm(b"rlm-forkserver")
    sock = socket.socket(fileno=args.fd)
    sock.set_inheritable(False)
    # `-m` put the zygote's cwd (where the package was found) first on sys.path; a kernel adds
    # its own cwd ('') instead. The package stays importable through its __path__.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    os.chdir("/")
    base_env = dict(os.environ)
    preload(_log)
    import_env = {k: v for k, v in os.environ.items() if base_env.get(k) != v}
    if threading.active_count() != 1:
        _log(f"{threading.active_count()} threads after pre-imports; forking is unsafe")
    gc.collect()
    gc.freeze()  # keep the pre-imported objects out of the children's GC (fewer copied pages)
    return _Zygote(sock, import_env, args.lifeline, confined=args.confined).serve()


if __name__ == "__main__":
    sys.exit(main())
