"""Tests for rlm_kernel.console: the text tree, the summary line and the progress printer."""

from __future__ import annotations

import io
import re
from typing import Any

from eventkit import event

from rlm_kernel.console import (
    ConsoleProgress,
    clip,
    columns,
    distinct_task,
    render_tree,
    summary_line,
)
from rlm_kernel.events import (
    AgentStarted,
    Event,
    EventType,
    IterationStarted,
    LLMResponse,
    LLMText,
    Notice,
    Payload,
)


def _node(
    agent_id: str, status: str, task: str, iterations: int = 1, children: Any = (), depth: int = 0
) -> dict[str, Any]:
    return {
        "agent_id": agent_id,
        "status": status,
        "task": task,
        "depth": depth,
        "iterations": [{"index": i} for i in range(iterations)],
        "children": list(children),
    }


def _record() -> dict[str, Any]:
    grandchild = _node("root.0.0", "timeout", "deep", 3, depth=2)
    a = _node("root.0", "done", "part   a\nwith  newline", 2, [grandchild], depth=1)
    b = _node("root.1", "error", "part b", 1, depth=1)
    root = _node("root", "done", "count the words", 2, [a, b])
    return {
        "root": root,
        "usage": {
            "llm_calls": 8,
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "cost_usd": 0.01234,
        },
        "elapsed_s": 2.46,
    }


def test_render_tree() -> None:
    assert render_tree(_record()["root"]) == [
        "✓ root [done, 2 it] count the words",
        "├─ ✓ root.0 [done, 2 it] part a with newline",
        "│  └─ ⏱ root.0.0 [timeout, 3 it] deep",
        "└─ ✗ root.1 [error, 1 it] part b",
    ]


def test_render_tree_last_child_indent_and_unknown_status() -> None:
    kid = _node("root.1.0", "weird", "k", 0, depth=2)
    root = _node(
        "root",
        "running",
        "t",
        0,
        [_node("root.0", "cancelled", "a"), _node("root.1", "budget", "b", 0, [kid])],
    )
    assert render_tree(root) == [
        "… root [running, 0 it] t",
        "├─ ⊘ root.0 [cancelled, 1 it] a",
        "└─ $ root.1 [budget, 0 it] b",
        "   └─ ? root.1.0 [weird, 0 it] k",
    ]


def test_render_tree_truncates_long_tasks() -> None:
    (line,) = render_tree(_node("root", "done", "x" * 500), width=60)
    assert line.endswith("…")
    assert line.startswith("✓ root [done, 1 it] xxx")
    assert len(line) <= 60


def test_render_tree_empty() -> None:
    assert render_tree(None) == []
    assert render_tree({}) == []


def test_summary_line() -> None:
    assert summary_line(_record()) == (
        "4 agents, depth 2, 8 iterations, 8 LLM calls, 1,500 tokens, $0.0123, 2.5 s"
    )
    cached = {**_record(), "usage": {**_record()["usage"], "cache_read_tokens": 1024}}
    assert summary_line(cached) == (
        "4 agents, depth 2, 8 iterations, 8 LLM calls, 1,500 tokens (1,024 cached), $0.0123, 2.5 s"
    )


def test_summary_line_without_root_or_elapsed() -> None:
    assert summary_line({}) == "0 agents, depth 0, 0 iterations, 0 LLM calls, 0 tokens, $0.0000"


