"""The in-sandbox runtime: the REPL functions of every agent namespace, and the sandbox end of the bridge.

This module runs inside sandboxes (a local IPython kernel, or a Daytona code-interpreter context),
so it uses the standard library only and is uploaded as a single file where the package is not
installed. It never sees an API key: everything that needs the host (sub-agents, sub-LLM calls,
custom tools, final answers) is a bridge request.

Bridge protocol (version 1), shared by every backend:
- request: one frame written to the process's real stdout,
  ``\\x02RLM1:<base64 JSON body>:<hex HMAC-SHA256(secret, base64 body)>\\x03``;
  the body is ``{"id", "exec", "op", "args"}``. The host strips frames from the output it shows,
  drops frames whose HMAC does not verify (text a program prints cannot forge one) and frames whose
  ``exec`` is not the cell it is running (late requests of an interrupted cell).
- reply: the host writes ``<bridge_dir>/<id>.json`` = ``{"ok": true, "value": ...}`` or
  ``{"ok": false, "error": "..."}`` (atomically: written under another name, then renamed);
  the runtime polls for it.
- notices (no reply): op ``snapshot`` carries the namespace summary after an iteration;
  ``display`` carries a rich-display bundle and ``cell_error`` a cell's exception (backends whose
  REPL is not IPython, e.g. a Daytona code-interpreter context, see `Runtime.run_cell`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import inspect
import json
import os
import reprlib
import subprocess
import sys
import time
import uuid
from typing import Any

__all__ = ["FRAME_END", "FRAME_START", "RLMResult", "RunOutcome", "Runtime", "install"]

FRAME_START = "\x02RLM1:"
FRAME_END = "\x03"
# An IPython cell whose execute_request carries the metadata cellId ``CELL_PREFIX<exec>:<0|1>``
# is wrapped by the runtime's pre/post_run_cell hooks: begin(exec) before it, end(snapshot=bool)
# after it, in the same request (saves the host two round trips per cell).
CELL_PREFIX = "__rlm__:"

RESERVED = (
    "rlm_query",
    "rlm_query_batched",
    "llm_query",
    "llm_query_batched",
    "FINAL",
    "FINAL_VAR",
    "SUBMIT",
    "answer",
    "edit_file",
    "apply_patch",
    "SHOW_VARS",
    "context",
    "__rlm__",
)
_HIDDEN = {"In", "Out", "exit", "quit", "get_ipython", "open"}

# Shown with a widget displayed where no Jupyter kernel carries comm messages (a Daytona context).
WIDGET_NOTE = (
    "[{name} is a widget: widgets cannot show from a Daytona sandbox, which runs Python without "
    "a Jupyter kernel to carry their messages; the local sandbox backend shows them]"
)


class RLMResult(str):
    """What `rlm_query` returns: the child's answer, with `.agent_id` and `.patch` (its diff)."""

    agent_id: str
    patch: str
    status: str

    def __new__(
        cls, text: str, agent_id: str = "", patch: str = "", status: str = "done"
    ) -> RLMResult:
        obj = super().__new__(cls, text)
        obj.agent_id = agent_id
        obj.patch = patch
        obj.status = status
        return obj


class RunOutcome:
    """What a `%%rlm` cell binds to `-o VAR` and `_rlm`: answer, patch, status, usage, tree, paths.

    Plain attributes only, so it pickles into a sandbox that has nothing but this module.
    """

    run_id: str
    status: str
    answer: Any
    patch: str
    usage: dict[str, Any]
    elapsed_s: float
    record_path: str | None
    patch_path: str | None
    tree: dict[str, Any] | None
    error: str | None
    kept: list[dict[str, Any]]

    def __init__(self, **fields: Any) -> None:
        for name in self.__annotations__:
            setattr(self, name, fields.get(name))

    def __str__(self) -> str:
        a = self.answer
        return a if isinstance(a, str) else json.dumps(a, ensure_ascii=False, default=str)

    def __repr__(self) -> str:
        lines = (self.patch or "").splitlines()
        plus = sum(1 for ln in lines if ln[:1] == "+" and ln[:3] != "+++")
        minus = sum(1 for ln in lines if ln[:1] == "-" and ln[:3] != "---")
        answer = reprlib.repr(str(self))
        return f"<RunOutcome {self.run_id} {self.status}: answer={answer}, patch=+{plus}/-{minus}>"

    def _repr_markdown_(self) -> str:
        a = self.answer
        body = a if isinstance(a, str) else f"```json\n{json.dumps(a, indent=1, default=str)}\n```"
        return f"{body}\n\n*run `{self.run_id}`: {self.status}*"


