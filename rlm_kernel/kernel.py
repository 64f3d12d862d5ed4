"""The RLM Jupyter kernel: the notebook is the root agent's REPL.

Ordinary cells run in the **root sandbox** (a `LocalSandbox` by default, created on the first cell
that needs it), or in a sandbox attached with `RLMKernel.attach`. The kernel's own IPython shell,
the *host*, runs only cells whose first non-blank line starts with ``%rlm`` or ``%%rlm`` (plus
``%load_ext rlm_kernel`` and ``%config RLMKernel…``); API keys and the LLM stack live there and
never enter a sandbox.

Forwarding a cell: `Sandbox.execute` runs in a worker thread (the event loop stays free), under
the frontend's msg_id and with its ``user_expressions``; the sandbox kernel's reply gives the
execute_reply's ``payload`` (``obj?``'s pager, ``set_next_input``) and ``user_expressions``. Output
messages reach this kernel's iopub with the request as parent: for a local sandbox through
`comms.CommRouter` (the thin hop, on the event loop, which also relays comms: ipywidgets,
anywidget, tqdm.notebook), for a Daytona sandbox from the worker thread. ``execute_result`` gets
this kernel's execution count, which the kernel advances itself. A forwarded cell skips what
ipykernel's ``execute_request`` does for a cell of its own shell (flushing its stdout and stderr,
each a round trip to the IOPub thread, and a 0.5 ms sleep): see `execute_request`.

Interrupts. The kernelspec sets ``"interrupt_mode": "message"``: the Stop button sends an
``interrupt_request`` on the control channel, which is handled on the control thread even while
the shell is busy. When a forwarded cell runs, `interrupt_request` only sets that cell's cancel
event; `LocalSandbox` then interrupts the sandbox's kernel, whose ``KeyboardInterrupt`` traceback
comes back as the cell's error (a cell that ignores the interrupt for 3 s gets its sandbox
restarted, and the user is told the variables are gone). Without a forwarded cell, the stock
behaviour applies (SIGINT to this process: a ``%%rlm`` cell sees KeyboardInterrupt or
CancelledError). Frontends that signal anyway (``interrupt_mode`` "signal", Ctrl-C in a terminal)
are covered too: while a forwarded cell runs, SIGINT is routed to the same cancel event instead of
raising KeyboardInterrupt in the event loop, which would stop the kernel.

Stdin. With ``allow_stdin``, the sandbox cell runs with stdin allowed, and each ``input_request``
of the sandbox kernel is answered by `relay.FrontendInput`: it sends the same ``input_request`` that
ipykernel's `raw_input` sends, on this kernel's stdin socket with the cell's parent and routing
identity, and waits for the frontend's reply. It runs in the worker thread (the main thread never
touches the stdin socket while a forwarded cell holds the shell) and polls instead of blocking,
because ipykernel's own `_input_request` stops waiting only on a KeyboardInterrupt, which a worker
thread never receives: here the Stop button ends the wait.

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
import os
import re
import secrets
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from contextvars import copy_context
from typing import Any

from ipykernel.ipkernel import IPythonKernel
from ipykernel.jsonutil import json_clean
from tornado.ioloop import PeriodicCallback
from traitlets import Unicode

from . import __version__
from .comms import CommRouter
from .config import KERNEL, SETTINGS, RLMConfig, load_config, load_dotenv_file
from .relay import FrontendInput, OutputRelay, merge_matches, prepare_repl, route_sigint
from .sandbox import backend_class
from .sandbox.base import CellResult, Sandbox, SandboxSpec
from .sandbox.bridge import BridgeRefused
from .sandbox.isolation import announce, set_notice
from .sandbox.isolation import resolve as resolve_isolation
from .sandbox.workspace import Target

__all__ = ["HOST_CELL_PREFIXES", "RLMKernel", "is_host_cell"]

log = logging.getLogger(__name__)

HOST_CELL_PREFIXES = ("%rlm", "%%rlm")
"""A cell whose first non-blank line starts with one of these runs in the host shell."""
# Also the host's: loading these magics, and `%config RLMKernel...` (the kernel's traitlets).
_HOST_LINE = re.compile(r"%(?:re)?load_ext\s+rlm_kernel\b|%config\s+RLMKernel\b")

_FOREVER_S = 10.0**9  # a notebook cell runs until it ends or the user stops it
_CELL_DRAIN_S = 5.0  # after the cell's reply: wait this long for the relay to pass its outputs on
_LINK_CHECK_MS = 1000  # how often the relay looks for sandboxes that went away


def _flush_only_when_pending(stream: Any) -> None:
    """Make an ipykernel OutStream's flush() return at once when nothing is waiting to be sent.

    ipykernel flushes stdout and stderr after every request, each flush a round trip to its IOPub
    thread even when nothing was written; forwarded cells write nothing to this kernel's streams.
    Whatever was written sets `_flush_pending` until the IOPub thread sends it, and everything
    published later queues behind that send, so skipping the round trip keeps the order.
    """
    names = ("_flush_pending", "_subprocess_flush_pending", "echo", "flush")
    if not all(hasattr(stream, n) for n in names):
        return
    full = stream.flush

    def flush() -> None:
        if stream._flush_pending or stream._subprocess_flush_pending or stream.echo is not None:
            full()

    stream.flush = flush


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
        self._run_id = f"kernel-{secrets.token_hex(4)}"
        self._root: Sandbox | None = None
        self._root_lock = threading.Lock()
        self._root_target = Target(None, None, None)
        self._attached: Sandbox | None = None
        self._adopted: list[Sandbox] = []
        self._cell_cancels: list[threading.Event] = []  # of running forwarded cells (subshells)
        self.rlm_session: Any = None
        self._host_shell.configurables.append(self)  # `%config RLMKernel.model = ...`
        self._register_magics()
        self._main_thread = threading.current_thread()
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self._link_check: PeriodicCallback | None = None
        from .sandbox.kernelproc import _zmq_context

        self.relay = CommRouter(
            self._session,
            self.iopub_socket,
            self._topic,
            lambda: self.comm_manager.comms,
            _zmq_context,
        )
        for name in ("comm_open", "comm_msg", "comm_close"):
            own = self.shell_handlers[name]  # the kernel's comm manager (the %%rlm AgentTree)
            self.shell_handlers[name] = self._comm_handler(own)
        for stream in (sys.stdout, sys.stderr):
            _flush_only_when_pending(stream)
        atexit.register(self._close_sandboxes)
        if threading.current_thread() is threading.main_thread():
            # A manager whose shutdown_request timed out sends SIGTERM: exit through atexit so the
            # sandboxes are still removed (Python's default would end the process at once).
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def start(self) -> None:
        """Start the kernel, and the relay's check for sandboxes that went away."""
        super().start()
        self._main_thread = threading.current_thread()
        self._main_loop = getattr(self.io_loop, "asyncio_loop", None)  # tornado over asyncio
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

    def root_sandbox(self) -> Sandbox:
        """The notebook's root sandbox, started on first use (thread-safe)."""
        with self._root_lock:
            if self._root is not None and not self._root.closed:
                return self._root
            # `%rlm config sandbox.backend=daytona` before the first cell counts too.
            session = self.rlm_session
            cfg = session.config() if session is not None else self.rlm_config
            cls = backend_class(cfg.sandbox.backend)
            cls.check(cfg)
            iso = None
            if cls.capabilities.isolation:
                iso = resolve_isolation(cfg.sandbox.isolation, cfg.sandbox.network)
                announce(iso)
            spec = SandboxSpec(
                run_id=self._run_id,
                agent_id="root",
                target=self._root_target,
                handler=self.notebook_handler,
                runtime_cfg={"agent_id": "root", "depth": 0, "tools": []},
                snapshot=cfg.sandbox.snapshot,
                isolation=iso,
                readable=(os.getcwd(),),  # RLM_NOTEBOOK_DIR, read-only under bwrap
            )
            sb = cls(spec)
            try:
                sb.start()
            except BaseException:
                sb.close()
                raise
            prepare_repl(sb)
            self._root = sb
            return sb

    @property
    def has_root_sandbox(self) -> bool:
        """Whether the root sandbox is running (it starts with the first ordinary cell)."""
        root = self._root
        return root is not None and not root.closed

    @property
    def root_target(self) -> Target:
        """The workspace the root sandbox has (or will have when it starts)."""
        return self._root_target

    def host_path(self, path: str) -> str:
        """A path named by the notebook's code, as the host finds it (a bwrap root sandbox's
        /tmp is private: see `LocalSandbox.host_path`)."""
        root = self._root
        return root.host_path(path) if root is not None and not root.closed else path

    def set_root_target(self, target: Target) -> None:
        """Give the root sandbox a workspace of `target` now, or at its creation if not started."""
        with self._root_lock:
            if self._root is not None and not self._root.closed:
                self._root.set_workspace(target)
            self._root_target = target

    def attach(self, sandbox: Sandbox | None) -> None:
        """Run the following ordinary cells in `sandbox` (None: in the root sandbox again).

        The sandbox keeps its bridge handler (use `sandbox.set_handler(kernel.notebook_handler)`
        for notebook behaviour), and the kernel closes it at shutdown.
        """
        if sandbox is not None and sandbox is not self._root and sandbox not in self._adopted:
            self._adopted.append(sandbox)
            with contextlib.suppress(Exception):
                prepare_repl(sandbox)
        self._attached = sandbox

    @property
    def attached(self) -> Sandbox | None:
        """The sandbox ordinary cells run in instead of the root, if any."""
        return self._attached

    def notebook_handler(self, op: str, args: dict[str, Any]) -> Any:
        """Answer bridge requests of ordinary cells: `llm_query` works, the rest needs a run."""
        if op == "llm_query":
            return self._llm_queries([str(p) for p in args.get("prompts") or []], args.get("model"))
        if op == "final" and args.get("via") == "answer":
            return True  # `answer["ready"] = True` in a plain cell: there is no run to finish
        name = {
            "rlm_query": "rlm_query",
            "final": str(args.get("via") or "FINAL"),
            "submit": "SUBMIT",
            "tool": f"the tool {args.get('name')!r}",
        }.get(op, op)
        raise BridgeRefused(f"{name} is available inside %%rlm runs; start one with %%rlm")

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
        reply = await self._forward_cell(
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
        return await self._forward_cell(
            code,
            silent=silent,
            store_history=store_history and not silent,
            allow_stdin=allow_stdin,
            user_expressions=user_expressions,
        )

    async def _forward_cell(
        self,
        code: str,
        *,
        silent: bool,
        store_history: bool,
        allow_stdin: bool,
        user_expressions: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        cancel = threading.Event()
        restore_sigint = route_sigint(asyncio.get_running_loop(), cancel)
        self._cell_cancels.append(cancel)
        shell = self._host_shell
        count = int(shell.execution_count)
        parent = self.get_parent("shell")
        try:
            if store_history:
                shell.history_manager.store_inputs(count, code, code)
            publish = OutputRelay(
                self._session, self.iopub_socket, self._topic, parent, count, silent
            )
            reply = await self._run_in_sandbox(
                code, cancel, publish, parent, allow_stdin, store_history, user_expressions
            )
        finally:
            self._cell_cancels.remove(cancel)
            restore_sigint()
            if store_history:
                shell.execution_count = count + 1
        reply["execution_count"] = count
        return reply

    async def _run_in_sandbox(
        self,
        code: str,
        cancel: threading.Event,
        publish: OutputRelay,
        parent: dict[str, Any],
        allow_stdin: bool,
        store_history: bool,
        user_expressions: dict[str, Any] | None,
    ) -> dict[str, Any]:
        sb = self._attached
        if sb is None:
            root = self._root
            sb = root if root is not None and not root.closed else None
        if sb is None:
            try:
                sb = await asyncio.to_thread(self.root_sandbox)
            except Exception as exc:
                return publish.error("SandboxError", f"the notebook's sandbox did not start: {exc}")
        if cancel.is_set():
            return publish.error("KeyboardInterrupt", "interrupted before the cell started")
        link = await self._on_main(self.relay.link_for(sb))
        # With a link, the relay passes the cell's outputs on as they come (in order with its
        # comm messages); without (Daytona), the worker thread does.
        cell = await self._on_main(self._begin_cell(link, publish)) if link is not None else None
        ask = None
        if allow_stdin:
            ident = self._get_shell_context_var(self._shell_parent_ident)
            before = (lambda: self._wait_on_main(self.relay.flush, sb)) if link else None
            ask = FrontendInput(self._session, self.stdin_socket, ident, parent, cancel, before)
        msg_id = publish.msg_id if link is not None else None
        try:
            res = await asyncio.to_thread(
                self._execute_in,
                sb,
                code,
                cancel,
                None if cell is not None else publish,
                ask,
                store_history,
                msg_id,
                user_expressions,
            )
            if cell is not None and isinstance(res, CellResult) and not res.namespace_lost:
                try:  # the sandbox's idle status came; the relay may still be on its way to it
                    await asyncio.wait_for(asyncio.wrap_future(cell.done), _CELL_DRAIN_S)
                except asyncio.TimeoutError:
                    log.warning("outputs of a cell did not all arrive from the sandbox")
        finally:
            if cell is not None:
                await self._on_main(self._end_cell(cell))
        publish.finish()
        if isinstance(res, Exception):  # e.g. the kernel shut the sandbox down under the cell
            return publish.error("SandboxError", f"the cell could not run in the sandbox: {res}")
        return self._reply(sb, res, publish)

    async def _begin_cell(self, link: Any, publish: OutputRelay) -> Any:
        return self.relay.begin_cell(link, publish)

    async def _end_cell(self, cell: Any) -> None:
        self.relay.end_cell(cell)

    def _execute_in(
        self,
        sb: Sandbox,
        code: str,
        cancel: threading.Event,
        on_output: OutputRelay | None,
        ask: FrontendInput | None,
        store_history: bool,
        msg_id: str | None,
        user_expressions: dict[str, Any] | None,
    ) -> CellResult | Exception:
        """Run one cell in `sb` (worker thread); after a restart or death, put things right."""
        try:
            res = sb.execute(
                code,
                timeout=_FOREVER_S,
                cancel=cancel,
                on_output=on_output,
                store_history=store_history,
                stdin_hook=ask,
                msg_id=msg_id,
                user_expressions=user_expressions,
            )
        except Exception as exc:
            return exc
        if res.status == "restarted":
            with contextlib.suppress(Exception):
                prepare_repl(sb)
        elif res.status == "died":
            sb.close()
        return res

    def _reply(self, sb: Sandbox, res: CellResult, publish: OutputRelay) -> dict[str, Any]:
        errors = [o["content"] for o in res.outputs if o["msg_type"] == "error"]
        payload = res.reply.get("payload")
        expressions = res.reply.get("user_expressions")
        extra = {
            "payload": [p for p in payload if isinstance(p, dict)]
            if isinstance(payload, list)
            else [],
            "user_expressions": expressions if isinstance(expressions, dict) else {},
        }
        if res.reply.get("status") == "error" and not errors:
            errors = [res.reply]  # the error message itself was lost in a burst of output
        if res.status == "ok" and not errors:
            return {"status": "ok", **extra}
        if res.status in ("ok", "error") and errors:
            err = errors[-1]
            return {
                "status": "error",
                "ename": str(err.get("ename", "Error")),
                "evalue": str(err.get("evalue", "")),
                "traceback": list(err.get("traceback", [])),
                **extra,
            }
        if res.status == "restarted":
            if not sb.capabilities.interrupt and res.error:  # e.g. Daytona restarted it empty
                return publish.error("SandboxRestarted", res.error)
            return publish.error(
                "KeyboardInterrupt",
                "the cell did not stop when interrupted, so its Python process was restarted: "
                "the notebook's variables are gone",
            )
        if res.status == "died":
            if sb is self._attached:
                self._attached = None
                why = "the following cells run in the notebook's root sandbox again"
            else:
                why = "the next cell starts a fresh one"
            return publish.error(
                "SandboxDied",
                f"the sandbox's Python process died and its variables are lost; {why}",
            )
        if errors:  # cancelled: the sandbox's KeyboardInterrupt traceback was published already
            err = errors[-1]
            return {
                "status": "error",
                "ename": str(err.get("ename", "KeyboardInterrupt")),
                "evalue": str(err.get("evalue", "")),
                "traceback": list(err.get("traceback", [])),
                **extra,
            }
        return publish.error("KeyboardInterrupt", res.error or "interrupted")

    # -- comms ----------------------------------------------------------------------------------------
    def _comm_handler(self, own: Callable[..., Any]) -> Callable[..., Any]:
        """A shell handler for comm_open/comm_msg/comm_close of the frontend: the relay's comms go
        to their sandbox, the kernel's own to `own` (its comm manager). Also runs while a cell
        runs (ipykernel dispatches comm messages past a busy shell)."""

        def handle(stream: Any, ident: Any, msg: dict[str, Any]) -> Any:
            if threading.current_thread() is not self._main_thread and self._main_loop:
                self._main_loop.call_soon_threadsafe(handle, stream, ident, msg)
                return None
            if self.relay.from_frontend(msg, self._live_repl()):
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

    async def _on_main(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Await `coro` on the kernel's main event loop (where the relay lives), from any loop."""
        loop = self._main_loop
        if loop is None or threading.current_thread() is self._main_thread:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def _wait_on_main(self, fn: Callable[..., None], *args: Any, timeout: float = 0.5) -> None:
        """Run `fn` on the main event loop and wait for it (at most `timeout`); worker threads."""
        loop = self._main_loop
        if loop is None:
            return
        done = threading.Event()

        def run() -> None:
            try:
                fn(*args)
            finally:
                done.set()

        loop.call_soon_threadsafe(run)
        done.wait(timeout)

    async def interrupt_request(self, stream: Any, ident: Any, parent: Any) -> None:
        """Stop forwarded cells (control thread); otherwise interrupt the host as usual."""
        cancels = list(self._cell_cancels)
        if not cancels:
            await super().interrupt_request(stream, ident, parent)
            return
        for cancel in cancels:
            cancel.set()
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

    def _live_repl(self) -> Sandbox | None:
        """The sandbox ordinary cells go to, if it is running (completion never starts one)."""
        sb = self._attached or self._root
        return sb if sb is not None and not sb.closed else None

    async def do_complete(self, code: str, cursor_pos: int | None) -> dict[str, Any]:
        """Complete from the sandbox's namespace; `%rlm` magics come from the host shell."""
        pos = len(code) if cursor_pos is None else cursor_pos
        sb = self._live_repl()
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
        sb = self._live_repl()
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
        for cancel in list(self._cell_cancels):
            cancel.set()
        if self._main_loop is not None:  # the relay lives on the main loop (this is the control's)
            with contextlib.suppress(RuntimeError):
                self._main_loop.call_soon_threadsafe(self._stop_relay)
        await asyncio.to_thread(self._close_sandboxes)
        return await self._host(super().do_shutdown(restart))

    def _stop_relay(self) -> None:
        if self._link_check is not None:
            self._link_check.stop()
        self.relay.close()

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        """Stop forwarded cells (their worker threads must end before exit) and exit."""
        for cancel in list(self._cell_cancels):
            cancel.set()
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
        self._attached = None
        with self._root_lock:
            sandboxes = [*self._adopted, *([self._root] if self._root is not None else [])]
            self._adopted, self._root = [], None
        for sb in sandboxes:
            sb.close()
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

    def _llm_queries(self, prompts: list[str], model: str | None) -> list[str]:
        """`llm_query(_batched)` from a plain cell: the run's service (`SubLLM`), with the
        notebook's configuration; the run limits apply to each request."""
        import time

        from .config import ConfigError
        from .control import Budget
        from .llm import LLMClient
        from .llm.service import SubLLM

        try:  # with the notebook's `%rlm config` settings, as a `%%rlm` run would see them
            session = self.rlm_session
            cfg = session.config() if session is not None else self.rlm_config
        except ConfigError as exc:
            raise BridgeRefused(f"llm_query: {exc}") from exc
        load_dotenv_file()
        budget = Budget(cfg.rlm, time.monotonic())
        service = SubLLM(
            LLMClient.from_config(cfg),
            cfg.sub_model_name,
            budget=lambda: budget,
            width=4 * cfg.rlm.max_concurrency,
        )
        cancel = self._cell_cancels[-1] if self._cell_cancels else None
        info = {"agent_id": "root", "parent_id": None, "depth": 0, "kind": "llm_query"}
        return service.query(prompts, model, info=info, cancel=cancel, agent_id="root")
