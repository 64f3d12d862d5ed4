"""Two siblings write the same file with different contents; the root applies one child's patch."""


def respond(messages, info):
    if info["depth"] == 1:
        letter = info["task"][-1]
        return f"""```python
import os
with open("shared.txt", "w") as fh:
    fh.write("from {letter}\\n")
FINAL(open("shared.txt").read().strip() + "|" + ",".join(sorted(os.listdir("."))))
```"""
    return """```python
import json, os
rs = rlm_query_batched(["write A", "write B"])
before = os.path.exists("shared.txt")
apply_patch(rs[0].patch)
after = open("shared.txt").read().strip()
FINAL(json.dumps({"children": [str(r) for r in rs], "ids": [r.agent_id for r in rs], "before": before, "after": after}))
```"""