def test_console_progress_non_tty_one_line_per_agent_event() -> None:
    out = io.StringIO()
    progress = ConsoleProgress(out)
    assert progress.tty is False

    def ev(t: EventType, agent: str | None = None, **data: Any) -> Event:
        return event(t, "run-1", agent, data)

    u = {"llm_calls": 2, "prompt_tokens": 100, "completion_tokens": 20, "cost_usd": 0.5}
    events = [
        ev(EventType.RUN_STARTED, task="t", started_at="2025-01-01T00:00:00"),
        ev(EventType.AGENT_STARTED, "root", parent_id=None, depth=0, task="count\n  the words"),
        ev(EventType.ITERATION_STARTED, "root", index=0),
        ev(EventType.LLM_RESPONSE, "root", index=0, text="...", usage=u),
        ev(EventType.AGENT_STARTED, "root.0", parent_id="root", depth=1, task="sub"),
        ev(EventType.CODE_EXECUTED, "root.0", index=0, code="x", output="y"),
        ev(
            EventType.BUDGET_HIT,
            "root.0",
            limit="max_iterations",
            message="iteration limit reached",
        ),
        ev(
            EventType.AGENT_FINISHED,
            "root.0",
            status="budget",
            result="partial",
            error="out of turns",
        ),
        ev(EventType.NOTICE, None, level="info", message="sandbox kept at /x"),
        ev(EventType.AGENT_FINISHED, "root", status="done", result="42", error=None),
        ev(EventType.RUN_FINISHED, status="done", answer="42", usage=u, elapsed_s=1.25),
    ]
    for e in events:
        progress(e)
    assert out.getvalue().splitlines() == [
        "▶ root (depth 0): count the words",
        "▶ root.0 (depth 1): sub",
        "! root.0: iteration limit reached",
        "$ root.0 budget — out of turns",
        "! run: sandbox kept at /x",
        "✓ root done",
        "done: 2 agents, depth 1, 2 iterations, 2 LLM calls, 120 tokens, $0.5000, 1.2 s",
    ]
    assert "\x1b[" not in out.getvalue()


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_progress_tty_redraws_tree_in_place() -> None:
    out = _Tty()
    progress = ConsoleProgress(out, interval_s=0)
    assert progress.tty
    progress(event(EventType.RUN_STARTED, "r", None, {"task": "t"}))
    progress(event(EventType.AGENT_STARTED, "r", "root", {"depth": 0, "task": "t"}))
    progress(
        event(
            EventType.AGENT_STARTED, "r", "root.0", {"parent_id": "root", "depth": 1, "task": "s"}
        )
    )
    progress(event(EventType.RUN_FINISHED, "r", None, {"status": "done", "elapsed_s": 0.5}))
    text = out.getvalue()
    assert "\x1b[2F\x1b[J" in text  # the two-line tree is redrawn over itself
    assert text.endswith(
        "done: 2 agents, depth 1, 0 iterations, 0 LLM calls, 0 tokens, $0.0000, 0.5 s\n"
    )


# -- fitting the terminal ------------------------------------------------------------------------

RATE = "Assess how hard this TODO is to fix (easy/medium/hard), with one reason: "
TODOS = [
    "textkit/lines.py:6: # TODO: do not count the empty string after a trailing newline",
    "textkit/report.py:9: # TODO: include the longest word, quoted, once it handles punctuation",
    "textkit/words.py:6: # TODO: treat hyphenated words as one word even across lines",
]


def test_clip_cuts_at_a_word_boundary() -> None:
    assert clip("explore the numbers of lines", 20) == "explore the numbers…"
    assert clip("short", 20) == "short"
    assert clip("a  b\n c", 20) == "a b c"
    assert clip("x" * 30, 10) == "x" * 9 + "…"  # one long word: cut inside it
    assert clip("reason: textkit", 12) == "reason…"  # no dangling punctuation


def test_distinct_task_shows_the_part_that_differs() -> None:
    tasks = [RATE + t for t in TODOS]
    for room in (40, 60, 80):
        shown = [distinct_task(t, [o for o in tasks if o != t], room) for t in tasks]
        assert len(set(shown)) == 3, shown
        for s, todo in zip(shown, TODOS, strict=True):
            assert len(s) <= room
            assert s.startswith("Assess how") and f" … {todo.split()[0]}" in s
    # with room for the difference, or nothing to tell apart, it is the task, cut normally
    assert distinct_task(tasks[0], tasks[1:], 200) == tasks[0]
    assert distinct_task(tasks[0], [], 60) == clip(tasks[0], 60)
    assert distinct_task("count a", ["count b"], 60) == "count a"


def test_render_tree_fits_the_width_and_tells_cousins_apart() -> None:
    kids = [
        _node(f"root.{i}", "done", f"look at module {i}", 1, [_node(f"root.{i}.0", "running", RATE + t, 1, depth=2)], depth=1)
        for i, t in enumerate(TODOS)
    ]  # fmt: skip
    for width in (50, 70, 100):
        lines = render_tree(_node("root", "running", "survey " * 30, 1, kids), width)
        assert all(len(ln) <= width for ln in lines), lines
        grand = [ln.split("] ", 1)[1] for ln in lines if re.search(r"root\.\d\.0 ", ln)]
        assert len(set(grand)) == 3, grand


def _started(agent: str, depth: int, task: str) -> Event:
    return event(EventType.AGENT_STARTED, "r", agent, {"depth": depth, "task": task})


