"""Live progress on a terminal: the agent tree with statuses, from events (redrawn in place on a TTY).

Every line fits the terminal (`COLUMNS`, else the stream's terminal, else 80 columns): tasks are cut
at a word boundary, and an agent whose task shares a long prefix with another agent's shows the
part that differs. Repeated notices (a batch of refused sub-agents) become one line with
a count.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from .events import (
    AgentFinished,
    AgentStarted,
    BudgetHit,
    Event,
    LLMResponse,
    LLMText,
    Notice,
    RunFinished,
)
from .records import TreeState

__all__ = [
    "ConsoleProgress",
    "clip",
    "columns",
    "distinct_task",
    "live_tail",
    "render_tree",
    "summary_line",
]

ICONS = {"running": "…", "done": "✓", "error": "✗", "timeout": "⏱", "cancelled": "⊘", "budget": "$"}
_MIN_TAIL = 24  # characters of a task's own part that must show before we elide the shared prefix
_REPEAT_FLUSH_S = 1.0  # a held-back repeated line is printed at the latest this long after it came


def columns(stream: TextIO | None = None) -> int:
    """The width to fit: `COLUMNS`, else the terminal of `stream`, else `shutil`'s (80 by default)."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    if stream is not None:
        try:
            return os.get_terminal_size(stream.fileno()).columns or 80
        except (AttributeError, OSError, ValueError):
            pass
    return shutil.get_terminal_size().columns


def clip(text: str, room: int) -> str:
    """`text` on one line in at most `room` characters, cut at a word boundary and marked with '…'."""
    text = " ".join(text.split())
    if len(text) <= room:
        return text
    if room <= 1:
        return "…"[: max(0, room)]
    cut = text[: room - 1]
    if not text[room - 1].isspace():
        space = cut.rfind(" ")
        if space >= room // 3:
            cut = cut[:space]  # whole words, unless one word would take most of the room
    return cut.rstrip(" ,;:") + "…"


