"""Notebook output bundles: answer, diff, summary and tables; the step gate's text line."""

from __future__ import annotations

from pathlib import Path

from rlm_kernel.answer import looks_like_markdown
from rlm_kernel.config import RLMConfig
from rlm_kernel.display import (
    RunView,
    answer_bundle,
    diff_bundle,
    gate_text,
    summary_text,
    table_bundle,
)
from rlm_kernel.events import AgentStarted, GateState, GateWaiter, RunFinished, StepMode
from rlm_kernel.runner import Run

PATCH = """diff --git a/a.py b/a.py
index 1..2 100644
--- a/a.py
+++ b/a.py
@@ -1 +1,2 @@
-x = "<old>"
+x = "<new> & co"
+y = 1
"""


DEMO_ANSWER = """Found TODOs in textkit/lines.py, textkit/report.py, textkit/words.py.

textkit/lines.py:6: # TODO: do not count the empty string after a trailing newline as a line
difficulty: easy: one call to str.splitlines() fixes it

textkit/words.py:6: # TODO: treat hyphenated words as one word even when split across lines
difficulty: medium: needs a rule for line-break hyphens"""


def test_a_markdown_answer_is_markdown_with_a_text_fallback() -> None:
    assert answer_bundle("**done**") == {"text/markdown": "**done**", "text/plain": "**done**"}
    md = answer_bundle("## Result\n- one\n- two\n\nsee `x.py`\nand then y")
    # single line breaks stay breaks (two trailing spaces), lists and headings are left alone
    assert md["text/markdown"] == "## Result\n- one\n- two\n\nsee `x.py`  \nand then y"


def test_a_plain_multi_line_answer_keeps_its_lines() -> None:
    b = answer_bundle(DEMO_ANSWER)
    assert b == {"text/plain": DEMO_ANSWER}  # no Markdown: nothing joins its lines
    assert not looks_like_markdown(DEMO_ANSWER)
    for md in ("# Title", "1. first", "a **b** c", "use `x`", "[a](http://b)", "> quoted", "*so*"):
        assert looks_like_markdown(md), md
    for plain in ("2 * 3 * 4", "a_b_c and snake_case", "x:1 # comment", "cost: $5", "__init__.py"):
        assert not looks_like_markdown(plain), plain


def test_a_huge_answer_is_shown_as_head_and_tail() -> None:
    b = answer_bundle("a" * 300_000 + "END")
    assert len(b["text/plain"]) < 101_000 and b["text/plain"].endswith("END")
    assert "200,003 more characters" in b["text/plain"] and ".answer" in b["text/plain"]


CHAPTERS = [
    {"chapter": i, "title": f"Chapter {i}", "characters": {"Alice": 10 * i}, "quote": "q" * 90}
    for i in range(1, 13)
]


def test_a_submit_dict_is_a_field_table_with_long_values_folded() -> None:
    notes = "x\n" * 9  # more lines than fit inline
    fields = {"answer": "a | <b>", "confidence": 0.5, "chapters": CHAPTERS, "notes": notes}
    b = answer_bundle(fields)
    assert set(b) == {"text/html", "text/plain"}
    html = b["text/html"]
    # short values inline, escaped; long ones folded: a <details> whose summary says what it is
    assert '<td style="text-align: left; vertical-align: top">a | &lt;b&gt;' in html.replace(
        '<div style="white-space: pre-wrap">', ""
    )
    assert "<code>0.5</code>" in html
    assert html.count("<details>") == 2
    assert "12 items: [{&quot;chapter&quot;: 1, &quot;title&quot;: &quot;Chapter 1&quot;" in html
    # a list of records opens as a table with a column per key
    for col in ("chapter", "title", "characters", "quote"):
        assert f">{col}</th>" in html
    assert "{&quot;Alice&quot;: 120}" in html
    plain = b["text/plain"].splitlines()
    assert plain[0] == "answer      a | <b>"
    assert plain[1] == "confidence  0.5"
    assert plain[2].startswith('chapters    [12 items] [{"chapter": 1,') and len(plain[2]) <= 112
    assert plain[3] == "notes       x (18 characters)"
    prose = answer_bundle({"summary": "word " * 100})["text/html"]  # 500 characters: inline
    assert "<details>" not in prose


