"""The sandbox interface every backend implements: a `Workspace` plus a persistent `Repl`, and
the `Capabilities` that say what a backend can do beyond it."""

from __future__ import annotations

import abc
import collections
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .workspace import Target

if TYPE_CHECKING:
    from .isolation import Isolation

__all__ = [
    "MAX_CELL_OUTPUT_CHARS",
    "NO_CONTEXT",
    "Capabilities",
    "Cell",
    "CellResult",
    "OutputBuffer",
    "Repl",
    "Sandbox",
    "SandboxError",
    "SandboxSpec",
    "StdinHook",
    "Workspace",
    "strip_ansi",
]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")

NO_CONTEXT: Any = object()

Handler = Callable[[str, dict[str, Any]], Any]
OutputHook = Callable[[dict[str, Any]], None]
StdinHook = Callable[[str, bool], str]
"""Answers `input()`/`getpass()` in a cell: (prompt, password) -> the line typed; raising stops the cell."""


def strip_ansi(text: str) -> str:
    """Text without terminal colour codes."""
    return _ANSI.sub("", text)


MAX_CELL_OUTPUT_CHARS = 1_000_000
"""Characters of one cell's text output the host keeps (head and tail; the rest is counted).

The model sees at most `rlm.output_truncation_limit` of them; records and events get the rest, so
a cell that prints gigabytes costs the host a bounded amount of memory."""


class OutputBuffer:
    """A cell's text output, bounded: its head and its tail, and how many characters fell between."""

    def __init__(self, limit: int = MAX_CELL_OUTPUT_CHARS) -> None:
        self.head_limit = limit * 2 // 3
        self.tail_limit = limit - self.head_limit
        self.total = 0
        self._head: list[str] = []
        self._head_len = 0
        self._tail: collections.deque[str] = collections.deque()
        self._tail_len = 0

    def append(self, text: str) -> None:
        """Add output text."""
        self.total += len(text)
        if self._head_len < self.head_limit:
            take = text[: self.head_limit - self._head_len]
            self._head.append(take)
            self._head_len += len(take)
            text = text[len(take) :]
        if not text:
            return
        if len(text) > self.tail_limit:
            text = text[-self.tail_limit :]
        self._tail.append(text)
        self._tail_len += len(text)
        while self._tail_len - len(self._tail[0]) >= self.tail_limit:
            self._tail_len -= len(self._tail.popleft())

    def getvalue(self) -> str:
        """The output, with `... [N characters omitted] ...` in place of the dropped middle."""
        head = "".join(self._head)
        tail = "".join(self._tail)
        if len(tail) > self.tail_limit:
            tail = tail[-self.tail_limit :]
        omitted = self.total - len(head) - len(tail)
        if omitted <= 0:
            return head + tail
        return f"{head}\n... [{omitted} characters omitted] ...\n{tail}"


class SandboxError(RuntimeError):
    """A sandbox could not be created or has died; the message says what happened."""


@dataclass
class SandboxSpec:
    """Everything a backend needs to make one agent's sandbox."""

    run_id: str
    agent_id: str
    target: Target
    handler: Handler  # answers bridge requests (rlm_query, llm_query, tools, final, submit)
    runtime_cfg: dict[str, Any] = field(default_factory=dict)  # tools, signature, depth info
    context: Any = NO_CONTEXT
    keep: bool = False
    snapshot: str | None = None  # remote backends: the image/snapshot to start from
    # Local backend: the isolation tier (None: sandbox.isolation's default, "auto"), and paths
    # a confined kernel may read although they are hidden (the notebook's directory).
    isolation: Isolation | None = None
    readable: tuple[str, ...] = ()


@dataclass
class CellResult:
    """What one cell did: its output as the model sees it, and how it ended."""

    output: str = ""
    error: str | None = None  # "ename: evalue" plus the traceback, colour codes removed
    elapsed_s: float = 0.0
    status: str = "ok"  # ok | error | timeout | cancelled | died | restarted
    outputs: list[dict[str, Any]] = field(default_factory=list)  # raw output messages (kernel use)
    # The REPL kernel's execute_reply content (payload, user_expressions) when the cell ran with a
    # `msg_id` (the RLM kernel forwarding a frontend's request); empty otherwise.
    reply: dict[str, Any] = field(default_factory=dict)

    @property
    def namespace_lost(self) -> bool:
        """The REPL was restarted or died: variables are gone."""
        return self.status in ("died", "restarted")


