"""The session checks (tests/session_checks.py): a test run that changes the checkout fails, and
the fault tests leave no socket open for the interpreter to warn about after pytest's summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

pytestmark = pytest.mark.slow


def _pytest(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_a_run_that_changes_the_checkout_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "checkout"
    repo.mkdir()
    (repo / "pytest.ini").write_text("[pytest]\n")
    (repo / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
        "from session_checks import pytest_sessionfinish, pytest_sessionstart\n"
    )
    (repo / "tracked.txt").write_text("as committed\n")
    (repo / "edited.txt").write_text("as committed\n")
    (repo / "test_it.py").write_text(
        "import os\n\n"
        "def test_writes_to_tmp(tmp_path):\n    (tmp_path / 'x').write_text('fine')\n\n"
        "def test_writes_to_the_checkout():\n"
        "    if os.environ.get('WRITE'):\n"
        "        open('tracked.txt', 'a').write('changed by a test\\n')\n"
        "        open('new.txt', 'w').write('created by a test\\n')\n"
    )
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=repo, check=True)
    (repo / "edited.txt").write_text("the developer's own change, before the run\n")

    clean = _pytest("-q", cwd=repo)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "checkout changed" not in clean.stdout

    monkeypatch.setenv("WRITE", "1")
    dirty = _pytest("-q", cwd=repo)
    assert dirty.returncode == 1, dirty.stdout + dirty.stderr
    assert "2 passed" in dirty.stdout  # every test passed; the run still fails
    assert "the test run changed or created files in the checkout" in dirty.stdout
    assert " M tracked.txt" in dirty.stdout and "?? new.txt" in dirty.stdout
    assert "edited.txt" not in dirty.stdout  # changed before the run: not the tests' doing


def test_the_llm_fault_tests_leave_no_socket_open() -> None:
    # The real HTTP path against the shared fault server: litellm caches a client per request
    # timeout; each kept a connection that the interpreter warned about at exit.
    proc = _pytest(
        "-q",
        "tests/faults/test_llm_faults.py",
        "-k",
        "500s_are_retried or 429_with_retry_after or malformed",
        cwd=TESTS.parent,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert " passed" in out and "failed" not in out
    assert "ResourceWarning" not in out and "unclosed" not in out, out
