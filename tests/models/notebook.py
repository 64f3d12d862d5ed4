"""Scripted model for the notebook magics, chosen by the root task's first word.

- FIX: the root asks one child to look at the module (the child leaves `child_note` and
  `child_count` in its namespace), then edits pkg/mod.py, sets `found`, and answers in Markdown.
- STEPS: three iterations (`a = 1`, `b = 2`, then FINAL) for step mode.
- SLEEP: the root starts two children that sleep (for interrupts).
- CONTEXT: answers with the `context` it was given.
- SUBMIT: a typed answer.
"""

LATENCY_S = 0.0
COST_PER_TOKEN = (1e-6, 2e-6)

FIX_ROOT = """```python
note = rlm_query("look at pkg/mod.py")
edit_file("pkg/mod.py", "VALUE = 1", "VALUE = 2")
found = {"file": "pkg/mod.py", "was": 1, "now": 2, "child": str(note)}
FINAL("**Fixed** `VALUE` in `pkg/mod.py`: 1 → 2 (" + str(note) + ")")
```"""

FIX_CHILD = """```python
child_note = open("pkg/mod.py").read().strip()
child_count = len(child_note)
FINAL("the child read " + child_note)
```"""


def respond(messages, info):
    task, it, depth = info["task"], info["iteration"], info["depth"]
    word = task.split()[0] if task.split() else ""
    if depth > 0:
        if task.startswith("sleep"):  # the marker (in its workspace): the cell runs
            return "```python\nimport time\nopen('sleeping', 'w').close()\ntime.sleep(120)\n```"
        return FIX_CHILD
    if word == "FIX":
        return FIX_ROOT
    if word == "STEPS":
        if it == 0:
            return '```python\na = 1\nprint("step one")\n```'
        if it == 1:
            return '```python\nb = 2\nprint("step two")\n```'
        return (
            "```python\nFINAL(f\"a={a} b={globals().get('b')} mine={globals().get('mine')}\")\n```"
        )
    if word == "SLEEP":
        return '```python\nrlm_query_batched(["sleep a", "sleep b"])\n```'
    if word == "CONTEXT":
        return '```python\nFINAL(f"context={context!r}")\n```'
    if word == "SUBMIT":
        return '```python\nSUBMIT(answer="42", confidence=0.5)\n```'
    return '```python\nFINAL("unknown task: " + ' + repr(task[:40]) + ")\n```"
