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
import shutil
import threading
from typing import Any

from ..config import sandbox_env
from ..paths import tmp_root
from . import base, isolation, spare, transfer, workspace
from .base import Capabilities, Cell, CellResult, Sandbox, SandboxError, SandboxSpec
from .bridge import Bridge, new_secret
from .cells import CellCollector
from .cleanup import cleanup_local, write_adopted, write_owner
from .kernelcell import QueryClient, run_cell
from .kernels import KernelHandle, shutdown_all, start_kernel

__all__ = ["LocalSandbox"]

log = logging.getLogger(__name__)


class LocalSandbox(transfer.Transfers, Sandbox):
    """A worktree and an IPython kernel on this machine."""

    backend = "local"
    capabilities = Capabilities(
        pool=True,
        jupyter=True,
        stdin=True,
        history=True,
        interrupt=True,
        isolation=True,
        host_files=True,
    )

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
        self._query = QueryClient(self.id)  # completion and inspection, also while a cell runs
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

    @classmethod
    def cleanup(cls, run_id: str | None = None) -> list[str]:
        """Remove local sandboxes whose owning process is gone (see `cleanup.cleanup_local`),
        and this process's spare root sandbox (`sandbox.spare`)."""
        spare.discard()
        return cleanup_local(run_id)

    @classmethod
    def shutdown(cls) -> None:
        """Close the spare root sandbox, stop every kernel this process started, and the fork
        servers."""
        spare.discard()
        shutdown_all()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the worktree, start the kernel and install the runtime (a forked kernel
        installs it during its start: one execute request less per sandbox)."""
        self.prepare(install=True)
        self._install_runtime()

    def bind(self, spec: SandboxSpec) -> None:
        """Hand this prepared (pooled) sandbox to an agent: take its spec, install the runtime."""
        if spec.run_id != self.spec.run_id or spec.target != self.spec.target:
            raise SandboxError("a pooled sandbox can only serve an agent of its own run and target")
        if self.closed or self.kernel is None or not self.kernel.is_alive():
            raise SandboxError(f"the pooled sandbox {self.id} is not running")
        self.spec = spec
        self._install_runtime()

    def adopt(self, spec: SandboxSpec) -> None:
        """Give this spare root sandbox (started for no run: `sandbox.spare`) to a run's root
        agent: its spec, a fresh workspace of its target (as `set_workspace` gives one) and,
        when its runtime configuration differs (a context), the runtime again. Raises
        SandboxError when it cannot serve (e.g. its kernel died while idle)."""
        kernel = self.kernel
        if self.closed or kernel is None or not kernel.is_alive():
            raise SandboxError(f"the spare sandbox {self.id} is not running")
        if spec.target != self.spec.target:
            self.set_workspace(spec.target)
        started_with = self.spec.runtime_cfg
        self.spec = spec
        write_adopted(self.root, spec.run_id)
        if spec.runtime_cfg != started_with or spec.context is not base.NO_CONTEXT:
            self._install_runtime()  # again: the new runtime takes over (and loads the context)
        else:
            with open(os.path.join(self.root, "agent"), "w") as fh:
                fh.write(spec.agent_id + "\n")

    def prepare(self, cancel: threading.Event | None = None, install: bool = False) -> None:
        """Create the worktree and start the kernel (no runtime yet: see bind(); with `install`,
        a forked kernel installs it at start-up, from a file in the bridge directory)."""
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
        runtime_file = None
        if install:
            runtime_file = self._runtime_file()
            transfer.write_new(runtime_file, json.dumps(self.runtime_config()).encode())
        self.kernel = start_kernel(
            self.path,
            env,
            runtime_dir=os.path.join(self.root, "kernel"),
            isolation=iso,
            view=view,
            runtime_file=runtime_file,
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

    def _runtime_file(self) -> str:
        """Where prepare(install=True) leaves the runtime's configuration for the kernel."""
        return os.path.join(self.bridge_dir, ".runtime.json")

    def _install_runtime(self) -> None:
        # Which agent this sandbox serves (a pooled one's directory is named pool-<n>).
        with open(os.path.join(self.root, "agent"), "w") as fh:
            fh.write(self.spec.agent_id + "\n")
        kernel = self.kernel
        if kernel is not None and kernel.runtime_installed:
            kernel.runtime_installed = False  # once: a restarted kernel gets it from a request
            return
        with contextlib.suppress(OSError):
            os.unlink(self._runtime_file())  # not taken (subprocess launcher, or it failed)
        cfg = self.runtime_config()
        code = (
            "import rlm_kernel.sandbox.runtime as _rlm_runtime\n"
            f"_rlm_runtime.install(get_ipython(), __import__('json').loads({json.dumps(cfg)!r}))\n"
            "del _rlm_runtime\n"
        )
        self._quiet(code, "install the REPL runtime in the sandbox")

    def _remove(self) -> None:
        """Stop the kernel and remove the worktree (unless kept) and every temporary file."""
        self._query.close()
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
    def run(self, cell: Cell) -> CellResult:
        """Run one cell with the bridge open for it (and stdin answered by `stdin_hook`); with
        `msg_id`, as that request, returning the kernel's execute_reply in `CellResult.reply`."""
        return self._run(
            cell.code,
            timeout=cell.timeout,
            cancel=cell.cancel,
            on_output=cell.on_output,
            silent=False,
            wrap=True,
            store_history=cell.store_history,
            stdin_hook=cell.stdin_hook,
            msg_id=cell.msg_id,
            user_expressions=cell.user_expressions,
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
        return self._query.request(None if self.closed else self.kernel, msg_type, content)

    def kernel_connection(self) -> str:
        """The running kernel's connection file (for the widget comms relay); "" when it is not
        running (closed, or died)."""
        kernel = self.kernel
        if kernel is None or self.closed or not kernel.is_alive():
            return ""
        return kernel.connection_file

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
        self._quiet("__rlm__.reset()", "reset the sandbox's REPL runtime", timeout=30)

    # -- the primitives of `transfer.Transfers` (push, pull, the runtime's configuration) -------
    def _bridge_file(self, name: str) -> str:
        return os.path.join(self.bridge_dir, name)

    def _write_file(self, path: str, data: bytes) -> None:
        transfer.write_new(path, data)

    def _read_file(self, path: str) -> str:
        return transfer.read_file(path)

    def _remove_file(self, path: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)

    def _quiet(self, code: str, what: str, timeout: int = 60) -> str:
        res = self._run(code, timeout=timeout, cancel=None, on_output=None, silent=True, wrap=False)
        if res.error:
            raise SandboxError(f"could not {what}: {res.error}")
        return res.output

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
        try:
            self._quiet(transfer.chdir_code(new_path), "move the sandbox to the new workspace", 30)
        except SandboxError:
            workspace.remove_workspace(target, new_path)
            raise
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
        on_output: base.OutputHook | None,
        silent: bool,
        wrap: bool,
        store_history: bool = False,
        stdin_hook: base.StdinHook | None = None,
        msg_id: str | None = None,
        user_expressions: dict[str, str] | None = None,
    ) -> CellResult:
        kernel = self.kernel
        if kernel is None or self.closed:
            raise SandboxError(f"sandbox {self.id} is not running")
        with self._exec_lock:
            self._fresh_namespace = False
            exec_id = os.urandom(8).hex()
            if wrap:
                self.bridge.begin(exec_id)
            col = CellCollector(self.bridge, on_output, timeout=timeout, cancel=cancel)
            try:
                return run_cell(
                    kernel,
                    code,
                    col,
                    name=self.id,
                    exec_id=exec_id,
                    silent=silent,
                    wrap=wrap,
                    snapshot_on_end=self.snapshot_on_end,
                    restart=self._restart,
                    store_history=store_history,
                    stdin_hook=stdin_hook,
                    msg_id=msg_id,
                    user_expressions=user_expressions,
                )
            finally:
                self.bridge.end()

    def _restart(self) -> None:
        """Restart the kernel (a cell ignored its interrupt) and reinstall the runtime."""
        assert self.kernel is not None
        self.kernel.restart()
        write_owner(self.root, self.kernel.pid)
        self._install_runtime()
