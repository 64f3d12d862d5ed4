"""Scripted model for the Daytona tests: a context restart after a timeout."""


def respond(messages, info):
    if info["kind"] == "llm_query":
        return "sub"
    it = info["iteration"]
    last = messages[-1]["content"] if messages[-1]["role"] == "user" else ""
    if it == 0:
        return "```python\nx = 1\n```"
    if it == 1:
        return "```python\nimport time\ntime.sleep(30)\n```"
    told = "variables are lost" in last
    return f"```python\nFINAL(f\"x_survived={{'x' in globals()}} told={told}\")\n```"
