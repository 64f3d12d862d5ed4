"""Fan-out timing: 20 llm_query_batched prompts, or 12 one-iteration children, at 0.5 s per call."""

LATENCY_S = 0.5


def respond(messages, info):
    if info["kind"] == "llm_query":
        return "ok"
    if info["depth"] == 1:
        return '```python\nFINAL("child done")\n```'
    if "llm" in info["task"]:
        return """```python
import time
t = time.perf_counter()
r = llm_query_batched([f"prompt {i}" for i in range(20)])
FINAL(f"{time.perf_counter() - t:.3f} {len(r)} {set(r)}")
```"""
    return """```python
import time
t = time.perf_counter()
r = rlm_query_batched([f"child {i}" for i in range(12)])
FINAL(f"{time.perf_counter() - t:.3f} {len(r)} {sorted(set(map(str, r)))}")
```"""
