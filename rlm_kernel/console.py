"""Live progress on a terminal: the agent tree with statuses, from events (redrawn in place on a TTY)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

from .events import Event, EventType
from .records import TreeState

__all__ = ["ConsoleProgress", "render_tree", "summary_line"]

ICONS = {"running": "…", "done": "✓", "error": "✗", "timeout": "⏱", "cancelled": "⊘", "budget": "$"}


def render_tree(root: dict[str, Any] | None, width: int = 100) -> list[str]:
    """The agent tree as text lines: icon, id, iterations, task."""
    lines: list[str] = []

    def walk(node: dict[str, Any], prefix: str, last: bool, top: bool) -> None:
        icon = ICONS.get(str(node.get("status")), "?")
        its = len(node.get("iterations") or [])
        task = " ".join(str(node.get("task", "")).split())
        branch = "" if top else ("└─ " if last else "├─ ")
        head = f"{prefix}{branch}{icon} {node['agent_id']} [{node.get('status')}, {its} it]"
        room = max(10, width - len(head) - 3)
        lines.append(f"{head} {task[:room]}{'…' if len(task) > room else ''}")
        kids = node.get("children") or []
        for i, kid in enumerate(kids):
            walk(
                kid, prefix + ("" if top else ("   " if last else "│  ")), i == len(kids) - 1, False
            )

    if root:
        walk(root, "", True, True)
    return lines


def summary_line(record: dict[str, Any]) -> str:
    """One line: agents, depth, iterations, LLM calls, tokens, cost, time."""
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
    elapsed = record.get("elapsed_s")
    return (
        f"{agents} agents, depth {depth}, {iterations} iterations, {u.get('llm_calls', 0)} LLM calls, "
        f"{tokens:,} tokens, ${float(u.get('cost_usd', 0.0)):.4f}"
        + (f", {float(elapsed):.1f} s" if elapsed is not None else "")
    )


class ConsoleProgress:
    """An event consumer that shows the tree on stderr (in place on a TTY, one line per change otherwise)."""

    def __init__(self, stream: TextIO | None = None, interval_s: float = 0.25) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.state = TreeState()
        self.interval_s = interval_s
        self._drawn = 0
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, ev: Event) -> None:
        """Consume one event."""
        with self._lock:
            self.state.apply(ev)
            if self.tty:
                now = time.monotonic()
                if ev.type is EventType.RUN_FINISHED or now - self._last >= self.interval_s:
                    self._last = now
                    self._redraw()
            else:
                self._line(ev)
            if ev.type is EventType.RUN_FINISHED:
                rec = self.state.to_dict()
                self.stream.write(f"{rec.get('status')}: {summary_line(rec)}\n")
                self.stream.flush()

    def _redraw(self) -> None:
        lines = render_tree(self.state.to_dict().get("root"))
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn = len(lines)

    def _line(self, ev: Event) -> None:
        d = ev.data
        if ev.type is EventType.AGENT_STARTED:
            task = " ".join(str(d.get("task", "")).split())[:80]
            self.stream.write(f"▶ {ev.agent_id} (depth {d.get('depth')}): {task}\n")
        elif ev.type is EventType.AGENT_FINISHED:
            icon = ICONS.get(str(d.get("status")), "?")
            extra = f" — {d.get('error')}" if d.get("error") else ""
            self.stream.write(f"{icon} {ev.agent_id} {d.get('status')}{extra}\n")
        elif ev.type is EventType.NOTICE or ev.type is EventType.BUDGET_HIT:
            self.stream.write(f"! {ev.agent_id or 'run'}: {d.get('message')}\n")
        else:
            return
        self.stream.flush()