class FinalAnswer(BaseException):
    """Raised by FINAL/FINAL_VAR/SUBMIT to stop the cell: code after FINAL does not run."""

    def _render_traceback_(self) -> list[str]:
        # IPython formats every uncaught exception for its history (pygments, stack_data: ~0.1 s
        # the first time in a kernel); a FINAL has no traceback worth showing.
        return []


class BridgeError(RuntimeError):
    """The host refused or failed a request; the message says why."""


class Runtime:
    """The sandbox side of one agent: injected functions, bridge client, snapshots."""

    def __init__(self, ns: dict[str, Any], cfg: dict[str, Any]) -> None:
        self.ns = ns
        self.cfg = cfg
        self.secret = cfg["secret"].encode()
        self.bridge_dir = cfg["bridge_dir"]
        # edit_file and apply_patch act inside this directory only (the backends chdir here)
        self.workspace = os.path.realpath(cfg.get("workspace") or os.getcwd())
        self.exec_id = ""
        self.finalized = False
        # Frames go to the stream that exists now, so a later redirect_stdout cannot swallow them.
        self._out = sys.stdout
        self.reserved: dict[str, Any] = {}
        self._baseline = set(ns)
        self._hooked: bool | None = None  # the running cell was begun by _pre_run_cell
        # An IPython kernel flushes stdout after every cell, before its reply and idle status:
        # a notice sent at a cell's end (the namespace summary) needs no flush of its own (in
        # ipykernel, a flush from the cell's thread waits for the IOPub thread: one thread hop
        # and one stream message more per cell). Set by install() in a kernel.
        self.kernel_flushes = False

    # -- bridge -------------------------------------------------------------------------------
    def _frame(self, body: dict[str, Any], *, flush: bool = True) -> None:
        raw = base64.b64encode(json.dumps(body).encode()).decode()
        sig = hmac.new(self.secret, raw.encode(), hashlib.sha256).hexdigest()
        self._out.write(f"{FRAME_START}{raw}:{sig}{FRAME_END}")
        if flush:
            self._out.flush()

    def call(self, op: str, **args: Any) -> Any:
        """Send a request to the host and block until its reply arrives."""
        rid = uuid.uuid4().hex
        try:
            self._frame({"id": rid, "exec": self.exec_id, "op": op, "args": args})
        except TypeError as exc:
            raise TypeError(f"{op}: arguments must be JSON-serializable ({exc})") from None
        path = os.path.join(self.bridge_dir, rid + ".json")
        # Poll for the reply: every 2 ms for the first second (sub-LLM calls, short children:
        # ~1 ms late on average), then every 10 ms (a few µs of CPU each).
        delay, started = 0.0005, time.monotonic()
        while not os.path.exists(path):
            time.sleep(delay)
            cap = 0.002 if time.monotonic() - started < 1.0 else 0.01
            delay = min(delay * 1.5, cap)
        for _ in range(3000):  # a reply uploaded in place (Daytona) may be read half-written
            try:
                with open(path, encoding="utf-8") as fh:
                    reply = json.load(fh)
                break
            except ValueError:
                time.sleep(0.01)
        else:
            raise BridgeError("the host's reply could not be read")
        with contextlib.suppress(OSError):
            os.unlink(path)
        if not reply.get("ok"):
            raise BridgeError(reply.get("error", "the host refused the request"))
        return reply.get("value")

    def notify(self, op: str, **args: Any) -> None:
        """Send a notice that needs no reply."""
        self._notify(op, args)

    def _notify(self, op: str, args: dict[str, Any], *, flush: bool = True) -> None:
        body = {"id": uuid.uuid4().hex, "exec": self.exec_id, "op": op, "args": args}
        self._frame(body, flush=flush)

    # -- cell lifecycle (called by the host around every cell) ----------------------------------
    def begin(self, exec_id: str) -> None:
        """Mark the start of a cell; requests carry this id."""
        self.exec_id = exec_id

    def end(self, snapshot: bool = False) -> None:
        """After a cell: honour a ready `answer` dict, then restore rebound reserved names.

        With `snapshot`, also send the namespace summary (saves the host a round trip).
        """
        ans = self.ns.get("answer")
        if not self.finalized and isinstance(ans, dict) and ans.get("ready"):
            self.finalized = True
            self.call("final", value=str(ans.get("content", "")), via="answer")
        for name, value in self.reserved.items():
            if name == "answer":
                if not isinstance(self.ns.get("answer"), dict):
                    self.ns["answer"] = {"content": "", "ready": False}
                continue
            if self.ns.get(name) is not value:
                self.ns[name] = value
        if snapshot:
            self.snapshot(flush=not self.kernel_flushes)
        self.exec_id = ""

    def _pre_run_cell(self, info: Any) -> None:
        """IPython hook: a cell sent with an rlm cell id begins (see CELL_PREFIX)."""
        cell_id = getattr(info, "cell_id", None)
        self._hooked = None
        if isinstance(cell_id, str) and cell_id.startswith(CELL_PREFIX):
            exec_id, _, snap = cell_id[len(CELL_PREFIX) :].partition(":")
            self._hooked = snap == "1"
            self.begin(exec_id)

    def _post_run_cell(self, result: Any) -> None:
        """IPython hook: end the cell that `_pre_run_cell` began (errors stay out of its output)."""
        snap, self._hooked = self._hooked, None
        if snap is not None:
            with contextlib.suppress(Exception):
                self.end(snapshot=snap)

    def run_cell(self, code: str) -> None:
        """Run a cell without IPython (Daytona): last expression shown, FINAL silent, errors sent.

        The exception of a failing cell goes to the host as a ``cell_error`` notice with a
        traceback of the cell's own frames; a FINAL/SUBMIT ends the cell without one.
        """
        import ast
        import traceback

        try:
            tree = ast.parse(code, "<cell>", "exec")
            last = None
            tail = tree.body[-1] if tree.body else None
            if isinstance(tail, ast.Expr):
                tree.body.pop()
                last = ast.Expression(tail.value)
            exec(compile(tree, "<cell>", "exec", dont_inherit=True), self.ns)
            if last is not None:
                value = eval(compile(last, "<cell>", "eval", dont_inherit=True), self.ns)
                if value is not None:
                    self.ns["_"] = value
                    self.display(value, result=True)
        except FinalAnswer:
            pass
        except BaseException as exc:
            tb = exc.__traceback__
            while tb is not None and tb.tb_frame.f_code.co_filename != "<cell>":
                tb = tb.tb_next
            text = "".join(traceback.format_exception(type(exc), exc, tb))
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            self.notify("cell_error", ename=type(exc).__name__, evalue=str(exc), traceback=text)
        finally:
            self._show_figures()

    def display(self, obj: Any, result: bool = False) -> None:
        """Send a rich-display bundle (text/plain, html, markdown, png, ...) to the host."""
        data: dict[str, Any] = {}
        for meth, mime in (
            ("_repr_html_", "text/html"),
            ("_repr_markdown_", "text/markdown"),
            ("_repr_svg_", "image/svg+xml"),
            ("_repr_png_", "image/png"),
            ("_repr_json_", "application/json"),
        ):
            fn = getattr(obj, meth, None)
            if callable(fn) and not isinstance(obj, type):
                try:
                    value = fn()
                except Exception:
                    continue
                if value is None:
                    continue
                if isinstance(value, tuple):
                    value = value[0]
                if isinstance(value, bytes):
                    value = base64.b64encode(value).decode()
                data[mime] = value
        try:
            data["text/plain"] = repr(obj)
        except Exception as exc:
            data["text/plain"] = f"<repr failed: {exc!r}>"
        if hasattr(obj, "_model_name") and hasattr(obj, "comm"):  # ipywidgets, anywidget
            data["text/plain"] += "\n" + WIDGET_NOTE.format(name=type(obj).__name__)
        self.notify("display", data=data, result=result)

    def _show_figures(self) -> None:
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        try:
            import io

            for num in plt.get_fignums():
                buf = io.BytesIO()
                plt.figure(num).savefig(buf, format="png", bbox_inches="tight")
                png = base64.b64encode(buf.getvalue()).decode()
                self.notify(
                    "display",
                    data={"image/png": png, "text/plain": f"<Figure {num}>"},
                    result=False,
                )
            plt.close("all")
        except Exception:
            pass

    def reset(self) -> None:
        """Forget a previous agent's ending (a new run's root agent takes over this REPL)."""
        self.finalized = False
        self.ns["answer"] = {"content": "", "ready": False}

    def variables(self) -> list[dict[str, Any]]:
        """Name, type, short repr and size of each user variable."""
        short = reprlib.Repr()
        short.maxstring = 120
        short.maxother = 120
        out = []
        for name, value in list(self.ns.items()):
            if name.startswith("_") or name in RESERVED or name in _HIDDEN:
                continue
            if name in self._baseline or inspect.ismodule(value):
                continue
            try:
                text = short.repr(value)
            except Exception as exc:  # a broken __repr__ must not break the snapshot
                text = f"<repr failed: {exc!r}>"
            try:
                size: int | None = len(value)
            except Exception:
                size = None
            out.append({"name": name, "type": type(value).__name__, "repr": text, "size": size})
            if len(out) >= 500:
                break
        return out

    # -- completion and inspection without IPython (Daytona contexts) ---------------------------
    def complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        """A ``complete_reply`` for the name before the cursor (globals, builtins, attributes)."""
        import re
        import rlcompleter

        pos = max(0, min(cursor_pos, len(code)))
        m = re.search(r"[A-Za-z_][\w.]*$", code[:pos])
        token = m.group(0) if m else ""
        matches: list[str] = []
        if token:
            completer = rlcompleter.Completer(self.ns)
            seen: set[str] = set()
            for state in range(1000):
                try:
                    found = completer.complete(token, state)
                except Exception:  # a property raising while attributes are listed
                    break
                if found is None:
                    break
                found = found.rstrip("(")
                if found not in seen:
                    seen.add(found)
                    matches.append(found)
        return {
            "status": "ok",
            "matches": matches,
            "cursor_start": pos - len(token),
            "cursor_end": pos,
            "metadata": {},
        }

    def inspect(self, code: str, cursor_pos: int, detail_level: int = 0) -> dict[str, Any]:
        """An ``inspect_reply``: type, value, signature and docstring of the name at the cursor.

        The dotted name is looked up attribute by attribute (no ``eval``), in the namespace and
        then among the builtins.
        """
        import builtins
        import re

        pos = max(0, min(cursor_pos, len(code)))
        name = ""
        for m in re.finditer(r"[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*", code):
            if m.start() <= pos <= m.end():
                name = m.group(0)
                break
        if not name and pos:  # the cursor right after `f(`: inspect `f`
            m2 = re.search(r"([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)\s*\(?\s*$", code[:pos])
            name = m2.group(1) if m2 else ""
        head, *rest = name.split(".") if name else [""]
        missing = object()
        obj: Any = self.ns.get(head, getattr(builtins, head, missing)) if head else missing
        for part in rest:
            if obj is missing:
                break
            try:
                obj = getattr(obj, part)
            except Exception:
                obj = missing
        if obj is missing:
            return {"status": "ok", "found": False, "data": {}, "metadata": {}}
        short = reprlib.Repr()
        short.maxstring = short.maxother = 200
        lines = [f"Type:      {type(obj).__name__}"]
        with contextlib.suppress(Exception):
            lines.append(f"String form: {short.repr(obj)}")
        if callable(obj):
            with contextlib.suppress(TypeError, ValueError):
                lines.append(f"Signature: {name}{inspect.signature(obj)}")
        doc = inspect.getdoc(obj)
        if doc:
            lines.append("Docstring:\n" + doc)
        if detail_level:
            with contextlib.suppress(Exception):
                lines.append("Source:\n" + inspect.getsource(obj))
        return {
            "status": "ok",
            "found": True,
            "data": {"text/plain": "\n".join(lines)},
            "metadata": {},
        }

    def snapshot(self, *, flush: bool = True) -> None:
        """Send the namespace summary to the host (after each iteration)."""
        ans = self.ns.get("answer")
        content = ans.get("content") if isinstance(ans, dict) else None
        args = {"namespace": self.variables(), "answer": str(content or "")}
        self._notify("snapshot", args, flush=flush)


