"""Tests for rlm_kernel.sandbox.workspace: targets, cached clones, private workspaces and patches."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rlm_kernel.sandbox.workspace import (
    EMPTY_TREE,
    Target,
    TargetError,
    create_workspace,
    diff,
    git,
    remove_workspace,
    resolve_target,
)


@pytest.fixture(autouse=True)
def _isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Never discover a repository above tmp_path, and keep the clone cache inside tmp_path.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _run(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _commit(repo: Path, files: dict[str, str], msg: str = "change") -> str:
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    _run(repo, "add", "-A")
    _run(repo, "commit", "-q", "-m", msg)
    return _run(repo, "rev-parse", "HEAD")


def _repo(tmp_path: Path, name: str = "repo") -> tuple[Path, str]:
    repo = tmp_path / name
    repo.mkdir()
    _run(repo, "init", "-q", "-b", "main")
    sha = _commit(repo, {"pkg/mod.py": "VALUE = 1\n", "README.md": "# demo\n"}, "init")
    return repo, sha


def _worktrees(git_dir: str | Path) -> list[str]:
    out = _run(Path(git_dir), "worktree", "list", "--porcelain")
    return [ln.split(" ", 1)[1] for ln in out.splitlines() if ln.startswith("worktree ")]


# -- resolve_target: errors --------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(TargetError) as exc:
        resolve_target(missing)
    assert (
        str(exc.value)
        == f"repository not found: {missing} (give an existing directory or a git URL)"
    )


def test_file_is_not_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(TargetError, match=re.escape(f"not a directory: {f}")):
        resolve_target(f)


def test_non_git_dir(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(TargetError) as exc:
        resolve_target(plain)
    hint = "run `git init && git add -A && git commit -m init` there first"
    assert str(exc.value) == f"{plain} is not a git repository: {hint}"


def test_repo_without_commits(tmp_path: Path) -> None:
    repo = tmp_path / "fresh"
    repo.mkdir()
    _run(repo, "init", "-q")
    with pytest.raises(
        TargetError, match=re.escape(f"{repo} has no commits yet: commit something first")
    ):
        resolve_target(repo)


def test_unknown_branch_and_commit(tmp_path: Path) -> None:
    repo, _ = _repo(tmp_path)
    with pytest.raises(TargetError) as exc:
        resolve_target(repo, branch="no-such-branch")
    assert str(exc.value).startswith(
        f"branch no-such-branch not found in {repo}: its branches are "
    )
    with pytest.raises(TargetError) as exc:
        resolve_target(repo, commit="0123456789abcdef")
    assert str(exc.value) == (
        f"commit 0123456789abcdef not found in {repo}: give a SHA (or prefix) of its history"
    )


def test_branch_or_commit_without_repo() -> None:
    with pytest.raises(TargetError, match="--branch/--commit need a repository"):
        resolve_target(None, branch="main")
    with pytest.raises(TargetError, match="--branch/--commit need a repository"):
        resolve_target("", commit="abc")


def test_git_helper_raises_with_gits_message(tmp_path: Path) -> None:
    repo, _ = _repo(tmp_path)
    with pytest.raises(TargetError, match=r"^git rev-parse failed: fatal: "):
        git("rev-parse", "--verify", "no-such-ref", cwd=repo)
    assert git("rev-parse", "--verify", "-q", "no-such-ref", cwd=repo, check=False) == ""


# -- resolve_target: pinning -------------------------------------------------------------------


def test_head_branch_and_commit_pinning(tmp_path: Path) -> None:
    repo, first = _repo(tmp_path)
    _run(repo, "checkout", "-q", "-b", "feature")
    feature = _commit(repo, {"feature.txt": "f\n"})
    _run(repo, "checkout", "-q", "main")
    second = _commit(repo, {"README.md": "# demo v2\n"})

    head = resolve_target(repo)
    assert head == Target(str(repo), str(repo), second, None)
    assert head.is_repo

    on_branch = resolve_target(str(repo), branch="feature")
    assert (on_branch.commit, on_branch.branch) == (feature, "feature")

    pinned = resolve_target(repo, commit=first[:10])
    assert pinned.commit == first  # a short sha is expanded to the full one
    # a commit wins over a branch
    assert resolve_target(repo, branch="feature", commit=first).commit == first


def test_subdirectory_resolves_to_repo_top(tmp_path: Path) -> None:
    repo, sha = _repo(tmp_path)
    t = resolve_target(repo / "pkg")
    assert t.git_dir == str(repo) and t.commit == sha and t.origin == str(repo / "pkg")


def test_empty_target() -> None:
    for empty in (None, ""):
        t = resolve_target(empty)
        assert t == Target(None, None, None) and not t.is_repo


# -- URL targets -------------------------------------------------------------------------------


def test_url_cloned_once_into_cache_and_reused(tmp_path: Path) -> None:
    repo, first = _repo(tmp_path)
    url = f"file://{repo}"
    t = resolve_target(url)
    cache = tmp_path / "cache" / "rlm-kernel" / "repos"
    assert t.origin == url and t.commit == first
    assert Path(t.git_dir or "").parent == cache
    assert [p.name for p in cache.iterdir()] == [Path(t.git_dir or "").name]
    assert (Path(t.git_dir or "") / "HEAD").exists()  # a bare clone
    marker = Path(t.git_dir or "") / "rlm-test-marker"
    marker.write_text("still the same clone")

    second = _commit(repo, {"new.txt": "n\n"})
    again = resolve_target(url)
    assert again.git_dir == t.git_dir and marker.exists()  # reused, not cloned again
    assert len(list(cache.iterdir())) == 1
    assert again.commit == second  # the reused clone was fetched: HEAD follows the remote
    assert resolve_target(url, branch="main").commit == second
    assert resolve_target(url, commit=first).commit == first


def test_url_branch(tmp_path: Path) -> None:
    repo, _ = _repo(tmp_path)
    _run(repo, "checkout", "-q", "-b", "feature")
    feature = _commit(repo, {"f.txt": "f\n"})
    _run(repo, "checkout", "-q", "main")
    t = resolve_target(f"file://{repo}", branch="feature")
    assert (t.commit, t.branch) == (feature, "feature")
    with pytest.raises(TargetError, match=re.escape(f"branch nope not found in file://{repo}")):
        resolve_target(f"file://{repo}", branch="nope")


def test_url_that_cannot_be_cloned(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'does-not-exist'}"
    with pytest.raises(TargetError, match=re.escape(f"cannot clone {url}: ")):
        resolve_target(url)
    cache = tmp_path / "cache" / "rlm-kernel" / "repos"
    assert list(cache.iterdir()) == []  # no half-made clone is left


def test_workspace_from_url_target(tmp_path: Path) -> None:
    repo, sha = _repo(tmp_path)
    t = resolve_target(f"file://{repo}")
    ws = tmp_path / "ws"
    assert create_workspace(t, str(ws)) == sha
    assert (ws / "pkg" / "mod.py").read_text() == "VALUE = 1\n"
    remove_workspace(t, str(ws))
    assert not ws.exists()
    assert str(ws) not in _worktrees(t.git_dir or "")


# -- workspaces --------------------------------------------------------------------------------


def test_workspaces_are_private_repositories_at_the_base_commit(tmp_path: Path) -> None:
    repo, first = _repo(tmp_path)
    t = resolve_target(repo, commit=first)
    _commit(repo, {"README.md": "# moved on\n"})  # the user's checkout moves; workspaces stay
    a, b = tmp_path / "ws-a", tmp_path / "ws-b"
    try:
        assert create_workspace(t, str(a)) == first
        assert create_workspace(t, str(b)) == first
        for ws in (a, b):
            assert _run(ws, "rev-parse", "HEAD") == first
            assert (ws / "README.md").read_text() == "# demo\n"
        (a / "pkg" / "mod.py").write_text("VALUE = 2\n")
        (a / "only_a.txt").write_text("a\n")
        assert (b / "pkg" / "mod.py").read_text() == "VALUE = 1\n"
        assert not (b / "only_a.txt").exists()
        assert not (repo / "only_a.txt").exists()
        # Private repositories: nothing registers in the user's repository.
        assert _worktrees(repo) == [str(repo)]
        for ws in (a, b):
            assert (ws / ".git").is_dir()
            alternates = (ws / ".git" / "objects" / "info" / "alternates").read_text().strip()
            assert alternates == os.path.realpath(repo / ".git" / "objects")
            assert not list((ws / ".git").glob("hooks/*"))
    finally:
        remove_workspace(t, str(a))
        remove_workspace(t, str(b))


def test_diff_includes_new_files_and_edits(tmp_path: Path) -> None:
    repo, sha = _repo(tmp_path)
    t = resolve_target(repo)
    ws = tmp_path / "ws"
    base = create_workspace(t, str(ws))
    try:
        assert diff(str(ws)) == ""
        (ws / "pkg" / "mod.py").write_text("VALUE = 2\n")
        (ws / "pkg" / "new.py").write_text("NEW = True\n")
        (ws / "README.md").unlink()
        patch = diff(str(ws))
        assert "diff --git a/pkg/mod.py b/pkg/mod.py" in patch
        assert "-VALUE = 1\n+VALUE = 2\n" in patch
        assert "diff --git a/pkg/new.py b/pkg/new.py\nnew file mode" in patch
        assert "+NEW = True\n" in patch
        assert "deleted file mode" in patch and "-# demo\n" in patch
        # the patch applies cleanly to a fresh checkout of the base
        subprocess.run(
            ["git", "apply", "--check", "-"], cwd=repo, input=patch, text=True, check=True
        )
    finally:
        remove_workspace(t, str(ws))
    assert sha == base


def test_remove_workspace_removes_dir_and_host_git_dir(tmp_path: Path) -> None:
    repo, _ = _repo(tmp_path)
    t = resolve_target(repo)
    ws = tmp_path / "ws"
    create_workspace(t, str(ws))
    (ws / "untracked.txt").write_text("dirty\n")  # a dirty workspace is removed too
    assert (tmp_path / "ws.host-git").is_dir()
    remove_workspace(t, str(ws))
    assert not ws.exists()
    assert not (tmp_path / "ws.host-git").exists()
    assert _worktrees(repo) == [str(repo)]
    remove_workspace(t, str(ws))  # again: never raises


def test_diff_of_a_deleted_workspace_raises(tmp_path: Path) -> None:
    repo, _ = _repo(tmp_path)
    t = resolve_target(repo)
    ws = tmp_path / "ws"
    create_workspace(t, str(ws))
    shutil.rmtree(ws)
    with pytest.raises(TargetError, match="is gone"):
        diff(str(ws))
    remove_workspace(t, str(ws))


def test_empty_target_gives_an_empty_git_repo(tmp_path: Path) -> None:
    """Written without git (no process per sandbox), and as git itself would have made it."""
    t = resolve_target(None)
    ws = tmp_path / "empty"
    base = create_workspace(t, str(ws))
    assert sorted(os.listdir(ws)) == [".git"]
    assert _run(ws, "rev-parse", "HEAD") == base
    assert _run(ws, "log", "--format=%s") == "rlm: empty workspace"
    assert _run(ws, "rev-parse", "HEAD^{tree}") == EMPTY_TREE
    assert _run(ws, "symbolic-ref", "HEAD") == "refs/heads/master"
    assert _run(ws, "status", "--porcelain") == ""
    _run(ws, "fsck", "--strict")
    assert "commit (initial): rlm: empty workspace" in _run(ws, "reflog")
    assert diff(str(ws)) == ""  # nothing but .git: no git process either
    (ws / ".git" / "planted").write_text("x")
    assert diff(str(ws)) == ""  # .git is never part of a patch
    _run(ws, "-c", "user.name=a", "-c", "user.email=b", "commit", "-q", "--allow-empty", "-m", "2")
    assert _run(ws, "log", "--format=%s") == "2\nrlm: empty workspace"
    (ws / ".hidden").write_text("dot\n")
    assert "+dot\n" in diff(str(ws))
    (ws / ".hidden").unlink()
    (ws / "hello.py").write_text("print('hi')\n")
    patch = diff(str(ws))
    assert "diff --git a/hello.py b/hello.py\nnew file mode" in patch
    assert "+print('hi')\n" in patch
    remove_workspace(t, str(ws))
    assert not ws.exists()


def test_an_untouched_scratch_workspace_has_an_empty_patch_without_git(tmp_path: Path) -> None:
    """Most agents without a repository write no files: their patch is "" with no git process
    (the host index is never made), as git itself would say; a file anywhere gives the patch."""
    from rlm_kernel.sandbox.workspace import host_git_dir

    t = resolve_target(None)
    ws = tmp_path / "scratch"
    create_workspace(t, str(ws))
    index = Path(host_git_dir(str(ws))) / "rlm-index"
    (ws / "empty" / "deeper").mkdir(parents=True)  # git records no empty directories
    (ws / ".git" / "planted").write_text("the agent's own git dir is not part of the patch")
    assert diff(str(ws)) == ""
    assert not index.exists()
    (ws / "empty" / "deeper" / ".hidden").write_text("x\n")
    assert "diff --git a/empty/deeper/.hidden b/empty/deeper/.hidden" in diff(str(ws))
    assert index.exists()
    remove_workspace(t, str(ws))


def test_a_scratch_workspace_holding_only_a_symlink_still_has_its_patch(tmp_path: Path) -> None:
    t = resolve_target(None)
    ws = tmp_path / "scratch"
    create_workspace(t, str(ws))
    (ws / "d").mkdir()
    os.symlink("/etc", ws / "d" / "etc")  # git records the link itself
    assert "diff --git a/d/etc b/d/etc\nnew file mode 120000" in diff(str(ws))
    remove_workspace(t, str(ws))
