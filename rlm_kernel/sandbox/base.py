"""The sandbox interface every backend implements: a workspace plus a persistent REPL."""

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
    "CellResult",
    "OutputBuffer",
    "Sandbox",
    "SandboxError",
    "SandboxSpec",
    "StdinHook",
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


class Sandbox(abc.ABC):
    """One agent's sandbox: its files (`path`) and its REPL."""

    backend: str = "?"
    pool_capable = False  # implements prepare() + bind(), so a run can keep ready ones in a pool

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

    def info(self) -> dict[str, Any]:
        """`{backend, id, path}` for records."""
        return {"backend": self.backend, "id": self.id, "path": self.path}

    @abc.abstractmethod
    def start(self) -> None:
        """Create the workspace and the REPL, and install the runtime."""

    def prepare(self, cancel: threading.Event | None = None) -> None:
        """Create the workspace and the REPL without an agent (a pooled sandbox); see bind().

        Stops early (SandboxError) when `cancel` is set between its steps.
        """
        raise NotImplementedError(f"the {self.backend} backend has no sandbox pool")

    def bind(self, spec: SandboxSpec) -> None:
        """Give a prepared sandbox to an agent: its spec (same run and target), then the runtime."""
        raise NotImplementedError(f"the {self.backend} backend has no sandbox pool")

    @abc.abstractmethod
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
        """Run one cell; interrupt it after `timeout` s or when `cancel` is set.

        With `stdin_hook`, `input()` in the cell asks the hook; without, it raises as in a
        frontend without stdin. A backend whose REPL is a Jupyter kernel sends the cell under
        `msg_id` (the RLM kernel passes its frontend's, so that the REPL's messages answer the
        frontend's request) with `user_expressions`, and returns the kernel's reply in
        `CellResult.reply`; other backends ignore both.
        """

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

    @abc.abstractmethod
    def snapshot(self) -> list[dict[str, Any]]:
        """Summarise the namespace (name, type, repr, size) and remember it in `namespace`."""

    def namespace_after_cell(self) -> list[dict[str, Any]]:
        """The namespace summary after the last cell (backends may reuse one sent with the cell)."""
        return self.snapshot()

    @abc.abstractmethod
    def diff(self) -> str:
        """The workspace's changes since the base commit, as a git patch."""

    def set_handler(self, handler: Handler) -> None:
        """Answer this sandbox's bridge requests with `handler` from now on (e.g. a new run's root)."""
        self.spec.handler = handler

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

    @abc.abstractmethod
    def set_workspace(self, target: Target) -> None:
        """Move the REPL to a fresh workspace of `target` (the namespace is kept)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Remove everything this sandbox made; idempotent, never raises."""
