"""Sandbox faults: a kernel SIGKILLed mid-cell, a workspace deleted under its agent, 10 MB of output."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rlm_kernel
from rlm_kernel.config import RLMConfig
from rlm_kernel.prompts import truncate_middle
from rlm_kernel.relay import NOTEBOOK_STREAM_CAP, NOTEBOOK_STREAM_TAIL
from rlm_kernel.sandbox.base import MAX_CELL_OUTPUT_CHARS, OutputBuffer

from .sandbox_helpers import nodes, pid_alive, read_pidfile, wait_for, worktrees

# Local sandboxes run unconfined here: agents write pid files and markers into the test directory.
pytestmark = pytest.mark.usefixtures("unconfined")

Config = Callable[..., RLMConfig]
FLOOD_CHARS = 10 * (1 << 20) + len("\nEND-OF-FLOOD\n")  # what the `flood` cell prints


def _in_background(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        box["result"] = fn()

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def test_a_child_kernel_sigkilled_mid_cell_fails_only_that_child(
    config: Config, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    t, box = _in_background(
        lambda: rlm_kernel.run(f"parent killed {pidfile}", config=config("sandbox_faults.py"))
    )
    pid, _ = wait_for(lambda: read_pidfile(pidfile), what="the child's kernel pid")
    os.kill(pid, signal.SIGKILL)
    t.join(60)
    res = box["result"]
    assert res.status == "done", res.error
    (dead_status, dead_text), (live_status, live_text) = json.loads(res.answer)
    assert dead_status == "error" and "died" in dead_text
    assert (live_status, live_text) == ("done", "sibling done")
    by_id = {n["agent_id"]: n for n in nodes(res.tree)}
    assert by_id["root.0"]["status"] == "error"
    assert by_id["root.0"]["iterations"][0]["code_blocks"][0]["status"] == "died"
    wait_for(lambda: not pid_alive(pid), 10, "the killed kernel to be reaped")


def test_the_root_kernel_sigkilled_mid_cell_ends_the_run_with_a_record(
    config: Config, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    t, box = _in_background(
        lambda: rlm_kernel.run(f"killed {pidfile}", config=config("sandbox_faults.py"))
    )
    pid, _ = wait_for(lambda: read_pidfile(pidfile), what="the root's kernel pid")
    os.kill(pid, signal.SIGKILL)
    t.join(60)
    res = box["result"]
    assert res.status == "error"
    assert "died" in (res.error or "") and res.answer.startswith("[partial answer")
    record = json.loads(Path(res.record_path).read_text())
    assert record["status"] == "error" and record["root"]["status"] == "error"


def test_a_workspace_deleted_under_its_agent(
    make_repo: Callable[..., Path], config: Config, tmp_path: Path
) -> None:
    repo = make_repo()
    pidfile = tmp_path / "pid"
    t, box = _in_background(
        lambda: rlm_kernel.run(f"unrooted {pidfile}", repo, config=config("sandbox_faults.py"))
    )
    _, cwd = wait_for(lambda: read_pidfile(pidfile), what="the agent's cell")
    assert cwd.endswith("/root/work") and worktrees(repo) == []  # a private repository
    shutil.rmtree(cwd)
    t.join(60)
    res = box["result"]
    assert "worktree gone" in res.tree["iterations"][0]["code_blocks"][0]["output"]
    # The agent goes on, and its next file operation fails with an error the model sees ...
    assert "FileNotFoundError" in res.answer
    # ... but the run has no patch to give: it fails, saying so, instead of an empty patch.
    assert res.status == "error" and res.patch == ""
    assert "could not compute the root's patch" in (res.error or "")
    assert "is gone" in (res.error or "")


def test_10_mb_of_output_is_truncated_for_the_model_and_bounded_in_the_record(
    config: Config,
) -> None:
    res = rlm_kernel.run("flood", config=config("sandbox_faults.py"))
    assert res.status == "done", res.error
    seen = json.loads(res.answer)
    limit = 20000  # rlm.output_truncation_limit's default
    assert limit < seen["turn_chars"] < limit + 500 and seen["tail_seen"]
    # The model is told how much it does not see: all of it, not only what the host kept.
    assert seen["omitted"] == [str(FLOOD_CHARS - limit)]
    block = res.tree["iterations"][0]["code_blocks"][0]
    assert len(block["output"]) < MAX_CELL_OUTPUT_CHARS + 100
    assert block["output"].rstrip().endswith("END-OF-FLOOD")
    assert os.path.getsize(res.record_path) < 2 * MAX_CELL_OUTPUT_CHARS
    # The same kernel answered the next iteration (flooded survives in its namespace).
    assert any(v["name"] == "flooded" for v in res.tree["iterations"][0]["namespace"])


def test_output_buffer_keeps_head_and_tail_and_counts_the_rest() -> None:
    buf = OutputBuffer(limit=30)
    for chunk in ("0123456789", "a" * 1000, "x" * 7, "TAIL-END"):
        buf.append(chunk)
    text = buf.getvalue()
    assert text.startswith("0123456789aaaaaaaaaa") and text.endswith("xxTAIL-END")
    assert "[995 characters omitted]" in text
    assert truncate_middle(text, 12).count("omitted") == 1
    assert "[1013 characters omitted]" in truncate_middle(text, 12)
    small = OutputBuffer(limit=30)
    small.append("short")
    assert small.getvalue() == "short"


@pytest.fixture(scope="module")
def notebook_kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An RLM kernel over the Jupyter protocol (kernelspec: tests/faults/conftest.py)."""
    from kernel.harness import RLMKernelProcess

    k = RLMKernelProcess(tmp_path_factory.mktemp("rlm-kernel"))
    try:
        yield k
    finally:
        k.shutdown()
    assert not list(k.sandbox_root.iterdir())


