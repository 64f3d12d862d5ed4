"""The sandbox boundary, attacked by scripted agents (tests/models/boundary.py).

The rules (README "Sandboxes", docs/reliability.md): the user's repository is read-only to
agents; the host never runs code a repository or a sandbox planted; only data leaves a sandbox;
an agent that kills its kernel, its parent or the fork server ends alone; a root whose patch
cannot be computed fails the run instead of ending with an empty patch.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import rlm_kernel
from rlm_kernel.config import RLMConfig
from rlm_kernel.sandbox.base import SandboxError, SandboxSpec
from rlm_kernel.sandbox.local import LocalSandbox
from rlm_kernel.sandbox.workspace import resolve_target

from .sandbox_helpers import RLM, nodes

Config = Callable[..., RLMConfig]
MODEL = Path(__file__).resolve().parents[1] / "models" / "boundary.py"
KEY = "sk-boundary-0123456789-secret"


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    return proc.stdout


def snapshot(repo: Path) -> dict[str, Any]:
    """Everything of a repository an agent must not change: refs, HEAD, config, hooks, stash,
    index, worktrees, status and every file of the working tree, byte for byte."""
    git_dir = repo / ".git"
    files = {}
    for path in sorted(repo.rglob("*")):
        if path.is_file() and not path.is_symlink():
            rel = str(path.relative_to(repo))
            if rel.startswith(".git/objects/"):
                continue  # objects may only be added by the user; agents borrow them read-only
            files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "refs": _git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        "HEAD": (git_dir / "HEAD").read_text(),
        "stash": _git(repo, "stash", "list"),
        "status": _git(repo, "status", "--porcelain", "--untracked-files=all"),
        "worktrees": _git(repo, "worktree", "list", "--porcelain"),
        "hooks": sorted(p.name for p in (git_dir / "hooks").iterdir()),
        "files": files,
    }


@pytest.fixture
def user_repo(make_repo: Callable[..., Path]) -> Path:
    repo = make_repo()
    _git(repo, "branch", "-m", "main")
    (repo / "notes.txt").write_text("uncommitted user work\n")  # the user's own dirty file
    return repo


@pytest.fixture
def key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def test_git_commands_and_planted_code_never_touch_the_user_or_the_host(
    user_repo: Path, config: Config, tmp_path: Path, key_in_env: None
) -> None:
    marker = tmp_path / "marker.txt"
    before = snapshot(user_repo)
    res = rlm_kernel.run(f"git attacks MARKER={marker}", user_repo, config=config(str(MODEL)))
    assert res.status == "done", res.error
    # The agent's git commands all worked, in its own repository ...
    tree = nodes(res.tree)
    assert [n["status"] for n in tree] == ["done", "done"]
    # ... and the user's repository is byte-identical: refs, HEAD, config, hooks, stash, status.
    assert snapshot(user_repo) == before
    # The planted hook, filters, textconv, diff driver and fsmonitor may run in the sandbox
    # (the agent's own git), never in a git the host ran: no line names the host as parent.
    lines = marker.read_text().splitlines() if marker.exists() else []
    host = str(os.getpid())
    assert all(line.split(":")[1] != host for line in lines), lines
    assert all(KEY not in line for line in lines), lines
    # The patch is the agent's files (new and changed), computed without the agent's filters.
    assert "new.py" in res.patch and "+NEW = 1" in res.patch
    assert "fix.txt" in res.patch and "staged.txt" in res.patch


def test_child_sandboxes_are_made_without_running_the_parents_hooks(
    user_repo: Path, config: Config, tmp_path: Path, key_in_env: None
) -> None:
    # The root plants hooks and then starts a child: the child's workspace is made by the host,
    # which must not run them (before, a post-checkout hook ran at `git worktree add`).
    marker = tmp_path / "marker.txt"
    res = rlm_kernel.run(f"git attacks MARKER={marker}", user_repo, config=config(str(MODEL)))
    assert res.status == "done", res.error
    child = nodes(res.tree)[1]
    assert child["result"] == "child done"
    lines = marker.read_text().splitlines() if marker.exists() else []
    assert all(line.split(":")[1] != str(os.getpid()) for line in lines), lines


def test_a_deleted_git_dir_still_gives_the_patch(
    user_repo: Path, config: Config, key_in_env: None
) -> None:
    before = snapshot(user_repo)
    res = rlm_kernel.run("delete git", user_repo, config=config(str(MODEL)))
    assert res.status == "done", res.error
    assert "recovered.txt" in res.patch and "+from the files" in res.patch
    assert "-# demo" in res.patch and "+# changed" in res.patch
    assert snapshot(user_repo) == before


def test_a_root_whose_patch_cannot_be_computed_fails_the_run_even_quiet(
    user_repo: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    proc = subprocess.run(
        [
            RLM,
            "run",
            str(user_repo),
            "-p",
            "delete workspace",
            "--quiet",
            "--model",
            f"scripted/{MODEL}",
            "--results-dir",
            str(tmp_path / "results"),
            # Under bwrap the workspace is a mount point: the agent empties it but cannot remove
            # it, so this host-side outcome needs the unconfined tier.
            "--isolation",
            "none",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "could not compute the root's patch" in proc.stderr
    assert "is gone" in proc.stderr
    assert proc.stdout == ""


def test_agents_that_kill_their_parent_or_themselves_end_alone(
    config: Config, key_in_env: None
) -> None:
    res = rlm_kernel.run("kill tree", config=config(str(MODEL), rlm__max_iterations=3))
    assert res.status == "done", res.error
    by_task = {n["task"]: n for n in nodes(res.tree)}
    # Killing the fork server (its parent) ends nobody: the agent itself carries on.
    assert by_task["kill parent"]["status"] == "done"
    assert by_task["kill parent"]["result"] == "my parent is gone, I am fine"
    # Killing its own kernel ends that agent, with an error that says so.
    killed = by_task["kill self"]
    assert killed["status"] == "error"
    assert "died" in (killed["error"] or "") and "kill self" not in (killed["error"] or "root")
    # The others finish.
    assert by_task["sleeper"]["result"] == "slept"
    assert "done: slept" in res.answer


# -- only data leaves a sandbox ---------------------------------------------------------------

_PAYLOAD = """
import os
class Payload:
    def __reduce__(self):
        return (os.system, ({cmd!r},))
    def __str__(self):
        open({marker!r}, "a").write(f"str:{{os.getpid()}}\\n")
        return "payload as text"