def test_console_lines_fit_columns(monkeypatch: Any) -> None:
    monkeypatch.setenv("COLUMNS", "64")
    out = io.StringIO()
    progress = ConsoleProgress(out)
    progress(_started("root", 0, "Investigate the TODO comments across this repository " * 3))
    for i, t in enumerate(TODOS):
        progress(_started(f"root.{i}.0", 2, RATE + t))
    progress(
        event(
            EventType.AGENT_FINISHED,
            "r",
            "root.0.0",
            {"status": "error", "error": "the model returned 3 empty replies in a row; check " * 3},
        )
    )
    progress(event(EventType.RUN_FINISHED, "r", None, {"status": "error", "elapsed_s": 1.0}))
    lines = out.getvalue().splitlines()
    assert all(len(ln) <= 64 for ln in lines), lines
    started = [ln for ln in lines if ln.startswith("▶ root.")]
    assert len(set(ln.split(": ", 1)[1] for ln in started)) == 3
    assert "textkit/report.py" in started[1] and "textkit/words.py" in started[2]
    # an error is wrapped, not cut: every word of it is there
    assert " ".join(lines).count("check") == 3


def test_columns_prefers_the_environment(monkeypatch: Any) -> None:
    monkeypatch.setenv("COLUMNS", "123")
    assert columns(io.StringIO()) == 123
    monkeypatch.delenv("COLUMNS")
    assert columns(io.StringIO()) >= 20  # StringIO has no terminal: shutil's fallback


def test_repeated_refusals_become_one_line_with_a_count() -> None:
    out = io.StringIO()
    progress = ConsoleProgress(out, width=100)
    msg = "sandbox budget exhausted (max_sandboxes=10)"
    progress(_started("root", 0, "fan out"))
    for _ in range(51):
        progress(
            event(EventType.BUDGET_HIT, "r", "root", {"limit": "max_sandboxes", "message": msg})
        )
    progress(_started("root.0", 1, "part 0"))
    progress(
        event(
            EventType.BUDGET_HIT,
            "r",
            "root.0",
            {"limit": "max_llm_calls", "message": "LLM call budget exhausted"},
        )
    )
    progress(
        event(
            EventType.BUDGET_HIT,
            "r",
            "root.1",
            {"limit": "max_llm_calls", "message": "LLM call budget exhausted"},
        )
    )
    progress(event(EventType.RUN_FINISHED, "r", None, {"status": "done", "elapsed_s": 1.0}))
    lines = out.getvalue().splitlines()
    assert lines[:3] == [
        "▶ root (depth 0): fan out",
        f"! root: {msg} (51 times)",
        "▶ root.0 (depth 1): part 0",
    ]
    assert lines[3] == "! root.0, root.1: LLM call budget exhausted (2 times)"
    assert lines[4].startswith("done: ")


def test_render_tree_shows_the_end_of_a_reply_being_written() -> None:
    grandchild = _node("root.0.0", "running", "deep", 1, depth=2)
    a = _node("root.0", "running", "part a", 1, [grandchild], depth=1)
    b = _node("root.1", "done", "part b", 1, depth=1)
    root = _node("root", "running", "count", 1, [a, b])
    live = {
        "root.0.0": "First I will read the file.\n```python\nprint(open('a.txt').read())",
        "root": "x" * 500,
        "root.1": "not running: not shown",
    }
    lines = render_tree(root, 50, live)
    assert lines == [
        "… root [running, 1 it] count",
        "│  ✎ …" + "x" * 44,
        "├─ … root.0 [running, 1 it] part a",
        "│  └─ … root.0.0 [running, 1 it] deep",
        "│        ✎ … ```python print(open('a.txt').read())",
        "└─ ✓ root.1 [done, 1 it] part b",
    ]
    assert all(len(line) <= 50 for line in lines)


def test_a_terminal_shows_one_live_line_per_running_agent_and_logs_do_not() -> None:
    def events() -> list[Event]:
        def ev(payload: Payload, agent: str | None = None) -> Event:
            return Event(payload, "run-1", agent)

        return [
            event(EventType.RUN_STARTED, "run-1", None, {"task": "t"}),
            ev(AgentStarted(None, 0, "count", 0.0), "root"),
            ev(IterationStarted(0), "root"),
            ev(LLMText(0, 0, "Let me count"), "root"),
            ev(LLMText(0, 12, " the words."), "root"),
            ev(LLMResponse(0, "Let me count the words.", {}), "root"),
        ]

    tty = _Tty()
    progress = ConsoleProgress(stream=tty, interval_s=0, width=60)
    for e in events()[:-1]:
        progress(e)
    assert "✎ Let me count the words." in tty.getvalue().rsplit("\x1b[J", 1)[-1]
    progress(events()[-1])
    progress(Event(Notice("info", "redraw"), "run-1", "root"))
    assert "✎" not in tty.getvalue().rsplit("\x1b[J", 1)[-1]  # the whole reply came: line gone
    log = io.StringIO()
    progress = ConsoleProgress(stream=log, interval_s=0, width=60)
    for e in events():
        progress(e)
    assert "Let me count" not in log.getvalue()
