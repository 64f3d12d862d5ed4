"""System and turn prompts, depth-aware: what an agent is told about its REPL, its place in the tree and its budget."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .signature import Signature

__all__ = [
    "AgentPromptInfo",
    "extract_code_blocks",
    "format_cell_outputs",
    "no_code_prompt",
    "system_prompt",
    "task_prompt",
    "truncate_middle",
    "unclosed_fence",
]

_FENCE = re.compile(r"```(?:python|repl|py)[^\n]*\n(.*?)```", re.DOTALL)
_OPENING = re.compile(r"```(?:python|repl|py)\b[^\n]*(?:\n|$)")


@dataclass(frozen=True)
class AgentPromptInfo:
    """What the prompts need to know about one agent."""

    depth: int
    max_depth: int
    max_iterations: int
    has_repo: bool
    has_context: bool = False
    context_desc: str = ""
    signature: Signature | None = None
    tools: Sequence[dict[str, Any]] = ()
    budget_note: str = ""

    @property
    def can_recurse(self) -> bool:
        """Whether rlm_query may spawn children from this agent."""
        return self.depth < self.max_depth


def system_prompt(info: AgentPromptInfo) -> str:
    """The system prompt for an agent at `info.depth`."""
    role = (
        "You are the root agent of a Recursive Language Model (RLM) run."
        if info.depth == 0
        else (
            f"You are a sub-agent at depth {info.depth} of a Recursive Language Model (RLM) run. "
            "A parent agent gave you the task below. Only your final answer reaches the parent: "
            "it cannot see your code, your output or your files, so put everything it needs "
            "into the answer itself."
        )
    )
    ws = (
        "Your working directory is a private git checkout of the target repository; edit files "
        "there freely (other agents have their own copies). The host turns your changes into a "
        "git patch when you finish; you do not need to run git yourself."
        if info.has_repo
        else "Your working directory is a private, initially empty folder."
    )
    lines = [
        role,
        "",
        "You solve the task by writing Python that runs in a persistent IPython REPL: variables, "
        "imports and functions survive between your turns. Put code in ```python fenced blocks; "
        "several blocks in one reply run in order. After each reply you see the output "
        "(long output is truncated in the middle, so print summaries rather than whole files).",
        ws,
        "",
        "Functions available in the REPL:",
        "- llm_query(prompt, model=None) -> str: one plain LLM call for semantic work (reading, "
        "extracting, classifying text). It has no REPL; give it everything it needs in the prompt.",
        "- llm_query_batched(prompts, model=None) -> list[str]: many llm_query calls in parallel.",
    ]
    if info.can_recurse:
        lines += [
            "- rlm_query(task) -> str: hand a self-contained sub-task to a child agent with its own "
            "REPL and its own fresh checkout; returns the child's final answer (a str with .patch: "
            "the child's file changes as a diff, and .agent_id).",
            "- rlm_query_batched(tasks) -> list[str]: run one child agent per task, all in parallel.",
            "- apply_patch(patch): apply a child's .patch to your own files.",
        ]
    else:
        lines += [
            f"- rlm_query / rlm_query_batched are NOT available: you are at the maximum depth "
            f"({info.max_depth}) and cannot spawn sub-agents; use llm_query or do the work yourself.",
        ]
    lines += [
        "- edit_file(path, old, new): replace one exact, unique occurrence of `old`; .py files "
        "must still compile.",
        "- SHOW_VARS(): list your variables.",
    ]
    for tool in info.tools:
        doc = (tool.get("doc") or "").strip().splitlines()
        lines.append(
            f"- {tool['name']}{tool.get('signature') or '(...)'}: {doc[0] if doc else 'a host tool'}"
        )
    if info.has_context:
        lines.append(f"- context: {info.context_desc or 'the data given with the task'}")
    lines += ["", "Finishing:"]
    if info.signature is not None:
        lines.append(
            f"- Call SUBMIT({info.signature.describe()}) with exactly these typed fields to finish. "
            "Wrong names or types are reported back to you."
        )
    lines += [
        "- FINAL(answer) ends your work with `answer` as the result; FINAL_VAR(name) does the same "
        "with the value of a variable. Code after FINAL does not run.",
        "- Alternatively set answer['content'] = ... and answer['ready'] = True.",
        "Finish only when the task is done; verify your work by running code first.",
        "",
        f"You have at most {info.max_iterations} turns.",
    ]
    if info.budget_note:
        lines.append(info.budget_note)
    return "\n".join(lines)


def task_prompt(task: str, info: AgentPromptInfo) -> str:
    """The first user message: the task."""
    extra = ""
    if info.has_context:
        extra = "\n\nThe variable `context` in your REPL holds the data for this task; inspect it with code."
    return f"Task:\n{task}{extra}\n\nStart by exploring with code."


def unclosed_fence(text: str) -> bool:
    """Whether a reply opens a ```python (```repl, ```py) block that no closing ``` ends."""
    return _OPENING.search(_FENCE.sub("", text)) is not None


def no_code_prompt(reply: str = "") -> str:
    """The corrective turn after a reply without a (complete) code block."""
    if unclosed_fence(reply):
        return (
            "Your reply opened a ```python code block but never closed it (no closing ``` line), "
            "so nothing ran: the reply may have been cut off. Send the code again as a complete "
            "block that ends with a line of ```; keep it shorter if it was long. To finish, call "
            "FINAL(answer) in code."
        )
    return (
        "Your reply had no ```python code block, so nothing ran. Reply with code in a ```python "
        "block; to finish, call FINAL(answer) in code."
    )


_OMITTED = re.compile(r"\n\.\.\. \[(\d+) characters omitted\] \.\.\.\n")


def truncate_middle(text: str, limit: int) -> str:
    """Keep the head and the tail of `text`, saying how many characters were omitted."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    middle = text[head : len(text) - tail]
    # The sandbox may have cut the output already: count what its notes say was dropped too.
    omitted = len(middle) + sum(int(m[1]) - len(m[0]) for m in _OMITTED.finditer(middle))
    return f"{text[:head]}\n... [{omitted} characters omitted] ...\n{text[len(text) - tail :]}"


def format_cell_outputs(
    results: Sequence[tuple[str, str]], limit: int, notes: Sequence[str] = ()
) -> str:
    """The user turn after code ran: each block's output, truncated head-and-tail."""
    per = max(200, limit // max(1, len(results)))
    chunks = []
    for i, (code, output) in enumerate(results, 1):
        body = truncate_middle(output, per) if output.strip() else "(no output)"
        label = f"Output of code block {i}" if len(results) > 1 else "Output"
        chunks.append(f"{label}:\n{body.rstrip()}")
        del code
    chunks.extend(notes)
    return "\n\n".join(chunks) + "\n\nContinue with code, or finish with FINAL(answer)."


def extract_code_blocks(text: str) -> list[str]:
    """The ```python / ```repl fenced blocks of a reply, in order."""
    return [m.group(1) for m in _FENCE.finditer(text) if m.group(1).strip()]