@dataclass(frozen=True)
class Capabilities:
    """What a backend's sandboxes can do beyond the interface every backend implements.

    Callers ask these instead of checking a backend's name; a method a backend lacks is not
    called (there is no `NotImplementedError` to catch)."""

    pool: bool = False
    """prepare() + bind(): a run can keep ready sandboxes in a pool."""
    jupyter: bool = False
    """The REPL is a Jupyter kernel: execute() honours `msg_id` and `user_expressions` and returns
    the kernel's reply; `kernel_connection()` names its connection file (widget comms relay)."""
    stdin: bool = False
    """execute() answers `input()` through `stdin_hook`; without it `input()` raises a clear
    error in the cell."""
    history: bool = False
    """execute() honours `store_history` (IPython's In/Out and execution count); else ignored."""
    interrupt: bool = False
    """A stopped cell is interrupted and the namespace kept (a `restarted` result means the cell
    ignored the interrupt); without it, stopping a cell restarts the REPL."""
    isolation: bool = False
    """Runs on this machine under `sandbox.isolation`'s tiers (bwrap, none)."""
    host_files: bool = False
    """The REPL runs on this machine and may be told its paths (e.g. `RLM_NOTEBOOK_DIR`)."""


@dataclass
class Cell:
    """One cell to run, as `Repl.execute` was given it."""

    code: str
    timeout: float
    cancel: threading.Event | None = None
    on_output: OutputHook | None = None
    store_history: bool = True
    stdin_hook: StdinHook | None = None
    msg_id: str | None = None
    user_expressions: dict[str, str] | None = None


class Workspace(abc.ABC):
    """What a sandbox's files do: a workspace of a target, its changes as a patch."""

    path: str
    base_commit: str

    @abc.abstractmethod
    def diff(self) -> str:
        """The workspace's changes since the base commit, as a git patch."""

    @abc.abstractmethod
    def set_workspace(self, target: Target) -> None:
        """Move the REPL to a fresh workspace of `target` (the namespace is kept)."""

    def host_path(self, path: str) -> str:
        """The host's path for a path the sandbox's code made (as is by default)."""
        return path


class Repl(abc.ABC):
    """What a sandbox's REPL does: run cells, move values in and out, describe its namespace."""

    namespace: list[dict[str, Any]]

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
        """Run one cell; stop it after `timeout` s or when `cancel` is set.

        `store_history` needs `capabilities.history`, `stdin_hook` `capabilities.stdin` (without,
        `input()` in the cell raises, saying why), `msg_id` and `user_expressions`
        `capabilities.jupyter` (the RLM kernel passes its frontend's request id, so that the
        REPL's messages answer the frontend's request; the kernel's reply lands in
        `CellResult.reply`); backends without them ignore them.
        """
        return self.run(
            Cell(
                code,
                timeout,
                cancel,
                on_output,
                store_history,
                stdin_hook,
                msg_id,
                user_expressions,
            )
        )

    @abc.abstractmethod
    def run(self, cell: Cell) -> CellResult:
        """Run `cell` (see `execute`, which every caller uses)."""

    def complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        """A Jupyter `complete_reply` content for `code` in the REPL's namespace (none by default)."""
        return {
            "status": "ok",
            "matches": [],
            "cursor_start": cursor_pos,
            "cursor_end": cursor_pos,
            "metadata": {},
        }

    def inspect(self, code: str, cursor_pos: int, detail_level: int = 0) -> dict[str, Any]:
        """A Jupyter `inspect_reply` content for the name at `cursor_pos` (nothing by default)."""
        return {"status": "ok", "found": False, "data": {}, "metadata": {}}

    def kernel_connection(self) -> str:
        """The connection file of the REPL's Jupyter kernel ("" when it is not one, or not running)."""
        return ""

    @abc.abstractmethod
    def snapshot(self) -> list[dict[str, Any]]:
        """Summarise the namespace (name, type, repr, size) and remember it in `namespace`."""

    def namespace_after_cell(self) -> list[dict[str, Any]]:
        """The namespace summary after the last cell (backends may reuse one sent with the cell)."""
        return self.snapshot()

    @abc.abstractmethod
    def reset_agent(self) -> None:
        """Clear the previous agent's FINAL state, for a new root agent in this REPL."""

    @abc.abstractmethod
    def push(self, name: str, value: Any) -> None:
        """Bind `name` to a copy of `value` in the REPL namespace (pickled across)."""

    @abc.abstractmethod
    def pull(self, name: str, *, as_text: bool = False) -> Any:
        """The REPL variable `name` as plain JSON data, or `str(value)` with `as_text`.

        Computed in the sandbox; only JSON text crosses to the host (never a pickle). KeyError
        when it does not exist; SandboxError, naming it, when it is not plain data.
        """


