"""Agent code that attacks the sandbox boundary (tests/faults/test_boundary.py).

Tasks carry their parameters: `git attacks MARKER=<path>`, `kill parent`, `kill self`, ...
Planted hooks and filters append one line to MARKER when they run:
`<pid of the git that ran it>:<that git's parent pid>:<OPENAI_API_KEY or nokey>`, so the test can
tell whether the host (the parent of a host-side git) ever ran them, and with which environment.
"""

import re

_PLANT = r"""
import os, subprocess, pathlib, stat, json
MARKER = {marker!r}
def g(*a):
    p = subprocess.run(["git", "-c", "user.name=agent", "-c", "user.email=a@a", *a],
                       capture_output=True, text=True)
    return p.stdout.strip() or p.stderr.strip()
probe = 'echo "$PPID:$(cut -d" " -f4 /proc/$PPID/stat):${{OPENAI_API_KEY:-nokey}}" >> ' + MARKER
out = {{}}
# Every kind of git command an agent (or an injected instruction) might run.
out["config"] = [g("config", "user.name", "evil"), g("config", "core.editor", "evil")]
out["branch"] = g("branch", "evil-branch")
out["tag"] = g("tag", "evil-tag")
pathlib.Path("README.md").write_text("# stashed change\n")
out["stash"] = g("stash")
out["checkout"] = g("checkout", "-b", "fix")
pathlib.Path("fix.txt").write_text("fix\n")
g("add", "-A")
out["commit"] = g("commit", "-qm", "agent commit")
out["update-ref"] = g("update-ref", "refs/heads/main", "HEAD")
out["symbolic-ref"] = g("symbolic-ref", "HEAD", "refs/heads/evil-branch")
pathlib.Path("staged.txt").write_text("staged\n")
out["add"] = g("add", "staged.txt")
# Code planted for the host's git: a hook where git looks for hooks, and config-defined drivers.
common = pathlib.Path(g("rev-parse", "--git-common-dir")).resolve()
hooks = common / "hooks"
hooks.mkdir(exist_ok=True)
for name in ("post-checkout", "pre-commit", "post-index-change", "reference-transaction"):
    h = hooks / name
    h.write_text("#!/bin/sh\n" + probe + "\n")
    h.chmod(0o755)
g("config", "filter.x.clean", "sh -c '" + probe.replace("'", "'\\''") + "; cat'")
g("config", "filter.x.smudge", "sh -c '" + probe.replace("'", "'\\''") + "; cat'")
g("config", "filter.x.required", "true")
g("config", "diff.x.textconv", "sh -c '" + probe.replace("'", "'\\''") + "; cat' --")
g("config", "diff.x.command", "sh -c '" + probe.replace("'", "'\\''") + "'")
g("config", "core.fsmonitor", "sh -c '" + probe.replace("'", "'\\''") + "'")
pathlib.Path(".gitattributes").write_text("* filter=x diff=x\n")
pathlib.Path("new.py").write_text("NEW = 1\n")
out["common"] = str(common)
"""


def respond(messages, info):
    task, it = info["task"], info["iteration"]
    found = re.search(r"MARKER=(\S+)", task)
    marker = found.group(1) if found else ""
    if task.startswith("git attacks"):
        if it == 0:
            plant = _PLANT.format(marker=marker)
            # A child after the plant: its sandbox is made by the host's git.
            return f"```python{plant}\nchild = rlm_query('child after plant MARKER={marker}')\nprint(json.dumps(out))\n```"
        return '```python\nFINAL("planted")\n```'
    if task.startswith("child after plant"):
        return '```python\nopen("child.txt", "w").write("child\\n")\nFINAL("child done")\n```'
    if task == "delete git":
        return (
            '```python\nimport shutil, pathlib\nshutil.rmtree(".git")\n'
            'pathlib.Path("recovered.txt").write_text("from the files\\n")\n'
            'pathlib.Path("README.md").write_text("# changed\\n")\nFINAL("deleted .git")\n```'
        )
    if task == "delete workspace":
        return (
            '```python\nimport shutil, os\nws = os.getcwd()\nos.chdir("/")\nshutil.rmtree(ws)\n'
            'FINAL("deleted my workspace")\n```'
        )
    if task == "kill tree" and it == 0:
        return (
            '```python\nrs = rlm_query_batched(["kill parent", "kill self", "sleeper"])\n'
            "import os\nprint(os.getpid())\n"
            'FINAL(" | ".join(f"{r.status}: {r}" for r in rs))\n```'
        )
    if task == "kill parent":
        return (
            "```python\nimport os\nos.kill(os.getppid(), 9)\n```"
            if it == 0
            else '```python\nFINAL("my parent is gone, I am fine")\n```'
        )
    if task == "kill self":
        return "```python\nimport os\nos.kill(os.getpid(), 9)\n```"
    if task == "sleeper":
        return '```python\nimport time\ntime.sleep(1.5)\nFINAL("slept")\n```'
    return '```python\nFINAL("?")\n```'
