"""Checks of the whole test session, used by tests/conftest.py (and by the test that tests them).

- The checkout is left as the run found it: `git status --porcelain` lists no file that the run
  created or changed (tests write to temporary directories; files already changed before the run
  are the developer's, and only count when the run changes them again).
- No network connection outlives the run: the HTTP clients litellm caches (a new one per request
  timeout, each keeping its connection open) are closed, so no `ResourceWarning: unclosed
  <socket …>` is printed after pytest's summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

__all__ = ["close_llm_clients", "git_state", "pytest_sessionfinish", "pytest_sessionstart"]

_BEFORE = pytest.StashKey[dict[str, tuple[Any, ...]]]()


def git_state(root: Path) -> dict[str, tuple[Any, ...]] | None:
    """The entries of `git status --porcelain` in `root` (each with its file's size and mtime),
    or None when `root` is not the top of a git checkout."""
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True
        )
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root.resolve():
            return None
        out = subprocess.run(
            ["git", "status", "--porcelain", "-z", "--untracked-files=all"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    state: dict[str, tuple[Any, ...]] = {}
    for entry in out.split("\0"):
        if len(entry) < 4:
            continue
        path = entry[3:]
        try:
            st = (root / path).stat()
            state[path] = (entry[:2], st.st_size, st.st_mtime_ns)
        except OSError:
            state[path] = (entry[:2], None, None)
    return state


def close_llm_clients() -> None:
    """Close the HTTP clients litellm has cached (and forget them)."""
    litellm = sys.modules.get("litellm")
    cache = getattr(litellm, "in_memory_llm_clients_cache", None)
    if cache is None:
        return
    clients = list(cache.cache_dict.values())
    cache.flush_cache()
    for client in clients:
        close = getattr(client, "close", None)
        if not callable(close):
            continue
        with contextlib.suppress(Exception):
            if inspect.iscoroutinefunction(close):
                asyncio.run(close())
            else:
                close()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remember what `git status` says before the first test."""
    state = git_state(session.config.rootpath)
    if state is not None:
        session.config.stash[_BEFORE] = state


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Close litellm's connections; fail the run when it changed or created files in the checkout."""
    close_llm_clients()
    before = session.config.stash.get(_BEFORE, None)
    after = git_state(session.config.rootpath) if before is not None else None
    if before is None or after is None:
        return
    changed = sorted(p for p, sig in after.items() if before.get(p) != sig)
    if not changed:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [
        "the test run changed or created files in the checkout (`git status --porcelain`); "
        "tests must write to temporary directories:",
        *(f"  {after[p][0]} {p}" for p in changed),
    ]
    if reporter is not None:
        reporter.write_sep("=", "checkout changed by the tests", red=True)
        for line in lines:
            reporter.write_line(line, red=True)
    else:  # pragma: no cover - without the terminal plugin
        print("\n".join(lines), file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
