"""Cancellation at random points: Run.cancel(), Ctrl-C (SIGINT to `rlm run`) and the notebook's
Stop button (an interrupt of a `%%rlm` cell in the RLM kernel) on the local backend, Run.cancel()
on the Daytona backend (tests/daytona/emulator.py). Every time: no kernel or other process,
worktree, temporary directory or emulator sandbox is left.

The points are drawn from a seeded generator (RLM_FAULTS_SEED, default 8): a failure names its
seed and delay, and reruns the same way.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm_kernel.config import RLMConfig
from rlm_kernel.paths import tmp_root
from rlm_kernel.run_sandboxes import wait_all_closed
from rlm_kernel.runner import Run
from rlm_kernel.sandbox import spare

from .sandbox_helpers import (
    MODELS,
    RLM,
    DaytonaEmulator,
    child_pids,
    nodes,
    processes_in,
    worktrees,
)

Config = Callable[..., RLMConfig]
SEED = int(os.environ.get("RLM_FAULTS_SEED", "8"))
RUN_S = 3.0  # about how long a cancel_tree.py run takes when nobody stops it
NOTEBOOK_RUN_S = 1.5  # the same in the RLM kernel, whose root agent uses the notebook's sandbox
ENDINGS = {"cancelled", "done"}


def _delays(kind: str, n: int, top: float, bottom: float = 0.0) -> list[float]:
    rng = random.Random(f"{SEED}-{kind}")
    return [round(rng.uniform(bottom, top), 3) for _ in range(n)]


class Leftovers:
    """What a run may leave: temporary entries, sandboxes, processes, worktrees."""

    def __init__(self, repo: Path | None) -> None:
        self.repo = repo
        self.tmp = set(os.listdir(tempfile.gettempdir()))
        self.sandboxes = set(os.listdir(tmp_root()))
        self.children = child_pids(fork_server=False)

    def assert_none(self, what: str) -> None:
        wait_all_closed()  # the root's sandbox finishes closing after the run's result
        # At most the process's one spare root sandbox (`sandbox.spare`, made ahead of the
        # next run); it too leaves nothing once closed.
        new = set(os.listdir(tmp_root())) - self.sandboxes
        assert len({d for d in new if d.startswith("spare-")}) <= 1, f"{what}: spares: {new}"
        spare.discard()
        left_tmp = set(os.listdir(tempfile.gettempdir())) - self.tmp
        assert not left_tmp, f"{what}: temporary entries left: {sorted(left_tmp)}"
        left_sb = set(os.listdir(tmp_root())) - self.sandboxes
        assert not left_sb, f"{what}: sandbox directories left: {sorted(left_sb)}"
        procs = processes_in(tmp_root())
        assert not procs, f"{what}: processes left in sandboxes: {procs}"
        kids = [p for p in child_pids(fork_server=False) if p not in self.children]
        assert not kids, f"{what}: child processes left: {kids}"
        if self.repo is not None:
            assert not worktrees(self.repo), f"{what}: worktrees left: {worktrees(self.repo)}"


def _check_record(record: dict[str, Any], what: str) -> None:
    statuses = {n["agent_id"]: n["status"] for n in nodes(record["root"])}
    errors = {n["agent_id"]: n["error"] for n in nodes(record["root"]) if n["error"]}
    assert record["status"] in ENDINGS, (what, record["status"])
    assert set(statuses.values()) <= ENDINGS, (what, statuses, errors)
    if record["status"] == "cancelled":
        assert statuses["root"] == "cancelled", (what, statuses)


@pytest.mark.parametrize("delay", _delays("run", 20, RUN_S))
def test_run_cancel_at_a_random_point_leaves_nothing(
    delay: float, make_repo: Callable[..., Path], config: Config
) -> None:
    repo = make_repo()
    what = f"seed {SEED}, Run.cancel() after {delay} s"
    left = Leftovers(repo)
    run = Run("go", repo, config=config("cancel_tree.py"))
    run.start()
    time.sleep(delay)
    t0 = time.monotonic()
    run.cancel()
    res = run.wait(60)
    assert time.monotonic() - t0 < 30, what
    assert res.status in ENDINGS, (what, res.status, res.error)
    _check_record(json.loads(Path(res.record_path).read_text()), what)
    left.assert_none(what)


@pytest.mark.slow
# From 0.5 s: before that the interpreter itself is starting (importing the `rlm` script), and no
# Python program can take Ctrl-C then without a traceback.
@pytest.mark.parametrize("delay", _delays("cli", 5, 8.0, 0.5))
def test_ctrl_c_of_the_cli_at_a_random_point_leaves_nothing(
    delay: float, make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    repo = make_repo()
    what = f"seed {SEED}, SIGINT to rlm run after {delay} s"
    left = Leftovers(repo)
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [
            RLM,
            "run",
            str(repo),
            "-p",
            "go",
            "--model",
            f"scripted/{MODELS / 'cancel_tree.py'}",
            "--results-dir",
            str(results),
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # Ctrl-C as at a terminal
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # it had finished before the signal came
        assert "Traceback" not in err, (what, err)
    elif proc.returncode == -signal.SIGINT:  # a loaded machine: the interpreter was still starting
        assert ", in main" not in err, (what, err)
    else:
        assert proc.returncode == 130, (what, proc.returncode, err)
        assert "Traceback" not in err, (what, err)
        assert err.startswith("rlm: ") and "interrupted" in err, (what, err)
    for path in results.glob("*.detail.json"):
        _check_record(json.loads(path.read_text()), what)
    left.assert_none(what)


@pytest.fixture(scope="module")
def emulator_server() -> Iterator[DaytonaEmulator]:
    emu = DaytonaEmulator(timeout_grace_s=0.5).start()
    yield emu
    emu.stop()


@pytest.fixture
def emulator(
    emulator_server: DaytonaEmulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DaytonaEmulator]:
    """The emulator with DAYTONA_* pointing at it."""
    emu = emulator_server
    monkeypatch.setenv("DAYTONA_API_KEY", emu.api_key)
    monkeypatch.setenv("DAYTONA_API_URL", emu.api_url)
    monkeypatch.setenv("DAYTONA_TARGET", "emu")
    yield emu
    assert not emu.sandboxes, f"sandboxes left in the emulator: {list(emu.sandboxes)}"


@pytest.mark.slow
@pytest.mark.parametrize("delay", _delays("daytona", 8, 6.0))
def test_daytona_cancel_at_a_random_point_leaves_nothing(
    delay: float, make_repo: Callable[..., Path], config: Config, emulator: DaytonaEmulator
) -> None:
    repo = make_repo()
    what = f"seed {SEED}, Daytona Run.cancel() after {delay} s"
    left = Leftovers(repo)
    run = Run("go", repo, config=config("cancel_tree.py", sandbox__backend="daytona"))
    run.start()
    time.sleep(delay)
    run.cancel()
    res = run.wait(60)
    assert res.status in ENDINGS, (what, res.status, res.error)
    _check_record(json.loads(Path(res.record_path).read_text()), what)
    assert not emulator.sandboxes, (what, list(emulator.sandboxes))
    left.assert_none(what)


@pytest.fixture(scope="module")
def notebook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An RLM kernel (kernelspec: tests/faults/conftest.py) whose notebook sandbox runs."""
    from kernel.harness import RLMKernelProcess

    work = tmp_path_factory.mktemp("rlm-kernel")
    k = RLMKernelProcess(work, f"--RLMKernel.model=scripted/{MODELS / 'cancel_tree.py'}")
    try:
        cell = k.execute("%rlm config results_dir=results model.retries=0")
        assert cell.content["status"] == "ok", cell.content
        assert k.execute("1").content["status"] == "ok"  # the notebook's own sandbox
        warm = k.execute("%%rlm --quiet\ngo", timeout=120)  # the run path's first imports
        assert warm.content["status"] == "ok", warm.content
        k.fds_at_rest = _fds(k.km.provisioner.pid)  # type: ignore[attr-defined]
        yield k
    finally:
        k.shutdown()
    assert not list(k.sandbox_root.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("delay", _delays("notebook", 5, NOTEBOOK_RUN_S))
def test_stop_of_an_rlm_cell_at_a_random_point_leaves_nothing(delay: float, notebook: Any) -> None:
    what = f"seed {SEED}, Stop (interrupt) of a %%rlm cell after {delay} s"
    sandboxes = set(os.listdir(notebook.sandbox_root))
    kernels = processes_in(notebook.sandbox_root)  # the notebook's own sandbox
    records = set((notebook.workdir / "results").glob("*.detail.json"))
    msg_id = notebook.send("%%rlm --quiet\ngo")
    time.sleep(delay)
    notebook.km.interrupt_kernel()
    cell = notebook.collect(msg_id, timeout=60)
    print(f"{what}: {cell.content['status']}")
    if cell.content["status"] == "error":
        # RunInterrupted (a KeyboardInterrupt shown as one line) once the cell's code runs
        assert cell.content["ename"] in ("RunInterrupted", "KeyboardInterrupt"), (
            what,
            cell.content,
        )
    (record,) = set((notebook.workdir / "results").glob("*.detail.json")) - records
    _check_record(json.loads(record.read_text()), what)
    assert set(os.listdir(notebook.sandbox_root)) == sandboxes, what
    assert processes_in(notebook.sandbox_root) == kernels, what
    assert notebook.execute("print('still here')").stdout == "still here\n", what
    # No reply an interrupted cell never read stays in the notebook sandbox's bridge directory,
    # and the kernel's descriptors stay bounded however many cells were stopped (an eventfd of a
    # zmq socket may wait for the garbage collector for a while: +2 at most, never growing).
    stale = [p for p in notebook.sandbox_root.rglob("bridge/*") if p.name != "context.pickle"]
    assert stale == [], (what, stale)
    assert _fds(notebook.km.provisioner.pid) <= notebook.fds_at_rest + 2, what


def _fds(pid: int) -> int:
    """Open file descriptors of a process (sockets, pipes and files), without IPython's history
    database (its writer thread opens the journal and the profile directory now and then)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if "/profile_" not in target:
            n += 1
    return n