def _make_functions(rt: Runtime) -> dict[str, Any]:
    cfg = rt.cfg

    def rlm_query(task: str, context: Any = None) -> RLMResult:
        """Run a sub-agent on `task` in its own sandbox; returns its final answer (str with .patch)."""
        r = rt.call("rlm_query", tasks=[str(task)], contexts=[context])[0]
        return RLMResult(r["text"], r.get("agent_id", ""), r.get("patch", ""), r.get("status", ""))

    def rlm_query_batched(tasks: list[str], contexts: list[Any] | None = None) -> list[RLMResult]:
        """Run one sub-agent per task, all in parallel; answers in the same order."""
        tasks = [str(t) for t in tasks]
        ctx = list(contexts) if contexts is not None else [None] * len(tasks)
        if len(ctx) != len(tasks):
            raise ValueError("rlm_query_batched: contexts must have one entry per task")
        rs = rt.call("rlm_query", tasks=tasks, contexts=ctx)
        return [
            RLMResult(r["text"], r.get("agent_id", ""), r.get("patch", ""), r.get("status", ""))
            for r in rs
        ]

    def llm_query(prompt: str, model: str | None = None) -> str:
        """One plain LLM call (no REPL, no tools); returns the reply text."""
        return str(rt.call("llm_query", prompts=[str(prompt)], model=model)[0])

    def llm_query_batched(prompts: list[str], model: str | None = None) -> list[str]:
        """Plain LLM calls for every prompt, concurrently; replies in the same order."""
        return [
            str(x) for x in rt.call("llm_query", prompts=[str(p) for p in prompts], model=model)
        ]

    def FINAL(answer: Any) -> None:
        """Submit the final answer and stop; code after FINAL does not run."""
        rt.finalized = True
        rt.call("final", value=answer if isinstance(answer, str) else str(answer), via="FINAL")
        raise FinalAnswer()

    def FINAL_VAR(name: str) -> None:
        """Submit the value of the variable `name` as the final answer."""
        name = str(name).strip().strip("'\"")
        if name not in rt.ns:
            avail = ", ".join(v["name"] for v in rt.variables()) or "(none)"
            raise NameError(f"FINAL_VAR: no variable named {name!r}; variables: {avail}")
        value = rt.ns[name]
        rt.finalized = True
        rt.call("final", value=value if isinstance(value, str) else str(value), via="FINAL_VAR")
        raise FinalAnswer()

    def SUBMIT(**fields: Any) -> None:
        """Submit typed output fields (see the task's signature); wrong names or types are reported."""
        try:
            json.dumps(fields)
        except TypeError as exc:
            raise TypeError(
                f"SUBMIT: values must be JSON-serializable ({exc}); convert them, e.g. with "
                ".tolist() or .to_dict()"
            ) from None
        rt.call("submit", fields=fields)  # raises BridgeError listing the problems
        rt.finalized = True
        raise FinalAnswer()

    def edit_file(path: str, old: str, new: str) -> str:
        """Replace the one exact occurrence of `old` with `new` in `path`; .py files must still compile."""
        real = os.path.realpath(path)
        if os.path.commonpath([real, rt.workspace]) != rt.workspace:
            raise PermissionError(
                f"edit_file: {path} is outside the workspace {rt.workspace}; "
                "edit the workspace's files only"
            )
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        count = text.count(old)
        if count == 0:
            raise ValueError(f"edit_file: the old text was not found in {path}")
        if count > 1:
            raise ValueError(
                f"edit_file: the old text occurs {count} times in {path}; include more context so it is unique"
            )
        updated = text.replace(old, new, 1)
        if str(path).endswith(".py"):
            try:
                compile(updated, str(path), "exec")
            except SyntaxError as exc:
                raise SyntaxError(f"edit_file: the edit would break {path}: {exc}") from None
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(updated)
        return f"edited {path}"

    def apply_patch(patch: str) -> str:
        """Apply a unified diff (e.g. a child's `.patch`) to this workspace with `git apply`."""
        patch = str(patch)
        if not patch.strip():
            return "apply_patch: empty patch, nothing to do"
        proc = subprocess.run(
            ["git", "apply", "--whitespace=nowarn", "-"],
            input=patch if patch.endswith("\n") else patch + "\n",
            capture_output=True,
            text=True,
            cwd=rt.workspace,  # paths relative to the workspace; git refuses any that leave it
        )
        if proc.returncode != 0:
            raise RuntimeError(f"apply_patch: git apply failed: {proc.stderr.strip()}")
        return "patch applied"

    def SHOW_VARS() -> None:
        """Print the variables of this namespace (name, type, size, short repr)."""
        rows = rt.variables()
        if not rows:
            print("(no variables)")
        for v in rows:
            size = "" if v["size"] is None else f" len={v['size']}"
            print(f"{v['name']}: {v['type']}{size} = {v['repr']}")

    fns: dict[str, Any] = {
        "llm_query": llm_query,
        "llm_query_batched": llm_query_batched,
        "FINAL": FINAL,
        "FINAL_VAR": FINAL_VAR,
        "SUBMIT": SUBMIT,
        "edit_file": edit_file,
        "apply_patch": apply_patch,
        "SHOW_VARS": SHOW_VARS,
        "rlm_query": rlm_query,
        "rlm_query_batched": rlm_query_batched,
    }
    for spec in cfg.get("tools", []):
        fns[spec["name"]] = _make_tool(rt, spec)
    return fns


