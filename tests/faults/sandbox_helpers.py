"""Helpers of the sandbox-fault, load, cancellation and crash-safety tests (tests/faults)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
MODELS = TESTS / "models"
RLM = str(Path(sys.executable).parent / "rlm")

if str(TESTS / "daytona") not in sys.path:  # the emulator module (tests/daytona has no package)
    sys.path.insert(0, str(TESTS / "daytona"))

from emulator import DaytonaEmulator  # noqa: E402

__all__ = ["DaytonaEmulator"]  # re-exported for the tests


def nodes(tree: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every agent node of a record's tree."""
    out, stack = [], [tree] if tree else []
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(n["children"])
    return out


def wait_for(predicate: Any, timeout: float = 60, what: str = "a condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def read_pidfile(path: Path) -> tuple[int, str] | None:
    """(pid, cwd) written by a scripted agent, once complete."""
    try:
        pid, cwd = path.read_text().split(" ", 1)
        return int(pid), cwd
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def processes_in(directory: Path) -> list[int]:
    """Live processes whose working directory is inside `directory` (leftover kernels)."""
    found = []
    prefix = str(directory.resolve())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if cwd.startswith(prefix) and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def child_pids(*, fork_server: bool = True) -> list[int]:
    """Live child processes of this process (without the kernels' fork server if asked)."""
    me = str(os.getpid())
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] != me or fields[0] in ("Z", "X"):
            continue
        if not fork_server and _is_fork_server(int(entry)):
            continue  # a long-lived singleton, started by the first run of the session
        out.append(int(entry))
    return sorted(out)


def _is_fork_server(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"rlm_kernel.sandbox.forkserver" in fh.read()
    except OSError:
        return False


def worktrees(repo: Path) -> list[str]:
    """The repository's registered worktrees besides the main one."""
    out = subprocess.run(
        ["git", "worktree", "list", "--porcelain"], cwd=repo, capture_output=True, text=True
    ).stdout
    return [ln for ln in out.splitlines() if ln.startswith("worktree ")][1:]
