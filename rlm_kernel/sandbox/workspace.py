"""The files an agent works on: a git worktree of the run's target at its base commit, or an empty repo.

A target is a local git repository or a git URL (cloned once, bare, into the cache). Every agent
gets its own worktree at the run's base commit, so siblings never see each other's edits; with no
target, every agent gets an empty directory with a git repository, so patches work the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..paths import repo_cache_dir

__all__ = ["Target", "TargetError", "create_workspace", "git", "remove_workspace", "resolve_target"]

_GIT_ID = ["-c", "user.name=rlm", "-c", "user.email=rlm@localhost", "-c", "commit.gpgsign=false"]
_clone_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class _AddOrPrune:
    """Any number of `git worktree add` at once, or one `git worktree prune`: a prune deletes
    the half-written entry of an add in progress ("failed to read .git/worktrees/…/commondir")."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._adding = 0
        self._pruning = False

    @contextlib.contextmanager
    def adding(self) -> Iterator[None]:
        """Hold while adding a worktree."""
        with self._cond:
            while self._pruning:
                self._cond.wait()
            self._adding += 1
        try:
            yield
        finally:
            with self._cond:
                self._adding -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def pruning(self) -> Iterator[None]:
        """Hold while pruning worktree entries."""
        with self._cond:
            while self._pruning or self._adding:
                self._cond.wait()
            self._pruning = True
        try:
            yield
        finally:
            with self._cond:
                self._pruning = False
                self._cond.notify_all()


_worktree_locks: dict[str, _AddOrPrune] = {}


def _worktree_lock(git_dir: str) -> _AddOrPrune:
    with _locks_guard:
        return _worktree_locks.setdefault(os.path.realpath(git_dir), _AddOrPrune())


class TargetError(ValueError):
    """The repository, branch or commit of a run cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Target:
    """Where agents' workspaces come from: a git directory and the base commit, or nothing."""

    origin: str | None  # what the user gave: a path or a URL
    git_dir: str | None  # a repository to add worktrees from (the user's, or a cached bare clone)
    commit: str | None  # the run's base commit (full sha)
    branch: str | None = None

    @property
    def is_repo(self) -> bool:
        """True when agents get worktrees of a repository."""
        return self.git_dir is not None


