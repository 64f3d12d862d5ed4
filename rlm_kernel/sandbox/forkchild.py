"""The child side of the kernel fork server: what a forked process does to become a kernel.

`become_kernel` runs in the child the zygote (:mod:`.forkserver`) forked: a session of its own,
default signals, stdio on the kernel's log, only the lifeline pipe kept, confined (under
bubblewrap) by `_confine_child`, the requested directory and environment, then `IPKernelApp`.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import fcntl
import functools
import json
import locale
import logging
import os
import random
import signal
import socket
import stat
import sys
import threading
import traceback
import warnings
from collections.abc import Mapping
from typing import Any, NoReturn

from . import confine

__all__ = [
    "KERNEL_OPTIONS",
    "LIFELINE_FD",
    "become_kernel",
    "install_runtime",
    "kernel_app_class",
    "set_comm",
]

# Every sandbox kernel: input history in memory. Dozens of kernels sharing the user's
# ~/.ipython history.sqlite corrupt it ("readonly database" errors in cells' output), and
# agents' cells do not belong in the user's history.
# Their stdout/stderr skip ipykernel's empty flushes (a thread hop each, four per cell; see
# `kernelio`).
KERNEL_OPTIONS = (
    "--HistoryManager.hist_file=:memory:",
    "--IPythonKernel._execute_sleep=0",
    "--IPKernelApp.outstream_class=rlm_kernel.sandbox.kernelio.SandboxOutStream",
)
LIFELINE_FD = 3  # the lifeline's read end in every kernel
_MAX_RUNTIME_FILE = 64 * 1024 * 1024  # a runtime configuration carries the run's tools' specs


def move_fd(fd: int, target: int) -> None:
    """Make `target` a non-inheritable copy of `fd` (already there when `fd` is `target`:
    dup2 without inheritance is dup3, which refuses equal descriptors with EINVAL)."""
    if fd == target:
        os.set_inheritable(target, False)
    else:
        os.dup2(fd, target, inheritable=False)


def become_kernel(
    zygote: Any,
    cwd: str,
    env: dict[str, str],
    connection_file: str,
    log_fd: int,
    view: dict[str, Any] | None = None,
    report: socket.socket | None = None,
    runtime_file: str | None = None,
) -> NoReturn:
    """In the forked child of `zygote` (a `forkserver._Zygote`): become the kernel (confined:
    the init of its namespace, then the kernel, with the agent runtime of `runtime_file`
    installed before it serves); never returns."""
    code = 1
    try:
        os.setsid()
        set_comm(b"rlm-kernel")
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        zygote.sel.close()
        zygote.sock.close()
        os.close(zygote.wake_r)
        os.close(zygote.wake_w)
        if report is not None and report.fileno() <= LIFELINE_FD:  # keep it out of the way
            report = socket.socket(fileno=fcntl.fcntl(report.fileno(), fcntl.F_DUPFD, 10))
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        first = 3
        if zygote.lifeline is not None:
            move_fd(zygote.lifeline, LIFELINE_FD)
            first = LIFELINE_FD + 1
        if report is None:
            os.closerange(first, _max_fd())
        else:
            keep = report.fileno()
            os.closerange(first, keep)
            os.closerange(keep + 1, _max_fd())
        _fresh_stdio()
        if view is not None and report is not None:
            _confine_child(view, report)  # returns in the kernel, forked by its init
        if zygote.lifeline is not None:
            _watch_lifeline(LIFELINE_FD)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        for key, value in zygote.import_env.items():
            os.environ.setdefault(key, value)  # what the imports set, as in a fresh kernel
        _apply_startup_env(env)
        random.seed()  # also done by `random`'s at-fork hook; cheap insurance
        sys.argv = [zygote.argv0, "-f", connection_file]
        zygote.inbuf = b""  # other kernels' pending requests
        app = kernel_app_class().instance()
        app.initialize(["-f", connection_file, *KERNEL_OPTIONS])
        if runtime_file:
            install_runtime(app.shell, runtime_file)
        app.start()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        # A normal interpreter exit runs the atexit handlers (ipykernel's and IPython's
        # clean-ups); os._exit keeps the zygote's stack frames from unwinding in the child.
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def install_runtime(shell: Any, path: str) -> bool:
    """In a kernel that has initialised but serves nothing yet: install the agent runtime with
    the configuration in the JSON file `path`, then remove the file (how the host learns it is
    done: `KernelHandle.runtime_installed`). A failure is logged and leaves the file, and the host
    installs the runtime with an execute request instead, which reports the error; so does a file
    that is not a regular file of this user's (a planted link or pipe)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                raise OSError(f"{path} is not a regular file of this user's")
            data = fh.read(_MAX_RUNTIME_FILE + 1)
        if len(data) > _MAX_RUNTIME_FILE:
            raise ValueError(f"{path} is larger than {_MAX_RUNTIME_FILE} bytes")
        cfg = json.loads(data)
        if not isinstance(cfg, dict):
            raise ValueError("the runtime's configuration is not a JSON object")
        from . import runtime

        runtime.install(shell, cfg)
        os.unlink(path)
    except Exception:
        with contextlib.suppress(Exception):
            sys.__stderr__.write("could not install the agent runtime at start-up:\n")  # type: ignore[union-attr]
            traceback.print_exc(file=sys.__stderr__)
            sys.__stderr__.flush()  # type: ignore[union-attr]
        return False
    return True