def test_no_answer_says_why() -> None:
    b = answer_bundle(None, "error", "internal error: boom")
    assert b["text/plain"] == "(no answer — the run ended with status error: internal error: boom)"


def test_diff_bundle_escapes_and_colours_lines() -> None:
    b = diff_bundle(PATCH, "results/r.patch")
    assert b["text/x-diff"] == PATCH == b["text/plain"]
    html = b["text/html"]
    assert "&lt;new&gt; &amp; co" in html and "<new>" not in html
    assert "patch: 1 file changed, +2 −1 · saved to results/r.patch" in html
    added = '<span style="color: var(--jp-success-color0, #1a7f37)'
    removed = '<span style="color: var(--jp-error-color0, #cf222e)'
    assert html.count(added) == 2 and html.count(removed) == 1
    assert "var(--jp-code-font-family, monospace)" in html


def test_summary_text_and_tables() -> None:
    rec = {
        "run_id": "r1",
        "status": "done",
        "elapsed_s": 1.25,
        "usage": {"llm_calls": 2, "prompt_tokens": 1000, "completion_tokens": 5, "cost_usd": 0.5},
        "root": {"agent_id": "root", "depth": 0, "iterations": [{}], "children": []},
    }
    assert summary_text(rec, "p.patch") == (
        "✓ done — 1 agents, depth 0, 1 iterations, 2 LLM calls, 1,005 tokens, $0.5000, 1.2 s"
        " · run r1 · patch p.patch"
    )
    t = table_bundle(["name", "repr"], [["x", "<1>"]])
    assert t["text/plain"].splitlines() == ["name  repr", "----  ----", "x     <1>"]
    assert "<code>&lt;1&gt;</code>" in t["text/html"]


# -- the step gate's text line, from events --------------------------------------------------------


def _waiter(agent: str, index: int, code: str = "x = 1") -> GateWaiter:
    return {"agent_id": agent, "index": index, "code": code}


def test_gate_text_says_who_waits_with_which_code() -> None:
    assert gate_text(GateState()) == ""  # running freely
    paused = gate_text(GateState(stepping=True))
    assert paused.startswith("‖ paused (step mode): each agent stops before running its next code")
    code = "\n".join(f"line_{i} = {i}" for i in range(35))
    text = gate_text(
        GateState(True, (_waiter("root.0", 2, code), _waiter("root.1", 0), _waiter("root", 4)))
    )
    lines = text.splitlines()
    assert lines[0].startswith(
        "‖ root.0, iteration 3, waits at the step gate to run this code "
        "(2 more wait: root.1, root) (Step or Continue"
    )
    assert lines[1] == "    line_0 = 0" and lines[30] == "    line_29 = 29"
    assert lines[31] == "    … (5 more lines)" and len(lines) == 32
    assert gate_text(GateState(True, (_waiter("root", 0),), ended=True)) == ""


def test_run_view_follows_the_gate_from_events(tmp_path: Path) -> None:
    """The view folds STEP_MODE events (no polling of the run): its text and `gate` say who waits."""
    run = Run("t", config=RLMConfig().with_overrides({"results_dir": str(tmp_path)}))
    view = RunView(run, quiet=True, notebook=False)
    run.subscribe(view)
    run.emit(AgentStarted(None, 0, "the task", 0.0), "root")
    assert not view.gate.paused and "waits at the step gate" not in view.text()
    run.emit(StepMode(True, (_waiter("root", 0),), 1))
    assert view.gate.paused and view.gate.pending_steps == 1
    assert "⏸ root iteration 0 waits at the step gate" in view.text()
    run.emit(RunFinished("cancelled", None, "", {}, 0.1, "2026-01-01T00:00:00"))
    assert view.gate.ended and "waits at the step gate" not in view.text()
    assert gate_text(view.gate) == ""
