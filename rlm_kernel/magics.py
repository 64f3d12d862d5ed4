"""`%%rlm` (start a run) and `%rlm` (control and inspect runs): the notebook's face of the engine.

`register(shell, kernel=None)` installs both on a shell, plus an input transformer that turns a
`%%rlm` cell into `await run_cell_async(line, body)`, so the cell *awaits* its run on the kernel's
event loop and widget messages (Stop, Step) keep flowing. `get_ipython().run_cell_magic("rlm",
…)` still works and blocks (Ctrl-C cancels the run).

The command lines are parsed by `magic_args`; the subcommands that show runs (status, runs, tree,
result, ns) are `magic_views`; this module starts runs and controls them.
"""

from __future__ import annotations

import argparse
import keyword
import os
import re
import shlex
import textwrap
import time
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand

from . import display
from .config import MAGIC, SETTINGS
from .magic_args import HelpShown, cell_parser, expand, help_text, line_parser, split_line
from .magic_views import VIEWS, agent_ids, sandbox_of
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
        args = cell_parser().parse_args(expand(session, split_line(line)))
    except HelpShown:
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
            args = line_parser().parse_args(split_line(head))
            return self._step(args.run, self._code(code.strip()))
        try:
            args = line_parser().parse_args(expand(self.session, split_line(raw)) or ["help"])
        except HelpShown:
            return None
        view = VIEWS.get(args.cmd)
        if view is not None:  # status, runs, tree, result, ns
            view(self.session, args)
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
        if a.agent and a.agent not in agent_ids(h.view.record().get("root")):
            raise UsageError(f"run {h.run_id} has no agent {a.agent!r}")
        h.run.cancel(a.agent)
        print(f"{h.run_id}: cancelling {a.agent or 'the run'}")

    def _live(self, ref: str | None) -> RunHandle:
        h = self.session.find(ref)
        if h.run.done:
            raise UsageError(f"run {h.run_id} has already finished ({h.run.status})")
        return h

    def _cmd_attach(self, a: argparse.Namespace) -> None:
        s = self.session
        if s.kernel is None:
            raise UsageError(
                "%rlm attach needs the RLM kernel (kernel 'RLM (Python)'): with %load_ext "
                "rlm_kernel cells run in this kernel; use %rlm ns AGENT --live to look inside"
            )
        sandbox = sandbox_of(self.session, a.run, a.agent, kept_only=True)
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


# -- installation ---------------------------------------------------------------------------------


def session_for(shell: Any) -> RLMSession:
    """The session of a shell the magics were registered on."""
    try:
        return _SESSIONS[id(shell)]
    except KeyError:
        raise UsageError("the rlm magics are not loaded here (%load_ext rlm_kernel)") from None


def _prewarm(session: RLMSession) -> None:
    """litellm's seconds-long import, in the background before the first %%rlm, if a call of
    the session's configuration may need it (not on the plain-HTTP path). A configuration that
    does not load yet says so at the first %%rlm; the import starts anyway."""
    from .llm import prewarm, prewarm_for

    try:
        config = session.config()
    except Exception:
        prewarm()
        return
    prewarm_for(config)


def register(shell: Any, kernel: KernelLike | None = None) -> RLMSession:
    """Install `%rlm`/`%%rlm` and the awaiting transformer on `shell`; returns its session."""
    old = _SESSIONS.get(id(shell))
    if old is not None and old.shell is shell:
        return old
    session = RLMSession(shell, kernel)
    _prewarm(session)
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
