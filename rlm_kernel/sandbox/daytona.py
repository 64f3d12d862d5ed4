"""The Daytona backend: one Daytona sandbox per agent, its code-interpreter context as the REPL.

Uses the `daytona` SDK (pinned). Credentials: `DAYTONA_API_KEY`, `DAYTONA_API_URL`,
`DAYTONA_TARGET` from the environment or `.env`; `RLM_DAYTONA_SNAPSHOT` names a prepared snapshot
(anything with Python 3 and git; the runtime is stdlib-only, so nothing is pip-installed).

Per agent: the sandbox is created with labels `rlm-run`/`rlm-agent` (so `rlm cleanup --sandbox
daytona` finds leftovers) and auto-stop off; the workspace is a clone of the run's base commit
(a local repository travels as a `git bundle` upload; a URL is cloned through Daytona's git API);
one code-interpreter context runs the cells. The in-sandbox runtime is uploaded as a file and
installed into the context's globals with the same configuration as the local backend; cells are
wrapped in `__rlm__.begin/end` and run by `__rlm__.run_cell`, bridge frames are parsed from the
streamed stdout, and replies are delivered as uploaded files. A sentinel variable detects a
context that Daytona restarted empty (after a timeout): the runtime is reinstalled and the model
is told its variables are lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shlex
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import transfer, workspace
from .base import Capabilities, Cell, CellResult, OutputHook, Sandbox, SandboxError, SandboxSpec
from .bridge import Bridge, new_secret
from .cells import CellCollector
from .daytona_api import (
    AGENT_LABEL,
    RUN_LABEL,
    bundle_of,
    check_credentials,
    cleanup_daytona,
    credentials,
    daytona_client,
    is_url,
    scrub,
)

if TYPE_CHECKING:
    from ..config import RLMConfig

__all__ = ["DaytonaSandbox", "cleanup_daytona", "daytona_client"]

log = logging.getLogger(__name__)

CREATE_TIMEOUT_S = 120
_NO_LIMIT_S = 10.0**6  # a cell timeout this long means "none" (notebook cells)
RESTARTED = "the REPL was restarted by Daytona: variables are lost"
NO_STDIN = (
    "input() cannot be answered in a Daytona sandbox (its REPL has no stdin): put the value in "
    "the code, or use the local sandbox backend (sandbox.backend=local)"
)
_GIT = "git -c user.name=rlm -c user.email=rlm@localhost -c commit.gpgsign=false"


class DaytonaSandbox(transfer.Transfers, Sandbox):
    """A Daytona sandbox with one code-interpreter context."""

    backend = "daytona"
    # No Jupyter kernel, no stdin, no IPython history; a stopped cell takes its context with it.
    capabilities = Capabilities()

    def __init__(self, spec: SandboxSpec) -> None:
        super().__init__(spec)
        self.sandbox: Any = None
        self.ctx: Any = None
        self.root = ""
        self.bridge_dir = ""
        self.secret = new_secret()
        self.sentinel = os.urandom(8).hex()
        self.bridge = Bridge(self.secret, self._handle, self._deliver)
        self._exec_lock = threading.RLock()
        self._key = ""
        self._needs_context = False
        self._cell: CellCollector | None = None  # notices of the running cell land here

    # -- checks ---------------------------------------------------------------------------------
    @classmethod
    def check(cls, config: RLMConfig | None = None) -> None:
        """Credentials present and accepted by Daytona (raises SandboxError otherwise)."""
        check_credentials()

    @classmethod
    def cleanup(cls, run_id: str | None = None) -> list[str]:
        """Delete Daytona sandboxes left by rlm runs (see `cleanup_daytona`)."""
        return cleanup_daytona(run_id)

    # -- bridge plumbing ------------------------------------------------------------------------
    def _handle(self, op: str, args: dict[str, Any]) -> Any:
        if op == "snapshot":
            self.namespace = list(args.get("namespace") or [])
            self.answer_draft = str(args.get("answer") or "")
            return None
        if op in ("display", "cell_error"):
            cell = self._cell
            if cell is not None:
                cell.message(_output_message(op, args))
            return None
        return self.spec.handler(op, args)

    def _deliver(self, rid: str, data: bytes) -> None:
        self.sandbox.fs.upload_file(data, f"{self.bridge_dir}/{rid}.json")

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the sandbox, its workspace and context, and install the runtime."""
        from daytona import CreateSandboxFromSnapshotParams

        client = daytona_client()
        self._key = credentials()[0]
        labels = {RUN_LABEL: self.spec.run_id, AGENT_LABEL: self.spec.agent_id}
        params = CreateSandboxFromSnapshotParams(
            labels=labels,
            auto_stop_interval=0,
            language="python",
            snapshot=self.spec.snapshot or os.environ.get("RLM_DAYTONA_SNAPSHOT") or None,
        )
        try:
            self.sandbox = client.create(params, timeout=CREATE_TIMEOUT_S)
        except Exception as exc:
            raise SandboxError(
                f"Daytona could not create the sandbox for {self.spec.agent_id}: "
                f"{self._scrub(str(exc))}"
            ) from None
        self.id = str(self.sandbox.id)
        try:
            home = self.sandbox.get_user_home_dir().rstrip("/")
            self.root = f"{home}/rlm-{os.urandom(3).hex()}"
            self.bridge_dir = f"{self.root}/bridge"
            self._sh(f"mkdir -p {shlex.quote(self.bridge_dir)} {shlex.quote(self.root)}/pkg")
            self.path = f"{self.root}/work"
            self.base_commit = self._make_workspace(self.spec.target, self.path)
            self._upload_runtime()
            self._new_context()
        except SandboxError:
            raise
        except Exception as exc:
            raise SandboxError(
                f"could not set up the Daytona sandbox {self.id}: {self._scrub(str(exc))}"
            ) from None

    def _scrub(self, text: str) -> str:
        return scrub(text, self._key)

    def _sh(self, cmd: str, cwd: str | None = None, timeout: int = 300) -> str:
        res = self.sandbox.process.exec(cmd, cwd=cwd, timeout=timeout)
        if res.exit_code not in (0, None):
            raise SandboxError(f"`{cmd[:80]}` failed in the sandbox: {(res.result or '').strip()}")
        return str(res.result or "")

    def _make_workspace(self, target: workspace.Target, dest: str) -> str:
        q = shlex.quote(dest)
        if target.git_dir is None or target.commit is None:
            self._sh(
                f"git init -q {q} && cd {q} && {_GIT} commit -q --allow-empty -m 'rlm: empty workspace'"
            )
            return self._sh("git rev-parse HEAD", cwd=dest).strip()
        if is_url(target.origin):
            # Daytona's own git API clones the URL inside the sandbox.
            self.sandbox.git.clone(str(target.origin), dest, commit_id=target.commit)
        else:
            bundle = f"{self.root}/base.bundle"
            self.sandbox.fs.upload_file(bundle_of(target), bundle)
            self._sh(
                f"git init -q {q} && cd {q} && git fetch -q {shlex.quote(bundle)} "
                f"'refs/rlm-bundle/*:refs/rlm-bundle/*' && git checkout -q --detach "
                f"{target.commit} && rm -f {shlex.quote(bundle)}"
            )
        return target.commit

    def _upload_runtime(self) -> None:
        from daytona import FileUpload

        src = Path(__file__).with_name("runtime.py").read_bytes()
        pkg = f"{self.root}/pkg/rlm_kernel"
        self.sandbox.fs.upload_files(
            [
                FileUpload(source=b"", destination=f"{pkg}/__init__.py"),
                FileUpload(source=b"", destination=f"{pkg}/sandbox/__init__.py"),
                FileUpload(source=src, destination=f"{pkg}/sandbox/runtime.py"),
            ]
        )

    def _new_context(self) -> None:
        self.ctx = self.sandbox.code_interpreter.create_context(cwd=self.path)
        self._needs_context = False
        self._install_runtime()

    def _install_runtime(self) -> None:
        cfg = self.runtime_config()
        code = (
            f"import sys as _s, os as _o\n_s.path.insert(0, {self.root + '/pkg'!r})\n"
            f"_o.chdir({self.path!r})\n"
            "import rlm_kernel.sandbox.runtime as _rlm_runtime\n"
            f"_rlm_runtime.install(globals(), __import__('json').loads({json.dumps(cfg)!r}))\n"
            f"__rlm_sentinel__ = {self.sentinel!r}\n"
            f"def _no_stdin(*_a, **_k):\n    raise EOFError({NO_STDIN!r})\n"
            "__import__('builtins').input = _no_stdin\n"
            "del _rlm_runtime, _s, _o, _no_stdin\n"
        )
        res = self.sandbox.code_interpreter.run_code(code, context=self.ctx, timeout=120)
        if res.error is not None:
            raise SandboxError(
                f"could not install the REPL runtime in the sandbox: {res.error.name}: "
                f"{res.error.value}\n{res.error.traceback}"
            )

    def _remove(self) -> None:
        """Delete the Daytona sandbox (unless kept)."""
        self.bridge.end()
        sb = self.sandbox
        if sb is None:
            return
        if self.spec.keep:
            return
        for attempt in range(3):
            try:
                sb.delete(timeout=60)
                return
            except Exception as exc:  # never raise from close
                text = self._scrub(str(exc))
                if "not found" in text.lower() or "404" in text:
                    return
                log.warning("could not delete Daytona sandbox %s: %s", self.id, text)
                time.sleep(0.5 * (attempt + 1))

    # -- execution ------------------------------------------------------------------------------
    def run(self, cell: Cell) -> CellResult:
        """Run one cell in the context, with the bridge open for it. No Jupyter kernel, stdin or
        history here (see `capabilities`): `msg_id`, `user_expressions` and `store_history` are
        ignored, and `input()` raises EOFError saying so, with or without `stdin_hook`."""
        return self._run(
            cell.code, timeout=cell.timeout, cancel=cell.cancel, on_output=cell.on_output, wrap=True
        )

    def _wrapped(self, exec_id: str, code: str) -> str:
        return (
            f"if globals().get('__rlm_sentinel__') != {self.sentinel!r}:\n"
            f"    print('RLM-RESTARTED-{exec_id}')\n"
            "else:\n"
            f"    __rlm__.begin({exec_id!r})\n"
            "    try:\n"
            f"        __rlm__.run_cell({code!r})\n"
            "    finally:\n"
            "        __rlm__.end()\n"
        )

    def _run(
        self,
        code: str,
        *,
        timeout: float,
        cancel: threading.Event | None,
        on_output: OutputHook | None,
        wrap: bool,
    ) -> CellResult:
        if self.sandbox is None or self.closed:
            raise SandboxError(f"sandbox {self.id} is not running")
        with self._exec_lock:
            if self._needs_context:
                self._new_context()
            exec_id = os.urandom(8).hex()
            marker = f"RLM-RESTARTED-{exec_id}"
            source = self._wrapped(exec_id, code) if wrap else code
            col = CellCollector(self.bridge, on_output, timeout=timeout, cancel=cancel)
            lost: list[bool] = []
            self._cell = col
            self.bridge.begin(exec_id)
            box: dict[str, Any] = {}
            done = threading.Event()

            def stdout(text: str) -> None:
                if wrap and marker in text:  # the context was restarted empty: not run
                    lost.append(True)
                    text = text.replace(marker + "\n", "").replace(marker, "")
                col.stream("stdout", text)

            def work() -> None:
                try:
                    box["result"] = self.sandbox.code_interpreter.run_code(
                        source,
                        context=self.ctx,
                        on_stdout=lambda m: stdout(m.output),
                        on_stderr=lambda m: col.stream("stderr", m.output),
                        # 0 = no timeout (a notebook cell runs until it ends or is stopped)
                        timeout=0 if timeout >= _NO_LIMIT_S else max(1, math.ceil(timeout)),
                    )
                except BaseException as exc:  # reported below
                    box["error"] = exc
                finally:
                    done.set()

            threading.Thread(target=work, name=f"daytona-cell-{self.id}", daemon=True).start()
            try:
                while not done.wait(0.05):
                    # Daytona times the cell out itself; stop waiting 30 s after it should have.
                    reason = col.stop_reason(slack=30)
                    if reason is not None:
                        col.result.status = reason
                        break
            finally:
                self.bridge.end()
                self._cell = None
            self._settle(col, box, timeout, bool(lost))
            return col.finish()

    def _settle(self, col: CellCollector, box: dict[str, Any], timeout: float, lost: bool) -> None:
        """How the cell ended, beyond its outputs: stopped, timed out, cut off, restarted."""
        status = col.result.status
        if status in ("cancelled", "timeout"):
            # Let requests in flight (e.g. rlm_query waiting for cancelled children) end first,
            # so the children are finished and recorded before this agent.
            wait_until = time.monotonic() + 10
            while self.bridge.pending() and time.monotonic() < wait_until:
                time.sleep(0.02)
            # No interrupt API: drop the context (its cell dies with it) and make a new one
            # before the next cell; the variables are gone.
            self._drop_context()
            how = "cancelled" if status == "cancelled" else "stopped"
            col.fail(status, f"the cell was {how}; the REPL will be restarted: variables are lost")
        elif "error" in box:
            exc = box["error"]
            from daytona.common.errors import DaytonaTimeoutError

            if isinstance(exc, DaytonaTimeoutError):
                gone = self._restarted()
                if gone:
                    self._install_runtime()
                col.fail(
                    "restarted" if gone else "timeout",
                    f"TimeoutError: the cell did not finish within {timeout:g} s"
                    + (f"; {RESTARTED}" if gone else ""),
                )
            else:
                col.fail(
                    "error",
                    "ConnectionError: the connection to the Daytona sandbox was lost during "
                    f"this cell ({self._scrub(str(exc))}). The cell was NOT run again; it may "
                    "have run partly or completely, so check its effects before repeating it.",
                )
        elif lost:
            self._install_runtime()
            col.fail(
                "restarted",
                f"RuntimeError: {RESTARTED} (Daytona restarted the interpreter, e.g. after a "
                "timeout). This cell was not run; define what you need again.",
            )
        elif box["result"].error is not None and status == "ok":
            err = box["result"].error
            col.fail("error", (err.traceback or "").strip() or f"{err.name}: {err.value}")

    def _drop_context(self) -> None:
        ctx, self.ctx = self.ctx, None
        self._needs_context = True
        if ctx is not None:
            with contextlib.suppress(Exception):
                self.sandbox.code_interpreter.delete_context(ctx)

    def _restarted(self) -> bool:
        """True when the context lost its namespace (the sentinel is gone)."""
        try:
            r = self.sandbox.code_interpreter.run_code(
                f"print(globals().get('__rlm_sentinel__') == {self.sentinel!r})",
                context=self.ctx,
                timeout=30,
            )
        except Exception:
            self._drop_context()
            return True
        return "True" not in (r.stdout or "")

    def _quiet(self, code: str, what: str, timeout: int = 60) -> str:
        """Run helper code unwrapped (no bridge); returns stdout; SandboxError on failure."""
        with self._exec_lock:
            if self._needs_context:
                self._new_context()
            r = self.sandbox.code_interpreter.run_code(code, context=self.ctx, timeout=timeout)
        if r.error is not None:
            raise SandboxError(f"could not {what}: {r.error.name}: {r.error.value}")
        return str(r.stdout or "")

    def complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        """Completions from the context's namespace (none while a cell runs: one REPL, one cell)."""
        empty = {
            "status": "ok",
            "matches": [],
            "cursor_start": cursor_pos,
            "cursor_end": cursor_pos,
            "metadata": {},
        }
        return self._ask(f"__rlm__.complete({code!r}, {int(cursor_pos)})", empty)

    def inspect(self, code: str, cursor_pos: int, detail_level: int = 0) -> dict[str, Any]:
        """Type, value, signature and docstring of the name at the cursor, from the context."""
        nothing = {"status": "ok", "found": False, "data": {}, "metadata": {}}
        return self._ask(
            f"__rlm__.inspect({code!r}, {int(cursor_pos)}, {int(detail_level)})", nothing
        )

    def _ask(self, expr: str, default: dict[str, Any]) -> dict[str, Any]:
        """Evaluate a runtime query in the context and return its JSON reply (or `default`)."""
        if self.sandbox is None or self.closed or self._needs_context:
            return default
        if not self._exec_lock.acquire(blocking=False):
            return default  # a cell is running; Daytona runs one piece of code per context
        try:
            r = self.sandbox.code_interpreter.run_code(
                f"print('\\x1e' + __import__('json').dumps({expr}, default=str))",
                context=self.ctx,
                timeout=10,
            )
        except Exception as exc:
            log.warning("query in Daytona sandbox %s failed: %s", self.id, self._scrub(str(exc)))
            return default
        finally:
            self._exec_lock.release()
        text = str(r.stdout or "")
        if r.error is not None or "\x1e" not in text:
            return default
        try:
            reply = json.loads(text.rsplit("\x1e", 1)[1])
        except ValueError:
            return default
        return reply if isinstance(reply, dict) else default

    def snapshot(self) -> list[dict[str, Any]]:
        """Ask the runtime for its namespace summary (a bridge notice)."""
        with contextlib.suppress(Exception):
            self._run("__rlm__.snapshot()", timeout=30, cancel=None, on_output=None, wrap=True)
        return self.namespace

    def reset_agent(self) -> None:
        """Run the runtime's reset()."""
        self._quiet("__rlm__.reset()", "reset the sandbox's REPL runtime")

    # -- the primitives of `transfer.Transfers` (push, pull, the runtime's configuration) -------
    def _bridge_file(self, name: str) -> str:
        return f"{self.bridge_dir}/{name}"

    def _write_file(self, path: str, data: bytes) -> None:
        self.sandbox.fs.upload_file(data, path)

    def _read_file(self, path: str) -> str:
        data: bytes = self.sandbox.fs.download_file(path)
        if len(data) > transfer.MAX_PULL_BYTES:
            raise SandboxError("the value is too large to read back")
        return data.decode("utf-8", errors="replace")

    def _remove_file(self, path: str) -> None:
        with contextlib.suppress(Exception):
            self._sh(f"rm -f {shlex.quote(path)}")

    def set_workspace(self, target: workspace.Target) -> None:
        """Clone `target` into a new directory of the sandbox and chdir the context there."""
        old = self.path
        new = f"{self.root}/work-{os.urandom(3).hex()}"
        base = self._make_workspace(target, new)
        self._quiet(transfer.chdir_code(new), "move to the new workspace")
        self.spec.target, self.path, self.base_commit = target, new, base
        with contextlib.suppress(Exception):
            self._sh(f"rm -rf {shlex.quote(old)}")

    def diff(self) -> str:
        """`git add -A` and the diff against the base commit, inside the sandbox."""
        if self.sandbox is None or not self.path or not self.base_commit or self.closed:
            return ""
        return self._sh(
            f"git add -A 2>/dev/null && git diff --cached --binary {self.base_commit} 2>/dev/null",
            cwd=self.path,
        )


def _output_message(op: str, args: dict[str, Any]) -> dict[str, Any]:
    """A bridge notice (`display`, `cell_error`) as the Jupyter output message it stands for."""
    if op == "cell_error":
        text = str(args.get("traceback") or "").rstrip("\n")
        ename, evalue = str(args.get("ename") or "Error"), str(args.get("evalue") or "")
        return {
            "msg_type": "error",
            "content": {
                "ename": ename,
                "evalue": evalue,
                "traceback": text.split("\n") if text else [f"{ename}: {evalue}"],
            },
        }
    kind = "execute_result" if args.get("result") else "display_data"
    content: dict[str, Any] = {"data": args.get("data") or {}, "metadata": {}}
    if kind == "execute_result":
        content["execution_count"] = None
    return {"msg_type": kind, "content": content}
