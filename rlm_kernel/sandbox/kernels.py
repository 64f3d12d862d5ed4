"""Start, interrupt, restart and stop the local IPython kernels that serve as agents' REPLs.

Two launchers:

- ``"fork"`` (default where ``os.fork`` exists): a fork server (:mod:`.forkserver`), started
  lazily once per host process with a minimal environment, pre-imports ipykernel and forks one
  kernel per request. A kernel then costs ~0.1 CPU-s instead of ~0.45.
- ``"subprocess"``: jupyter_client's ``AsyncKernelManager`` (ipc transport) runs
  ``python -m ipykernel_launcher``.

``RLM_KERNEL_LAUNCHER`` overrides the default. If the fork server cannot start, kernels fall
back to ``"subprocess"`` (one warning through `logging`). ``RLM_KERNEL_START_TIMEOUT`` (seconds,
default 120) bounds a kernel's whole start; see "start-up deadlines" in :mod:`.kernelproc`.

Every kernel gets a private directory for its connection file and ipc sockets (under
``runtime_dir``, or under a short ``/tmp/rlm-k*`` directory when socket paths would be too long),
is a session and process-group leader (signals reach what it spawned), and writes stdout/stderr to
``<runtime_dir>/k-*.log``, which :meth:`KernelHandle.shutdown` keeps; everything else is removed.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.connect import write_connection_file
from jupyter_client.manager import AsyncKernelManager

from . import isolation as iso_mod
from .forkclient import (
    _ForkedProc,
    _ForkServerDown,
    _get_confined_server,
    _get_fork_server,
    _stop_fork_server,
)
from .isolation import Isolation
from .kernelproc import (
    START_TIMEOUT_ENV,
    KernelStartError,
    _Client,
    _killpg,
    _log_tail,
    _ManagedProc,
    _NotReady,
    _Proc,
    _run_async,
    _SpecManager,
    _wait_bound,
    _wait_ready,
    _zmq_context,
    start_timeout,
    start_timeout_hint,
)

__all__ = [
    "LAUNCHERS",
    "START_TIMEOUT_ENV",
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
    runtime_installed: bool
    """Whether the kernel installed the agent runtime of `start_kernel`'s `runtime_file` itself
    (fork launchers, first start only); else the caller installs it with an execute request."""

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
        runtime_file: str | None = None,
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
        self._runtime_file = runtime_file  # for the first launch only
        self.runtime_installed = False

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
        """Launch a kernel process and wait until its client is ready (caller holds the lock);
        every wait ends at one deadline, `ready_timeout` from now (kernelproc: "start-up
        deadlines")."""
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
        runtime_file, self._runtime_file = self._runtime_file, None
        self.runtime_installed = False
        try:
            try:
                if self.isolation.confined:
                    if launcher != "fork":
                        raise KernelStartError(
                            "sandbox.isolation: bwrap needs the fork launcher "
                            f"(unset ${LAUNCHER_ENV}, or set sandbox.isolation: none)"
                        )
                    proc = self._spawn_confined(cf, ipc_prefix, dirs, deadline, runtime_file)
                elif launcher == "fork":
                    proc = self._spawn_forked(cf, ipc_prefix, deadline, runtime_file)
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
                budget = f"; {start_timeout_hint(self._ready_timeout)}"
                raise KernelStartError(
                    self._describe(
                        f"kernel pid {proc.pid} did not become ready: {exc}"
                        f"{budget if proc.alive() else ''}",
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
        # The kernel removes the file once the runtime is installed, before it answers anything.
        self.runtime_installed = bool(runtime_file) and not os.path.lexists(str(runtime_file))
        with _handles_lock:
            _handles.add(self)

    def _describe(self, what: str, launcher: str) -> str:
        """Return an error message with the kernel log's tail."""
        tail = _log_tail(self.log_path)
        msg = f"{what} [launcher={launcher}, cwd={self.cwd}, log={self.log_path}]"
        return msg + (
            "\n--- kernel log (tail) ---\n" + tail if tail else "\n(the kernel log is empty)"
        )

    def _spawn_forked(
        self, cf: str, ipc_prefix: str, deadline: float, runtime_file: str | None
    ) -> _Proc | None:
        """Fork a kernel from the fork server; None when only the subprocess launcher works."""
        budget = self._ready_timeout
        for attempt in range(2):
            server = _get_fork_server(deadline, budget)
            if server is None:
                return None
            if not os.path.exists(cf):
                _write_ipc_connection_file(cf, ipc_prefix)
            try:
                return server.spawn(
                    self.cwd,
                    self._env,
                    cf,
                    self.log_path,
                    deadline=deadline,
                    budget=budget,
                    runtime_file=runtime_file,
                )
            except KernelStartError as exc:  # refused, or late: the log may say why
                raise KernelStartError(self._describe(str(exc), "fork")) from None
            except _ForkServerDown as exc:
                if attempt:
                    log.warning("kernel fork server failed twice (%s); using subprocess", exc)
        return None

    def _spawn_confined(
        self,
        cf: str,
        ipc_prefix: str,
        dirs: list[str],
        deadline: float,
        runtime_file: str | None,
    ) -> _Proc:
        """Fork a kernel from the bwrap fork server, in a view that adds its runtime dirs."""
        budget = self._ready_timeout
        for attempt in range(2):
            server = _get_confined_server(deadline, budget, self.isolation)
            _write_ipc_connection_file(cf, ipc_prefix)
            view = dict(self._view)
            if not view:
                tmp = os.path.join(self._runtime_dir, "tmp")
                os.makedirs(os.path.join(tmp, "home"), mode=0o700, exist_ok=True)
                view = iso_mod.kernel_view(writable=[self.cwd], private_tmp=tmp)
            # The kernel binds its sockets in its dirs; the connection file stays as we wrote it.
            view["rw"] = [*view.get("rw", []), *dirs]
            view["ro"] = [*view.get("ro", []), cf]
            try:
                return server.spawn(
                    self.cwd,
                    self._env,
                    cf,
                    self.log_path,
                    view,
                    deadline=deadline,
                    budget=budget,
                    runtime_file=runtime_file,
                )
            except KernelStartError as exc:  # refused, or late: the log may say why
                raise KernelStartError(self._describe(str(exc), "fork")) from None
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
def _write_ipc_connection_file(cf: str, ipc_prefix: str) -> None:
    """Write a kernel's connection file: ipc sockets at `ipc_prefix`-<n>, a fresh key."""
    write_connection_file(
        cf,
        ip=ipc_prefix,
        transport="ipc",
        key=secrets.token_hex(32).encode(),
        kernel_name="python3",
    )


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
    ready_timeout: float | None = None,
    launcher: str | None = None,
    isolation: Isolation | None = None,
    view: Mapping[str, Any] | None = None,
    runtime_file: str | None = None,
) -> KernelHandle:
    """Start a kernel in `cwd` with exactly `env`, and return its handle once it is ready.

    `ready_timeout` bounds the whole start, in seconds (default: ``$RLM_KERNEL_START_TIMEOUT``,
    else 120); every wait of the start gives up by then with a message that says so.

    With a confined `isolation` (the bwrap tier) the kernel runs in `view` (see
    :func:`.isolation.kernel_view`; default: `cwd` writable and a private /tmp under
    `runtime_dir`), plus its own runtime directories.

    `runtime_file` (a JSON file the kernel can read: the agent runtime's configuration): a forked
    kernel installs the runtime from it before it serves and removes it; the handle's
    `runtime_installed` says whether that happened (saves an execute request per sandbox).
    """
    chosen = _resolve_launcher(launcher)
    runtime_dir = os.path.abspath(runtime_dir)
    os.makedirs(runtime_dir, mode=0o700, exist_ok=True)
    handle = KernelHandle(
        os.path.abspath(cwd),
        env,
        runtime_dir=runtime_dir,
        ready_timeout=start_timeout() if ready_timeout is None else ready_timeout,
        launcher=chosen,
        isolation=isolation,
        view=view,
        runtime_file=runtime_file,
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