class Sandbox(Workspace, Repl):
    """One agent's sandbox: its files (`path`, a `Workspace`) and its REPL (a `Repl`), made by
    `start()` (or `prepare()` then `bind()` with `capabilities.pool`) and removed by `close()`.

    A backend's module-level operations (checking credentials, removing what crashed runs left)
    are class methods, so the registry in `sandbox.BACKENDS` reaches them without a name check.
    """

    backend: str = "?"
    capabilities = Capabilities()

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec
        self.id = ""
        self.path = ""
        self.base_commit = ""
        self.namespace: list[dict[str, Any]] = []
        self.answer_draft = ""
        self.closed = False
        # Set by the run on sandboxes it owns: each cell's end also sends the namespace summary,
        # so `namespace_after_cell` needs no extra round trip.
        self.snapshot_on_end = False
        self._close_lock = threading.Lock()

    @classmethod
    def check(cls, config: Any = None) -> None:
        """Check, before anything is created, that this backend can be used (e.g. credentials).

        Raises SandboxError with a clear message; the default accepts.
        """
        return None

    @classmethod
    def cleanup(cls, run_id: str | None = None) -> list[str]:
        """Remove what runs of this backend left behind (crashed or killed; all, or one run's)
        and whose owner is gone; returns a line per removed sandbox. SandboxError when the
        backend cannot be reached."""
        return []

    @classmethod
    def shutdown(cls) -> None:
        """Stop what this backend runs for the whole process (e.g. local kernels and their fork
        servers), after its sandboxes were closed; the default has nothing to stop."""
        return None

    def info(self) -> dict[str, Any]:
        """`{backend, id, path}` for records."""
        return {"backend": self.backend, "id": self.id, "path": self.path}

    @abc.abstractmethod
    def start(self) -> None:
        """Create the workspace and the REPL, and install the runtime."""

    def prepare(self, cancel: threading.Event | None = None) -> None:
        """With `capabilities.pool`: create the workspace and the REPL without an agent (a pooled
        sandbox), stopping early (SandboxError) when `cancel` is set between its steps; see bind()."""
        raise SandboxError(f"the {self.backend} sandbox backend keeps no sandbox pool")

    def bind(self, spec: SandboxSpec) -> None:
        """With `capabilities.pool`: give a prepared sandbox to an agent (same run and target)."""
        raise SandboxError(f"the {self.backend} sandbox backend keeps no sandbox pool")

    def adopt(self, spec: SandboxSpec) -> None:
        """With `capabilities.pool`: give a spare root sandbox, started for no run, to a run's
        root agent (`sandbox.spare`: its spec, a workspace of its target, its context)."""
        raise SandboxError(f"the {self.backend} sandbox backend keeps no spare sandbox")

    def set_handler(self, handler: Handler) -> None:
        """Answer this sandbox's bridge requests with `handler` from now on (e.g. a new run's root)."""
        self.spec.handler = handler

    def close(self) -> None:
        """Remove everything this sandbox made; idempotent, never raises."""
        with self._close_lock:
            if self.closed:
                return
            self.closed = True
        self._remove()

    @abc.abstractmethod
    def _remove(self) -> None:
        """close()'s work, done once: stop the REPL, remove (or keep) the workspace."""
