"""Sandbox faults (tests/faults): behaviour chosen by the task's first word; its second word is a path.

- `killed PIDFILE`: write the kernel's pid to PIDFILE, then sleep (the test SIGKILLs the kernel).
- `unrooted PIDFILE`: write the pid, sleep until the worktree is gone (the test deletes it), then
  keep working in the next iteration.
- `flood`: print 10 MB in one cell, then report what the next turn showed.
- `parent TASK`: spawn one child with TASK and a sibling that finishes; report both.
"""

import json
import re

_WAIT = """```python
import os, time
open({path!r} + ".tmp", "w").write(f"{{os.getpid()}} {{os.getcwd()}}")
os.replace({path!r} + ".tmp", {path!r})  # the test never reads half a line
{until}
```"""


def _last_user(messages):
    return messages[-1]["content"] if messages[-1]["role"] == "user" else ""


def respond(messages, info):
    task, it = info["task"], info["iteration"]
    word, _, rest = task.partition(" ")
    if word == "parent":
        return (
            "```python\nimport json\n"
            f"rs = rlm_query_batched([{rest!r}, 'sibling'])\n"
            "FINAL(json.dumps([[r.status, str(r)] for r in rs]))\n```"
        )
    if word == "sibling":
        return '```python\nFINAL("sibling done")\n```'
    if word == "killed":
        return _WAIT.format(path=rest, until="time.sleep(120)")
    if word == "unrooted":
        if it == 0:
            until = "while os.path.exists('.git'):\n    time.sleep(0.05)\nprint('worktree gone')"
            return _WAIT.format(path=rest, until=until)
        if it == 1:
            return "```python\nopen('new.txt', 'w').write('x')\n```"
        return f"```python\nFINAL({json.dumps(_last_user(messages)[:2000])})\n```"
    if word == "flood":
        if it == 0:
            return "```python\nimport sys\nfor _ in range(10):\n    sys.stdout.write('x' * (1 << 20))\nprint()\nprint('END-OF-FLOOD')\nflooded = True\n```"
        seen = _last_user(messages)
        omitted = re.findall(r"\[(\d+) characters omitted\]", seen)
        got = {"turn_chars": len(seen), "tail_seen": "END-OF-FLOOD" in seen, "omitted": omitted}
        return "```python\nFINAL(" + repr(json.dumps(got)) + ")\n```"
    return "no idea"
