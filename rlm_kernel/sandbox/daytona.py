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
import pickle
import shlex
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import transfer, workspace
from .base import (
    NO_CONTEXT,
    CellResult,
    OutputBuffer,
    OutputHook,
    Sandbox,
    SandboxError,
    SandboxSpec,
    StdinHook,
)
from .bridge import Bridge, FrameParser, new_secret

if TYPE_CHECKING:
    from ..config import RLMConfig

__all__ = ["DaytonaSandbox", "cleanup_daytona", "daytona_client"]

log = logging.getLogger(__name__)

RUN_LABEL = "rlm-run"
AGENT_LABEL = "rlm-agent"
CREATE_TIMEOUT_S = 120
_NO_LIMIT_S = 10.0**6  # a cell timeout this long means "none" (notebook cells)
RESTARTED = "the REPL was restarted by Daytona: variables are lost"
_GIT = "git -c user.name=rlm -c user.email=rlm@localhost -c commit.gpgsign=false"

_clients: dict[tuple[str, str, str], Any] = {}
_clients_lock = threading.Lock()
_bundles: dict[tuple[str, str], bytes] = {}
_bundles_lock = threading.Lock()


def _credentials() -> tuple[str, str, str]:
    """(api key, api url, target) from the environment, then `.env`; a clear error without a key."""
    from ..config import load_dotenv_file

    with contextlib.suppress(Exception):
        load_dotenv_file()
    key = os.environ.get("DAYTONA_API_KEY", "").strip()
    url = os.environ.get("DAYTONA_API_URL", "").strip() or "https://app.daytona.io/api"
    target = os.environ.get("DAYTONA_TARGET", "").strip()
    if not key:
        raise SandboxError(
            "the daytona sandbox backend needs DAYTONA_API_KEY (in the environment or in .env; "
            "create a key at https://app.daytona.io/dashboard/keys); DAYTONA_API_URL and "
            "DAYTONA_TARGET are optional"
        )
    return key, url, target


