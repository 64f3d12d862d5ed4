"""Scripted model for the widget tests: a root, 4 children and 2 grandchildren (7 agents).

The root hands out four surveys; the children whose task starts with "survey" each ask one
grandchild. Every agent prints something, so each code block has an output.
RLM_TREE7_LATENCY sets the seconds per LLM call (default 0.05).
"""

import os

LATENCY_S = float(os.environ.get("RLM_TREE7_LATENCY", "0.05"))
COST_PER_TOKEN = (1e-6, 2e-6)

TASKS = ["survey module a", "survey module b", "count lines in c", "check the style of d"]


def respond(messages, info):
    task, it, depth = info["task"], info["iteration"], info["depth"]
    if depth == 0:
        if it == 0:
            return (
                "I will split the work.\n```python\n"
                f"answers = rlm_query_batched({TASKS!r})\n"
                'print(len(answers), "children answered")\n```'
            )
        return '```python\nFINAL("root summary: " + "; ".join(answers))\n```'
    if depth == 1:
        if it == 0:
            if task.startswith("survey"):
                return (
                    f'```python\nsub = rlm_query("details of {task}")\nprint("sub said:", sub)\n```'
                )
            return f'```python\nfound = {len(task)}\nprint("working on {task}:", found)\n```'
        return f'```python\nFINAL("{task} done")\n```'
    return f'```python\nprint("grandchild looks at {task}")\nFINAL("{task}: ok")\n```'
