"""Notebook output bundles: answer, diff, summary and tables."""

from __future__ import annotations

from rlm_kernel.display import answer_bundle, diff_bundle, summary_text, table_bundle

PATCH = """diff --git a/a.py b/a.py
index 1..2 100644
--- a/a.py
+++ b/a.py
@@ -1 +1,2 @@
-x = "<old>"
+x = "<new> & co"
+y = 1
"""


def test_answer_is_markdown_with_a_text_fallback() -> None:
    assert answer_bundle("**done**") == {"text/markdown": "**done**", "text/plain": "**done**"}


def test_a_submit_dict_is_a_field_table_and_json() -> None:
    b = answer_bundle({"answer": "a | b", "confidence": 0.5})
    assert b["text/markdown"].splitlines() == [
        "| field | value |",
        "|---|---|",
        "| `answer` | a \\| b |",
        "| `confidence` | 0.5 |",
    ]
    assert b["application/json"] == {"answer": "a | b", "confidence": 0.5}


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
