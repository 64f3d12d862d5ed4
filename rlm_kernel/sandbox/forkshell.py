"""The IPython shell of forked kernels, built once in the fork server and adopted by each kernel.

Every kernel used to build its `ZMQInteractiveShell` during its start (magics, formatters, the
completer, the prefilter's checkers, traitlets' instance set-up: ~8 ms of CPU, a quarter of a
kernel's start). The fork server builds one in `prebuild` instead, before it freezes its heap;
each forked kernel's `SandboxKernel` finds it as the shell singleton and `adopt`\\ s it: the
kernel, the profile directory and what depends on the kernel's own process, directory and
environment are set then, as IPython would have set them in that kernel:

- the history manager (an SQLite connection must not cross a fork) and the user namespace's
  `_ih`/`_oh`/`_dh`/`In`/`Out` are made in the kernel;
- the IPython directory and profile (from the kernel's ``HOME``), the starting directory, the
  environment variables the ZMQ shell sets, the virtualenv check, stdin's encoding and the
  ``sys`` hooks the shell restores at exit are the kernel's;
- the user namespace is the one the fork server built and never ran anything in: every kernel
  gets its own copy (the fork), so nothing of one kernel reaches another.

The fork server builds the shell with the kernels' fixed configuration (`KERNEL_OPTIONS`); a
kernel whose configuration differs (a config file was loaded: the user's
``ipython_kernel_config.py`` unconfined) drops it and builds its own, as before.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ipykernel import ipkernel
from ipykernel.ipkernel import IPythonKernel
from ipykernel.zmqshell import ZMQInteractiveShell
from traitlets import Type

from . import kernelio
from .runtime import CELL_PREFIX

__all__ = ["SandboxKernel", "SandboxShell", "drop_prebuilt", "prebuild", "prebuilt"]


class SandboxShell(ZMQInteractiveShell):
    """A `ZMQInteractiveShell` that can be built in the fork server and adopted by a kernel."""

    _prebuilding = False  # while the fork server builds it: no history manager yet
    _adopted = True  # False for the fork server's shell until a kernel adopts it
    prebuilt = False  # built by the fork server (True), or by this kernel
    _rlm_transformed: tuple[tuple[str, str], str] | None = None  # see transform_cell

    def init_history(self) -> None:
        """Make the history manager (in the kernel: its SQLite connection must not be forked)."""
        if SandboxShell._prebuilding:
            self.history_manager = None
            return
        super().init_history()  # type: ignore[no-untyped-call]

    def adopt(self, kernel: Any) -> None:
        """In the forked kernel: make the fork server's shell this kernel's (see the module)."""
        from IPython.paths import get_ipython_dir

        self.parent = kernel
        self.kernel = kernel
        self.ipython_dir = get_ipython_dir()
        self.profile_dir = kernel.profile_dir
        self.starting_dir = os.getcwd()
        self.init_environment()  # type: ignore[no-untyped-call]
        self.init_virtualenv()  # type: ignore[no-untyped-call]
        self.init_encoding()  # type: ignore[no-untyped-call]
        # What the shell restores at exit: this kernel's streams and excepthook (its __main__,
        # the user module, was put in sys.modules by the fork server, as by a kernel's shell).
        self._orig_sys_module_state = {
            "stdin": sys.stdin,
            "stdout": sys.stdout,
            "stderr": sys.stderr,
            "excepthook": sys.excepthook,
        }
        self.sys_excepthook = sys.excepthook
        self.init_history()
        self.init_user_ns()  # type: ignore[no-untyped-call]
        atexit.register(self.atexit_operations)
        self._adopted = True

    def transform_cell(self, raw_cell: str) -> str:
        """IPython's, done once per request: ipykernel transforms a cell to choose how to run
        it, then IPython's `run_cell` transforms it again (~0.05 ms each for a short cell). The
        second call gets the first's result when it is for the same text in the same request
        (nothing runs between the two); any other call transforms."""
        header = self.parent_header.get("header")
        key = (raw_cell, str(header.get("msg_id")) if isinstance(header, dict) else "")
        last, self._rlm_transformed = self._rlm_transformed, None
        if last is not None and last[0] == key:
            return last[1]
        cell: str = super().transform_cell(raw_cell)  # type: ignore[no-untyped-call]
        self._rlm_transformed = (key, cell)
        return cell

    def should_run_async(
        self, raw_cell: str, *, transformed_cell: Any = None, preprocessing_exc_tuple: Any = None
    ) -> bool:
        """IPython compiles every cell a second time to see whether it awaits at top level; a
        cell that never says `await` or `async` cannot (~0.15 ms less per cell)."""
        if (
            isinstance(transformed_cell, str)
            and "await" not in transformed_cell
            and "async" not in transformed_cell
        ):
            return False
        return bool(
            super().should_run_async(
                raw_cell,
                transformed_cell=transformed_cell,
                preprocessing_exc_tuple=preprocessing_exc_tuple,
            )
        )


@functools.cache
def _accepts(func: Callable[..., Any], names: tuple[str, ...]) -> dict[str, bool]:
    return dict(_ACCEPTS_PARAMETERS(func, list(names)))


def _accepts_parameters(meth: Any, param_names: Sequence[str]) -> dict[str, bool]:
    """ipykernel's `_accepts_parameters`, remembered per function: ipykernel asks it of the
    shell's `run_cell_async` on every execute request, and `inspect.signature` costs ~0.15 ms."""
    func = getattr(meth, "__func__", None)
    if func is None:
        return dict(_ACCEPTS_PARAMETERS(meth, param_names))
    return dict(_accepts(func, tuple(param_names)))


