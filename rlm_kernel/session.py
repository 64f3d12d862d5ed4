"""Per-shell state of the magics: configuration layers, the namespace, the target, and the runs.

One `RLMSession` per IPython shell. In the RLM kernel (`kernel` given) the namespace is the
notebook's root sandbox and root agents run in it; with `%load_ext rlm_kernel` the namespace is
the shell's `user_ns` and every root agent gets a fresh sandbox.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from IPython.core.error import UsageError

from .config import SETTINGS, RLMConfig, load_config

if TYPE_CHECKING:
    from .display import RunView
    from .runner import Run
    from .sandbox.base import Sandbox
    from .sandbox.runtime import RunOutcome
    from .sandbox.workspace import Target

__all__ = ["KernelLike", "RLMSession", "RunHandle", "interpolate"]

CANCEL_WAIT_S = 2.0
_FIELD = re.compile(r"\{\{|\}\}|\{(\w+)\}")


class KernelLike(Protocol):
    """What the session needs from the RLM kernel (rlm_kernel.kernel.RLMKernel)."""

    rlm_config: RLMConfig

    @property
    def has_root_sandbox(self) -> bool:
        """True once the notebook's root sandbox has been started."""

    @property
    def attached(self) -> Sandbox | None:
        """The sandbox ordinary cells run in instead of the root sandbox, if any."""

    def root_sandbox(self) -> Sandbox:
        """The notebook's root sandbox (started on first use)."""

    @property
    def root_target(self) -> Target:
        """The workspace the root sandbox has (or will have when it starts)."""

    def set_root_target(self, target: Target) -> None:
        """Move the root sandbox to a fresh workspace of `target`."""

    def host_path(self, path: str) -> str:
        """A path the notebook's code named, as the host finds it."""

    def attach(self, sandbox: Sandbox | None) -> None:
        """Route ordinary cells to `sandbox` (None: back to the root sandbox)."""


def interpolate(text: str, lookup: Callable[[str], Any]) -> str:
    """Replace `{name}` by `str(value)`; `{{` and `}}` are literal braces; unknown names raise.

    Only simple identifiers are fields, so other braces (dict literals, `{x[0]}`) stay as written.
    """
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        token = m.group(0)
        if token in ("{{", "}}"):
            return token[0]
        name = m.group(1)
        if not name.isidentifier():
            return token
        try:
            return str(lookup(name))
        except KeyError:
            missing.append(name)
            return token

    out = _FIELD.sub(sub, text)
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        raise UsageError(
            f"%rlm: no variable named {names} for {{…}} "
            "(define it first, or write {{ and }} for literal braces)"
        )
    return out


@dataclass
class RunHandle:
    """One `%%rlm` run of this session: the engine run, its view, and what it produced."""

    session: RLMSession
    run: Run
    view: RunView
    out_var: str | None = None
    quiet: bool = False
    background: bool = False
    in_root_sandbox: bool = False
    outcome: RunOutcome | None = None
    slots: list[Any] = field(default_factory=list)  # pre-made outputs of a background run
    _finished: bool = False
    _watcher: asyncio.Task[None] | None = None

    @property
    def run_id(self) -> str:
        """The engine's run id."""
        return self.run.run_id

    # -- waiting ----------------------------------------------------------------------------------
    async def wait_async(self) -> bool:
        """Await the run, refreshing progress; False when an interrupt cancelled it (tree ended)."""
        try:
            while not self.run.done:
                await asyncio.sleep(0.05)
                self.view.refresh()
        except asyncio.CancelledError:  # ipykernel turns SIGINT into a cancel of the cell
            self.run.cancel(reason="interrupted (kernel interrupt)")
            deadline = time.monotonic() + 30
            # Over once its sandboxes are gone too (the cell then says they were removed).
            while not self.run.closed and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            self.finish()
            return False
        self.finish()
        return True

    def wait_blocking(self) -> None:
        """Block until the run ends, refreshing progress; Ctrl-C cancels the tree, then re-raises."""
        try:
            while True:
                try:
                    self.run.wait(0.1)
                    break
                except TimeoutError:
                    self.view.refresh()
        except KeyboardInterrupt:  # Run.wait cancelled the run and waited for its cleanup
            self.finish()
            raise
        self.finish()

    def watch(self) -> None:
        """Keep the outputs of a background run current until it ends, then show its results."""
        loop = _kernel_loop(self.session.shell)
        if loop is not None:
            self._watcher = loop.create_task(self._watch_async())
        else:
            threading.Thread(
                target=self._watch_thread, name=f"rlm-watch-{self.run_id}", daemon=True
            ).start()

    async def _watch_async(self) -> None:
        while not self.run.done:
            await asyncio.sleep(0.1)
            self.view.refresh()
        # Binding pushes into the root sandbox, which a user cell may hold: not on the loop.
        self.finish(bind=False)
        await asyncio.to_thread(self.bind)

    def _watch_thread(self) -> None:
        while not self.run.done:
            time.sleep(0.1)
            self.view.refresh()
        self.finish()

    # -- the end ----------------------------------------------------------------------------------
    def finish(self, bind: bool = True) -> None:
        """Once: final progress, the answer, the patch and the summary; bind the result."""
        if self._finished or self.run.result is None:
            return
        self._finished = True
        from . import display
        from .sandbox.runtime import RunOutcome

        res = self.run.result
        self.outcome = RunOutcome(
            run_id=res.run_id,
            status=res.status,
            answer=res.answer,
            patch=res.patch,
            usage=res.usage.to_dict(),
            elapsed_s=round(res.elapsed_s, 3),
            record_path=res.record_path,
            patch_path=res.patch_path,
            tree=res.tree,
            error=res.error,
            kept=list(res.kept),
        )
        self.view.refresh(force=True)
        # Terminal IPython: the console progress on stderr already ends with the summary.
        bundles = display.result_bundles(
            self.view.record(),
            res.answer,
            res.patch,
            res.patch_path,
            res.error,
            quiet=self.quiet or not self.session.notebook,
        )
        for i, bundle in enumerate(bundles):
            if i < len(self.slots):
                self.slots[i].update(bundle, raw=True)
            else:
                display.show(bundle)
        if bind:
            self.bind()

    def bind(self) -> None:
        """Bind the result to `_rlm` (and `-o VAR`) in the session's namespace."""
        kernel = self.session.kernel
        if self.outcome is None or self.session.closed:
            return
        if kernel is not None and not kernel.has_root_sandbox:
            return  # the notebook's sandbox is gone (restart, shutdown): do not start a new one
        names = ["_rlm"] + ([self.out_var] if self.out_var else [])
        for name in names:
            try:
                self.session.put(name, self.outcome)
            except Exception as exc:  # the sandbox went away: say so, keep the host copy
                print(f"rlm: could not bind {name}: {exc}", file=sys.stderr)

    def release(self) -> int:
        """Remove this run's kept sandboxes (kernel and files); returns how many."""
        kernel = self.session.kernel
        attached = kernel.attached if kernel is not None else None
        if kernel is not None and attached is not None and attached.spec.run_id == self.run_id:
            kernel.attach(None)  # cells go back to the notebook's sandbox first
        return self.run.release()


