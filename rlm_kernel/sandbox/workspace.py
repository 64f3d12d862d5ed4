"""The files an agent works on: a private git repository of the run's target at its base commit.

A target is a local git repository or a git URL (cloned once, bare, into the cache). Every agent
gets its own directory with its **own** git dir (`work/.git`): a fresh repository whose object
store borrows the target's objects read-only through `objects/info/alternates`, checked out at the
run's base commit. No git command an agent runs there can change the user's refs, HEAD, index,
config, hooks, stash, worktree list or files: they all live in the private git dir. With no
target, every agent gets an empty repository, so patches work the same way.

The host's own git work on a workspace (creating it, computing its patch) never reads the
workspace's `.git`, which the agent controls: it runs with a host-owned git dir next to the
workspace (`<work>.host-git`, outside `work/`), hooks off, fsmonitor off, no system or global
config, no external diff or textconv, and an environment without secrets. So a planted hook,
filter, diff driver or fsmonitor never runs on the host, and a deleted `.git` still gives the
patch, recovered from the files.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..config import sandbox_env
from ..paths import repo_cache_dir

__all__ = [
    "EMPTY_TREE",
    "Target",
    "TargetError",
    "bundle",
    "create_workspace",
    "diff",
    "git",
    "host_git_dir",
    "remove_workspace",
    "resolve_target",
    "safe_git",
]

_GIT_ID = ["-c", "user.name=rlm", "-c", "user.email=rlm@localhost", "-c", "commit.gpgsign=false"]
# What the host's git must never run or read from a repository it does not own.
_SAFE = [
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.untrackedCache=false",
    "-c",
    "diff.external=",
]
# Work on an agent's tree never talks to a remote (a planted submodule URL, say).
_NO_NET = ["-c", "protocol.allow=never"]
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
_BASE_FILE = "rlm-base"
_INDEX_FILE = "rlm-index"
"""git's empty tree: the base of a workspace without a target."""
_clone_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


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
    """Run git on the user's repository (or a cache) and return stdout; TargetError on failure."""
    proc = subprocess.run(
        ["git", *_GIT_ID, *_SAFE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        input=input,
        env=_git_env(),
    )
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise TargetError(f"git {args[0]} failed: {msg[-1] if msg else proc.returncode}")
    return proc.stdout


def _git_env(**extra: str) -> dict[str, str]:
    """The host's git environment: no secrets, no system or global config, never a prompt."""
    env = sandbox_env()
    if os.environ.get("GIT_CEILING_DIRECTORIES"):
        env["GIT_CEILING_DIRECTORIES"] = os.environ["GIT_CEILING_DIRECTORIES"]
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_ATTR_NOSYSTEM="1",
        GIT_TERMINAL_PROMPT="0",
        GIT_ASKPASS="true",
        GIT_OPTIONAL_LOCKS="0",
        LC_ALL="C",
    )
    env.update(extra)
    return env


