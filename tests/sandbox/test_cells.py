"""The cell collector every backend feeds: frames out of stdout, bounded text, displays, errors,
the output hook, and when a cell must stop (with a real bridge and real frames)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from typing import Any

from rlm_kernel.sandbox.base import MAX_CELL_OUTPUT_CHARS
from rlm_kernel.sandbox.bridge import Bridge
from rlm_kernel.sandbox.cells import CellCollector, display_text, error_text
from rlm_kernel.sandbox.runtime import FRAME_END, FRAME_START

SECRET = "s3cret"


def frame(exec_id: str, rid: str, op: str, args: dict[str, Any]) -> str:
    body = base64.b64encode(
        json.dumps({"id": rid, "exec": exec_id, "op": op, "args": args}).encode()
    ).decode()
    sig = hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
    return f"{FRAME_START}{body}:{sig}{FRAME_END}"


def collector(
    timeout: float = 60, cancel: threading.Event | None = None
) -> tuple[CellCollector, list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
    notices: list[tuple[str, dict[str, Any]]] = []
    shown: list[dict[str, Any]] = []

    def handler(op: str, args: dict[str, Any]) -> None:
        notices.append((op, args))

    bridge = Bridge(SECRET, handler, lambda rid, data: None)
    bridge.begin("cell1")
    return CellCollector(bridge, shown.append, timeout=timeout, cancel=cancel), notices, shown


def test_frames_split_across_chunks_are_dispatched_and_never_shown() -> None:
    col, notices, shown = collector()
    raw = frame("cell1", "r1", "snapshot", {"namespace": []})
    col.stream("stdout", "before " + raw[:7])
    col.stream("stdout", raw[7:] + " after\n")
    col.stream("stderr", "warn\n")
    res = col.finish()
    assert notices == [("snapshot", {"namespace": []})]
    assert res.output == "before  after\nwarn\n"
    assert "".join(m["content"]["text"] for m in shown) == res.output
    assert [m["content"]["name"] for m in shown] == ["stdout", "stdout", "stderr"]


def test_a_forged_or_other_cells_frame_is_dropped() -> None:
    col, notices, _ = collector()
    col.stream("stdout", frame("other-cell", "r2", "snapshot", {}))
    col.stream("stdout", frame("cell1", "r3", "snapshot", {})[:-10] + "0" * 9 + FRAME_END)
    col.finish()
    assert notices == []


def test_hidden_streams_still_carry_frames() -> None:
    col, notices, shown = collector()
    col.stream("stdout", "noise" + frame("cell1", "r4", "snapshot", {}), show=False)
    assert col.finish().output == "" and shown == [] and len(notices) == 1


def test_displays_and_errors_read_as_the_model_sees_them() -> None:
    col, _, shown = collector()
    col.message({"msg_type": "display_data", "content": {"data": {"image/png": "x"}}})
    col.message({"msg_type": "execute_result", "content": {"data": {"text/plain": "42"}}})
    tb = ["\x1b[31mTraceback\x1b[0m", "ValueError: boom"]
    col.message(
        {"msg_type": "error", "content": {"ename": "ValueError", "evalue": "boom", "traceback": tb}}
    )
    res = col.finish()
    assert res.status == "error" and res.error == "Traceback\nValueError: boom"
    assert res.output == "<display: image/png>\n42\nTraceback\nValueError: boom\n"
    assert [o["msg_type"] for o in res.outputs] == ["display_data", "execute_result", "error"]
    assert len(shown) == 3
    assert display_text({}) == "<display: empty>\n"
    assert error_text({"ename": "KeyError", "evalue": "'k'", "traceback": []}) == "KeyError: 'k'"


def test_a_later_status_is_kept_and_output_is_bounded() -> None:
    col, _, _ = collector()
    col.result.status = "cancelled"
    col.message({"msg_type": "error", "content": {"ename": "KeyboardInterrupt", "evalue": ""}})
    col.stream("stdout", "x" * (MAX_CELL_OUTPUT_CHARS + 10))
    res = col.finish()
    assert res.status == "cancelled" and res.error == "KeyboardInterrupt: "
    assert len(res.output) < MAX_CELL_OUTPUT_CHARS + 100 and "characters omitted" in res.output


def test_stop_reason_cancel_then_timeout_with_slack() -> None:
    cancel = threading.Event()
    col, _, _ = collector(timeout=0.05, cancel=cancel)
    assert col.stop_reason(slack=60) is None
    time.sleep(0.06)
    assert col.stop_reason() == "timeout" and col.stop_reason(slack=60) is None
    cancel.set()
    assert col.stop_reason(slack=60) == "cancelled"
