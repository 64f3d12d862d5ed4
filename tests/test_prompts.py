"""Tests for rlm_kernel.prompts: code blocks, truncation, cell outputs, depth-aware prompts."""

from __future__ import annotations

from rlm_kernel.prompts import (
    AgentPromptInfo,
    extract_code_blocks,
    format_cell_outputs,
    no_code_prompt,
    system_prompt,
    task_prompt,
    truncate_middle,
    unclosed_fence,
)
from rlm_kernel.signature import Signature


def _info(**kw: object) -> AgentPromptInfo:
    base: dict[str, object] = {"depth": 0, "max_depth": 3, "max_iterations": 7, "has_repo": True}
    base.update(kw)
    return AgentPromptInfo(**base)  # type: ignore[arg-type]


# -- extract_code_blocks ----------------------------------------------------------------------


def test_extract_python_fence() -> None:
    text = "Let me look.\n```python\nprint(1)\n```\nDone."
    assert extract_code_blocks(text) == ["print(1)\n"]


def test_extract_repl_and_py_fences() -> None:
    assert extract_code_blocks("```repl\nx = 1\n```") == ["x = 1\n"]
    assert extract_code_blocks("```py\ny = 2\n```") == ["y = 2\n"]


def test_extract_info_string_after_language() -> None:
    # Anything after the language tag on the fence line is ignored.
    assert extract_code_blocks("```python title=a.py\nz = 3\n```") == ["z = 3\n"]


def test_extract_several_blocks_in_order() -> None:
    text = "first\n```python\na = 1\n```\nthen\n```repl\nb = 2\n```\nand\n```py\nc = 3\n```\n"
    assert extract_code_blocks(text) == ["a = 1\n", "b = 2\n", "c = 3\n"]


def test_extract_multiline_block_kept_verbatim() -> None:
    code = "def f(x):\n    return x * 2\n\nprint(f(21))\n"
    assert extract_code_blocks(f"```python\n{code}```") == [code]


def test_extract_ignores_other_languages_and_bare_fences() -> None:
    text = (
        "```bash\nls -la\n```\n"
        '```json\n{"a": 1}\n```\n'
        "```\nplain fence\n```\n"
        "```python\nkeep = True\n```\n"
        "```javascript\nconsole.log(1)\n```\n"
    )
    assert extract_code_blocks(text) == ["keep = True\n"]


def test_extract_ignores_empty_blocks() -> None:
    text = "```python\n```\n```python\n   \n\n```\n```python\nx = 1\n```"
    assert extract_code_blocks(text) == ["x = 1\n"]


def test_extract_no_blocks() -> None:
    assert extract_code_blocks("I think the answer is 42.") == []
    assert extract_code_blocks("") == []


def test_extract_unterminated_block_is_ignored() -> None:
    assert extract_code_blocks("```python\nprint('never closed')\n") == []


# -- truncate_middle ---------------------------------------------------------------------------


def test_truncate_noop_under_and_at_limit() -> None:
    assert truncate_middle("short", 100) == "short"
    text = "x" * 50
    assert truncate_middle(text, 50) == text
    assert truncate_middle("", 0) == ""


def test_truncate_keeps_head_and_tail_and_states_omitted_count() -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    out = truncate_middle(text, 90)
    head, tail = 60, 30  # two thirds head, the rest tail
    assert out.startswith(text[:head])
    assert out.endswith(text[-tail:])
    omitted = len(text) - head - tail
    assert out == f"{text[:head]}\n... [{omitted} characters omitted] ...\n{text[-tail:]}"
    assert "[910 characters omitted]" in out


def test_truncate_one_over_limit() -> None:
    text = "0123456789A"  # 11 characters, limit 10
    out = truncate_middle(text, 10)
    assert out == "012345\n... [1 characters omitted] ...\n789A"


def test_truncate_head_and_tail_lines_survive() -> None:
    lines = [f"line {i}" for i in range(2000)]
    out = truncate_middle("\n".join(lines), 300)
    assert out.startswith("line 0\nline 1\n")
    assert out.endswith("line 1998\nline 1999")
    assert "line 1000\n" not in out


# -- format_cell_outputs -----------------------------------------------------------------------


def test_format_single_output() -> None:
    out = format_cell_outputs([("print(1)", "1\n")], limit=1000)
    assert out == "Output:\n1\n\nContinue with code, or finish with FINAL(answer)."


def test_format_several_outputs_are_numbered_and_empty_shown() -> None:
    out = format_cell_outputs([("a", "A out\n"), ("b", ""), ("c", "   \n")], limit=1000)
    assert "Output of code block 1:\nA out" in out
    assert "Output of code block 2:\n(no output)" in out
    assert "Output of code block 3:\n(no output)" in out
    assert out.index("block 1") < out.index("block 2") < out.index("block 3")
    assert out.endswith("Continue with code, or finish with FINAL(answer).")


def test_format_does_not_echo_code() -> None:
    out = format_cell_outputs([("secret_code_here = 1", "ok")], limit=1000)
    assert "secret_code_here" not in out


