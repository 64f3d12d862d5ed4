"""Crash safety: `kill -9` of the host (`rlm run`) mid-run leaves a readable record with the
progress so far, and `rlm cleanup` removes what the dead run left (local and Daytona)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm_kernel.paths import tmp_root

from .sandbox_helpers import (
    MODELS,
    RLM,
    DaytonaEmulator,
    child_pids,
    nodes,
    pid_alive,
    processes_in,
    wait_for,
    worktrees,
)

# Local sandboxes run unconfined here: agents write pid files into the test directory.
pytestmark = pytest.mark.usefixtures("unconfined")

RECORD_KEYS = {"run_id", "task", "repo", "commit", "model", "config", "started_at", "status"}
RECORD_KEYS |= {"answer", "patch", "usage", "root"}


def _start(repo: Path, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], Path, Path]:
    pids = tmp_path / "pids"
    pids.mkdir()
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [
            RLM,
            "run",
            str(repo),
            "-p",
            f"crash {pids}",
            "--model",
            f"scripted/{MODELS / 'crash.py'}",
            "--results-dir",
            str(results),
            "--quiet",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, pids, results


def _progress(results: Path) -> dict[str, Any] | None:
    """The record once it shows the quick child done and both slow ones in their cells."""
    for path in results.glob("*.detail.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):  # never seen: records are replaced atomically
            raise AssertionError(f"{path} is not valid JSON") from None
        by_id = {n["agent_id"]: n for n in nodes(record.get("root"))}
        slow = [by_id.get(a) for a in ("root.1", "root.2")]
        if by_id.get("root.0", {}).get("status") == "done" and all(
            n and n["iterations"] and n["iterations"][0]["llm_response"] for n in slow
        ):
            return record
    return None


def _quick_child_closed(results: Path) -> bool:
    """Whether no local sandbox directory serves the quick child (root.0) any more."""
    record = _progress(results)
    run_dir = tmp_root() / str(record["run_id"]) if record else None
    if run_dir is None or not run_dir.is_dir():
        return True
    for p in run_dir.iterdir():
        with contextlib.suppress(OSError):
            if (p / "agent").read_text().strip() == "root.0":
                return False
    return True


def _kill_host(proc: subprocess.Popen[str], pids: Path, results: Path) -> dict[str, Any]:
    try:
        wait_for(lambda: len(os.listdir(pids)) == 2, 90, "both slow children in their cells")
        wait_for(lambda: _progress(results), 30, "the record to show the progress")
        # The quick child's sandbox is removed in the background once it ended: wait for that,
        # so that what the dead host leaves is exactly the three live agents' (a child's start
        # got faster than that removal on a loaded machine).
        wait_for(lambda: _quick_child_closed(results), 30, "the quick child's sandbox to go")
    except AssertionError:
        proc.kill()
        proc.wait()
        raise
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    proc.stderr and proc.stderr.close()
    (path,) = results.glob("*.detail.json")
    record = json.loads(path.read_text())  # parses: written by atomic replace
    assert set(record) >= RECORD_KEYS
    assert record["status"] == "running"
    by_id = {n["agent_id"]: n for n in nodes(record["root"])}
    assert sorted(by_id) == ["root", "root.0", "root.1", "root.2"]
    assert by_id["root.0"]["status"] == "done" and by_id["root.0"]["result"] == "quick done"
    for aid in ("root.1", "root.2"):
        assert by_id[aid]["status"] == "running"
        assert "time.sleep(300)" in by_id[aid]["iterations"][0]["llm_response"]
    assert record["usage"]["llm_calls"] >= 4
    index = json.loads((results / "index.json").read_text())
    assert index["runs"][0]["run_id"] == record["run_id"]
    return record


def _cleanup(*args: str) -> str:
    proc = subprocess.run([RLM, "cleanup", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_kill_9_of_the_host_leaves_a_record_and_cleanup_removes_the_rest(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    repo = make_repo()
    before = set(os.listdir(tmp_root()))
    proc, pids, results = _start(repo, tmp_path)
    record = _kill_host(proc, pids, results)
    run_dir = tmp_root() / record["run_id"]
    # What the dead host left: sandbox directories, nothing in the user's repository (its kernels
    # saw the host go, through their lifeline, and stopped). Sub-agents may run in pooled
    # sandboxes (`pool-<n>`, the agent named in their `agent` file); idle pooled ones are left too.
    left = sorted(run_dir.iterdir())
    served = {(p / "agent").read_text().strip() for p in left if (p / "agent").is_file()}
    assert served == {"root", "root.1", "root.2"}
    assert all(p.name in served or p.name.startswith("pool-") for p in left)
    assert worktrees(repo) == []
    kernels = [int(p) for p in os.listdir(pids)]
    wait_for(lambda: not any(pid_alive(p) for p in kernels), 30, "the orphaned kernels to stop")

    err = _cleanup()
    assert f"{len(left)} leftover sandbox(es) removed" in err, err
    assert set(os.listdir(tmp_root())) == before
    assert worktrees(repo) == [] and not processes_in(tmp_root())
    assert "0 leftover" in _cleanup()  # and a second cleanup finds nothing


@pytest.fixture
def emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DaytonaEmulator]:
    """A Daytona emulator for this test, DAYTONA_* pointing at it (the CLI inherits them)."""
    emu = DaytonaEmulator(timeout_grace_s=0.5).start()
    monkeypatch.setenv("DAYTONA_API_KEY", emu.api_key)
    monkeypatch.setenv("DAYTONA_API_URL", emu.api_url)
    monkeypatch.setenv("DAYTONA_TARGET", "emu")
    try:
        yield emu
    finally:
        emu.stop()


@pytest.mark.slow
def test_kill_9_of_a_daytona_run_and_cleanup_by_label(
    make_repo: Callable[..., Path], tmp_path: Path, emulator: DaytonaEmulator
) -> None:
    repo = make_repo()
    children = child_pids()
    proc, pids, results = _start(repo, tmp_path, "--sandbox", "daytona")
    record = _kill_host(proc, pids, results)
    labels = emulator.labels_of_live()
    assert len(labels) == 3 and {lb["rlm-run"] for lb in labels} == {record["run_id"]}
    assert {lb["rlm-agent"] for lb in labels} == {"root", "root.1", "root.2"}

    err = _cleanup("--sandbox", "daytona", "--run", record["run_id"])
    assert "3 leftover sandbox(es) removed" in err, err
    assert not emulator.sandboxes
    # The sandboxes' interpreters (processes of the emulator, here) are gone with them.
    wait_for(lambda: child_pids() == children, 30, "the emulator's interpreters to stop")


def test_the_record_catches_up_with_events_the_throttle_held_back(tmp_path: Path) -> None:
    """A host killed while its agents are quiet must not lose what happened just before."""
    import threading

    from eventkit import event

    from rlm_kernel.events import EventType
    from rlm_kernel.records import Recorder

    rec = Recorder(tmp_path, min_interval_s=0.3)
    rec(event(EventType.RUN_STARTED, "r", None, {"task": "t"}))
    rec(event(EventType.AGENT_STARTED, "r", "root", {"parent_id": None, "depth": 0}))
    rec(event(EventType.LLM_RESPONSE, "r", "root", {"index": 0, "text": "held back"}))
    path = tmp_path / "r.detail.json"

    def written() -> bool:
        root = json.loads(path.read_text())["root"]
        return bool(root and root["iterations"] and root["iterations"][0]["llm_response"])

    wait_for(written, 10, "the held-back events to be written")
    rec(event(EventType.LLM_RESPONSE, "r", "root", {"index": 1, "text": "x"}))
    rec(event(EventType.RUN_FINISHED, "r", None, {"status": "done"}))

    def timers() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if isinstance(t, threading.Timer) and getattr(t, "function", None) == rec._flush
        ]

    # The timer that wrote the held-back events may still be returning; none may stay alive.
    wait_for(lambda: not timers(), 10, "the record's timers to end")
