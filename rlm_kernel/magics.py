"""`%%rlm` (start a run) and `%rlm` (control and inspect runs): the notebook's face of the engine.

`register(shell, kernel=None)` installs both on a shell, plus an input transformer that turns a
`%%rlm` cell into `await run_cell_async(line, body)`, so the cell *awaits* its run on the kernel's
event loop and widget messages (Stop, Step) keep flowing. `get_ipython().run_cell_magic("rlm",
…)` still works and blocks (Ctrl-C cancels the run).
"""

from __future__ import annotations

import argparse
import keyword
import os
import re
import shlex
import textwrap
import time
from typing import TYPE_CHECKING, Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand

from . import display
from .config import MAGIC, SETTINGS
from .session import RLMSession, RunHandle

if TYPE_CHECKING:
    from .session import KernelLike

__all__ = [
    "RLMMagics",
    "RunInterrupted",
    "register",
    "run_cell_async",
    "session_for",
    "transform_cell",
    "unregister",
]

_SESSIONS: dict[int, RLMSession] = {}
_CELL = re.compile(r"%%rlm(?:[ \t]+(.*))?$")


class RunInterrupted(KeyboardInterrupt):
    """An interrupt (the Stop button, Ctrl-C) cancelled a `%%rlm` run.

    IPython shows it as one line: the frames of the cell transform and of this module say
    nothing to the user (the partial answer is shown above it).
    """

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31mKeyboardInterrupt\x1b[0m: {self}"]


class _HelpShown(Exception):
    """`-h` printed the help; nothing else to do."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (with the usage) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}\n{self.format_usage().strip()}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            raise UsageError(message.strip())
        raise _HelpShown()


def cell_parser() -> argparse.ArgumentParser:
    """The options of `%%rlm` (the cell body is the task)."""
    p = _Parser(
        prog="%%rlm",
        description="Run a Recursive Language Model on the cell's task ({var} is replaced by a "
        "variable's value; {{ and }} are literal braces).",
        allow_abbrev=False,
    )
    p.add_argument("--repo", metavar="URL_OR_PATH", help="git repository the agents work on")
    p.add_argument("-b", "--branch", help="branch of --repo (default: its HEAD)")
    p.add_argument("--commit", metavar="SHA", help="commit of --repo (overrides --branch)")
    p.add_argument("--context", metavar="VAR", help="give this variable's value as `context`")
    p.add_argument("--signature", metavar="SIG", help="typed SUBMIT, e.g. 'q: str -> a: int'")
    p.add_argument("-o", "--out", metavar="VAR", help="bind the result object to VAR (and _rlm)")
    p.add_argument("--step", action="store_true", help="stop before every code block")
    p.add_argument("--background", action="store_true", help="return at once; control later")
    SETTINGS.add_flags(p, MAGIC)  # --model, --sandbox, --max-depth, …: the settings table
    p.add_argument("--quiet", action="store_true", help="show only the answer and the patch")
    p.add_argument("--config", metavar="FILE", help="YAML config file (default ./config.yaml)")
    return p


SUBCOMMANDS: dict[str, str] = {
    "help": "this help",
    "config [KEY=VALUE …] [--reset [KEY …]]": "show the effective config, or set session defaults",
    "repo [URL_OR_PATH] [-b BRANCH] [--commit SHA]": "the workspace of later runs",
    "status": "running and finished runs of this session",
    "runs": "runs of this session and of results/index.json",
    "tree [RUN]": "the agent tree of a live or recorded run",
    "result [RUN]": "show a run's answer, patch and summary again",
    "step [--run RUN] [--code FILE_VAR_OR_CODE]": "let one iteration run (optionally your code)",
    "wait [--gate] [--timeout S] [--run RUN]": "block until the run ends (--gate: or an agent "
    "waits at the step gate, shown with its proposed code)",
    "continue [--run RUN]": "leave step mode: run freely",
    "pause [--run RUN]": "hold every agent before its next code",
    "cancel [AGENT] [--run RUN]": "cancel the run, or one agent and its sub-tree",
    "ns AGENT [--live] [--run RUN]": "an agent's variables (recorded snapshot, or live)",
    "attach AGENT [--run RUN]": "run the next cells in a kept agent's sandbox (RLM kernel)",
    "detach": "back to the notebook's own sandbox",
    "release": "remove the kept sandboxes of this session's runs",
}


def line_parser() -> argparse.ArgumentParser:
    """The subcommands of `%rlm`."""
    p = _Parser(prog="%rlm", add_help=False, allow_abbrev=False)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for spec, text in SUBCOMMANDS.items():
        name = spec.split()[0]
        sp = sub.add_parser(name, help=text, description=text, allow_abbrev=False)
        if name == "config":
            sp.add_argument("pairs", nargs="*", metavar="KEY=VALUE")
            sp.add_argument("--reset", nargs="*", metavar="KEY", help="drop session defaults")
        elif name == "repo":
            sp.add_argument("repo", nargs="?", metavar="URL_OR_PATH")
            sp.add_argument("-b", "--branch")
            sp.add_argument("--commit", metavar="SHA")
        elif name in ("tree", "result"):
            sp.add_argument("ref", nargs="?", metavar="RUN")
        elif name in ("ns", "attach"):
            sp.add_argument("agent", metavar="AGENT")
        elif name == "cancel":
            sp.add_argument("agent", nargs="?", metavar="AGENT")
        if name == "ns":
            sp.add_argument("--live", action="store_true", help="read the live namespace")
        if name == "wait":
            sp.add_argument("--gate", action="store_true", help="also return at the step gate")
            sp.add_argument("--timeout", type=float, default=600.0, metavar="S")
        if name in ("step", "wait", "continue", "pause", "cancel", "ns", "attach"):
            sp.add_argument("--run", metavar="RUN", help="a run id (default: the latest)")
    return p


def help_text() -> str:
    """`%rlm help`: the cell options and the subcommands."""
    width = max(len(s) for s in SUBCOMMANDS)
    rows = "\n".join(f"  %rlm {s:<{width}}  {t}" for s, t in SUBCOMMANDS.items())
    return (
        f"{cell_parser().format_help().rstrip()}\n\n%rlm subcommands:\n{rows}\n\n"
        "Commands that act on a run default to the most recent run of this session."
    )


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot parse the options: {exc}") from None


def _expand(session: RLMSession, tokens: list[str]) -> list[str]:
    """`{var}` in an option or argument → `str(var)` from the namespace (`{{`/`}}`: braces).

    Token by token, after splitting, so a value with spaces stays one argument. Tokens without
    a brace are left alone (and never start the notebook's sandbox).
    """
    return [session.interpolate(t) if "{" in t or "}" in t else t for t in tokens]


# -- %%rlm ----------------------------------------------------------------------------------------


def start_cell(
    session: RLMSession, line: str, body: str, *, awaited: bool = False
) -> RunHandle | None:
    """Parse, validate (nothing is created on an error), start and show a `%%rlm` run."""
    from .config import ConfigError
    from .llm import LLMError
    from .sandbox.base import SandboxError
    from .sandbox.workspace import TargetError
    from .signature import SignatureError

    try:
        args = cell_parser().parse_args(_expand(session, _split(line)))
    except _HelpShown:
        return None
    if args.out is not None and (not args.out.isidentifier() or keyword.iskeyword(args.out)):
        raise UsageError(f"-o/--out needs a variable name, got {args.out!r}")
    if args.context is not None and not args.context.isidentifier():
        raise UsageError(f"--context needs a variable name, got {args.context!r}")
    if not body.strip():
        raise UsageError("%%rlm: the cell body is the task, and it is empty")
    if args.step and not args.background and not (awaited and session.notebook):
        # Nothing could press Step: the cell blocks, or there are no buttons (terminal).
        raise UsageError("--step here needs --background; then step with %rlm step / continue")
    try:
        return _start(session, args, body)
    except (ConfigError, TargetError, LLMError, SandboxError, SignatureError) as exc:
        raise UsageError(str(exc)) from None


def _start(session: RLMSession, args: argparse.Namespace, body: str) -> RunHandle:
    from .runner import Run
    from .sandbox.base import NO_CONTEXT

    config = session.config(SETTINGS.overrides_from(args, MAGIC), args.config)
    task = session.interpolate(body.strip())
    common: dict[str, Any] = {"config": config, "signature": args.signature, "step": args.step}
    kernel = session.kernel
    if kernel is not None:
        if args.repo:
            args.repo = kernel.host_path(args.repo)  # e.g. made in the sandbox's private /tmp
        session.check_root_free()
        # Check repository, API key and backend before anything moves.
        probe = Run(task, args.repo, branch=args.branch, commit=args.commit, **common)
        probe.prepare()
        desc = session.bind_context(args.context) if args.context else None
        if args.repo:
            kernel.set_root_target(probe.target)
            session.repo = (args.repo, args.branch, args.commit)
        target = kernel.root_target
        run = Run(
            task,
            target.origin if target.is_repo else None,
            branch=target.branch,
            commit=target.commit,
            root_sandbox=kernel.root_sandbox,  # started (if not yet) during the first LLM call
            context_desc=desc,
            **common,
        )
    else:
        repo, branch, commit = (args.repo, args.branch, args.commit) if args.repo else session.repo
        context = NO_CONTEXT
        if args.context:
            try:
                context = session.get(args.context)
            except KeyError:
                raise UsageError(f"--context: no variable named {args.context}") from None
        run = Run(task, repo, branch=branch, commit=commit, context=context, **common)
    view = display.RunView(run, quiet=args.quiet, notebook=session.notebook)
    run.subscribe(view)
    run.start()
    try:
        handle = RunHandle(
            session,
            run,
            view,
            out_var=args.out,
            quiet=args.quiet,
            background=args.background,
            in_root_sandbox=kernel is not None,
        )
        session.add(handle)
        view.start(step_controls=args.step and session.notebook)
        if args.background:
            if session.notebook:  # outputs a finished background run fills in
                handle.slots = [display.show({"text/plain": ""}, display_id=True) for _ in range(3)]
            handle.watch()
    except BaseException:  # Stop (or a display error) before the cell holds the run: end it
        run.cancel(reason="interrupted while starting")
        raise
    return handle


async def run_cell_async(line: str, body: str) -> None:
    """What a transformed `%%rlm` cell awaits: start the run, then await it (unless background)."""
    from IPython import get_ipython

    try:
        handle = start_cell(session_for(get_ipython()), line, body, awaited=True)
    except KeyboardInterrupt:  # Stop while the run was being checked and started
        raise RunInterrupted(
            "%%rlm interrupted while its run was starting; nothing of it keeps running"
        ) from None
    if handle is not None and not handle.background and not await handle.wait_async():
        raise _interrupted(handle)


def _interrupted(handle: RunHandle) -> RunInterrupted:
    return RunInterrupted(
        f"run {handle.run_id} cancelled; its sandboxes were removed "
        "(the partial answer, if any, is above)"
    )


def transform_cell(lines: list[str]) -> list[str]:
    """IPython cleanup transformer: `%%rlm LINE\\nBODY` → `await …run_cell_async(LINE, BODY)`."""
    if not lines:
        return lines
    m = _CELL.match(lines[0].rstrip("\r\n"))
    if m is None:
        return lines
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None or not getattr(shell, "autoawait", False) or id(shell) not in _SESSIONS:
        return lines  # the registered cell magic runs it, blocking
    line, body = (m.group(1) or "").strip(), "".join(lines[1:])
    return [f"await __import__('rlm_kernel.magics').magics.run_cell_async({line!r}, {body!r})\n"]


# -- %rlm -----------------------------------------------------------------------------------------


@magics_class
class RLMMagics(Magics):
    """`%%rlm` runs a task; `%rlm COMMAND` controls and inspects runs (`%rlm help`)."""

    def __init__(self, shell: Any, session: RLMSession) -> None:
        super().__init__(shell)
        self.session = session

    @no_var_expand
    @line_cell_magic
    def rlm(self, line: str, cell: str | None = None) -> None:
        """`%%rlm [options]` + task: run an RLM. `%rlm help` lists the options and commands."""
        if cell is not None:
            handle = start_cell(self.session, line, cell)
            if handle is not None and not handle.background:
                try:
                    handle.wait_blocking()
                except KeyboardInterrupt:
                    raise _interrupted(handle) from None
            return
        raw = line.strip()
        if re.match(r"step\b", raw) and " --code" in f" {raw}":
            head, _, code = raw.partition("--code")
            args = line_parser().parse_args(_split(head))
            return self._step(args.run, self._code(code.strip()))
        try:
            args = line_parser().parse_args(_expand(self.session, _split(raw)) or ["help"])
        except _HelpShown:
            return None
        getattr(self, f"_cmd_{args.cmd}")(args)

    # -- subcommands ----------------------------------------------------------------------------
    def _cmd_help(self, _: argparse.Namespace) -> None:
        print(help_text())

    def _cmd_config(self, a: argparse.Namespace) -> None:
        from .config import ConfigError

        s = self.session
        try:
            for key in a.reset if a.reset is not None else []:
                s.overrides.pop(SETTINGS.resolve(key, "%rlm config --reset"), None)
            if a.reset is not None and not a.reset:
                s.overrides.clear()
            pairs: dict[str, str] = {}
            for item in a.pairs:
                key, eq, value = item.partition("=")
                if not eq or not key.strip():
                    raise UsageError(f"%rlm config: expected KEY=VALUE, got {item!r}")
                pairs[key.strip()] = value
            if pairs:
                s.set_config(pairs)
                return
            layers = s.layers()
            flat = s.config().flat()
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        rows = []
        for key, value in flat.items():
            source = next(name for name, vals in reversed(layers) if key in vals)
            rows.append([key, "null" if value is None else value, source])
        display.show(display.table_bundle(["key", "value", "from"], rows))

    def _cmd_repo(self, a: argparse.Namespace) -> None:
        from .sandbox.workspace import TargetError

        s = self.session
        if a.repo is None:
            if a.branch or a.commit:
                raise UsageError("%rlm repo: -b/--commit need a repository")
            print(self._describe_target())
            return
        try:
            target = s.set_repo(a.repo, a.branch, a.commit)
        except TargetError as exc:
            raise UsageError(str(exc)) from None
        where = "the notebook's workspace is now" if s.kernel else "later runs work on"
        print(f"{where} {a.repo} at {str(target.commit)[:12]}")

    def _describe_target(self) -> str:
        s = self.session
        if s.kernel is not None and s.kernel.has_root_sandbox:
            sb = s.kernel.root_sandbox()
            t = sb.spec.target
            origin = t.origin if t.is_repo else "(no repository)"
            return f"{origin} at {str(sb.base_commit)[:12]} — workspace {sb.path}"
        repo, branch, commit = s.repo
        if repo is None:
            return "no repository (agents start in an empty git workspace)"
        return (
            f"{repo}"
            + (f" -b {branch}" if branch else "")
            + (f" --commit {commit}" if commit else "")
        )

    def _cmd_status(self, _: argparse.Namespace) -> None:
        s = self.session
        if not s.runs:
            print("no %%rlm run in this session yet")
            return
        rows = []
        for h in s.runs.values():
            rec = h.view.record()
            gate = h.view.gate
            agents, iterations = _count(rec.get("root"))
            waiting = ", ".join(
                f"{w['agent_id']}@{w['index']}" for w in ([] if gate.ended else gate.waiting)
            )
            status = rec.get("status") or h.run.status
            if gate.paused:
                status = f"{status} (step mode)"
            u = rec.get("usage") or {}
            tokens = int(u.get("prompt_tokens") or 0) + int(u.get("completion_tokens") or 0)
            cached = int(u.get("cache_read_tokens") or 0)
            rows.append(
                [
                    h.run_id,
                    status,
                    agents,
                    iterations,
                    waiting or "-",
                    f"{tokens:,}" + (f" ({cached:,} cached)" if cached else ""),
                    f"${float(u.get('cost_usd') or 0.0):.4f}",
                    _secs(rec),
                ]
            )
        display.show(
            display.table_bundle(
                [
                    "run",
                    "status",
                    "agents",
                    "iterations",
                    "waiting at gate",
                    "tokens",
                    "cost",
                    "time",
                ],
                rows,
            )
        )

    def _cmd_runs(self, _: argparse.Namespace) -> None:
        from .records import load_index

        s = self.session
        seen: set[str] = set()
        rows = []
        for h in reversed(list(s.runs.values())):
            rec = h.view.record()
            rows.append(
                [
                    h.run_id,
                    rec.get("status"),
                    _count(rec.get("root"))[0],
                    rec.get("started_at"),
                    _short(h.run.task),
                ]
            )
            seen.add(h.run_id)
        for r in load_index(s.config().results_dir):
            if r.get("run_id") in seen:
                continue
            rows.append(
                [
                    r.get("run_id"),
                    r.get("status"),
                    r.get("agents"),
                    r.get("started_at"),
                    _short(r.get("task")),
                ]
            )
        if not rows:
            print("no runs yet")
            return
        display.show(display.table_bundle(["run", "status", "agents", "started", "task"], rows))

    def _record(self, ref: str | None) -> tuple[dict[str, Any], RunHandle | None]:
        """A live run's record (this session) or a recorded one (results dir)."""
        from .records import load_record

        s = self.session
        try:
            h = s.find(ref)
            return h.view.record(), h
        except UsageError:
            if not ref:
                raise
        results = s.config().results_dir
        path = os.path.join(results, f"{ref}.detail.json")
        if not os.path.isfile(path):
            raise UsageError(f"no run {ref!r} in this session or in {results}/") from None
        return load_record(path), None

    def _cmd_tree(self, a: argparse.Namespace) -> None:
        from .console import render_tree

        rec, h = self._record(a.ref)
        if h is not None:
            print(h.view.text())
        else:
            print("\n".join([*render_tree(rec.get("root")), display.summary_text(rec)]))

    def _cmd_result(self, a: argparse.Namespace) -> None:
        rec, h = self._record(a.ref)
        if h is not None and not h.run.done:
            raise UsageError(f"run {h.run_id} is still running (%rlm status)")
        res = h.run.result if h is not None else None
        answer = res.answer if res else rec.get("answer")
        patch = res.patch if res else rec.get("patch") or ""
        path = res.patch_path if res else rec.get("patch_path")
        error = res.error if res else (rec.get("root") or {}).get("error")
        for bundle in display.result_bundles(rec, answer, patch, path, error, quiet=False):
            display.show(bundle)

    def _step(self, ref: str | None, code: str | None) -> None:
        h = self._live(ref)
        h.run.step(code)
        print(f"{h.run_id}: one step" + (" with your code" if code is not None else ""))

    def _code(self, spec: str) -> str:
        """`--code` takes a file path, the name of a variable holding code, or literal code."""
        if not spec:
            raise UsageError("%rlm step --code: give a file, a variable name or code")
        try:
            parts = shlex.split(spec)
        except ValueError:
            parts = []
        if len(parts) == 1 and spec[:1] in "'\"":
            spec = parts[0]
        if os.path.isfile(os.path.expanduser(spec)):
            with open(os.path.expanduser(spec), encoding="utf-8") as fh:
                return fh.read()
        if spec.isidentifier():
            from .sandbox.base import SandboxError

            try:
                value = self.session.get(spec)
            except (KeyError, SandboxError):
                value = None  # not a variable holding plain text: the spec is the code
            if isinstance(value, str):
                return value
        return spec

    def _cmd_step(self, a: argparse.Namespace) -> None:
        self._step(a.run, None)

    def _cmd_wait(self, a: argparse.Namespace) -> None:
        """Block until the run ends (and bind its result), or with --gate until an agent waits
        at the step gate with no step left to take; then show who waits with which code."""
        h = self.session.find(a.run)
        deadline = time.monotonic() + a.timeout
        while not h.run.done:
            gate = h.view.gate
            if a.gate and gate.waiting and gate.pending_steps == 0:
                for w in gate.waiting:
                    code = textwrap.indent(str(w["code"]).rstrip(), "    ")
                    print(f"{w['agent_id']}@{w['index']} waits at the step gate to run:\n{code}")
                return
            if time.monotonic() > deadline:
                raise UsageError(
                    f"%rlm wait: run {h.run_id} is still running after {a.timeout:g} s"
                )
            time.sleep(0.05)
            h.view.refresh()
        h.finish(bind=False)
        h.bind()
        print(f"{h.run_id}: {h.run.status}")

    def _cmd_continue(self, a: argparse.Namespace) -> None:
        h = self._live(a.run)
        h.run.resume()
        print(f"{h.run_id}: running freely")

    def _cmd_pause(self, a: argparse.Namespace) -> None:
        h = self._live(a.run)
        h.run.pause()
        print(f"{h.run_id}: pausing every agent before its next code")

    def _cmd_cancel(self, a: argparse.Namespace) -> None:
        h = self._live(a.run)
        if a.agent and a.agent not in _agent_ids(h.view.record().get("root")):
            raise UsageError(f"run {h.run_id} has no agent {a.agent!r}")
        h.run.cancel(a.agent)
        print(f"{h.run_id}: cancelling {a.agent or 'the run'}")

    def _live(self, ref: str | None) -> RunHandle:
        h = self.session.find(ref)
        if h.run.done:
            raise UsageError(f"run {h.run_id} has already finished ({h.run.status})")
        return h

    def _cmd_ns(self, a: argparse.Namespace) -> None:
        if a.live:
            sandbox = self._sandbox_of(a.run, a.agent, kept_only=False)
            rows = sandbox.snapshot()
            where = f"live namespace of {a.agent}"
        else:
            rec, _ = self._record(a.run)
            node = _find_node(rec.get("root"), a.agent)
            if node is None:
                ids = ", ".join(_agent_ids(rec.get("root"))) or "none"
                raise UsageError(
                    f"run {rec.get('run_id')} has no agent {a.agent!r} (agents: {ids})"
                )
            snaps = [
                it.get("namespace") for it in node.get("iterations") or [] if it.get("namespace")
            ]
            rows = snaps[-1] if snaps else []
            where = f"{a.agent}'s namespace after its last iteration"
        if not rows:
            print(f"{where}: no variables")
            return
        table = [
            [
                r.get("name"),
                r.get("type"),
                "" if r.get("size") is None else r.get("size"),
                r.get("repr"),
            ]
            for r in rows
        ]
        print(where + ":")
        display.show(display.table_bundle(["name", "type", "size", "repr"], table))

    def _sandbox_of(self, ref: str | None, agent: str, *, kept_only: bool) -> Any:
        s = self.session
        h = s.find(ref)
        if agent == "root" and h.in_root_sandbox:
            if kept_only:
                raise UsageError(
                    "the root agent ran in the notebook's own sandbox: its variables are already here"
                )
            return s.root_sandbox()
        kept = h.run.sandbox_of(agent, kept_only=True)
        if kept is not None:
            return kept
        if kept_only:
            if not h.run.config.sandbox.keep:
                raise UsageError(
                    f"run {h.run_id} did not keep its sandboxes: start it with %%rlm --keep "
                    "to attach to an agent"
                )
            raise UsageError(
                f"run {h.run_id} kept no sandbox of agent {agent!r} (it may still be running)"
            )
        live = h.run.sandbox_of(agent)
        if live is None:
            raise UsageError(
                f"agent {agent!r} of run {h.run_id} has no live sandbox (finished and not kept); "
                "use %rlm ns without --live for its recorded snapshot"
            )
        return live

    def _cmd_attach(self, a: argparse.Namespace) -> None:
        s = self.session
        if s.kernel is None:
            raise UsageError(
                "%rlm attach needs the RLM kernel (kernel 'RLM (Python)'): with %load_ext "
                "rlm_kernel cells run in this kernel; use %rlm ns AGENT --live to look inside"
            )
        sandbox = self._sandbox_of(a.run, a.agent, kept_only=True)
        handler = getattr(s.kernel, "notebook_handler", None)
        if handler is not None:  # its agent has ended: plain-cell bridge behaviour from now on
            sandbox.set_handler(handler)
        s.kernel.attach(sandbox)
        print(
            f"attached: cells now run in {a.agent}'s sandbox ({sandbox.path}); %rlm detach to return"
        )

    def _cmd_detach(self, _: argparse.Namespace) -> None:
        s = self.session
        if s.kernel is None:
            raise UsageError("%rlm detach needs the RLM kernel")
        s.kernel.attach(None)
        print("detached: cells run in the notebook's sandbox again")

    def _cmd_release(self, _: argparse.Namespace) -> None:
        n = sum(h.release() for h in self.session.runs.values())
        print(f"released {n} kept sandbox{'es' * (n != 1)}")


# -- helpers --------------------------------------------------------------------------------------


def _walk(root: dict[str, Any] | None) -> list[dict[str, Any]]:
    out, stack = [], [root] if root else []
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node.get("children") or []))
    return out