def test_format_truncates_each_output_share() -> None:
    big = "A" * 5000 + "B" * 5000
    out = format_cell_outputs([("x", big), ("y", big)], limit=1000)
    # each block gets limit // 2 = 500 characters: 333 head + 167 tail
    assert out.count("[9500 characters omitted]") == 2
    assert "A" * 333 in out and "A" * 334 not in out


def test_format_truncation_share_has_a_floor_of_200() -> None:
    text = "z" * 1000
    out = format_cell_outputs([(str(i), text) for i in range(10)], limit=100)
    assert out.count("[800 characters omitted]") == 10


def test_format_appends_notes() -> None:
    out = format_cell_outputs([("x", "1")], limit=100, notes=["Note: a child failed."])
    assert "Output:\n1\n\nNote: a child failed.\n\nContinue with code" in out


# -- system_prompt -----------------------------------------------------------------------------


def test_root_prompt_wording() -> None:
    p = system_prompt(_info(depth=0))
    assert p.startswith("You are the root agent of a Recursive Language Model (RLM) run.")
    assert "Only your final answer reaches the parent" not in p
    assert "- rlm_query(task) -> str" in p
    assert "rlm_query_batched(tasks)" in p
    assert "NOT available" not in p
    assert "You have at most 7 turns." in p


def test_sub_agent_prompt_wording() -> None:
    p = system_prompt(_info(depth=2, max_depth=3))
    assert p.startswith("You are a sub-agent at depth 2 of a Recursive Language Model (RLM) run.")
    assert "Only your final answer reaches the parent" in p
    assert "root agent" not in p
    assert "- rlm_query(task) -> str" in p  # depth 2 < max_depth 3: may still recurse


def test_max_depth_prompt_says_rlm_query_not_available() -> None:
    info = _info(depth=3, max_depth=3)
    assert not info.can_recurse
    p = system_prompt(info)
    assert "rlm_query / rlm_query_batched are NOT available" in p
    assert "maximum depth (3)" in p
    assert "- rlm_query(task) -> str" not in p
    assert "apply_patch" not in p
    # the plain sub-LLM call is still offered
    assert "- llm_query(prompt, model=None) -> str" in p


def test_root_at_max_depth_zero_cannot_recurse() -> None:
    p = system_prompt(_info(depth=0, max_depth=0))
    assert "root agent" in p
    assert "NOT available" in p and "maximum depth (0)" in p


def test_can_recurse_property() -> None:
    assert _info(depth=0, max_depth=1).can_recurse
    assert not _info(depth=1, max_depth=1).can_recurse


def test_prompt_workspace_wording() -> None:
    assert "private git checkout" in system_prompt(_info(has_repo=True))
    no_repo = system_prompt(_info(has_repo=False))
    assert "private, initially empty folder" in no_repo
    assert "git checkout" not in no_repo


def test_prompt_lists_tools_with_signature_and_first_doc_line() -> None:
    tools = [
        {
            "name": "search_web",
            "signature": "(query: str, k: int = 5)",
            "doc": "Search the web.\n\nLong details.",
        },
        {"name": "no_sig", "doc": "  Does a thing.  "},
        {"name": "no_doc", "signature": "(x)"},
    ]
    p = system_prompt(_info(tools=tools))
    assert "- search_web(query: str, k: int = 5): Search the web." in p
    assert "Long details." not in p
    assert "- no_sig(...): Does a thing." in p
    assert "- no_doc(x): a host tool" in p


def test_prompt_shows_submit_fields_with_signature() -> None:
    sig = Signature.parse("question: str -> answer: str, confidence: float")
    p = system_prompt(_info(signature=sig))
    assert "Call SUBMIT(answer: str, confidence: float) with exactly these typed fields" in p
    assert "SUBMIT" not in system_prompt(_info())


def test_prompt_context_and_budget_note() -> None:
    p = system_prompt(
        _info(has_context=True, context_desc="a list of 3 documents", budget_note="Budget: $1")
    )
    assert "- context: a list of 3 documents" in p
    assert p.endswith("Budget: $1")
    assert "- context: the data given with the task" in system_prompt(_info(has_context=True))
    assert "- context:" not in system_prompt(_info())


def test_task_prompt_and_no_code_prompt() -> None:
    assert (
        task_prompt("Count words", _info()) == "Task:\nCount words\n\nStart by exploring with code."
    )
    with_ctx = task_prompt("Count words", _info(has_context=True))
    assert "The variable `context` in your REPL holds the data" in with_ctx
    assert "```python" in no_code_prompt() and "FINAL(answer)" in no_code_prompt()


def test_an_unclosed_fence_gets_its_own_message() -> None:
    cut = "Let me look:\n```python\nfor f in files:\n    print(f"
    assert extract_code_blocks(cut) == [] and unclosed_fence(cut)
    msg = no_code_prompt(cut)
    assert "never closed" in msg and "closing ```" in msg and "no ```python code block" not in msg
    # a closed block, prose, or a bare ``` (another language) is not an unclosed python block
    for text in ("```python\nx = 1\n```", "just prose", "```\nx = 1", "```bash\nls"):
        assert not unclosed_fence(text), text
        assert "no ```python code block" in no_code_prompt(text)
    assert unclosed_fence("```python\nx = 1\n```\nthen\n```repl\ny = 2")  # the second one
