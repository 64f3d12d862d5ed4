"""Cancellation (tests/faults/test_cancellation.py): a small tree with work in every phase.

The root fans out to three `work` children (and edits a file); each child makes an llm_query,
sleeps, and the first asks a `leaf` grandchild; leaves sleep and finish. A run takes a few
seconds, so a cancel at a random time lands in sandbox creation, an LLM call, a cell, a batch of
children or the finish.
"""

LATENCY_S = 0.05


def respond(messages, info):
    task, it = info["task"], info["iteration"]
    if info["kind"] == "llm_query":
        return "sub answer"
    if info["depth"] == 0:
        if it == 0:
            return (
                "```python\nopen('root.txt', 'w').write('root')\n"
                "rs = rlm_query_batched(['work 0', 'work 1', 'work 2'])\n```"
            )
        return '```python\nFINAL("root done")\n```'
    if task.startswith("work"):
        if it == 0:
            return "```python\nimport time\nx = llm_query('hi')\ntime.sleep(0.3)\n```"
        if it == 1 and task == "work 0":
            return "```python\nr = rlm_query('leaf')\n```"
        return f"```python\nFINAL({task!r})\n```"
    if task == "leaf":
        return "```python\nimport time\ntime.sleep(0.5)\nFINAL('leaf')\n```"
    return "no idea"