def safe_git(
    *args: str,
    git_dir: str,
    work_tree: str | None = None,
    index: str | None = None,
    check: bool = True,
) -> str:
    """Run git with a host-owned git dir on a tree an agent may have written; stdout or TargetError.

    The tree's own `.git` (hooks, config, filters, attributes drivers) is never read.
    """
    extra = {"GIT_DIR": git_dir}
    if work_tree is not None:
        extra["GIT_WORK_TREE"] = work_tree
    if index is not None:
        extra["GIT_INDEX_FILE"] = index
    proc = subprocess.run(
        ["git", *_GIT_ID, *_SAFE, *_NO_NET, *args],
        cwd=work_tree or git_dir,
        capture_output=True,
        text=True,
        env=_git_env(**extra),
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
        subprocess.run(
            ["git", "fetch", "-q", "origin"],
            cwd=tmp,
            capture_output=True,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
        os.replace(tmp, dest)
        return str(dest)


@functools.lru_cache(maxsize=64)
def _objects_dir(git_dir: str) -> str:
    """The object store of a repository (its common git dir's `objects`), absolute."""
    common = git("rev-parse", "--git-common-dir", cwd=git_dir).strip()
    return os.path.realpath(os.path.join(git_dir, common, "objects"))


def host_git_dir(dest: str) -> str:
    """The host-owned git dir that computes the patch of workspace `dest` (outside `dest`)."""
    return os.path.normpath(dest) + ".host-git"


def _init(git_dir: str, *, bare: bool, alternates: str | None) -> None:
    """A fresh repository with no hooks, borrowing `alternates`' objects read-only."""
    if bare:
        # What `git init --bare` makes, minus templates and config (none is needed): written
        # directly, since a host git dir is made for every sandbox.
        for sub in ("objects/info", "objects/pack", "refs/heads", "refs/tags"):
            os.makedirs(os.path.join(git_dir, sub), exist_ok=True)
        with open(os.path.join(git_dir, "HEAD"), "w") as fh:
            fh.write("ref: refs/heads/main\n")
        objects = os.path.join(git_dir, "objects")
    else:
        git("init", "-q", "--template=", git_dir)  # no template: no sample hooks
        objects = os.path.join(git_dir, ".git", "objects")
    if alternates is not None:
        with open(os.path.join(objects, "info", "alternates"), "w") as fh:
            fh.write(alternates + "\n")


def create_workspace(target: Target, dest: str) -> str:
    """Make `dest` the agent's workspace (a private repository) and return its base commit."""
    host = host_git_dir(dest)
    if target.git_dir is None or target.commit is None:
        # Only what the patch is computed against; the host's git dir itself is made by the
        # first diff that finds files (most scratch agents write none).
        os.makedirs(host)
        with open(os.path.join(host, _BASE_FILE), "w") as fh:
            fh.write(EMPTY_TREE + "\n")
        return _empty_repository(dest)
    alternates = _objects_dir(target.git_dir)
    _init(host, bare=True, alternates=alternates)
    with open(os.path.join(host, _BASE_FILE), "w") as fh:  # what the patch is computed against
        fh.write(target.commit + "\n")
    _init(dest, bare=False, alternates=alternates)
    own = os.path.join(dest, ".git")
    # Checked out by the host's git with this fresh repository's (empty) config: no filters,
    # no hooks; the index it writes gives the agent a clean `git status`. Parallel checkout
    # (one worker per core) halves the time on a tree of hundreds of files.
    safe_git(
        "-c",
        "checkout.workers=0",
        "read-tree",
        "-u",
        "--reset",
        target.commit,
        git_dir=own,
        work_tree=dest,
    )
    with open(os.path.join(own, "HEAD"), "w") as fh:  # detached at the base commit
        fh.write(target.commit + "\n")
    # The host's index starts as the checkout's (written by the host's git a moment ago, before
    # any agent code ran): its stat data lets the patch hash only the files that changed.
    shutil.copyfile(os.path.join(own, "index"), os.path.join(host, _INDEX_FILE))
    return target.commit


_EMPTY_INDEX = b"DIRC\0\0\0\x02\0\0\0\0" + hashlib.sha1(b"DIRC\0\0\0\x02\0\0\0\0").digest()
"""An index (version 2) with no entries."""
_SCRATCH_CONFIG = (
    "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n"
    "\tlogallrefupdates = true\n"
)  # what `git init` writes


def _loose_object(kind: str, body: bytes) -> tuple[str, bytes]:
    """A loose git object: (its id, its compressed bytes)."""
    data = f"{kind} {len(body)}\0".encode() + body
    return hashlib.sha1(data).hexdigest(), zlib.compress(data, 1)


# The directories of a scratch workspace's `.git`, parents first: what git needs (`objects`,
# `refs` and HEAD make a repository; `refs/heads` and `logs/...` hold the branch and its reflog).
# `objects/info`, `objects/pack` and `refs/tags`, which `git init` also makes, are made by git
# when it needs them: each directory or file made costs a metadata write, and ten sandboxes
# made at once with kernels starting beside them made each one cost ~0.5-0.8 ms of CPU (W2 of
# bench_peers.py: 13 ms per workspace).
_SCRATCH_DIRS = ("objects", "refs", "refs/heads", "logs", "logs/refs", "logs/refs/heads")


def _empty_repository(dest: str) -> str:
    """Make `dest` a repository whose one commit has the empty tree; return that commit.

    What `git init --template=` and `git commit --allow-empty -m "rlm: empty workspace"` make
    (HEAD on `master`, the core config, the commit and its empty tree, the reflogs, an empty
    index), written directly: a sandbox without a repository starts no git process. Directories
    and files are made relative to the `.git` directory's descriptor (short lookups), and only
    those git needs (see `_SCRATCH_DIRS`).
    """
    gd = os.path.join(dest, ".git")
    os.makedirs(gd)
    tree, tree_data = _loose_object("tree", b"")
    who = f"rlm <rlm@localhost> {int(time.time())} +0000"
    message = "rlm: empty workspace"
    body = f"tree {EMPTY_TREE}\nauthor {who}\ncommitter {who}\n\n{message}\n"
    commit, commit_data = _loose_object("commit", body.encode())
    log = f"{'0' * 40} {commit} {who}\tcommit (initial): {message}\n"
    files: dict[str, bytes] = {
        "config": _SCRATCH_CONFIG.encode(),
        "HEAD": b"ref: refs/heads/master\n",
        "index": _EMPTY_INDEX,
        "refs/heads/master": f"{commit}\n".encode(),
        "logs/HEAD": log.encode(),
        "logs/refs/heads/master": log.encode(),
        f"objects/{tree[:2]}/{tree[2:]}": tree_data,
        f"objects/{commit[:2]}/{commit[2:]}": commit_data,
    }
    fd = os.open(gd, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # (the two objects' directories are one when their ids share the first two digits)
        for sub in dict.fromkeys((*_SCRATCH_DIRS, f"objects/{tree[:2]}", f"objects/{commit[:2]}")):
            os.mkdir(sub, 0o777, dir_fd=fd)
        for name, data in files.items():
            out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=fd)
            try:
                os.write(out, data)
            finally:
                os.close(out)
    finally:
        os.close(fd)
    return commit


def bundle(target: Target, out: str) -> None:
    """Write a `git bundle` of the target's base commit (and its history) to `out`.

    Made in a throw-away repository that borrows the target's objects: no ref is ever written
    into the user's repository.
    """
    if target.git_dir is None or target.commit is None:
        raise TargetError("a run without a repository has nothing to bundle")
    with tempfile.TemporaryDirectory(prefix="rlm-bundle-") as tmp:
        scratch = os.path.join(tmp, "scratch.git")
        _init(scratch, bare=True, alternates=_objects_dir(target.git_dir))
        ref = f"refs/rlm-bundle/{target.commit[:12]}"
        safe_git("update-ref", ref, target.commit, git_dir=scratch)
        safe_git("bundle", "create", "-q", out, ref, git_dir=scratch)


def remove_workspace(target: Target, dest: str) -> None:
    """Delete the workspace and its host-owned git dir; never raises."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(host_git_dir(dest), ignore_errors=True)


def _only_git_dir(workdir: str) -> bool:
    """Whether `workdir` holds nothing git would record besides its `.git`: no file or symlink
    anywhere (git records no empty directories)."""
    stack, top = [workdir], True
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if top and entry.name == ".git":
                    continue
                if not entry.is_dir(follow_symlinks=False):
                    return False  # a file, a symlink (to a directory too), a fifo …
                stack.append(entry.path)
        top = False
    return True


def diff(workdir: str) -> str:
    """Everything changed in workspace `workdir` since its base, new files included, as a patch.

    Computed with the host-owned git dir only: the workspace's `.git` may be gone or hostile.
    """
    host = host_git_dir(workdir)
    try:
        with open(os.path.join(host, _BASE_FILE)) as fh:
            tree = fh.read().strip()
    except OSError:
        raise TargetError(f"the host's git dir of {workdir} is missing ({host})") from None
    if not os.path.isdir(workdir):
        raise TargetError(f"the workspace {workdir} is gone")
    if tree == EMPTY_TREE and _only_git_dir(workdir):
        return ""  # a scratch workspace nothing was written to (no git processes for it)
    index = os.path.join(host, _INDEX_FILE)
    if not os.path.exists(os.path.join(host, "HEAD")):  # a scratch workspace's first files
        _init(host, bare=True, alternates=None)
        with open(index, "wb") as fh:
            fh.write(_EMPTY_INDEX)  # the empty tree's index (no `git read-tree`)
    if not os.path.exists(index):
        safe_git("read-tree", tree, git_dir=host, index=index)
    safe_git("add", "-A", git_dir=host, work_tree=workdir, index=index)
    return safe_git(
        "diff",
        "--cached",
        "--binary",
        "--no-ext-diff",
        "--no-textconv",
        tree,
        git_dir=host,
        work_tree=workdir,
        index=index,
    )
