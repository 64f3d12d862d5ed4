"""The demo's scripted model: it writes the code a good agent would, and that code runs for real.

root → one child per module with TODOs (rlm_query_batched) → each child asks a grandchild to rate
its TODO (rlm_query) → the grandchild uses llm_query → the root fixes the easiest TODO with
edit_file, adds a test file, checks it, and finishes with FINAL.
"""

import re
from typing import Any

LATENCY_S = 0.2

ROOT = [
    """I'll start by finding every TODO comment in the repository.
```python
import pathlib
files = sorted(str(p) for p in pathlib.Path(".").rglob("*.py"))
todos = {f: [line.strip() for line in open(f) if "# TODO" in line] for f in files}
for f, found in todos.items():
    print(f"{f}: {len(found)} TODO(s)")
```""",
    """Three modules have TODOs. I'll give each module to a sub-agent, in parallel.
```python
modules = [f for f, found in todos.items() if found]
results = rlm_query_batched([
    f"Investigate the TODO comments in {m}: list each with its line number, and get its difficulty "
    "(easy/medium/hard) assessed."
    for m in modules
])
for m, r in zip(modules, results):
    print(f"=== {m} ({r.agent_id}) ===")
    print(r)
```""",
    """The easiest TODO is the trailing-newline one in textkit/lines.py. I'll fix it and add a test.
```python
easiest = next(r for r in results if "easy" in r.lower())
print("Fixing:", easiest.splitlines()[0])
edit_file("textkit/lines.py", "    # TODO: do not count the empty string after a trailing newline as a line\\n", "")
edit_file("textkit/lines.py", 'return len(text.split("\\\\n"))', "return len(text.splitlines())")
import os
os.makedirs("tests", exist_ok=True)
with open("tests/test_lines.py", "w") as fh:
    fh.write(
        "from textkit.lines import count_lines\\n\\n\\n"
        "def test_trailing_newline_is_not_a_line():\\n"
        "    assert count_lines('a\\\\nb\\\\n') == 2\\n"
        "    assert count_lines('a\\\\nb') == 2\\n"
        "    assert count_lines('') == 0\\n"
    )
import importlib, textkit.lines
importlib.reload(textkit.lines)
exec(open("tests/test_lines.py").read() + "\\ntest_trailing_newline_is_not_a_line()")
print("test passes")
```""",
    """The fix works and is tested.
```python
FINAL(
    "Found TODOs in " + ", ".join(modules) + ".\\n\\n"
    + "\\n\\n".join(str(r) for r in results)
    + "\\n\\nFixed the easiest one (textkit/lines.py: a trailing newline no longer counts as a line) "
    "and added tests/test_lines.py."
)
```""",
]

CHILD = [
    """```python
path = {path!r}
todos = [(i, line.strip()) for i, line in enumerate(open(path), 1) if "# TODO" in line]
for i, t in todos:
    print(f"{{path}}:{{i}}: {{t}}")
```""",
    """I'll have a sub-agent assess the difficulty.
```python
verdict = rlm_query(f"Assess how hard this TODO is to fix (easy/medium/hard), with one reason: {{path}}:{{todos[0][0]}}: {{todos[0][1]}}")
print(verdict)
```""",
    """```python
FINAL("\\n".join(f"{{path}}:{{i}}: {{t}}" for i, t in todos) + f"\\ndifficulty: {{verdict}}")
```""",
]

GRANDCHILD = [
    """```python
rating = llm_query({prompt!r})
print(rating)
```""",
    """```python
FINAL_VAR("rating")
```""",
]

RATINGS = {
    "trailing newline": "easy: one call to str.splitlines() fixes it",
    "hyphenated": "medium: needs a rule for line-break hyphens without merging real compounds",
    "longest word": "medium: waits for punctuation handling in longest_word first",
}


def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
    if info["kind"] == "llm_query":
        prompt = messages[-1]["content"]
        return next((v for k, v in RATINGS.items() if k in prompt), "hard: unclear")
    it = int(info["iteration"])
    if info["depth"] == 0:
        return str(ROOT[min(it, len(ROOT) - 1)])
    if info["depth"] == 1:
        found = re.search(r"in (\S+\.py)", info["task"])
        path = found.group(1) if found else "?"
        return str(CHILD[min(it, len(CHILD) - 1)]).format(path=path)
    todo = info["task"].split(": ", 1)[-1]
    prompt = f"Rate the difficulty (easy, medium or hard) of fixing this TODO, in one line: {todo}"
    return str(GRANDCHILD[min(it, len(GRANDCHILD) - 1)]).format(prompt=prompt)
