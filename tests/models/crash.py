"""Crash safety (tests/faults/test_crash_safety.py): a run that makes progress, then hangs.

Root task `crash DIR`: the root edits a file and starts `quick` (finishes at once) and two
`slow DIR` children, whose cells write their pid into DIR and sleep, so the test can kill the host
with `kill -9` in the middle and check what the record and `rlm cleanup` make of it.
"""


def respond(messages, info):
    word, _, rest = info["task"].partition(" ")
    if info["kind"] == "llm_query":
        return "sub answer"
    if word == "crash":
        return (
            "```python\nopen('root.txt', 'w').write('root')\n"
            f"rs = rlm_query_batched(['quick', 'slow {rest}', 'slow {rest}'])\n```"
        )
    if word == "quick":
        return '```python\nFINAL("quick done")\n```'
    if word == "slow":
        return (
            "```python\nimport os, time\nx = llm_query('hi')\n"
            f"open(os.path.join({rest!r}, str(os.getpid())), 'w').close()\n"
            "time.sleep(300)\n```"
        )
    return "no idea"
