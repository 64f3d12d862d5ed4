"""One behaviour per limit, chosen by the root task's first word."""


def _last_user(messages):
    return messages[-1]["content"] if messages[-1]["role"] == "user" else ""


def respond(messages, info):
    root_task = info["task"] if info["depth"] == 0 else ""
    task, it = info["task"], info["iteration"]
    if info["kind"] == "llm_query":
        return "sub"
    if task.startswith("depth") or task == "go deeper":
        return '```python\nr = rlm_query("go deeper")\nFINAL(r)\n```'
    if root_task.startswith("sandboxes"):
        return '```python\nimport json\nrs = rlm_query_batched(["a", "b", "c"])\nFINAL(json.dumps([[str(r), r.status] for r in rs]))\n```'
    if root_task.startswith("refused"):
        return '```python\nrs = rlm_query_batched(["a"] * 12)\nFINAL(f"{sum(r.status == \'done\' for r in rs)} done")\n```'
    if task in ("a", "b", "c", "live", "sleeper"):
        if task == "sleeper":
            # the marker (in its workspace) tells a test that the cell runs
            return "```python\nimport time\nopen('sleeping', 'w').close()\ntime.sleep(120)\n```"
        return f'```python\nFINAL("child {task}")\n```'
    if task == "die":
        return "```python\nimport os\nos._exit(1)\n```"
    if root_task.startswith("iterations") or root_task.startswith("llmcalls"):
        return f'Still working.\n```python\nprint("working {it}")\n```'
    if root_task.startswith("timeout"):
        return '```python\nrlm_query_batched(["sleeper", "sleeper"])\n```'
    if root_task.startswith("spin"):
        if it == 0:
            return "```python\nkept = 7\nwhile True:\n    pass\n```"
        seen = "exec_timeout" in _last_user(messages)
        return f'```python\nFINAL(f"recovered kept={{kept}} told={seen}")\n```'
    if root_task.startswith("deaf"):
        if it == 0:
            return "```python\nx = 1\n```"
        if it == 1:
            return "```python\nimport signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.01)\n```"
        told = "ALL variables" in _last_user(messages)
        return f"```python\nFINAL(f\"x_survived={{'x' in globals()}} told={told}\")\n```"
    if root_task.startswith("dying"):
        return '```python\nimport json\nrs = rlm_query_batched(["die", "live"])\nFINAL(json.dumps([[r.status, str(r)] for r in rs]))\n```'
    return "no idea"
