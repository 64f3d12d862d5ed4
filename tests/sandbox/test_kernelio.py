"""Sandbox kernels' stdout/stderr (`kernelio.SandboxOutStream`): no waits for empty flushes, and
output written at the file-descriptor level is in the result of the cell that wrote it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from ipykernel.iostream import IOPubThread

from rlm_kernel.sandbox.base import SandboxSpec
from rlm_kernel.sandbox.kernelio import _barrier
from rlm_kernel.sandbox.local import LocalSandbox
from rlm_kernel.sandbox.runtime import install
from rlm_kernel.sandbox.workspace import Target


@pytest.fixture
def sb() -> Iterator[LocalSandbox]:
    def handler(op: str, args: dict[str, Any]) -> Any:
        return None

    box = LocalSandbox(SandboxSpec("t-kernelio", "root", Target(None, None, None), handler))
    box.start()
    box.snapshot_on_end = True  # as a run's sandboxes: the summary rides the cell's own flush
    try:
        yield box
    finally:
        box.close()


def test_kernel_streams_and_logger(sb: LocalSandbox) -> None:
    res = sb.execute(
        "import sys\nk = get_ipython().kernel\n"
        "print(type(sys.stdout).__name__, type(sys.stderr).__name__, k.log.isEnabledFor(10))\n"
        "print(__rlm__.kernel_flushes)",
        timeout=30,
    )
    # No debug records built to be dropped: the app's logger is at its log level, not DEBUG.
    assert res.output == "SandboxOutStream SandboxOutStream False\nTrue\n", res


def test_an_empty_flush_does_not_wait_for_the_iopub_thread(sb: LocalSandbox) -> None:
    res = sb.execute(
        "import sys\nhops = []\nthread = sys.stdout.pub_thread\nschedule = thread.schedule\n"
        "thread.schedule = lambda f: (hops.append(f), schedule(f))[1]\n"
        "try:\n"
        "    sys.stdout.flush(); sys.stderr.flush(); empty = len(hops)\n"
        "    sys.stdout.write('x'); sys.stdout.flush(); full = len(hops) - empty\n"
        "finally:\n"
        "    thread.schedule = schedule\n"
        "print('', empty, full > 0)",
        timeout=30,
    )
    assert res.output == "x 0 True\n", res


@pytest.mark.parametrize("coalesce", [False, True])
def test_the_iopub_thread_schedules_while_a_wake_up_waits_for_room(coalesce: bool) -> None:
    """A burst of flushes fills the IOPub thread's event pipe (zmq's high-water mark): the
    scheduling thread's wake-up send then waits for the IOPub thread to read, and the IOPub
    thread, sending a stream message, schedules too. The barrier's lock was held across that
    send: both threads waited for ever (a cell printing 20 000 flushed lines hung).

    With wake-ups coalesced (one on its way at a time, the kernels' default) the pipe never
    fills: the burst is queued without waiting while the IOPub thread is busy, and all of it
    runs once it is free."""
    ctx = zmq.Context()
    iopub = IOPubThread(ctx.socket(zmq.PUB))
    iopub.start()
    barrier = _barrier(iopub)
    for _ in range(3000):  # the IOPub thread takes its wake-ups over
        if barrier.coalesce:
            break
        time.sleep(0.01)
    assert barrier.coalesce
    barrier.coalesce = coalesce
    go = threading.Event()
    ran: list[str] = []

    def in_iopub() -> None:  # as ipykernel's _flush: the IOPub thread sends, so it schedules
        go.wait(60)
        barrier.schedule(lambda: ran.append("from the iopub thread"))

    def burst() -> None:
        count = []
        for _ in range(5000):
            barrier.schedule(lambda: count.append(1))
        ran.append("burst")
        barrier.schedule(lambda: ran.append(f"ran {len(count)}"))

    sender = threading.Thread(target=burst, daemon=True)
    try:
        barrier.schedule(in_iopub)  # holds the IOPub thread until `go`
        sender.start()
        seen = -1
        while barrier.scheduled != seen:  # until the burst's sends wait for room
            seen = barrier.scheduled
            time.sleep(1)
        if coalesce:
            assert barrier.scheduled == 5002 and ran == ["burst"]  # queued, none waited
        else:
            assert barrier.scheduled < 5001  # the pipe is full: the burst is waiting
        go.set()
        sender.join(60)
        assert not sender.is_alive(), "the burst's sends never got room"
        done = threading.Event()
        barrier.schedule(done.set)
        assert done.wait(60)
        assert sorted(ran) == ["burst", "from the iopub thread", "ran 5000"]
    finally:
        go.set()
        _stop(iopub)
        ctx.term()


def _stop(iopub: IOPubThread) -> None:
    """Stop an IOPub thread, its pipe-collecting task ended first (else asyncio reports it
    destroyed while pending)."""
    task = iopub._event_pipe_gc_task
    if task is not None:
        iopub.io_loop.add_callback(task.cancel)
        for _ in range(3000):
            if task.done():
                break
            time.sleep(0.01)
    iopub.stop()
    iopub.close()


def test_fd_output_is_in_its_cells_result(sb: LocalSandbox) -> None:
    # os.write and a subprocess write to fd 1/2, read by ipykernel's pipe thread: it used to
    # reach the buffer after the cell's idle status now and then (1 cell in 200 lost it).
    for i in range(40):
        res = sb.execute(
            f"import os, subprocess\nprint('py{i}')\nos.write(1, b'fd{i}\\n')\n"
            f"os.write(2, b'err{i}\\n')\nsubprocess.run(['echo', 'sub{i}'])",
            timeout=30,
        )
        assert res.status == "ok", res
        for part in (f"py{i}", f"fd{i}", f"err{i}", f"sub{i}"):
            assert part in res.output, (part, res.output)


def test_a_flood_of_fd_output_ends_and_is_bounded(sb: LocalSandbox) -> None:
    # More than a pipe holds (64 KB), written while flushes take from the pipe: every flush
    # takes what was there when it began, so none of them runs for ever.
    res = sb.execute(
        "import subprocess\n"
        "subprocess.run(['sh', '-c', 'i=0; while [ $i -lt 20000 ]; do echo line$i; i=$((i+1)); done'])\n"
        "print('done')",
        timeout=60,
    )
    assert res.status == "ok", res
    assert "done" in res.output and "line0" in res.output
    assert len(res.output) < 200_000  # the host's output buffer keeps head and tail


def test_forked_children_write_and_flush_without_hanging(sb: LocalSandbox) -> None:
    # A forked child shares the kernel's streams and redirect pipe: it neither reads the pipe
    # nor waits for an IOPub thread it does not have (nor for a lock held at the fork). (With
    # hundreds of lines from each child, ipykernel loses the cell's idle status now and then,
    # with or without this stream: the host then ends the cell after LOST_IDLE_S.)
    res = sb.execute(
        "import multiprocessing as mp, os, sys\n"
        "def child():\n"
        "    for i in range(20):\n"
        "        print('child', i); sys.stdout.flush(); os.write(1, b'fd\\n')\n"
        "ctx = mp.get_context('fork')\n"
        "ps = [ctx.Process(target=child) for _ in range(4)]\n"
        "for p in ps: p.start()\n"
        "for i in range(20): print('parent', i); sys.stdout.flush()\n"
        "for p in ps: p.join(20)\n"
        "print('codes', [p.exitcode for p in ps])",
        timeout=60,
    )
    assert res.status == "ok", res
    assert "codes [0, 0, 0, 0]" in res.output, res.output[-500:]


def test_the_namespace_summary_still_arrives(sb: LocalSandbox) -> None:
    sb.execute("kio_value = [1, 2, 3]", timeout=30)
    names = {v["name"]: v for v in sb.namespace_after_cell()}
    assert names["kio_value"]["size"] == 3


def test_a_runtime_without_a_kernel_flushes_its_notices(monkeypatch: pytest.MonkeyPatch) -> None:
    # Daytona's REPL is a plain interpreter: nothing flushes after a cell, so notices do.
    monkeypatch.setenv("MPLBACKEND", "Agg")  # install() sets it in a plain interpreter
    rt = install({}, {"secret": "s", "bridge_dir": "/nonexistent"})
    assert rt.kernel_flushes is False