def _make_tool(rt: Runtime, spec: dict[str, Any]) -> Any:
    name = spec["name"]

    def tool(*args: Any, **kwargs: Any) -> Any:
        return rt.call("tool", name=name, args=list(args), kwargs=kwargs)

    tool.__name__ = tool.__qualname__ = name
    tool.__doc__ = spec.get("doc") or None
    try:  # give the proxy the host function's signature, for help() and the model's eyes
        src = f"from __future__ import annotations\ndef _f{spec.get('signature') or '(*args, **kwargs)'}: pass"
        scope: dict[str, Any] = {}
        exec(src, scope)
        tool.__signature__ = inspect.signature(scope["_f"])  # type: ignore[attr-defined]
    except Exception:
        pass
    return tool


def _flushed_after_cells(shell: Any) -> bool:
    """Whether `shell` is an ipykernel kernel's (which flushes stdout after every cell)."""
    return getattr(shell, "kernel", None) is not None and hasattr(sys.stdout, "pub_thread")


def install(target: Any, cfg: dict[str, Any]) -> Runtime:
    """Inject the REPL functions into a namespace (an IPython shell or a globals dict)."""
    shell = None
    if isinstance(target, dict):
        ns = target
    else:
        shell = target
        ns = shell.user_ns
    rt = Runtime(ns, cfg)
    fns = _make_functions(rt)
    ns.update(fns)
    ns["answer"] = {"content": "", "ready": False}
    ctx_path = cfg.get("context_path")
    if ctx_path:
        import pickle

        with open(ctx_path, "rb") as fh:
            ns["context"] = pickle.load(fh)
    ns["__rlm__"] = rt
    rt.reserved = {k: ns[k] for k in RESERVED if k in ns}
    rt._baseline = set(ns) - set(RESERVED)
    if shell is None:
        # No IPython (a Daytona context): a display() that sends bundles through the bridge.
        def display(*objs: Any) -> None:
            """Show objects richly in the notebook (HTML, images, ...), like IPython's display()."""
            for obj in objs:
                rt.display(obj)

        def _no_input(prompt: str = "") -> str:
            raise RuntimeError(
                "input() cannot read from the notebook in a Daytona sandbox (its REPL has no "
                "stdin): put the value in the code, or use the local backend (--sandbox local)"
            )

        ns.setdefault("display", display)
        ns.setdefault("input", _no_input)
        rt._baseline |= {"display", "input"}
        os.environ.setdefault("MPLBACKEND", "Agg")
    if shell is not None:

        def _quiet(shell: Any, etype: Any, value: Any, tb: Any, tb_offset: Any = None) -> None:
            return None  # FINAL ends the cell silently; the host knows why

        shell.set_custom_exc((FinalAnswer,), _quiet)
        old = getattr(shell, "_rlm_runtime", None)
        if old is not None:  # installed again in the same kernel: the new runtime takes over
            with contextlib.suppress(ValueError):
                shell.events.unregister("pre_run_cell", old._pre_run_cell)
                shell.events.unregister("post_run_cell", old._post_run_cell)
        shell.events.register("pre_run_cell", rt._pre_run_cell)
        shell.events.register("post_run_cell", rt._post_run_cell)
        shell._rlm_runtime = rt
        rt.kernel_flushes = _flushed_after_cells(shell)
    return rt