@functools.lru_cache(maxsize=1)
def kernel_app_class() -> Any:
    """The kernel application of forked kernels: `IPKernelApp` with a cheaper command line.

    Made in the zygote (`forkpreload.preload` calls this), so every kernel shares the class.
    """
    from ipykernel.kernelapp import IPKernelApp
    from traitlets import Type
    from traitlets.config import Config
    from traitlets.config.loader import DeferredConfigString

    from . import forkshell

    class SandboxKernelApp(IPKernelApp):
        """Reads our own fixed argv (``-f FILE`` and ``--Class.trait=value``) directly, runs
        a `forkshell.SandboxKernel` (the fork server's shell, adopted), and no heartbeat.

        traitlets' parser builds an argparse option for every trait of every configurable class,
        which touches (and so copies out of the zygote, page by page) most of their objects: about
        0.5 MB more private memory per kernel and a few ms. The values are the same deferred strings
        the parser would give, converted by each trait when applied; anything else in `argv` goes to
        traitlets' parser.
        """

        kernel_class = Type(  # type: ignore[assignment]
            forkshell.SandboxKernel, klass="ipykernel.kernelbase.Kernel"
        )
        _fixed_argv = False

        def get_default_logging_config(self) -> dict[str, Any]:
            """traitlets' logging set-up, with the app's logger at `log_level` (not DEBUG).

            traitlets leaves the logger at DEBUG and filters in its handler: every debug call of
            the kernel (several per request) then builds a log record only to drop it."""
            config: dict[str, Any] = super().get_default_logging_config()
            level = logging.getLevelName(int(self.log_level))  # type: ignore[call-overload]
            for logger in (config.get("loggers") or {}).values():
                logger["level"] = level
            return config

        def parse_command_line(self, argv: list[str] | None = None) -> None:
            args = list(argv if argv is not None else sys.argv[1:])
            config = _fixed_argv_config(args, Config, DeferredConfigString)
            if config is None:
                super().parse_command_line(args)
                return
            self.argv = args
            self.cli_config = copy.deepcopy(config)
            self.update_config(config)
            self.extra_args = []
            self._fixed_argv = args[2:] == list(KERNEL_OPTIONS)

        def init_heartbeat(self) -> None:
            # No client of a sandbox kernel pings it (the host's clients start no heartbeat
            # channel; a dead kernel is a dead process): no heartbeat thread and zmq context.
            self.heartbeat = None

        def init_kernel(self) -> None:
            # The fork server's shell was built for the fixed options and no config file.
            if not self._fixed_argv or self.loaded_config_files:
                forkshell.drop_prebuilt()
            super().init_kernel()  # type: ignore[no-untyped-call]

    return SandboxKernelApp


def prebuilt_shell_config() -> Any:
    """The configuration the fork server builds the kernels' shell with (`forkshell.prebuild`):
    what `SandboxKernelApp` gets from its fixed argv."""
    from traitlets.config import Config
    from traitlets.config.loader import DeferredConfigString

    return _fixed_argv_config(["-f", "kernel.json", *KERNEL_OPTIONS], Config, DeferredConfigString)


