"""`forward`: the execute_reply a forwarded cell gets for each way a sandbox cell ends, the kernel's
main loop seen from other threads, and the stream flush it skips. Forwarding over the real
protocol (interrupts, stdin, a dead or restarted sandbox): test_kernel_protocol.py."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from rlm_kernel.forward import MainLoop, cell_reply, flush_only_when_pending
from rlm_kernel.sandbox.base import CellResult

from .wire import IOPub

ERROR = {"ename": "ValueError", "evalue": "bad", "traceback": ["tb1", "tb2"]}


def reply(
    iopub: IOPub, res: CellResult, *, interrupts: bool = True, detached: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The reply to `res`, and the errors published for it."""
    out = cell_reply(res, iopub.relay(), interrupts=interrupts, detached=detached)
    return out, [m["content"] for m in iopub.messages(timeout_ms=200)]


def error_output(content: dict[str, Any]) -> dict[str, Any]:
    return {"msg_type": "error", "content": content}


def test_an_ok_cell_passes_payload_and_user_expressions_on(iopub: IOPub) -> None:
    page = {"source": "page", "data": {"text/plain": "doc"}, "start": 0}
    res = CellResult(reply={"payload": [page, "junk", 3], "user_expressions": {"a": {"x": 1}}})
    out, published = reply(iopub, res)
    assert out == {"status": "ok", "payload": [page], "user_expressions": {"a": {"x": 1}}}
    assert published == []


@pytest.mark.parametrize(
    "sandbox_reply", [{"payload": "not a list", "user_expressions": ["no"]}, {"payload": None}]
)
def test_a_malformed_sandbox_reply_gives_empty_extras(
    iopub: IOPub, sandbox_reply: dict[str, Any]
) -> None:
    out, _ = reply(iopub, CellResult(reply=sandbox_reply))
    assert out == {"status": "ok", "payload": [], "user_expressions": {}}


def test_an_error_cell_replies_with_its_last_error(iopub: IOPub) -> None:
    first = {**ERROR, "evalue": "first"}
    res = CellResult(status="error", outputs=[error_output(first), error_output(ERROR)])
    out, published = reply(iopub, res)
    assert out["status"] == "error" and (out["ename"], out["evalue"]) == ("ValueError", "bad")
    assert out["traceback"] == ["tb1", "tb2"] and published == []  # the sandbox published it


def test_an_error_lost_in_a_burst_of_output_comes_from_the_reply(iopub: IOPub) -> None:
    out, _ = reply(iopub, CellResult(status="ok", reply={"status": "error", **ERROR}))
    assert (out["status"], out["ename"], out["traceback"]) == (
        "error",
        "ValueError",
        ["tb1", "tb2"],
    )


def test_a_restart_says_the_variables_are_gone(iopub: IOPub) -> None:
    out, published = reply(iopub, CellResult(status="restarted"))
    assert out["ename"] == "KeyboardInterrupt" and "variables are gone" in out["evalue"]
    assert published == [{k: out[k] for k in ("ename", "evalue", "traceback")}]
    note = "the sandbox was restarted empty"
    out, _ = reply(iopub, CellResult(status="restarted", error=note), interrupts=False)
    assert (out["ename"], out["evalue"]) == ("SandboxRestarted", note)


@pytest.mark.parametrize(
    ("detached", "why"),
    [
        (True, "the following cells run in the notebook's root sandbox again"),
        (False, "the next cell starts a fresh one"),
    ],
)
def test_a_dead_sandbox_says_what_happens_next(iopub: IOPub, detached: bool, why: str) -> None:
    res = CellResult(status="died", outputs=[error_output(ERROR)])
    out, published = reply(iopub, res, detached=detached)
    assert out["ename"] == "SandboxDied" and out["evalue"].endswith(why)
    assert [p["ename"] for p in published] == ["SandboxDied"]


def test_a_cancelled_cell_replies_with_the_sandboxs_interrupt(iopub: IOPub) -> None:
    interrupt = {"ename": "KeyboardInterrupt", "evalue": "", "traceback": ["KI"]}
    out, published = reply(iopub, CellResult(status="cancelled", outputs=[error_output(interrupt)]))
    assert (out["ename"], out["traceback"], published) == ("KeyboardInterrupt", ["KI"], [])
    out, published = reply(iopub, CellResult(status="cancelled"))
    assert (out["ename"], out["evalue"]) == ("KeyboardInterrupt", "interrupted")
    assert len(published) == 1


def test_the_main_loop_runs_work_for_other_threads() -> None:
    main = MainLoop()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        on: list[threading.Thread] = []

        async def where() -> threading.Thread:
            return threading.current_thread()

        assert asyncio.run(main.run(where())) is threading.current_thread()  # no loop yet
        main.call_and_wait(on.append, "never")  # no loop: nothing to run it on
        assert on == []

        async def bind() -> None:  # as the kernel's start() does, on its thread
            main.bind(loop)

        asyncio.run_coroutine_threadsafe(bind(), loop).result(5)
        assert not main.is_current()
        assert asyncio.run(main.run(where())) is thread
        main.call_and_wait(lambda: on.append(threading.current_thread()), timeout=5)
        assert on == [thread]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


class Stream:
    """The parts of ipykernel's OutStream that `flush_only_when_pending` looks at."""

    def __init__(self) -> None:
        self._flush_pending = False
        self._subprocess_flush_pending = False
        self.echo: Any = None
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def test_flush_is_skipped_only_when_nothing_waits() -> None:
    stream = Stream()
    flush_only_when_pending(stream)
    stream.flush()
    assert stream.flushes == 0
    stream._flush_pending = True
    stream.flush()
    assert stream.flushes == 1
    other = object()
    flush_only_when_pending(other)  # not an OutStream: left alone
    assert not hasattr(other, "flush")
