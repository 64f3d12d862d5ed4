"""Engine API (tests/test_engine_api.py): many agents emit events at once.

Root task `fan N M`: `rlm_query_batched` of N children; each child runs two iterations, the
first making M `llm_query` calls at once (each one an event from its own thread).
"""

LATENCY_S = 0.01


def respond(messages, info):
    if info["kind"] == "llm_query":
        return "ok"
    n, m = (int(x) for x in info["task"].split()[1:3])
    if info["depth"] == 0:
        return (
            "```python\n"
            f"rs = rlm_query_batched([f'fan {n} {m} child {{i}}' for i in range({n})])\n"
            "FINAL(str(len(rs)))\n```"
        )
    if info["iteration"] == 0:
        return (
            f"```python\nr = llm_query_batched([f'p{{i}}' for i in range({m})])\nprint(len(r))\n```"
        )
    return '```python\nFINAL("child done")\n```'