def _shared(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def distinct_task(task: str, others: Iterable[str], room: int) -> str:
    """`task` in `room` characters, showing the part that differs from the most similar of `others`.

    When the first difference would be cut off, the task is shown as its first words, ' … ' and
    the text from the word where it differs: "Assess how hard … textkit/words.py:6: # TODO: treat…".
    """
    task = " ".join(task.split())
    if len(task) <= room:
        return task
    shared = max((_shared(task, " ".join(o.split())) for o in others if o), default=0)
    start = task.rfind(" ", 0, shared) + 1  # the word in which the difference starts
    if shared >= len(task) or start + _MIN_TAIL <= room - 1:
        return clip(task, room)  # the difference shows anyway (or there is none)
    head = ""
    for word in task[:start].split():  # whole words only, in about a third of the room
        if len(head) + len(word) + 1 > room // 3:
            break
        head = f"{head} {word}" if head else word
    tail_room = room - len(head) - 3
    if not head or tail_room < 8:
        return clip("… " + task[start:], room)
    return f"{head} … {clip(task[start:], tail_room)}"


def live_tail(text: str, room: int) -> str:
    """The end of `text` on one line in at most `room` characters ('…' marks the cut)."""
    text = " ".join(text.split())
    if len(text) <= room:
        return text
    return "…" + text[len(text) - room + 1 :] if room > 1 else "…"[: max(0, room)]


def render_tree(
    root: dict[str, Any] | None, width: int = 100, live: Mapping[str, str] | None = None
) -> list[str]:
    """The agent tree as text lines of at most `width` characters: icon, id, iterations, task
    (the part that differs from the other agents' tasks, when a shared prefix would fill it);
    under a running agent in `live`, the end of the reply it is writing."""
    lines: list[str] = []
    tasks: list[str] = []
    stack = [root] if root else []
    while stack:
        node = stack.pop()
        tasks.append(str(node.get("task", "")))
        stack.extend(node.get("children") or [])

    def walk(node: dict[str, Any], prefix: str, last: bool, top: bool) -> None:
        icon = ICONS.get(str(node.get("status")), "?")
        its = len(node.get("iterations") or [])
        task = str(node.get("task", ""))
        branch = "" if top else ("└─ " if last else "├─ ")
        head = f"{prefix}{branch}{icon} {node['agent_id']} [{node.get('status')}, {its} it]"
        peers = list(tasks)
        peers.remove(task)  # the other agents' tasks (one copy of this task is its own)
        room = width - len(head) - 1
        line = f"{head} {distinct_task(task, peers, room)}" if room >= 4 else head
        lines.append(line if len(line) <= width else line[: width - 1] + "…")
        kids = node.get("children") or []
        text = (live or {}).get(str(node["agent_id"])) if node.get("status") == "running" else None
        if text:
            lead = prefix + ("" if top else ("   " if last else "│  ")) + ("│  " if kids else "   ")
            head = f"{lead}✎ "
            if width - len(head) >= 8:
                lines.append(head + live_tail(text, width - len(head)))
        for i, kid in enumerate(kids):
            walk(
                kid, prefix + ("" if top else ("   " if last else "│  ")), i == len(kids) - 1, False
            )

    if root:
        walk(root, "", True, True)
    return lines


def summary_line(record: dict[str, Any]) -> str:
    """One line: agents, depth, iterations, LLM calls, tokens (cached ones), cost, time."""
    agents = depth = iterations = 0
    stack = [record.get("root")] if record.get("root") else []
    while stack:
        node = stack.pop()
        if not node:
            continue
        agents += 1
        depth = max(depth, int(node.get("depth", 0)))
        iterations += len(node.get("iterations") or [])
        stack.extend(node.get("children") or [])
    u = record.get("usage") or {}
    tokens = int(u.get("prompt_tokens", 0)) + int(u.get("completion_tokens", 0))
    cached = int(u.get("cache_read_tokens", 0) or 0)
    elapsed = record.get("elapsed_s")
    return (
        f"{agents} agents, depth {depth}, {iterations} iterations, {u.get('llm_calls', 0)} LLM calls, "
        f"{tokens:,} tokens{f' ({cached:,} cached)' if cached else ''}, "
        f"${float(u.get('cost_usd', 0.0)):.4f}"
        + (f", {float(elapsed):.1f} s" if elapsed is not None else "")
    )


class ConsoleProgress:
    """An event consumer that shows the tree on stderr (in place on a TTY, one line per change
    otherwise): `run.subscribe(ConsoleProgress())`."""

    def __init__(
        self, stream: TextIO | None = None, interval_s: float = 0.25, width: int | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = width  # None: measure the terminal at each line (it may be resized)
        self.state = TreeState()
        self.interval_s = interval_s
        self._drawn = 0
        self._last = 0.0
        self._lock = threading.Lock()
        self._tasks: list[str] = []  # the tasks of the agents started so far (line mode)
        self._held: tuple[str, list[str], int, float] | None = None  # message, agents, count, since
        self._live: dict[str, tuple[int, str]] = {}  # agent -> (turn, the reply it is writing)

    def __call__(self, ev: Event) -> None:
        """Consume one event."""
        with self._lock:
            p = ev.payload
            if isinstance(p, LLMText):
                self._grow(ev.agent_id, p)
                return
            if isinstance(p, (LLMResponse, AgentFinished)) and ev.agent_id:
                self._live.pop(ev.agent_id, None)
            self.state.apply(ev)
            finished = isinstance(ev.payload, RunFinished)
            if self.tty:
                now = time.monotonic()
                if finished or now - self._last >= self.interval_s:
                    self._last = now
                    self._redraw()
            else:
                self._line(ev)
            if finished:
                self._release()
                rec = self.state.to_dict()
                self._write(f"{rec.get('status')}: {summary_line(rec)}", wrap=True)
                self.stream.flush()

    def _grow(self, agent_id: str | None, p: LLMText) -> None:
        """A streamed reply grew: on a terminal, its end shows under the agent's line."""
        if not self.tty or agent_id is None:
            return  # a log gets the whole reply in the record, not its pieces
        index, text = self._live.get(agent_id, (p.index, ""))
        if index != p.index:
            text = ""
        offset = min(p.offset, len(text))
        text = (text[:offset] + p.text)[-4000:]  # the tail is all we show
        self._live[agent_id] = (p.index, text)
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._redraw()

    def _columns(self) -> int:
        return max(20, self.width or columns(self.stream))

    def _write(self, text: str, *, wrap: bool = False) -> None:
        """One progress line, fitted: cut (with '…') or, for messages that must stay whole, wrapped."""
        width = self._columns()
        if wrap and len(text) > width:
            lines = textwrap.wrap(text, width, subsequent_indent="  ", break_on_hyphens=False)
        else:
            lines = [clip(text, width)]
        self.stream.write("".join(ln + "\n" for ln in lines))

    def _redraw(self) -> None:
        # One column spare: a line that fills the terminal exactly would wrap on some terminals,
        # and the cursor-up count below would be off.
        lines = render_tree(
            self.state.to_dict().get("root"),
            self._columns() - 1,
            {aid: text for aid, (_, text) in self._live.items()},
        )
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn = len(lines)

    # -- line mode (not a terminal) ---------------------------------------------------------------
    def _line(self, ev: Event) -> None:
        p = ev.payload
        held = self._held
        if held is not None and time.monotonic() - held[3] >= _REPEAT_FLUSH_S:
            self._release()
        if isinstance(p, AgentStarted):
            task = str(p.task)
            head = f"▶ {ev.agent_id} (depth {p.depth}): "
            room = max(10, self._columns() - len(head))
            shown = distinct_task(task, self._tasks, room)
            self._tasks.append(task)
            self._print(head + shown)
        elif isinstance(p, AgentFinished):
            icon = ICONS.get(p.status, "?")
            extra = f" — {p.error}" if p.error else ""
            self._print(f"{icon} {ev.agent_id} {p.status}{extra}", wrap=True)
        elif isinstance(p, (Notice, BudgetHit)):
            self._hold(str(ev.agent_id or "run"), str(p.message))
        else:
            return
        self.stream.flush()

    def _print(self, text: str, *, wrap: bool = False) -> None:
        self._release()
        self._write(text, wrap=wrap)

    def _hold(self, agent: str, message: str) -> None:
        """Notices and refusals: a run of the same message becomes one line with a count."""
        held = self._held
        if held is not None and held[0] == message:
            agents = held[1] if agent in held[1] else [*held[1], agent]
            self._held = (message, agents, held[2] + 1, held[3])
            return
        self._release()
        self._held = (message, [agent], 1, time.monotonic())

    def _release(self) -> None:
        """Print the held notice (with its count)."""
        if self._held is None:
            return
        message, agents, count, _ = self._held
        self._held = None
        who = ", ".join(agents[:3]) + (f" and {len(agents) - 3} more" if len(agents) > 3 else "")
        times = f" ({count} times)" if count > 1 else ""
        self._write(f"! {who}: {message}{times}", wrap=True)
        self.stream.flush()