def test_10_mb_from_a_notebook_cell_is_capped_with_a_note(notebook_kernel: Any) -> None:
    cell = notebook_kernel.execute(
        "import sys\nfor _ in range(10):\n    sys.stdout.write('x' * (1 << 20))\n"
        "print()\nprint('END-OF-FLOOD')\nflood_done = True",
        timeout=120,
    )
    assert cell.content["status"] == "ok"
    streams = cell.of_type("stream")
    shown = sum(len(s["text"]) for s in streams)
    assert shown < NOTEBOOK_STREAM_CAP + NOTEBOOK_STREAM_TAIL + 1000
    notes = [s["text"] for s in streams if "output truncated" in s["text"]]
    assert len(notes) == 1 and " 9.5 MB more not shown" in notes[0], notes
    assert cell.stdout.rstrip().endswith("END-OF-FLOOD")  # the tail comes after the note
    # The kernel, and the same sandbox, answer the next cell.
    nxt = notebook_kernel.execute("print(flood_done)")
    assert nxt.content["status"] == "ok" and nxt.stdout == "True\n"


def test_a_notebook_sandbox_sigkilled_mid_cell_is_replaced(notebook_kernel: Any) -> None:
    pid = notebook_kernel.sandbox_pid()
    msg_id = notebook_kernel.send("import time\ntime.sleep(60)")
    wait_for(lambda: pid_alive(pid), what="the sandbox")
    import time

    time.sleep(0.5)  # the cell is running
    os.kill(pid, signal.SIGKILL)
    cell = notebook_kernel.collect(msg_id, timeout=60)
    assert cell.content["status"] == "error" and cell.content["ename"] == "SandboxDied"
    assert "next cell starts a fresh one" in cell.content["evalue"]
    assert notebook_kernel.sandbox_pid() != pid


def test_workspaces_made_while_deleted_ones_are_removed(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    """Siblings start while others end (their workspaces deleted under them): every workspace is
    made, and nothing is ever registered in the user's repository."""
    from concurrent.futures import ThreadPoolExecutor

    from rlm_kernel.sandbox.workspace import create_workspace, remove_workspace, resolve_target

    target = resolve_target(make_repo())

    def cycle(i: int) -> None:
        for j in range(6):
            dest = str(tmp_path / f"wt-{i}-{j}")
            create_workspace(target, dest)
            shutil.rmtree(dest)  # deleted under its agent
            remove_workspace(target, dest)

    with ThreadPoolExecutor(8) as ex:
        list(ex.map(cycle, range(8)))
    assert worktrees(Path(target.git_dir or "")) == []
