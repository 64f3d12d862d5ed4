"""The RLM Jupyter kernel: the notebook is the root agent's REPL.

Ordinary cells run in the **root sandbox** (a `LocalSandbox` by default, created on the first cell
that needs it), or in a sandbox attached with `RLMKernel.attach`. The kernel's own IPython shell,
the *host*, runs only cells whose first non-blank line starts with ``%rlm`` or ``%%rlm`` (plus
``%load_ext rlm_kernel`` and ``%config RLMKernel…``); API keys and the LLM stack live there and
never enter a sandbox.

Forwarding a cell (`forward.CellForwarder`: threads, interrupts, stdin) and the sandboxes it goes
to (`notebook_sandboxes.NotebookSandboxes`: the root sandbox, started on first use, or an attached
one) are the kernel's parts; the kernel answers the Jupyter protocol. A forwarded cell skips what
ipykernel's ``execute_request`` does for a cell of its own shell (flushing its stdout and stderr,
each a round trip to the IOPub thread, and a 0.5 ms sleep): see `RLMKernel.execute_request`.

Completion and inspection use a second client on a subshell of the sandbox kernel, and
`shell_main` lets ``complete_request``/``inspect_request`` past a running cell (as ipykernel does
for comm messages), so Tab and Shift-Tab see the sandbox's variables while a cell runs.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import logging
import re
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from contextvars import copy_context
from typing import Any

from ipykernel.ipkernel import IPythonKernel
from ipykernel.jsonutil import json_clean
from tornado.ioloop import PeriodicCallback
from traitlets import Unicode

from . import __version__
from .comms import CommRouter
from .config import KERNEL, SETTINGS, RLMConfig, load_config
from .forward import CellForwarder, MainLoop, flush_only_when_pending
from .notebook_bridge import NotebookBridge
from .notebook_sandboxes import NotebookSandboxes
from .relay import merge_matches
from .sandbox.base import Sandbox
from .sandbox.isolation import set_notice
from .sandbox.workspace import Target

__all__ = ["HOST_CELL_PREFIXES", "RLMKernel", "is_host_cell"]

log = logging.getLogger(__name__)

HOST_CELL_PREFIXES = ("%rlm", "%%rlm")
"""A cell whose first non-blank line starts with one of these runs in the host shell."""
# Also the host's: loading these magics, and `%config RLMKernel...` (the kernel's traitlets).
_HOST_LINE = re.compile(r"%(?:re)?load_ext\s+rlm_kernel\b|%config\s+RLMKernel\b")

_LINK_CHECK_MS = 1000  # how often the relay looks for sandboxes that went away


def is_host_cell(code: str) -> bool:
    """True when the cell belongs to the host shell (`%rlm`/`%%rlm`, `%load_ext rlm_kernel`,
    `%config RLMKernel...`); every other cell runs in the sandbox."""
    for line in code.splitlines():
        if line.strip():
            first = line.lstrip()
            return first.startswith(HOST_CELL_PREFIXES) or _HOST_LINE.match(first) is not None
    return False


class RLMKernel(IPythonKernel):
    """An IPython kernel whose ordinary cells run in the root agent's sandbox.

    Configurable traitlets (``c.RLMKernel.model = "…"`` in ``ipython_kernel_config.py``,
    ``--RLMKernel.model=…`` on the command line, ``%config RLMKernel.model = "…"`` in a cell)
    override `config_file` (default ./config.yaml, else the defaults) in `rlm_config`: one per
    setting that the table (`config.SETTINGS`) puts on KERNEL, named after its flag (`model`,
    `timeout`, `sandbox`, …), and `config_file`. Unset ones (None) leave the file's values.
    """

    implementation = "rlm"
    implementation_version = __version__

    # A traitlet per setting on KERNEL in the settings table (config.SETTINGS), made there.
    locals().update(SETTINGS.kernel_traits())
    config_file = Unicode(
        None,
        allow_none=True,
        help="YAML configuration file (default: ./config.yaml if present, else the defaults).",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # This process's stderr is captured into cell outputs: the tier notice goes to the log.
        set_notice(self.log.info)
        self._bridge = NotebookBridge(self._notebook_config, lambda: self.cells.current_cancel)
        self.sandboxes = NotebookSandboxes(
            f"kernel-{secrets.token_hex(4)}", self._notebook_config, self.notebook_handler
        )
        self.rlm_session: Any = None
        self._host_shell.configurables.append(self)  # `%config RLMKernel.model = ...`
        self._register_magics()
        self._main = MainLoop()
        self._link_check: PeriodicCallback | None = None
        from .sandbox.kernelproc import _zmq_context

        self.relay = CommRouter(
            self._session,
            self.iopub_socket,
            self._topic,
            lambda: self.comm_manager.comms,
            _zmq_context,
        )
        self.cells = CellForwarder(
            session=self._session,
            iopub=self.iopub_socket,
            topic=self._topic,
            stdin=self.stdin_socket,
            shell=self._host_shell,
            request=lambda: (
                self.get_parent("shell"),
                self._get_shell_context_var(self._shell_parent_ident),
            ),
            relay=self.relay,
            main=self._main,
            sandboxes=self.sandboxes,
        )
        for name in ("comm_open", "comm_msg", "comm_close"):
            own = self.shell_handlers[name]  # the kernel's comm manager (the %%rlm AgentTree)
            self.shell_handlers[name] = self._comm_handler(own)
        for stream in (sys.stdout, sys.stderr):
            flush_only_when_pending(stream)
        atexit.register(self._close_sandboxes)
        if threading.current_thread() is threading.main_thread():
            # A manager whose shutdown_request timed out sends SIGTERM: exit through atexit so the
            # sandboxes are still removed (Python's default would end the process at once).
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def start(self) -> None:
        """Start the kernel, and the relay's check for sandboxes that went away."""
        super().start()
        self._main.bind(getattr(self.io_loop, "asyncio_loop", None))  # tornado over asyncio
        self._link_check = PeriodicCallback(self.relay.check, _LINK_CHECK_MS)
        self._link_check.start()

    # -- kernel info ------------------------------------------------------------------------------
    @property
    def banner(self) -> str:  # type: ignore[override]  # a trait in Kernel, a property here
        """The banner: what ordinary and %%rlm cells do, then IPython's."""
        return (
            f"RLM kernel {__version__}: ordinary cells run in the notebook's sandbox (the root "
            "agent's REPL); %%rlm starts a Recursive Language Model run.\n"
            + str(self.shell.banner if self.shell else "")
        )

    @property
    def _host_shell(self) -> Any:
        """The kernel's own IPython shell (exists once the kernel is initialised)."""
        assert self.shell is not None
        return self.shell

    @property
    def _session(self) -> Any:
        """The Jupyter protocol session (exists once the kernel is initialised)."""
        assert self.session is not None
        return self.session

    # -- the contract with the magics --------------------------------------------------------------
    @property
    def rlm_config(self) -> RLMConfig:
        """The configuration: `config_file` (or ./config.yaml) with the kernel's traitlets on top."""
        overrides = SETTINGS.overrides_from(self, KERNEL)
        return load_config(self.config_file or None, overrides, source="RLMKernel traitlets")

    def _notebook_config(self) -> RLMConfig:
        """The configuration of plain cells: the `%rlm config` settings, as a `%%rlm` run sees them
        (`%rlm config sandbox.backend=daytona` before the first cell counts too)."""
        session = self.rlm_session
        cfg: RLMConfig = session.config() if session is not None else self.rlm_config
        return cfg

    def root_sandbox(self) -> Sandbox:
        """The notebook's root sandbox, started on first use (thread-safe)."""
        return self.sandboxes.root()

    @property
    def has_root_sandbox(self) -> bool:
        """Whether the root sandbox is running (it starts with the first ordinary cell)."""
        return self.sandboxes.running_root is not None

    @property
    def root_target(self) -> Target:
        """The workspace the root sandbox has (or will have when it starts)."""
        return self.sandboxes.target

    def host_path(self, path: str) -> str:
        """A path named by the notebook's code, as the host finds it (a bwrap root sandbox's
        /tmp is private: see `LocalSandbox.host_path`)."""
        return self.sandboxes.host_path(path)

    def set_root_target(self, target: Target) -> None:
        """Give the root sandbox a workspace of `target` now, or at its creation if not started."""
        self.sandboxes.set_target(target)

    def attach(self, sandbox: Sandbox | None) -> None:
        """Run the following ordinary cells in `sandbox` (None: in the root sandbox again).

        The sandbox keeps its bridge handler (use `sandbox.set_handler(kernel.notebook_handler)`
        for notebook behaviour), and the kernel closes it at shutdown.
        """
        self.sandboxes.attach(sandbox)

    @property
    def attached(self) -> Sandbox | None:
        """The sandbox ordinary cells run in instead of the root, if any."""
        return self.sandboxes.attached

    def notebook_handler(self, op: str, args: dict[str, Any]) -> Any:
        """Answer bridge requests of ordinary cells: `llm_query` works, the rest needs a run."""
        return self._bridge(op, args)

    # -- execution ----------------------------------------------------------------------------------
    async def execute_request(self, stream: Any, ident: Any, parent: Any) -> None:
        """Answer an execute_request: `%rlm` cells as IPythonKernel does, others forwarded.

        A forwarded cell gets the same messages as from ipykernel (execute_input, the outputs,
        execute_reply with payload and user_expressions, aborting queued cells after an error
        with stop_on_error), without what ipykernel does for output of its own shell: flushing
        stdout and stderr through the IOPub thread and sleeping 0.5 ms before the reply.
        """
        content = parent.get("content") if isinstance(parent, dict) else None
        code = content.get("code") if isinstance(content, dict) else None
        if not isinstance(code, str) or is_host_cell(code) or self.session is None:
            await super().execute_request(stream, ident, parent)
            return
        assert isinstance(content, dict)
        silent = bool(content.get("silent", False))
        store_history = bool(content.get("store_history", not silent))
        expressions = content.get("user_expressions")
        metadata = self.init_metadata(parent)
        if not silent:
            self._publish_execute_input(code, parent, self._host_shell.execution_count)
        reply = await self.cells.forward(
            code,
            silent=silent,
            store_history=store_history and not silent,
            allow_stdin=bool(content.get("allow_stdin", False)),
            user_expressions=expressions if isinstance(expressions, dict) else None,
        )
        reply = json_clean(reply)
        metadata = self.finish_metadata(parent, metadata, reply)
        self.session.send(stream, "execute_reply", reply, parent, metadata=metadata, ident=ident)
        if not silent and reply["status"] == "error" and content.get("stop_on_error", True):
            self._abort_queues(parent["header"].get("subshell_id"))

    async def do_execute(
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool = False,
        *,
        cell_meta: dict[str, Any] | None = None,
        cell_id: str | None = None,
    ) -> dict[str, Any]:
        """Run `%rlm` cells in the host shell and forward every other cell to the sandbox."""
        if is_host_cell(code):
            reply: dict[str, Any] = await super().do_execute(
                code,
                silent,
                store_history,
                user_expressions,
                allow_stdin,
                cell_meta=cell_meta,
                cell_id=cell_id,
            )
            return reply
        return await self.cells.forward(
            code,
            silent=silent,
            store_history=store_history and not silent,
            allow_stdin=allow_stdin,
            user_expressions=user_expressions,
        )

    # -- comms ----------------------------------------------------------------------------------------
    def _comm_handler(self, own: Callable[..., Any]) -> Callable[..., Any]:
        """A shell handler for comm_open/comm_msg/comm_close of the frontend: the relay's comms go
        to their sandbox, the kernel's own to `own` (its comm manager). Also runs while a cell
        runs (ipykernel dispatches comm messages past a busy shell)."""

        def handle(stream: Any, ident: Any, msg: dict[str, Any]) -> Any:
            if not self._main.is_current() and self._main.loop:
                self._main.loop.call_soon_threadsafe(handle, stream, ident, msg)
                return None
            if self.relay.from_frontend(msg, self.sandboxes.live()):
                return None
            return own(stream, ident, msg)

        return handle

    async def comm_info_request(self, stream: Any, ident: Any, parent: Any) -> None:
        """The kernel's own comms and those of sandbox kernels (widgets of ordinary cells)."""
        if self.session is None:
            return
        content = parent.get("content") or {}
        target = content.get("target_name")
        comms = {
            cid: {"target_name": comm.target_name}
            for cid, comm in self.comm_manager.comms.items()
            if target is None or comm.target_name == target
        }
        comms.update(self.relay.comm_info(target))
        reply = {"status": "ok", "comms": comms}
        self.session.send(stream, "comm_info_reply", reply, parent, ident)

    async def interrupt_request(self, stream: Any, ident: Any, parent: Any) -> None:
        """Stop forwarded cells (control thread); otherwise interrupt the host as usual."""
        if not self.cells.interrupt():
            await super().interrupt_request(stream, ident, parent)
            return
        self._session.send(stream, "interrupt_reply", {"status": "ok"}, parent, ident=ident)

    # -- completion, inspection -------------------------------------------------------------------
    async def shell_main(self, subshell_id: str | None, msg: Any) -> None:
        """Answer completion and inspection requests while a cell runs, like comm messages."""
        lock = self._main_asyncio_lock if subshell_id is None else None
        if lock is not None and lock.locked() and self.session is not None:
            try:
                _, frames = self.session.feed_identities(msg, copy=False)
                header = self.session.deserialize(frames, content=False, copy=False)["header"]
            except Exception:
                header = {}
            if header.get("msg_type") in ("complete_request", "inspect_request"):
                shell_parent = self.get_parent("shell")
                shell_ident = self._get_shell_context_var(self._shell_parent_ident)
                try:
                    coro = self.dispatch_shell(msg, subshell_id=subshell_id, concurrent=True)
                    await copy_context().run(asyncio.ensure_future, coro)  # its own context
                finally:
                    self.set_parent(shell_ident, shell_parent, channel="shell")
                return
        await super().shell_main(subshell_id, msg)

    async def do_complete(self, code: str, cursor_pos: int | None) -> dict[str, Any]:
        """Complete from the sandbox's namespace; `%rlm` magics come from the host shell."""
        pos = len(code) if cursor_pos is None else cursor_pos
        sb = self.sandboxes.live()
        if sb is None or is_host_cell(code):
            return await self._host(super().do_complete(code, pos))
        try:
            reply = await asyncio.to_thread(sb.complete, code, pos)
        except Exception:
            log.warning("completion in the sandbox failed", exc_info=True)
            return await self._host(super().do_complete(code, pos))
        line_start = code.rfind("\n", 0, pos) + 1
        if code[line_start:pos].lstrip().startswith("%"):
            host = await self._host(super().do_complete(code, pos))
            reply["matches"] = merge_matches(code, reply, host, HOST_CELL_PREFIXES)
        return reply

    async def do_inspect(
        self, code: str, cursor_pos: int, detail_level: int = 0, omit_sections: Any = ()
    ) -> dict[str, Any]:
        """Inspect the name at the cursor in the sandbox (the host for `%rlm` cells)."""
        sb = self.sandboxes.live()
        if sb is None or is_host_cell(code):
            return await self._host(
                super().do_inspect(code, cursor_pos, detail_level, omit_sections)
            )
        try:
            return await asyncio.to_thread(sb.inspect, code, cursor_pos, detail_level)
        except Exception:
            log.warning("inspection in the sandbox failed", exc_info=True)
            return {"status": "ok", "found": False, "data": {}, "metadata": {}}

    @staticmethod
    async def _host(result: Any) -> dict[str, Any]:
        """The host shell's reply (IPythonKernel's handlers are sync or async by version)."""
        if inspect.isawaitable(result):
            result = await result
        return dict(result)

    # -- shutdown -------------------------------------------------------------------------------------
    async def do_shutdown(self, restart: bool) -> dict[str, Any]:
        """Cancel runs, close every sandbox and stop every kernel process this kernel started."""
        self.cells.interrupt()
        if self._main.loop is not None:  # the relay lives on the main loop (this is the control's)
            with contextlib.suppress(RuntimeError):
                self._main.loop.call_soon_threadsafe(self._stop_relay)
        await asyncio.to_thread(self._close_sandboxes)
        return await self._host(super().do_shutdown(restart))

    def _stop_relay(self) -> None:
        if self._link_check is not None:
            self._link_check.stop()
        self.relay.close()

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        """Stop forwarded cells (their worker threads must end before exit) and exit."""
        self.cells.interrupt()
        raise SystemExit(128 + signum)

    def _close_sandboxes(self) -> None:
        """Leave nothing behind: runs, attached and root sandboxes, kernels (idempotent)."""
        session = self.rlm_session
        for name in ("cancel_all", "close"):
            fn = getattr(session, name, None)
            if callable(fn):
                try:
                    fn()
                except Exception:
                    log.exception("%s() of the %%rlm session failed", name)
        self.sandboxes.close()
        from .sandbox import shutdown_backends

        shutdown_backends()

    # -- internals -------------------------------------------------------------------------------------
    def _register_magics(self) -> None:
        """Bind the `%rlm` magics to this kernel (`rlm_kernel.magics.register`, when present)."""
        try:
            from . import magics
        except ImportError as exc:
            if exc.name != f"{__package__}.magics":
                log.warning("the %%rlm magics could not be loaded: %s", exc)
            return
        register: Callable[..., Any] | None = getattr(magics, "register", None)
        if register is None:
            return
        try:
            session = register(self._host_shell, kernel=self)
        except Exception:
            log.exception("registering the %%rlm magics failed")
            return
        if session is not None:
            self.rlm_session = session
