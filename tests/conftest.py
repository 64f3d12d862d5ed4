"""Shared fixtures: scripted-model configs, small git repositories, and the leftovers check;
the session checks of tests/session_checks.py (a clean checkout, no open connections)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from session_checks import pytest_sessionfinish, pytest_sessionstart

from rlm_kernel.config import RLMConfig
from rlm_kernel.paths import tmp_root

__all__ = ["pytest_sessionfinish", "pytest_sessionstart"]  # hooks: the session checks

MODELS = Path(__file__).parent / "models"
_SESSION_TMP: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Give the test session its own TMPDIR, so concurrent test runs never see each other's sandboxes."""
    import tempfile

    d = tempfile.mkdtemp(prefix="rlm-tests-")
    os.environ["TMPDIR"] = d
    tempfile.tempdir = None  # re-read TMPDIR
    _SESSION_TMP.append(d)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the session's TMPDIR."""
    import shutil

    for d in _SESSION_TMP:
        shutil.rmtree(d, ignore_errors=True)


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    """Create a small git repository with the given files (default: one Python module)."""

    def make(files: dict[str, str] | None = None, name: str = "repo") -> Path:
        repo = tmp_path / name
        repo.mkdir()
        for rel, text in (files or {"pkg/mod.py": "VALUE = 1\n", "README.md": "# demo\n"}).items():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).write_text(text)
        _git("init", "-q", cwd=repo)
        _git("add", "-A", cwd=repo)
        _git("commit", "-q", "-m", "init", cwd=repo)
        return repo

    return make


@pytest.fixture
def config(tmp_path: Path) -> Callable[..., RLMConfig]:
    """An RLMConfig for a scripted model file in tests/models (results in tmp_path)."""

    def make(model: str, **overrides: Any) -> RLMConfig:
        name = model if model.startswith(("scripted/", "replay/")) else f"scripted/{MODELS / model}"
        flat = {"model.name": name, "results_dir": str(tmp_path / "results"), "model.retries": 0}
        flat.update({k.replace("__", "."): v for k, v in overrides.items()})
        return RLMConfig().with_overrides(flat)

    return make


def _kernel_pids() -> list[int]:
    from rlm_kernel.sandbox.kernels import live_kernel_pids

    return live_kernel_pids()


def _worktrees(repo_dirs: list[Path]) -> list[str]:
    out = []
    for repo in repo_dirs:
        if (repo / ".git").is_dir():
            lines = _git("worktree", "list", "--porcelain", cwd=repo).splitlines()
            out += [ln for ln in lines if ln.startswith("worktree ")][1:]
    return out


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    """After every test: no kernel process, no sandbox directory, no registered worktree is left."""
    before = set(os.listdir(tmp_root()))
    yield
    from rlm_kernel.run_sandboxes import wait_all_closed
    from rlm_kernel.sandbox import spare

    wait_all_closed()  # the root's sandbox closes after the run's result (`Run.wait_closed`)
    spare.discard()  # the process's spare root sandbox (`sandbox.spare`) is closed at exit
    pids = _kernel_pids()
    assert not pids, f"kernel processes left behind: {pids}"
    left = set(os.listdir(tmp_root())) - before
    assert not left, f"sandbox directories left behind in {tmp_root()}: {sorted(left)}"
    repos = [p for p in tmp_path.iterdir() if p.is_dir() and (p / ".git").is_dir()]
    assert not _worktrees(repos), f"worktrees left behind: {_worktrees(repos)}"


@pytest.fixture
def unconfined(monkeypatch: pytest.MonkeyPatch) -> None:
    """Local sandboxes of this test run unconfined (`sandbox.isolation: auto` means `none`):
    for tests whose agent code reports through files outside its workspace (pid files, markers
    in the test's directory) or whose host-side checks use pids seen from inside the sandbox,
    which the bwrap tier's private filesystem and PID namespace do not allow."""
    monkeypatch.setenv("RLM_SANDBOX_ISOLATION", "none")