def git(
    *args: str,
    cwd: str | os.PathLike[str] | None = None,
    check: bool = True,
    input: str | None = None,
) -> str:
    """Run git and return stdout; raise TargetError with git's message on failure."""
    proc = subprocess.run(
        ["git", *_GIT_ID, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        input=input,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"},
    )
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise TargetError(f"git {args[0]} failed: {msg[-1] if msg else proc.returncode}")
    return proc.stdout


def _is_url(text: str) -> bool:
    return (
        "://" in text
        or text.startswith("git@")
        or (text.endswith(".git") and not os.path.exists(text))
    )


def _lock_for(key: str) -> threading.Lock:
    with _locks_guard:
        return _clone_locks.setdefault(key, threading.Lock())


def resolve_target(
    repo: str | os.PathLike[str] | None, branch: str | None = None, commit: str | None = None
) -> Target:
    """Check the target and pin the run's base commit; clone a URL into the cache first."""
    if repo is None or str(repo) == "":
        if branch or commit:
            raise TargetError("--branch/--commit need a repository: give a path or a git URL")
        return Target(None, None, None)
    text = str(repo)
    if _is_url(text):
        git_dir = _cached_clone(text, branch)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise TargetError(
                f"repository not found: {text} (give an existing directory or a git URL)"
            )
        if not path.is_dir():
            raise TargetError(f"not a directory: {text}")
        top = git("rev-parse", "--show-toplevel", cwd=path, check=False).strip()
        if not top:
            raise TargetError(
                f"{text} is not a git repository: run `git init && git add -A && git commit -m init` there first"
            )
        git_dir = top
        if not git("rev-parse", "--verify", "-q", "HEAD", cwd=top, check=False).strip():
            raise TargetError(f"{text} has no commits yet: commit something first")
    rev = commit or (f"origin/{branch}" if branch and _is_url(text) else branch) or "HEAD"
    if rev == "HEAD" and _is_url(text):
        # A cached clone's own HEAD stays where the first clone put it; fetch updates origin/*.
        head = git("symbolic-ref", "-q", "--short", "HEAD", cwd=git_dir, check=False).strip()
        tracked = git("rev-parse", "--verify", "-q", f"origin/{head}", cwd=git_dir, check=False)
        if head and tracked.strip():
            rev = f"origin/{head}"
    sha = git("rev-parse", "--verify", "-q", f"{rev}^{{commit}}", cwd=git_dir, check=False).strip()
    if not sha and branch and _is_url(text):
        sha = git(
            "rev-parse", "--verify", "-q", f"{branch}^{{commit}}", cwd=git_dir, check=False
        ).strip()
    if not sha:
        if commit:
            raise TargetError(
                f"commit {commit} not found in {text}: give a SHA (or prefix) of its history"
            )
        refs = git(
            "for-each-ref", "--format=%(refname:short)", "refs/heads", cwd=git_dir, check=False
        )
        names = sorted({r.removeprefix("origin/") for r in refs.split()} - {"HEAD"})
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise TargetError(
            f"branch {branch} not found in {text}: its branches are {shown or 'none'}"
        )
    return Target(text, git_dir, sha, branch)


def _cached_clone(url: str, branch: str | None) -> str:
    dest = repo_cache_dir() / hashlib.sha1(url.encode()).hexdigest()[:16]
    with _lock_for(str(dest)):
        if (dest / "HEAD").exists():
            proc = subprocess.run(
                ["git", "fetch", "-q", "--prune", "origin", "+refs/heads/*:refs/remotes/origin/*"],
                cwd=dest,
                capture_output=True,
                text=True,
                env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
            )
            if proc.returncode != 0:
                # Offline or gone: the cached clone still serves known commits.
                pass
            return str(dest)
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        proc = subprocess.run(
            ["git", "clone", "-q", "--bare", url, str(tmp)],
            capture_output=True,
            text=True,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
            # git's first "fatal:" line says why; its last line is often advice mid-sentence
            fatal = [ln.removeprefix("fatal: ") for ln in lines if ln.startswith("fatal:")]
            why = (fatal or lines or ["git clone failed"])[0].rstrip(".")
            raise TargetError(
                f"cannot clone {url}: {why}; check the URL and that `git clone {url}` works here"
            )
        git("config", "remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*", cwd=tmp)
        git("fetch", "-q", "origin", cwd=tmp, check=False)
        os.replace(tmp, dest)
        return str(dest)


def create_workspace(target: Target, dest: str) -> str:
    """Make `dest` the agent's workspace and return its base commit."""
    if target.git_dir is None or target.commit is None:
        os.makedirs(dest, exist_ok=True)
        git("init", "-q", dest)
        git("commit", "-q", "--allow-empty", "-m", "rlm: empty workspace", cwd=dest)
        return git("rev-parse", "HEAD", cwd=dest).strip()
    for attempt in range(5):
        with _worktree_lock(target.git_dir).adding():
            proc = subprocess.run(
                ["git", "worktree", "add", "-q", "--detach", dest, target.commit],
                cwd=target.git_dir,
                capture_output=True,
                text=True,
            )
        if proc.returncode == 0:
            return target.commit
        # Lock contention; concurrent adds racing on the admin directory names git derives from
        # the (shared) basename `work` (".git/worktrees/work5/commondir" half-written); or a
        # prune by another process (e.g. `rlm cleanup`) mid-add: retry.
        racy = any(s in proc.stderr for s in ("lock", "failed to read", "worktrees/"))
        if not racy or attempt == 4:
            raise TargetError(f"git worktree add failed: {proc.stderr.strip()}")
        shutil.rmtree(dest, ignore_errors=True)
        time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def remove_workspace(target: Target, dest: str) -> None:
    """Delete the workspace (and its worktree registration); never raises."""
    removed = False
    if target.git_dir is not None and os.path.isdir(dest):
        removed = (
            subprocess.run(
                ["git", "worktree", "remove", "--force", "--force", dest],
                cwd=target.git_dir,
                capture_output=True,
            ).returncode
            == 0
        )
    shutil.rmtree(dest, ignore_errors=True)
    if target.git_dir is not None and not removed:  # e.g. the worktree was deleted under us
        with _worktree_lock(target.git_dir).pruning():
            subprocess.run(["git", "worktree", "prune"], cwd=target.git_dir, capture_output=True)


def diff(workdir: str, base: str) -> str:
    """Everything changed in `workdir` since `base`, new files included, as a git patch."""
    git("add", "-A", cwd=workdir)
    return git("diff", "--cached", "--binary", base, cwd=workdir)