class RLMSession:
    """The magics' state for one shell: config layers, namespace access, target and runs."""

    def __init__(self, shell: Any, kernel: KernelLike | None = None) -> None:
        self.shell = shell
        self.kernel = kernel
        self.overrides: dict[str, Any] = {}  # `%rlm config key=value`, dotted keys
        self.repo: tuple[str | None, str | None, str | None] = (None, None, None)
        self.runs: dict[str, RunHandle] = {}
        self.closed = False  # set by cancel_all (kernel shutdown)
        # A Jupyter kernel's shell shows outputs in the notebook; terminal IPython gets stderr text.
        self.notebook = getattr(shell, "kernel", None) is not None

    # -- configuration ------------------------------------------------------------------------------
    def layers(self, config_file: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """The configuration layers, lowest first: defaults, file, kernel traitlets, session."""
        defaults = RLMConfig().flat()
        kernel_file = getattr(self.kernel, "config_file", None) or None
        path = config_file or kernel_file
        base = load_config(path).flat()
        out: list[tuple[str, dict[str, Any]]] = [("default", defaults)]
        if path is not None or Path("config.yaml").is_file():
            out.append((path or "config.yaml", _changed(base, defaults)))
        if self.kernel is not None:  # the traitlets: what the kernel's config adds to its file
            kernel_base = load_config(kernel_file).flat()
            out.append(("kernel", _changed(self.kernel.rlm_config.flat(), kernel_base)))
        out.append(("%rlm config", dict(self.overrides)))
        return out

    def config(
        self, cell: dict[str, Any] | None = None, config_file: str | None = None
    ) -> RLMConfig:
        """The effective config: defaults < file < kernel traitlets < `%rlm config` < cell options."""
        cfg = RLMConfig()
        for source, values in self.layers(config_file)[1:]:
            if values:
                cfg = cfg.with_overrides(values, source=source)
        return cfg.with_overrides(cell, source="%%rlm options") if cell else cfg

    def set_config(self, pairs: dict[str, str]) -> RLMConfig:
        """Validate and keep `key=value` session defaults; errors name the key."""
        cfg = self.config()
        parsed: dict[str, Any] = {}
        for key, text in pairs.items():
            dotted = SETTINGS.resolve(key, "%rlm config")
            new = cfg.with_overrides({dotted: text}, source="%rlm config", parse_strings=True)
            parsed[dotted] = new.flat()[dotted]
            cfg = new
        self.overrides.update(parsed)
        return cfg

    # -- the namespace ------------------------------------------------------------------------------
    def get(self, name: str) -> Any:
        """A namespace value (in the kernel: from the root sandbox, as plain JSON data only);
        KeyError when undefined, SandboxError when it cannot leave the sandbox."""
        if self.kernel is None:
            return self.shell.user_ns[name]
        return self.kernel.root_sandbox().pull(name)

    def get_text(self, name: str) -> str:
        """`str(value)` of a namespace value, computed where it lives (the root sandbox in the
        kernel: no object leaves it); KeyError when undefined."""
        if self.kernel is None:
            return str(self.shell.user_ns[name])
        return str(self.kernel.root_sandbox().pull(name, as_text=True))

    def put(self, name: str, value: Any) -> None:
        """Bind a namespace value (pushed into the root sandbox in the kernel)."""
        if self.kernel is None:
            self.shell.user_ns[name] = value
        else:
            self.kernel.root_sandbox().push(name, value)

    def interpolate(self, text: str) -> str:
        """`{var}` interpolation of a task from the namespace."""
        return interpolate(text, self.get_text)

    def bind_context(self, var: str) -> str:
        """Kernel mode: `context = VAR` in the root sandbox; returns a description for the prompt.

        Nothing crosses to the host but a short description printed as JSON by the sandbox.
        """
        sandbox = self.root_sandbox()
        code = (
            f"try:\n    context = {var}\nexcept NameError:\n    print('\\n\"missing\"')\nelse:\n"
            "    print('\\n' + __import__('json').dumps([type(context).__name__, "
            "len(context) if hasattr(context, '__len__') else None, isinstance(context, str)]))"
        )
        res = sandbox.execute(code, timeout=60, store_history=False)
        if res.error:
            raise UsageError(f"--context {var}: {res.error.strip().splitlines()[-1]}")
        try:
            described = json.loads(res.output.strip().splitlines()[-1])
        except (ValueError, IndexError):
            described = None
        if described == "missing":
            raise UsageError(f"--context: no variable named {var}")
        if not (isinstance(described, list) and len(described) == 3):
            return "a value"  # the sandbox printed something else: describe nothing
        kind, size, is_str = described
        if not isinstance(size, int) or isinstance(size, bool):
            return str(kind)[:80]
        return f"a {str(kind)[:80]} of {size:,} {'characters' if is_str else 'items'}"

    # -- sandboxes and targets -----------------------------------------------------------------------
    def root_sandbox(self) -> Sandbox:
        """The notebook's root sandbox (kernel mode only)."""
        if self.kernel is None:
            raise UsageError("this needs the RLM kernel (the notebook's root sandbox)")
        return self.kernel.root_sandbox()

    def check_root_free(self) -> None:
        """Refuse while a run's root agent still works in the notebook's sandbox."""
        busy = next((h for h in self.runs.values() if h.in_root_sandbox and not h.run.done), None)
        if busy is not None:
            raise UsageError(
                f"run {busy.run_id} is still working in the notebook's sandbox; "
                "wait for it or %rlm cancel it first"
            )

    def set_repo(self, repo: str | None, branch: str | None, commit: str | None) -> Target:
        """Set the workspace of later runs (kernel: move the root sandbox there now)."""
        from .sandbox.workspace import resolve_target

        self.check_root_free()
        if self.kernel is not None and repo:
            repo = self.kernel.host_path(repo)  # e.g. made in the sandbox's private /tmp
        target = resolve_target(repo, branch, commit)
        if self.kernel is not None:
            self.kernel.set_root_target(target)
        self.repo = (repo, branch, commit)
        return target

    # -- runs ---------------------------------------------------------------------------------------
    def add(self, handle: RunHandle) -> None:
        """Remember a started run."""
        self.runs[handle.run_id] = handle

    def latest(self) -> RunHandle:
        """The most recent run of this session."""
        if not self.runs:
            raise UsageError("no %%rlm run in this session yet")
        return next(reversed(self.runs.values()))

    def find(self, ref: str | None) -> RunHandle:
        """A session run by id, unique prefix or suffix; the latest when `ref` is None."""
        if not ref:
            return self.latest()
        hits = [h for rid, h in self.runs.items() if rid == ref]
        hits = hits or [
            h for rid, h in self.runs.items() if rid.startswith(ref) or rid.endswith(ref)
        ]
        if len(hits) == 1:
            return hits[0]
        known = ", ".join(self.runs) or "none"
        what = "is ambiguous" if hits else "is not a run of this session"
        raise UsageError(f"{ref!r} {what} (runs: {known})")

    def cancel_all(self, wait_s: float = CANCEL_WAIT_S) -> None:
        """Cancel running runs, wait up to `wait_s` for them, and remove kept sandboxes."""
        self.closed = True
        live = [h for h in self.runs.values() if not h.run.done]
        for h in live:
            h.run.cancel(reason="the kernel is shutting down")
        deadline = time.monotonic() + wait_s
        for h in live:
            while not h.run.done and time.monotonic() < deadline:
                time.sleep(0.02)
        for h in self.runs.values():
            h.release()


def _changed(values: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v != base[k]}


def _kernel_loop(shell: Any) -> asyncio.AbstractEventLoop | None:
    """The kernel's running event loop, when called from a Jupyter kernel's main thread."""
    if getattr(shell, "kernel", None) is None:
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