def _fixed_argv_config(args: list[str], config_cls: Any, deferred: Any) -> Any:
    """The traitlets Config of `args` when each is ``-f FILE`` or ``--Class.trait=value``; else
    None (the caller's parser handles it)."""
    config = config_cls()
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-f" and i + 1 < len(args):
            config.IPKernelApp.connection_file = deferred(args[i + 1])
            i += 2
            continue
        key, eq, value = arg.removeprefix("--").partition("=")
        section, dot, trait = key.partition(".")
        if not (
            arg.startswith("--") and eq and dot and section.isidentifier() and trait.isidentifier()
        ):
            return None
        config[section][trait] = deferred(value)
        i += 1
    return config


def _confine_child(view: dict[str, Any], report: socket.socket) -> None:
    """In the forked child: set up the kernel's namespaces, fork the kernel, stay as its init.

    Returns in the kernel (PID 2 of the new namespace, capabilities dropped); the init never
    returns. A failure is reported to the fork server and ends the child.
    """
    try:
        confine.enter(view)
        kernel = os.fork()
    except BaseException as exc:
        with contextlib.suppress(OSError):
            report.send(f"error: {type(exc).__name__}: {exc}".encode()[:4000])
        os._exit(1)
    if kernel:
        try:
            confine.send_pid(report, kernel)
        finally:
            report.close()
        confine.run_init(kernel)
    report.close()
    os.setsid()  # its own session and process group, as an unconfined kernel's
    confine.drop_privileges()


def _watch_lifeline(fd: int) -> None:
    """In a kernel: kill its process group when the host's lifeline pipe reaches EOF."""

    def watch() -> None:
        try:
            while os.read(fd, 512):
                pass
        except OSError:
            pass
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="rlm-lifeline", daemon=True).start()


def set_comm(name: bytes) -> None:
    """Set the process name shown by ``ps -o comm``/``pgrep`` (Linux; best effort)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)
    except Exception:
        pass


def _max_fd() -> int:
    """Return the upper bound of file descriptors to close in a child."""
    try:
        n = os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        n = 4096
    return n if n > 0 else 4096


def _fresh_stdio() -> None:
    """Give the child new stdio objects on fds 0/1/2 (nothing buffered from the zygote)."""
    stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    stdout = open(  # noqa: SIM115
        1, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False
    )
    stderr = open(  # noqa: SIM115
        2, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False
    )
    sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
    setattr(sys, "__stdin__", stdin)  # noqa: B010 - Final in typeshed, writable at run time
    setattr(sys, "__stdout__", stdout)  # noqa: B010
    setattr(sys, "__stderr__", stderr)  # noqa: B010


def _apply_startup_env(env: Mapping[str, str]) -> None:
    """Apply what a fresh interpreter reads from its environment at start-up, where possible."""
    # PYTHONPATH, PYTHONDONTWRITEBYTECODE, PYTHONPYCACHEPREFIX, PYTHONWARNINGS and the LC_CTYPE
    # locale are applied; PYTHONHASHSEED, PYTHONUTF8, PYTHONSAFEPATH, PYTHONNOUSERSITE and the
    # like cannot change after start-up (the zygote's values stay).
    entries = [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    for entry in reversed(entries):
        if entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)
    sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))
    if env.get("PYTHONPYCACHEPREFIX"):
        sys.pycache_prefix = os.path.abspath(env["PYTHONPYCACHEPREFIX"])
    if env.get("PYTHONWARNINGS"):
        opts = [o.strip() for o in env["PYTHONWARNINGS"].split(",") if o.strip()]
        sys.warnoptions[:0] = opts
        with contextlib.suppress(Exception):
            getattr(warnings, "_processoptions")(opts)  # noqa: B009 - private, not in typeshed
    try:
        ctype = locale.setlocale(locale.LC_CTYPE, "")
    except locale.Error:
        ctype = "C"
    if ctype in ("C", "POSIX"):  # PEP 538's coercion of the legacy C locale
        with contextlib.suppress(locale.Error):
            locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