_ACCEPTS_PARAMETERS: Callable[..., Any] = getattr(ipkernel, "_accepts_parameters")  # noqa: B009


def _agent_cell(parent: Any) -> bool:
    """Whether `parent` is an agent's cell: an execute_request whose cellId the host set
    (`CELL_PREFIX`, see `kernelcell.run_cell`)."""
    if not isinstance(parent, dict):
        return False
    header, meta = parent.get("header"), parent.get("metadata")
    if not isinstance(header, dict) or header.get("msg_type") != "execute_request":
        return False
    cell_id = meta.get("cellId") if isinstance(meta, dict) else None
    return isinstance(cell_id, str) and cell_id.startswith(CELL_PREFIX)


class SandboxKernel(IPythonKernel):
    """The kernel of forked sandboxes: adopts the fork server's shell when there is one, and
    asks for `run_cell_async`'s signature once (see `_accepts_parameters`).

    An agent's cell (`_agent_cell`) publishes neither its execute_input nor its busy status:
    the only client that sends such cells is the host, which reads a cell's outputs and its
    idle status and nothing else (`kernelcell._Cell.handle`; `comms` passes neither on to the
    notebook). Each is a message serialised and signed on the cell's thread, a wake-up of the
    IOPub thread and a message the host reads and drops. Every other request (the notebook's,
    a completion, a test's) publishes both, as ipykernel does."""

    shell_class = Type(SandboxShell)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        setattr(ipkernel, "_accepts_parameters", _accepts_parameters)  # noqa: B010
        shell = self.shell
        if isinstance(shell, SandboxShell) and not shell._adopted:
            shell.adopt(self)

    def set_parent(self, ident: Any, parent: Any, channel: str = "shell") -> None:
        # A request begins: its flushes wait again (an agent cell's end made them waitless).
        kernelio.waitless(sys.stdout, False)
        super().set_parent(ident, parent, channel)  # type: ignore[no-untyped-call]

    async def do_execute(
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: Any = None,
        allow_stdin: bool = False,
        *,
        cell_meta: Any = None,
        cell_id: Any = None,
    ) -> Any:
        """ipykernel's, after which an agent's cell (`_agent_cell`) flushes without waiting:
        ipykernel flushes stdout and stderr after the cell and waits until the IOPub thread
        has sent what they held (one thread hop and back), so that the outputs come before
        the execute_reply. The host reads an agent cell's outputs until its idle status,
        which the IOPub thread sends after them in any case, and not its reply."""
        try:
            return await super().do_execute(  # type: ignore[no-untyped-call]
                code,
                silent,
                store_history,
                user_expressions,
                allow_stdin,
                cell_meta=cell_meta,
                cell_id=cell_id,
            )
        finally:
            if _agent_cell(self.get_parent("shell")):  # type: ignore[no-untyped-call]
                kernelio.waitless(sys.stdout, True)

    def _publish_execute_input(self, code: str, parent: Any, execution_count: int) -> None:
        if not _agent_cell(parent):
            super()._publish_execute_input(code, parent, execution_count)  # type: ignore[no-untyped-call]

    def _publish_status(self, status: str, channel: str, parent: Any = None) -> None:
        agent = status == "busy" and channel == "shell"
        if agent and _agent_cell(parent or self.get_parent(channel)):  # type: ignore[no-untyped-call]
            return
        super()._publish_status(status, channel, parent)  # type: ignore[no-untyped-call]


def prebuild(config: Any) -> SandboxShell:
    """In the fork server: build the kernels' shell with `config` (their fixed configuration).

    Reads nothing that differs between kernels (no IPython directory, no profile, no history),
    starts no thread and caches no temporary directory."""
    from ipykernel.compiler import XCachingCompiler
    from IPython.core.profiledir import ProfileDir

    SandboxShell._prebuilding = True
    try:
        shell = SandboxShell.instance(
            config=config,
            ipython_dir="",  # the kernel's, from its HOME (see adopt)
            profile_dir=ProfileDir(),  # no location: nothing is created
            user_module=None,
            user_ns={},
            kernel=None,
            compiler_class=XCachingCompiler,
        )
    finally:
        SandboxShell._prebuilding = False
    atexit.unregister(shell.atexit_operations)  # registered again by the kernel that adopts it
    shell._adopted = False
    shell.prebuilt = True
    return shell


def prebuilt() -> SandboxShell | None:
    """The fork server's shell, when it is built and no kernel adopted it yet (in this process)."""
    shell: Any = SandboxShell._instance if SandboxShell.initialized() else None
    return shell if isinstance(shell, SandboxShell) and not shell._adopted else None


def drop_prebuilt() -> None:
    """Forget the fork server's shell (this kernel builds its own: its configuration differs)."""
    if prebuilt() is not None:
        SandboxShell.clear_instance()
