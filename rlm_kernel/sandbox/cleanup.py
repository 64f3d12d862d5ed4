"""`rlm cleanup`: remove local sandboxes whose owning process is gone (a crashed or killed run)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from ..paths import tmp_root
from .kernelproc import _pid_alive

__all__ = ["cleanup_local", "write_adopted", "write_owner"]


def write_owner(sandbox_root: str, kernel_pid: int | None = None) -> None:
    """Record which host process owns a sandbox (and its kernel's pid) for a later cleanup."""
    Path(sandbox_root, "owner").write_text(f"{os.getpid()} {kernel_pid or 0}\n")


def write_adopted(sandbox_root: str, run_id: str) -> None:
    """Record the run that adopted a spare sandbox: its directory keeps the spare's name
    (`spare-…/`; a running kernel's paths point into it), so `cleanup --run` finds it by this."""
    Path(sandbox_root, "run").write_text(run_id + "\n")


def _adopted_by(sb: Path) -> str:
    try:
        return (sb / "run").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    return pid > 0 and _pid_alive(pid, None)


def _kill_kernel(pid: int, work: Path) -> None:
    """Kill a leftover kernel's process group, if that pid is still the kernel of this workspace."""
    if not _alive(pid):
        return
    try:
        if Path(f"/proc/{pid}/cwd").resolve() != work.resolve():
            return  # the pid was reused by something else
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def _main_repo(work: Path) -> Path | None:
    dotgit = work / ".git"
    if not dotgit.is_file():
        return None
    text = dotgit.read_text().strip()
    if not text.startswith("gitdir:"):
        return None
    gitdir = Path(text.split(":", 1)[1].strip())  # <repo>/.git/worktrees/<name>
    return gitdir.parent.parent


def cleanup_local(run_id: str | None = None) -> list[str]:
    """Remove sandboxes of dead owners (optionally of one run); returns what was removed."""
    removed: list[str] = []
    root = tmp_root()
    for run_dir in sorted(root.iterdir()):
        if not run_dir.is_dir():
            continue
        for sb in sorted(run_dir.iterdir()):
            if run_id and run_id not in (run_dir.name, _adopted_by(sb)):
                continue
            owner = sb / "owner"
            try:
                host_pid, kernel_pid = (int(x) for x in owner.read_text().split()[:2])
            except (OSError, ValueError):
                host_pid, kernel_pid = 0, 0
            if _alive(host_pid) or ((sb / "kept").exists() and run_id is None):
                continue  # a live run's, or kept on purpose (name the run to remove it)
            work = sb / "work"
            _kill_kernel(kernel_pid, work)
            repo = _main_repo(work)
            shutil.rmtree(sb, ignore_errors=True)
            if repo is not None and repo.is_dir():
                subprocess.run(["git", "worktree", "prune"], cwd=repo, capture_output=True)
            removed.append(str(sb))
        with contextlib.suppress(OSError):
            run_dir.rmdir()
    return removed