def _agent_ids(root: dict[str, Any] | None) -> list[str]:
    return [str(n["agent_id"]) for n in _walk(root)]


def _find_node(root: dict[str, Any] | None, agent: str) -> dict[str, Any] | None:
    return next((n for n in _walk(root) if n.get("agent_id") == agent), None)


def _count(root: dict[str, Any] | None) -> tuple[int, int]:
    nodes = _walk(root)
    return len(nodes), sum(len(n.get("iterations") or []) for n in nodes)


def _secs(rec: dict[str, Any]) -> str:
    e = rec.get("elapsed_s")
    return f"{float(e):.1f} s" if e is not None else ""


def _short(text: Any, n: int = 60) -> str:
    t = " ".join(str(text or "").split())
    return t if len(t) <= n else t[: n - 1] + "…"


# -- installation ---------------------------------------------------------------------------------


def session_for(shell: Any) -> RLMSession:
    """The session of a shell the magics were registered on."""
    try:
        return _SESSIONS[id(shell)]
    except KeyError:
        raise UsageError("the rlm magics are not loaded here (%load_ext rlm_kernel)") from None


def register(shell: Any, kernel: KernelLike | None = None) -> RLMSession:
    """Install `%rlm`/`%%rlm` and the awaiting transformer on `shell`; returns its session."""
    old = _SESSIONS.get(id(shell))
    if old is not None and old.shell is shell:
        return old
    from .llm import prewarm

    prewarm()  # litellm's seconds-long import, in the background, before the first %%rlm
    session = RLMSession(shell, kernel)
    _SESSIONS[id(shell)] = session
    shell.register_magics(RLMMagics(shell, session))
    cleanup: list[Any] = shell.input_transformers_cleanup
    if transform_cell not in cleanup:
        cleanup.append(transform_cell)
    return session


def unregister(shell: Any) -> None:
    """Undo `register`: cancel runs, remove kept sandboxes, the transformer and the magics."""
    session = _SESSIONS.pop(id(shell), None)
    if session is not None:
        session.cancel_all()
    cleanup: list[Any] = shell.input_transformers_cleanup
    while transform_cell in cleanup:
        cleanup.remove(transform_cell)
    for kind in ("line", "cell"):
        shell.magics_manager.magics[kind].pop("rlm", None)
