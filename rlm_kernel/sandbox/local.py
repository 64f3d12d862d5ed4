"""The local backend: a git worktree plus an IPython kernel (jupyter_client, ipc transport) per agent.

What it does not isolate (see the README): the kernel runs as the same user on the same machine,
so agent code can read and write anything that user can, and use the network. What it does keep
apart: each agent's files (its own worktree), its namespace (its own process), and the host's
secrets (the kernel's environment is an allowlist without API keys; keys never cross the bridge).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import queue
import shutil
import threading
import time
from typing import Any

from ..config import sandbox_env
from ..paths import tmp_root
from . import isolation, transfer, workspace
from .base import (
    NO_CONTEXT,
    CellResult,
    OutputBuffer,
    OutputHook,
    Sandbox,
    SandboxError,
    SandboxSpec,
    StdinHook,
    strip_ansi,
)
from .bridge import Bridge, FrameParser, new_secret
from .cleanup import write_owner
from .kernels import KernelHandle, _Client, _zmq_context, start_kernel
from .runtime import CELL_PREFIX

__all__ = ["LocalSandbox"]

log = logging.getLogger(__name__)

INTERRUPT_GRACE_S = 3.0  # how long an interrupted cell may take to stop before the kernel restarts
LOST_IDLE_S = 2.0  # the cell replied but its idle status has not come: iopub lost it
QUERY_TIMEOUT_S = 5.0  # completion / inspection requests
REPLY_TIMEOUT_S = 2.0  # the execute_reply of a cell whose idle status arrived (sent before it)


class LocalSandbox(Sandbox):
    """A worktree and an IPython kernel on this machine."""

    backend = "local"
    pool_capable = True

    def __init__(self, spec: SandboxSpec) -> None:
        super().__init__(spec)
        safe = spec.agent_id.replace("/", "_")
        self.root = str(tmp_root() / spec.run_id / safe)
        self.path = os.path.join(self.root, "work")
        self.bridge_dir = os.path.join(self.root, "bridge")
        self.id = f"{spec.run_id}/{safe}"
        self.kernel: KernelHandle | None = None
        self.secret = new_secret()
        self.bridge = Bridge(self.secret, self._handle, self._deliver, self._discard)
        self._exec_lock = threading.RLock()  # a restart reinstalls the runtime from inside a cell
        self._workspace_made = False
        # A second client (and a kernel subshell) for completion and inspection, so they are
        # answered while a cell runs and their replies never mix with the executing client's:
        # (connection file, client, subshell id).
        self._query_lock = threading.Lock()
        self._query: tuple[str, _Client, str | None] | None = None
        self._fresh_namespace = False  # the last cell's end sent the namespace summary
        self.isolation = spec.isolation or isolation.NONE  # resolved in prepare()

    # -- bridge plumbing ------------------------------------------------------------------------
    def _handle(self, op: str, args: dict[str, Any]) -> Any:
        if op == "snapshot":
            self.namespace = list(args.get("namespace") or [])
            self.answer_draft = str(args.get("answer") or "")
            self._fresh_namespace = True
            return None
        return self.spec.handler(op, args)

    def _deliver(self, rid: str, data: bytes) -> None:
        # The bridge directory is the sandbox's to write: never follow what it planted there.
        tmp = os.path.join(self.bridge_dir, f".{rid}.tmp")
        transfer.write_new(tmp, data)
        os.replace(tmp, os.path.join(self.bridge_dir, f"{rid}.json"))

    def _discard(self, rid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.bridge_dir, f"{rid}.json"))

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the worktree, start the kernel and install the runtime."""
        self.prepare()
        self._install_runtime()

    def bind(self, spec: SandboxSpec) -> None:
        """Hand this prepared (pooled) sandbox to an agent: take its spec, install the runtime."""
        if spec.run_id != self.spec.run_id or spec.target != self.spec.target:
            raise SandboxError("a pooled sandbox can only serve an agent of its own run and target")
        if self.closed or self.kernel is None or not self.kernel.is_alive():
            raise SandboxError(f"the pooled sandbox {self.id} is not running")
        self.spec = spec
        self._install_runtime()

    def prepare(self, cancel: threading.Event | None = None) -> None:
        """Create the worktree and start the kernel (no runtime yet: see bind())."""
        os.makedirs(self.bridge_dir, exist_ok=True)
        os.chmod(self.root, 0o700)
        write_owner(self.root)
        self.base_commit = workspace.create_workspace(self.spec.target, self.path)
        self._workspace_made = True
        if cancel is not None and cancel.is_set():
            raise SandboxError("cancelled before its kernel started")
        env = sandbox_env()
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ in patches
        env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        iso = self.isolation = self.spec.isolation or isolation.resolve()
        view = None
        if iso.confined:
            isolation.announce(iso)
            env = isolation.confined_env(env)
            view = self._view(self.spec.target)
        self.kernel = start_kernel(
            self.path,
            env,
            runtime_dir=os.path.join(self.root, "kernel"),
            isolation=iso,
            view=view,
        )
        write_owner(self.root, self.kernel.pid)

    def _view(self, target: workspace.Target) -> dict[str, Any]:
        """What the confined kernel sees: its workspace, bridge and a private /tmp writable;
        the repository hidden but its objects (which the workspace borrows) readable."""
        tmp = os.path.join(self.root, "tmp")
        os.makedirs(os.path.join(tmp, "home"), mode=0o700, exist_ok=True)
        return isolation.kernel_view(
            writable=[self.path, self.bridge_dir],
            private_tmp=tmp,
            readable=[*isolation.git_readable(target.git_dir), *self.spec.readable],
            hidden=isolation.git_hidden(target.git_dir),
        )

    def _install_runtime(self) -> None:
        # Which agent this sandbox serves (a pooled one's directory is named pool-<n>).
        with open(os.path.join(self.root, "agent"), "w") as fh:
            fh.write(self.spec.agent_id + "\n")
        cfg = dict(self.spec.runtime_cfg)
        cfg["secret"] = self.secret
        cfg["bridge_dir"] = self.bridge_dir
        if self.spec.context is not NO_CONTEXT:
            path = os.path.join(self.bridge_dir, "context.pickle")
            try:
                transfer.write_new(path, pickle.dumps(self.spec.context, protocol=4))
            except SandboxError:
                raise
            except Exception as exc:
                raise SandboxError(
                    f"the context cannot be sent to the sandbox (not picklable: {exc})"
                ) from exc
            cfg["context_path"] = path
        code = (
            "import rlm_kernel.sandbox.runtime as _rlm_runtime\n"
            f"_rlm_runtime.install(get_ipython(), __import__('json').loads({json.dumps(cfg)!r}))\n"
            "del _rlm_runtime\n"
        )
        res = self._run(code, timeout=60, cancel=None, on_output=None, silent=True, wrap=False)
        if res.error:
            raise SandboxError(f"could not install the REPL runtime in the sandbox: {res.error}")

    def close(self) -> None:
        """Stop the kernel and remove the worktree (unless kept) and every temporary file."""
        with self._close_lock:
            if self.closed:
                return
            self.closed = True
        with self._query_lock:
            self._stop_query_client()
        if self.kernel is not None:
            self.kernel.shutdown()
        if self.spec.keep:
            shutil.rmtree(self.bridge_dir, ignore_errors=True)
            shutil.rmtree(os.path.join(self.root, "kernel"), ignore_errors=True)
            open(os.path.join(self.root, "kept"), "w").close()
            return
        if self._workspace_made:
            workspace.remove_workspace(self.spec.target, self.path)
        shutil.rmtree(self.root, ignore_errors=True)
        run_dir = os.path.dirname(self.root)
        with contextlib.suppress(OSError):
            os.rmdir(run_dir)  # the last sandbox of a run removes the run's directory

    # -- execution ------------------------------------------------------------------------------
    def execute(
        self,
        code: str,
        *,
        timeout: float,
        cancel: threading.Event | None = None,
        on_output: OutputHook | None = None,
        store_history: bool = True,
        stdin_hook: StdinHook | None = None,
        msg_id: str | None = None,
        user_expressions: dict[str, str] | None = None,
    ) -> CellResult:
        """Run one cell with the bridge open for it (and stdin answered by `stdin_hook`); with
        `msg_id`, as that request, returning the kernel's execute_reply in `CellResult.reply`."""
        return self._run(
            code,
            timeout=timeout,
            cancel=cancel,
            on_output=on_output,
            silent=False,
            wrap=True,
            store_history=store_history,
            stdin_hook=stdin_hook,
            msg_id=msg_id,
            user_expressions=user_expressions,
        )

    # -- completion and inspection --------------------------------------------------------------
    def complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        """The kernel's `complete_reply` content (answered by a subshell, also while a cell runs)."""
        return self._request("complete_request", {"code": code, "cursor_pos": cursor_pos})

    def inspect(self, code: str, cursor_pos: int, detail_level: int = 0) -> dict[str, Any]:
        """The kernel's `inspect_reply` content for the name at `cursor_pos`."""
        content = {"code": code, "cursor_pos": cursor_pos, "detail_level": detail_level}
        return self._request("inspect_request", content)

    def _request(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        with self._query_lock:
            kernel = self.kernel
            if kernel is None or self.closed:
                raise SandboxError(f"sandbox {self.id} is not running")
            client, subshell = self._query_client(kernel)
            msg = client.session.msg(msg_type, content)
            if subshell is not None:
                msg["header"]["subshell_id"] = subshell
            client.shell_channel.send(msg)
            reply = _reply_to(client.get_shell_msg, msg["header"]["msg_id"], QUERY_TIMEOUT_S)
            if reply is None:
                self._stop_query_client()  # a late reply must not answer the next request
                raise SandboxError(f"sandbox {self.id} did not answer {msg_type} in time")
            return dict(reply["content"])

    def _query_client(self, kernel: KernelHandle) -> tuple[_Client, str | None]:
        """The query client for the kernel's current connection file (a restart changes it)."""
        if self._query is not None and self._query[0] == kernel.connection_file:
            return self._query[1], self._query[2]
        self._stop_query_client()
        client = _Client(context=_zmq_context())
        client.load_connection_file(kernel.connection_file)
        client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=True)
        subshell: str | None = None
        msg = client.session.msg("create_subshell_request", {})
        client.control_channel.send(msg)
        reply = _reply_to(client.get_control_msg, msg["header"]["msg_id"], QUERY_TIMEOUT_S)
        if reply is not None and reply["content"].get("status") == "ok":
            subshell = reply["content"].get("subshell_id")
        self._query = (kernel.connection_file, client, subshell)
        return client, subshell

    def _stop_query_client(self) -> None:
        if self._query is not None:
            with contextlib.suppress(Exception):
                self._query[1].stop_channels()
            self._query = None

    def namespace_after_cell(self) -> list[dict[str, Any]]:
        """The summary the last cell's end sent (`snapshot_on_end`), else a fresh snapshot."""
        if self._fresh_namespace:
            return self.namespace
        return self.snapshot()

    def snapshot(self) -> list[dict[str, Any]]:
        """Ask the runtime for its namespace summary (arrives as a bridge notice)."""
        res = self._run(
            "__rlm__.snapshot()", timeout=30, cancel=None, on_output=None, silent=True, wrap=True
        )
        if res.error:
            return self.namespace
        return self.namespace

    def reset_agent(self) -> None:
        """Run the runtime's reset()."""
        res = self._run(
            "__rlm__.reset()", timeout=30, cancel=None, on_output=None, silent=True, wrap=False
        )
        if res.error:
            raise SandboxError(f"could not reset the sandbox's REPL runtime: {res.error}")

    def push(self, name: str, value: Any) -> None:
        """Pickle `value` into the bridge directory and load it into the namespace as `name`."""
        if not name.isidentifier():
            raise SandboxError(f"{name!r} is not a valid variable name")
        path = os.path.join(self.bridge_dir, f"push-{os.urandom(6).hex()}.pickle")
        try:
            blob = pickle.dumps(value, protocol=4)
        except Exception as exc:
            raise SandboxError(
                f"{name}: the value cannot be sent to the sandbox (not picklable: {exc})"
            ) from exc
        transfer.write_new(path, blob)
        code = (
            f"import pickle as _p, os as _o\nwith open({path!r}, 'rb') as _f:\n    {name} = _p.load(_f)\n"
            f"_o.unlink({path!r})\ndel _p, _o, _f\n"
        )
        res = self._run(code, timeout=60, cancel=None, on_output=None, silent=True, wrap=False)
        if res.error:
            raise SandboxError(f"could not set {name} in the sandbox: {res.error}")

    def pull(self, name: str, *, as_text: bool = False) -> Any:
        """The REPL variable `name` as plain data (or `str(value)`), computed in the sandbox.

        Only JSON text crosses (see `transfer`); KeyError when it does not exist.
        """
        path = os.path.join(self.bridge_dir, f"pull-{os.urandom(6).hex()}.json")
        code = transfer.pull_code(name, path, as_text)
        try:
            res = self._run(code, timeout=60, cancel=None, on_output=None, silent=True, wrap=False)
            if res.error:
                raise SandboxError(f"could not read {name} from the sandbox: {res.error}")
            text = transfer.read_file(path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return transfer.decode(text, name)

    def host_path(self, path: str) -> str:
        """The host's path for a path the sandbox's code made: under bwrap its /tmp is private
        (`<sandbox>/tmp` on the host), so a repository a notebook cell created in a temporary
        directory is found there; any other path, or one that exists here, is returned as is."""
        if not self.isolation.confined or not os.path.isabs(path) or os.path.exists(path):
            return path
        rel = os.path.relpath(os.path.normpath(path), "/tmp")
        if rel.startswith(".."):
            return path
        mapped = os.path.join(self.root, "tmp", rel)
        return mapped if os.path.exists(mapped) else path

    def set_workspace(self, target: workspace.Target) -> None:
        """Give the REPL a fresh workspace of `target` and chdir the kernel into it."""
        old_target, old_path = self.spec.target, self.path
        new_path = os.path.join(self.root, f"work-{os.urandom(3).hex()}")
        base = workspace.create_workspace(target, new_path)
        if self.kernel is not None and self.isolation.confined:
            try:
                self.kernel.add_paths(
                    readable=isolation.git_readable(target.git_dir),
                    writable=[new_path],
                    hidden=isolation.git_hidden(target.git_dir),
                )
            except Exception as exc:
                workspace.remove_workspace(target, new_path)
                raise SandboxError(
                    f"could not show the new workspace to the sandbox: {exc}"
                ) from exc
        res = self._run(
            f"import os as _o\n_o.chdir({new_path!r})\nif '__rlm__' in globals(): __rlm__.workspace = _o.getcwd()\ndel _o\n",
            timeout=30,
            cancel=None,
            on_output=None,
            silent=True,
            wrap=False,
        )
        if res.error:
            workspace.remove_workspace(target, new_path)
            raise SandboxError(f"could not move the sandbox to the new workspace: {res.error}")
        self.spec.target, self.path, self.base_commit = target, new_path, base
        if self._workspace_made:
            workspace.remove_workspace(old_target, old_path)
        self._workspace_made = True

    def diff(self) -> str:
        """The workspace's changes against the base commit, new files included.

        Computed by the host with its own git dir (never the workspace's `.git`, which the agent
        controls); raises TargetError when it cannot be computed (e.g. the workspace is gone).
        """
        if not self._workspace_made:
            return ""
        return workspace.diff(self.path)

    def _run(
        self,
        code: str,
        *,
        timeout: float,
        cancel: threading.Event | None,
        on_output: OutputHook | None,
        silent: bool,
        wrap: bool,
        store_history: bool = False,
        stdin_hook: StdinHook | None = None,
        msg_id: str | None = None,
        user_expressions: dict[str, str] | None = None,
    ) -> CellResult:
        kernel = self.kernel
        if kernel is None or self.closed:
            raise SandboxError(f"sandbox {self.id} is not running")
        with self._exec_lock:
            self._fresh_namespace = False
            kc = kernel.client
            exec_id = os.urandom(8).hex()
            ids: list[str] = []
            # A visible cell is wrapped by the runtime's IPython hooks (one request); a silent
            # one (no hooks run) by begin and end requests around it.
            hooked = wrap and not silent
            if wrap:
                self.bridge.begin(exec_id)
            if wrap and not hooked:
                ids.append(
                    kc.execute(f"__rlm__.begin({exec_id!r})", silent=True, store_history=False)
                )
            content = {
                "code": code,
                "silent": silent,
                "store_history": store_history and not silent,
                "user_expressions": user_expressions or {},
                "allow_stdin": stdin_hook is not None,
                "stop_on_error": False,
            }
            meta = {}
            if hooked:
                meta["cellId"] = f"{CELL_PREFIX}{exec_id}:{int(self.snapshot_on_end)}"
            msg = kc.session.msg("execute_request", content, metadata=meta)
            if msg_id is not None:
                msg["header"]["msg_id"] = msg["msg_id"] = msg_id
            kc.shell_channel.send(msg)
            main = msg["header"]["msg_id"]
            ids.append(main)
            if wrap and not hooked:
                ids.append(kc.execute("__rlm__.end()", silent=True, store_history=False))
            try:
                res = self._collect(kernel, main, ids, timeout, cancel, on_output, stdin_hook)
                if msg_id is not None and not res.namespace_lost and not res.reply:
                    reply = _reply_to(kc.get_shell_msg, main, REPLY_TIMEOUT_S)
                    if reply is not None:
                        res.reply = dict(reply.get("content") or {})
                return res
            finally:
                self.bridge.end()
                _drain(kc)

    def _collect(
        self,
        kernel: KernelHandle,
        main: str,
        ids: list[str],
        timeout: float,
        cancel: threading.Event | None,
        on_output: OutputHook | None,
        stdin_hook: StdinHook | None = None,
    ) -> CellResult:
        kc = kernel.client
        parser = FrameParser()
        parts = OutputBuffer()
        res = CellResult()
        t0 = time.monotonic()
        deadline = t0 + timeout
        interrupted_at: float | None = None
        waiting = set(ids)
        last_alive_check = t0
        replied_at: float | None = None  # when the main request's execute_reply came

        def handle(msg: dict[str, Any]) -> None:
            parent = msg.get("parent_header", {}).get("msg_id")
            if parent not in ids:
                return
            mtype = msg["msg_type"]
            content = msg["content"]
            if mtype == "status":
                if content.get("execution_state") == "idle":
                    waiting.discard(parent)
                return
            if mtype == "stream":
                text, frames = parser.feed(content.get("text", ""))
                for raw in frames:
                    self.bridge.dispatch(raw)
                if parent != main:
                    return
                if text:
                    parts.append(text)
                    if on_output is not None:
                        on_output({"msg_type": "stream", "content": {**content, "text": text}})
                return
            if parent != main:
                return
            if on_output is not None:
                on_output(msg)
            res.outputs.append({"msg_type": mtype, "content": content})
            if mtype in ("execute_result", "display_data"):
                data = content.get("data", {})
                if "text/plain" in data:
                    parts.append(str(data["text/plain"]) + "\n")
                else:
                    kinds = ", ".join(sorted(data)) or "empty"
                    parts.append(f"<display: {kinds}>\n")
            elif mtype == "error":
                tb = strip_ansi("\n".join(content.get("traceback", [])))
                head = f"{content.get('ename', 'Error')}: {content.get('evalue', '')}"
                res.error = tb if head.split(":")[0] in tb else f"{head}\n{tb}"
                parts.append(res.error.rstrip() + "\n")
                if res.status == "ok":
                    res.status = "error"

        while waiting:
            now = time.monotonic()
            if interrupted_at is None:
                if cancel is not None and cancel.is_set():
                    res.status = "cancelled"
                    kernel.interrupt()
                    interrupted_at = now
                elif now > deadline:
                    res.status = "timeout"
                    kernel.interrupt()
                    interrupted_at = now
            elif now - interrupted_at > INTERRUPT_GRACE_S:
                # The cell ignores interrupts: restart, the namespace is lost.
                self.bridge.end()
                kernel.restart()
                write_owner(self.root, kernel.pid)
                self._install_runtime()
                res.status = "restarted"
                break
            if now - last_alive_check > 0.2:
                last_alive_check = now
                if not kernel.is_alive():
                    res.status = "died"
                    break
            if stdin_hook is not None and interrupted_at is None:
                request = _input_request(kc, main)
                if request is not None:
                    # Show what the cell printed before it asked (iopub and stdin race).
                    for msg in _pending(kc.get_iopub_msg):
                        handle(msg)
                    try:
                        value = stdin_hook(
                            str(request.get("prompt", "")), bool(request.get("password"))
                        )
                    except Exception:
                        # The hook gave up (the user interrupted): stop the waiting cell.
                        if res.status == "ok":
                            res.status = "cancelled"
                        kernel.interrupt()
                        interrupted_at = time.monotonic()
                    else:
                        kc.input(value)
                    continue
            try:
                msg = kc.get_iopub_msg(timeout=0.05)
            except queue.Empty:
                # iopub is quiet: if the cell replied long ago, its idle status was lost (a
                # zmq queue overflowed); do not wait for it for ever.
                if main not in waiting:
                    continue
                if replied_at is None:
                    for reply in _pending(kc.get_shell_msg):
                        if reply.get("parent_header", {}).get("msg_id") == main:
                            replied_at = time.monotonic()
                            res.reply = dict(reply.get("content") or {})
                elif time.monotonic() - replied_at > LOST_IDLE_S:
                    log.warning("sandbox %s: a cell's idle status was lost", self.id)
                    waiting.clear()
                continue
            except _MALFORMED:  # the cell can publish anything on its kernel's iopub: skip it
                continue
            handle(msg)
        rest = parser.flush()
        if rest:
            parts.append(rest)
        res.output = parts.getvalue()
        res.elapsed_s = time.monotonic() - t0
        if res.status == "died":
            res.error = (res.error or "") + (
                f"The sandbox's Python process died during this cell: {kernel.death()} "
                "(its variables are lost; no other agent is affected)."
            )
        return res


def _input_request(kc: Any, main: str) -> dict[str, Any] | None:
    """The content of an `input_request` of cell `main` waiting on the stdin channel, if any."""
    for msg in _pending(kc.get_stdin_msg):
        if msg["msg_type"] == "input_request" and msg["parent_header"].get("msg_id") == main:
            return dict(msg["content"])
    return None


# What jupyter_client raises for a message it cannot decode (bad signature, not JSON, no header).
_MALFORMED = (ValueError, KeyError, TypeError)


def _pending(get: Any) -> list[dict[str, Any]]:
    """Every message already waiting on a channel (`get` is a client's get_*_msg); malformed
    ones are skipped."""
    out: list[dict[str, Any]] = []
    while True:
        try:
            out.append(get(timeout=0))
        except queue.Empty:
            return out
        except _MALFORMED:
            continue


def _reply_to(get: Any, msg_id: str, timeout: float) -> dict[str, Any] | None:
    """The reply to request `msg_id` from a channel (`get` is a client's get_*_msg); None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            msg: dict[str, Any] = get(timeout=left)
        except queue.Empty:
            return None
        if msg.get("parent_header", {}).get("msg_id") == msg_id:
            return msg


def _drain(kc: Any) -> None:
    """Discard shell replies and stale stdin requests; nobody reads them and they would pile up."""
    for get in (kc.get_shell_msg, kc.get_stdin_msg):
        with contextlib.suppress(Exception):
            _pending(get)
