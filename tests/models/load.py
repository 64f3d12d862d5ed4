"""Load (tests/faults/test_load.py): the root starts N children at once; each holds its sandbox.

Root task `load N SECONDS DIR`: `rlm_query_batched` of N children `hold N SECONDS DIR`. Each child
registers in DIR, waits until all N have, then sleeps SECONDS in its cell and answers with the
times it held, so the test sees that all N were alive at once (a cap below N would hang them).
"""


def respond(messages, info):
    word, *args = info["task"].split()
    if word == "load":
        n, seconds, where = int(args[0]), float(args[1]), args[2]
        return (
            "```python\nimport json\n"
            f"rs = rlm_query_batched([{f'hold {n} {seconds} {where}'!r}] * {n})\n"
            "FINAL(json.dumps([[r.status, str(r)] for r in rs]))\n```"
        )
    if word == "hold":
        n, seconds, where = int(args[0]), float(args[1]), args[2]
        return f"""```python
import os, time
open(os.path.join({where!r}, str(os.getpid())), "w").close()
while len(os.listdir({where!r})) < {n}:
    time.sleep(0.1)
t0 = time.time()
time.sleep({seconds})
FINAL(f"{{t0}} {{time.time()}}")
```"""
    return "no idea"
