"""What the kernel fork server (:mod:`.forkserver`) does once, before it forks any kernel: import
what every kernel needs, fill the caches every kernel's first cell and first error would fill,
and build the IPython shell every kernel adopts (:mod:`.forkshell`). Nothing here may start a
thread or read what differs between kernels (their directory, environment, temporary directory).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from .forkchild import kernel_app_class, prebuilt_shell_config

__all__ = ["EXTRA_PRELOAD", "OPTIONAL_PRELOAD", "PRELOAD_MODULES", "preload"]

PRELOAD_MODULES: tuple[str, ...] = (
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.debugger",  # imported without debugpy: see _preload
    "ipykernel.comm",
    "ipykernel.iostream",
    "ipykernel.heartbeat",
    "ipykernel.eventloops",
    "IPython.core.completer",
)
# Also imported by every kernel during its start-up (measured): cheaper once, in the zygote.
EXTRA_PRELOAD = (
    "IPython.core.completerlib",
    "IPython.core.debugger",
    "IPython.core.logger",
    "IPython.core.oinspect",
    "IPython.extensions.storemagic",
    "sqlite3",
    "tornado.platform.asyncio",
    # The first exception of a kernel (FINAL ends cells with one) loads IPython's traceback stack.
    "IPython.core.ultratb",
    "stack_data",
    "executing",
    "asttokens",
    "pure_eval",
    "fractions",
    "runpy",  # imported by every kernel at start-up (measured), as is faulthandler
    "faulthandler",
    "pygments.lexers.python",
    "pygments.formatters.terminal256",
    "pygments.formatters.html",
    "pygments.styles",
)
OPTIONAL_PRELOAD = ("rlm_kernel.sandbox.runtime", "rlm_kernel.sandbox.kernelio")


def preload(log: Callable[[str], None]) -> None:
    """Import what every kernel needs, so that a forked kernel only initialises."""
    # A sandbox kernel never serves a debugger: only the host talks to it (a frontend's debug
    # requests go to the host's own kernel). ipykernel makes a debugpy Debugger in every kernel it
    # can import debugpy in, listing every module's file for it: ~1.5 MB of the zygote's pages
    # copied per kernel, and debugpy is 8 MB and 140 modules of the zygote. Hidden while ipykernel
    # is imported, debugpy stays importable by agents' code.
    hidden = "debugpy" not in sys.modules
    if hidden:
        sys.modules["debugpy"] = None  # type: ignore[assignment]
    try:
        for name in PRELOAD_MODULES:
            importlib.import_module(name)
    finally:
        if hidden and sys.modules.get("debugpy", 0) is None:
            del sys.modules["debugpy"]
    for name in EXTRA_PRELOAD + OPTIONAL_PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
        except Exception as exc:  # another module's bug must not take every kernel down
            log(f"could not pre-import {name}: {exc!r}")
    kernel_app_class()  # the forked kernels' application class, shared with them
    _warm_tracebacks(log)
    _warm_cells(log)
    from . import forkshell  # after ipykernel's import without debugpy

    try:
        forkshell.prebuild(prebuilt_shell_config())  # every kernel adopts it: see forkshell
    except Exception as exc:  # an IPython change must not stop the fork server
        forkshell.drop_prebuilt()
        log(f"kernels build their own shells: {exc!r}")


def _warm_cells(log: Callable[[str], None]) -> None:
    """Transform one cell as IPython does, so a kernel's first cell does not compile the
    tokenizer's regular expressions (~4 ms of CPU per kernel; cached module-wide)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        manager = TransformerManager()  # type: ignore[no-untyped-call]
        manager.transform_cell("x = 1\nprint(x)  # warm-up\n")
    except Exception as exc:  # an IPython API change must not stop the fork server
        log(f"cell warm-up skipped: {exc!r}")


def _warm_tracebacks(log: Callable[[str], None]) -> None:
    """Format one traceback, so a kernel's first error (or FINAL) does not pay for the caches."""
    try:
        from IPython.core.ultratb import AutoFormattedTB, VerboseTB

        try:
            raise ValueError("warm-up")
        except ValueError:
            AutoFormattedTB().structured_traceback(*sys.exc_info())  # type: ignore[no-untyped-call]
            VerboseTB().structured_traceback(*sys.exc_info())  # compiles pygments' lexer regexes
    except Exception as exc:  # an IPython API change must not stop the fork server
        log(f"traceback warm-up skipped: {exc!r}")