def _scrub(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text


def daytona_client() -> Any:
    """A shared `daytona.Daytona` client for the current credentials."""
    key, url, target = _credentials()
    with _clients_lock:
        client = _clients.get((key, url, target))
        if client is None:
            from daytona import Daytona, DaytonaConfig

            try:
                client = Daytona(DaytonaConfig(api_key=key, api_url=url, target=target or None))
            except Exception as exc:
                raise SandboxError(
                    f"cannot connect to Daytona at {url}: {_scrub(str(exc), key)}"
                ) from None
            _clients[(key, url, target)] = client
    return client


def _check_credentials() -> None:
    """One cheap authenticated call, so a wrong key fails before anything is created."""
    from daytona import ListSandboxesQuery

    key, url, _ = _credentials()
    client = daytona_client()
    try:
        for _sb in client.list(ListSandboxesQuery(labels={RUN_LABEL: "-"}, limit=1)):
            break
    except Exception as exc:
        text = _scrub(str(exc), key)
        if "401" in text or "403" in text or "nauthori" in text or "credential" in text.lower():
            raise SandboxError(
                f"Daytona rejected the API key (DAYTONA_API_KEY) at {url}: {text}"
            ) from None
        raise SandboxError(f"cannot reach Daytona at {url}: {text}") from None


def _bundle(target: workspace.Target) -> bytes:
    """A `git bundle` of the target's base commit (and its history), cached."""
    assert target.git_dir is not None and target.commit is not None
    key = (target.git_dir, target.commit)
    with _bundles_lock:
        data = _bundles.get(key)
        if data is not None:
            return data
        with tempfile.TemporaryDirectory(prefix="rlm-bundle-") as tmp:
            out = os.path.join(tmp, "base.bundle")
            workspace.bundle(target, out)
            data = Path(out).read_bytes()
        if len(_bundles) >= 4:
            _bundles.clear()
        _bundles[key] = data
        return data


def _is_url(text: str | None) -> bool:
    return bool(text) and ("://" in str(text) or str(text).startswith("git@"))


class DaytonaSandbox(Sandbox):
    """A Daytona sandbox with one code-interpreter context."""

    backend = "daytona"

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
        self._cell: dict[str, Any] | None = None  # notices of the running cell land here

    # -- checks ---------------------------------------------------------------------------------
    @classmethod
    def check(cls, config: RLMConfig | None = None) -> None:
        """Credentials present and accepted by Daytona (raises SandboxError otherwise)."""
        _check_credentials()

    # -- bridge plumbing ------------------------------------------------------------------------
    def _handle(self, op: str, args: dict[str, Any]) -> Any:
        if op == "snapshot":
            self.namespace = list(args.get("namespace") or [])
            self.answer_draft = str(args.get("answer") or "")
            return None
        if op in ("display", "cell_error"):
            cell = self._cell
            if cell is not None:
                cell["events"].append((op, args))
                hook = cell.get("on_output")
                if hook is not None:
                    hook(_output_message(op, args))
            return None
        return self.spec.handler(op, args)

    def _deliver(self, rid: str, data: bytes) -> None:
        self.sandbox.fs.upload_file(data, f"{self.bridge_dir}/{rid}.json")

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the sandbox, its workspace and context, and install the runtime."""
        from daytona import CreateSandboxFromSnapshotParams

        client = daytona_client()
        self._key = _credentials()[0]
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
        return _scrub(text, self._key)

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
        if _is_url(target.origin):
            # Daytona's own git API clones the URL inside the sandbox.
            self.sandbox.git.clone(str(target.origin), dest, commit_id=target.commit)
        else:
            bundle = f"{self.root}/base.bundle"
            self.sandbox.fs.upload_file(_bundle(target), bundle)
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
        cfg = dict(self.spec.runtime_cfg)
        cfg["secret"] = self.secret
        cfg["bridge_dir"] = self.bridge_dir
        if self.spec.context is not NO_CONTEXT:
            try:
                blob = pickle.dumps(self.spec.context, protocol=4)
            except Exception as exc:
                raise SandboxError(
                    f"the context cannot be sent to the sandbox (not picklable: {exc})"
                ) from exc
            cfg["context_path"] = f"{self.bridge_dir}/context.pickle"
            self.sandbox.fs.upload_file(blob, cfg["context_path"])
        code = (
            f"import sys as _s, os as _o\n_s.path.insert(0, {self.root + '/pkg'!r})\n"
            f"_o.chdir({self.path!r})\n"
            "import rlm_kernel.sandbox.runtime as _rlm_runtime\n"
            f"_rlm_runtime.install(globals(), __import__('json').loads({json.dumps(cfg)!r}))\n"
            f"__rlm_sentinel__ = {self.sentinel!r}\n"
            "del _rlm_runtime, _s, _o\n"
        )
        res = self.sandbox.code_interpreter.run_code(code, context=self.ctx, timeout=120)
        if res.error is not None:
            raise SandboxError(
                f"could not install the REPL runtime in the sandbox: {res.error.name}: "
                f"{res.error.value}\n{res.error.traceback}"
            )

    def close(self) -> None:
        """Delete the Daytona sandbox (idempotent, never raises)."""
        with self._close_lock:
            if self.closed:
                return
            self.closed = True
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
        """Run one cell in the context, with the bridge open for it (no Jupyter kernel here:
        `msg_id` and `user_expressions` are ignored)."""
        return self._run(code, timeout=timeout, cancel=cancel, on_output=on_output, wrap=True)

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
            parser = FrameParser()
            parts = OutputBuffer()
            res = CellResult()
            cell: dict[str, Any] = {"events": [], "on_output": on_output}
            self._cell = cell
            self.bridge.begin(exec_id)
            box: dict[str, Any] = {}
            done = threading.Event()

            def emit(name: str, text: str) -> None:
                if name == "stdout":
                    text, frames = parser.feed(text)
                    for raw in frames:
                        self.bridge.dispatch(raw)
                if text:
                    parts.append(text)
                    if on_output is not None:
                        on_output({"msg_type": "stream", "content": {"name": name, "text": text}})

            def work() -> None:
                try:
                    box["result"] = self.sandbox.code_interpreter.run_code(
                        source,
                        context=self.ctx,
                        on_stdout=lambda m: emit("stdout", m.output),
                        on_stderr=lambda m: emit("stderr", m.output),
                        # 0 = no timeout (a notebook cell runs until it ends or is stopped)
                        timeout=0 if timeout >= _NO_LIMIT_S else max(1, math.ceil(timeout)),
                    )
                except BaseException as exc:  # reported below
                    box["error"] = exc
                finally:
                    done.set()

            t0 = time.monotonic()
            threading.Thread(target=work, name=f"daytona-cell-{self.id}", daemon=True).start()
            try:
                while not done.wait(0.05):
                    if cancel is not None and cancel.is_set():
                        res.status = "cancelled"
                        break
                    if timeout < _NO_LIMIT_S and time.monotonic() - t0 > timeout + 30:
                        res.status = "timeout"  # the daemon did not end it: stop waiting
                        break
            finally:
                self.bridge.end()
                self._cell = None
            rest = parser.flush()
            if rest:
                parts.append(rest)
            output = parts.getvalue()
            if res.status in ("cancelled", "timeout"):
                # Let requests in flight (e.g. rlm_query waiting for cancelled children) end first,
                # so the children are finished and recorded before this agent.
                wait_until = time.monotonic() + 10
                while self.bridge.pending() and time.monotonic() < wait_until:
                    time.sleep(0.02)
                # No interrupt API: drop the context (its cell dies with it) and make a new one
                # before the next cell; the variables are gone.
                self._drop_context()
                res.error = (
                    f"the cell was {'cancelled' if res.status == 'cancelled' else 'stopped'}; "
                    "the REPL will be restarted: variables are lost"
                )
            elif "error" in box:
                exc = box["error"]
                from daytona.common.errors import DaytonaTimeoutError

                if isinstance(exc, DaytonaTimeoutError):
                    res.status = "timeout"
                    lost = self._restarted()
                    res.error = f"TimeoutError: the cell did not finish within {timeout:g} s" + (
                        f"; {RESTARTED}" if lost else ""
                    )
                    if lost:
                        res.status = "restarted"
                        self._install_runtime()
                else:
                    res.status = "error"
                    res.error = (
                        "ConnectionError: the connection to the Daytona sandbox was lost during "
                        f"this cell ({self._scrub(str(exc))}). The cell was NOT run again; it may "
                        "have run partly or completely, so check its effects before repeating it."
                    )
            else:
                result = box["result"]
                if wrap and marker in output:
                    output = output.replace(marker + "\n", "").replace(marker, "")
                    self._install_runtime()
                    res.status = "restarted"
                    res.error = (
                        f"RuntimeError: {RESTARTED} (Daytona restarted the interpreter, e.g. "
                        "after a timeout). This cell was not run; define what you need again."
                    )
                elif result.error is not None:
                    err = result.error
                    res.status = "error"
                    res.error = (err.traceback or "").strip() or f"{err.name}: {err.value}"
            for op, args in cell["events"]:
                res.outputs.append(_output_message(op, args))
                if op == "cell_error":
                    res.status = "error"
                    res.error = str(args.get("traceback") or "").strip() or (
                        f"{args.get('ename')}: {args.get('evalue')}"
                    )
                elif op == "display":
                    data = args.get("data") or {}
                    kind = "execute_result" if args.get("result") else "display_data"
                    if ("text/plain" in data and len(data) == 1) or kind == "execute_result":
                        output += str(data.get("text/plain", "")) + "\n"
                    else:
                        output += f"<display: {', '.join(sorted(data))}>\n"
            if res.error and res.status != "ok":
                output += res.error.rstrip() + "\n"
            res.output = output
            res.elapsed_s = time.monotonic() - t0
            return res

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

    def push(self, name: str, value: Any) -> None:
        """Upload a pickle of `value` and load it into the namespace as `name`."""
        if not name.isidentifier():
            raise SandboxError(f"{name!r} is not a valid variable name")
        try:
            blob = pickle.dumps(value, protocol=4)
        except Exception as exc:
            raise SandboxError(
                f"{name}: the value cannot be sent to the sandbox (not picklable: {exc})"
            ) from exc
        path = f"{self.bridge_dir}/push-{os.urandom(6).hex()}.pickle"
        self.sandbox.fs.upload_file(blob, path)
        self._quiet(
            f"import pickle as _p, os as _o\nwith open({path!r}, 'rb') as _f:\n    {name} = _p.load(_f)\n"
            f"_o.unlink({path!r})\ndel _p, _o, _f\n",
            f"set {name} in the sandbox",
        )

    def pull(self, name: str, *, as_text: bool = False) -> Any:
        """The context's variable `name` as plain data (or `str(value)`), computed in the sandbox.

        Only JSON text crosses (see `transfer`); KeyError when it does not exist.
        """
        path = f"{self.bridge_dir}/pull-{os.urandom(6).hex()}.json"
        self._quiet(transfer.pull_code(name, path, as_text), f"read {name} from the sandbox")
        try:
            data = self.sandbox.fs.download_file(path)
        finally:
            with contextlib.suppress(Exception):
                self._sh(f"rm -f {shlex.quote(path)}")
        if len(data) > transfer.MAX_PULL_BYTES:
            raise SandboxError(f"{name}: the value is too large to read back")
        return transfer.decode(data.decode("utf-8", errors="replace"), name)

    def set_workspace(self, target: workspace.Target) -> None:
        """Clone `target` into a new directory of the sandbox and chdir the context there."""
        old = self.path
        new = f"{self.root}/work-{os.urandom(3).hex()}"
        base = self._make_workspace(target, new)
        self._quiet(
            f"import os as _o\n_o.chdir({new!r})\nif '__rlm__' in globals(): __rlm__.workspace = _o.getcwd()\ndel _o\n",
            "move to the new workspace",
        )
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


def cleanup_daytona(run_id: str | None = None) -> list[str]:
    """Delete Daytona sandboxes left by rlm runs (all, or one run's), found by the `rlm-run` label."""
    from . import require_sdk

    require_sdk("daytona")
    from daytona import ListSandboxesQuery

    _check_credentials()
    client = daytona_client()
    found: list[Any] = []
    for sb in client.list(ListSandboxesQuery()):
        labels = dict(getattr(sb, "labels", None) or {})
        if RUN_LABEL in labels and (run_id is None or labels[RUN_LABEL] == run_id):
            found.append(sb)
    removed: list[str] = []
    for sb in found:
        try:
            sb.delete(timeout=60)
            removed.append(
                f"{sb.id} ({sb.labels.get(RUN_LABEL)}/{sb.labels.get(AGENT_LABEL, '?')})"
            )
        except Exception as exc:
            log.warning("could not delete Daytona sandbox %s: %s", sb.id, exc)
    return removed