x = Payload()
data = {{"ok": [1, 2.5, None, True, "s"]}}
"""


@pytest.mark.usefixtures("unconfined")  # the marker is written outside the workspace
def test_pull_never_unpickles_sandbox_bytes(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    cmd = f"echo reduce:$PPID >> {marker}"
    spec = SandboxSpec("boundary-pull", "root", resolve_target(None), lambda op, args: None)
    sb = LocalSandbox(spec)
    try:
        sb.start()
        res = sb.execute(_PAYLOAD.format(cmd=cmd, marker=str(marker)), timeout=30)
        assert res.error is None, res.error
        assert sb.pull("data") == {"ok": [1, 2.5, None, True, "s"]}
        with pytest.raises(SandboxError, match=r"x is a Payload, which cannot leave the sandbox"):
            sb.pull("x")
        assert sb.pull("x", as_text=True) == "payload as text"  # str() ran in the sandbox
        with pytest.raises(KeyError):
            sb.pull("undefined_name")
        kernel_pid = sb.kernel.pid if sb.kernel else 0
    finally:
        sb.close()
    lines = marker.read_text().splitlines() if marker.exists() else []
    assert lines == [f"str:{kernel_pid}"]  # only the sandbox ran the object's code
    assert not any(line.startswith("reduce:") for line in lines)


def test_bridge_writes_never_follow_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("host file\n")
    spec = SandboxSpec("boundary-link", "root", resolve_target(None), lambda op, args: "reply")
    sb = LocalSandbox(spec)
    try:
        sb.start()
        # The agent fixes the next request id and plants a link where the host will write its
        # reply, pointing at a host file.
        code = (
            "import os, uuid\n"
            "class Fixed:\n    hex = 'f' * 32\n"
            "uuid.uuid4 = lambda: Fixed()\n"
            f"os.symlink({str(victim)!r}, os.path.join(__rlm__.bridge_dir, '.' + 'f' * 32 + '.tmp'))\n"
            "print(llm_query('hello'))\n"
        )
        res = sb.execute(code, timeout=30)
        assert res.error is None, res.error
        sb.push("pushed", {"a": 1})
        assert sb.pull("pushed") == {"a": 1}
    finally:
        sb.close()
    assert victim.read_text() == "host file\n"


@pytest.mark.skipif(sys.platform != "linux", reason="/proc")
def test_marker_helper_sees_the_host(tmp_path: Path) -> None:
    # The probe the planted code uses really names the parent of the git that runs it: a hook
    # run by a git the test itself starts reports this process.
    repo = tmp_path / "r"
    repo.mkdir()
    _git(repo, "init", "-q")
    marker = tmp_path / "m.txt"
    hook = repo / ".git" / "hooks" / "post-checkout"
    hook.write_text(f'#!/bin/sh\necho "$PPID:$(cut -d" " -f4 /proc/$PPID/stat):x" >> {marker}\n')
    hook.chmod(0o755)
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "i",
        ],
        cwd=repo,
        check=True,
    )
    subprocess.run(["git", "checkout", "-q", "-b", "other"], cwd=repo, check=True)
    assert marker.read_text().split(":")[1] == str(os.getpid())
