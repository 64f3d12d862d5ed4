"""Tests for the bridge protocol: the frame writer in runtime.py and the host side in bridge.py."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rlm_kernel.sandbox.bridge import Bridge, BridgeRefused, FrameParser, new_secret
from rlm_kernel.sandbox.runtime import FRAME_END, FRAME_START, BridgeError, Runtime


def _runtime(
    tmp_path: Path, secret: str = "s3cret", exec_id: str = "exec-1"
) -> tuple[Runtime, io.StringIO]:
    rt = Runtime(ns={}, cfg={"secret": secret, "bridge_dir": str(tmp_path)})
    out = io.StringIO()
    rt._out = out
    rt.begin(exec_id)
    return rt, out


def _frame(rt: Runtime, out: io.StringIO, body: dict[str, Any]) -> str:
    """The raw frame (between the markers) that `rt` writes for `body`."""
    out.seek(0)
    out.truncate()
    rt._frame(body)
    text = out.getvalue()
    assert text.startswith(FRAME_START) and text.endswith(FRAME_END)
    return text[len(FRAME_START) : -len(FRAME_END)]


def _body(
    rid: str = "r1", exec_id: str = "exec-1", op: str = "echo", **args: Any
) -> dict[str, Any]:
    return {"id": rid, "exec": exec_id, "op": op, "args": args}


def _wait(pred: Any, timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.002)
    return bool(pred())


class _Inbox:
    """A deliver callback that records replies."""

    def __init__(self) -> None:
        self.replies: list[tuple[str, dict[str, Any]]] = []
        self.got = threading.Event()

    def __call__(self, rid: str, data: bytes) -> None:
        self.replies.append((rid, json.loads(data)))
        self.got.set()


# -- frame writer ------------------------------------------------------------------------------


def test_frame_format(tmp_path: Path) -> None:
    rt, out = _runtime(tmp_path, secret="k")
    raw = _frame(rt, out, _body(x=1))
    b64, sig = raw.split(":")
    assert json.loads(base64.b64decode(b64)) == _body(x=1)
    assert len(sig) == 64 and int(sig, 16) >= 0
    # printable, no markers inside: a frame can be found in any output stream
    assert FRAME_START not in raw and FRAME_END not in raw and "\n" not in raw


def test_new_secret_is_fresh_hex() -> None:
    a, b = new_secret(), new_secret()
    assert a != b and len(a) == 32 and int(a, 16) >= 0


# -- FrameParser -------------------------------------------------------------------------------


def _stream(tmp_path: Path) -> tuple[str, str, list[str]]:
    """An output stream with two frames and text around them (including lone control chars)."""
    rt, out = _runtime(tmp_path)
    f1 = _frame(rt, out, _body("a", x=1))
    f2 = _frame(rt, out, _body("b", y="two"))
    parts = [
        "hello \x02 world\n",
        f"{FRAME_START}{f1}{FRAME_END}",
        "mid\x02RLM text\x03 and \x02",
        f"{FRAME_START}{f2}{FRAME_END}",
        "tail \x02RLM1 done\n\x02",
    ]
    text = "hello \x02 world\nmid\x02RLM text\x03 and \x02tail \x02RLM1 done\n\x02"
    return "".join(parts), text, [f1, f2]


def test_parser_whole_stream(tmp_path: Path) -> None:
    stream, text, frames = _stream(tmp_path)
    p = FrameParser()
    shown, got = p.feed(stream)
    assert got == frames
    assert shown + p.flush() == text


def test_parser_split_at_every_boundary(tmp_path: Path) -> None:
    stream, text, frames = _stream(tmp_path)
    for i in range(len(stream) + 1):
        p = FrameParser()
        a_text, a_frames = p.feed(stream[:i])
        b_text, b_frames = p.feed(stream[i:])
        assert a_frames + b_frames == frames, i
        assert a_text + b_text + p.flush() == text, i


def test_parser_split_at_every_pair_of_boundaries(tmp_path: Path) -> None:
    rt, out = _runtime(tmp_path)
    f = _frame(rt, out, _body("a"))
    stream = f"x\x02y{FRAME_START}{f}{FRAME_END}z"
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            p = FrameParser()
            shown, got = "", []
            for chunk in (stream[:i], stream[i:j], stream[j:]):
                t, fr = p.feed(chunk)
                shown += t
                got += fr
            assert got == [f], (i, j)
            assert shown + p.flush() == "x\x02yz", (i, j)


def test_parser_one_char_at_a_time(tmp_path: Path) -> None:
    stream, text, frames = _stream(tmp_path)
    p = FrameParser()
    shown, got = "", []
    for ch in stream:
        t, fr = p.feed(ch)
        shown += t
        got += fr
    assert got == frames
    assert shown + p.flush() == text


def test_parser_plain_text_passes_through_immediately() -> None:
    p = FrameParser()
    assert p.feed("ordinary output\n") == ("ordinary output\n", [])
    assert p.feed("a \x02 b \x03 c\n") == ("a \x02 b \x03 c\n", [])
    assert p.flush() == ""


def test_parser_holds_back_only_a_possible_prefix() -> None:
    p = FrameParser()
    assert p.feed("abc\x02RL") == ("abc", [])
    assert p.feed("X") == ("\x02RLX", [])
    assert p.feed("\x02") == ("", [])
    assert p.flush() == "\x02"


def test_parser_unterminated_frame_is_flushed_as_text() -> None:
    p = FrameParser()
    assert p.feed(f"before {FRAME_START}abc") == ("before ", [])
    assert p.flush() == f"{FRAME_START}abc"
    assert p.flush() == ""


def test_parser_printed_frame_start_does_not_swallow_a_real_frame(tmp_path: Path) -> None:
    # A program that prints the start marker (without an end) must not corrupt the next real frame.
    rt, out = _runtime(tmp_path)
    f = _frame(rt, out, _body("a"))
    p = FrameParser()
    shown, got = p.feed(f"junk {FRAME_START}no end here\n")
    t2, f2 = p.feed(f"{FRAME_START}{f}{FRAME_END}after")
    assert got + f2 == [f]
    assert shown + t2 + p.flush() == f"junk {FRAME_START}no end here\nafter"


# -- Bridge.verify -----------------------------------------------------------------------------


def _bridge(secret: str = "s3cret", handler: Any = None, deliver: Any = None) -> Bridge:
    b = Bridge(secret, handler or (lambda op, args: args), deliver or (lambda rid, data: None))
    b.begin("exec-1")
    return b


def test_verify_accepts_a_good_frame(tmp_path: Path) -> None:
    rt, out = _runtime(tmp_path)
    b = _bridge()
    body = _body("r1", x=1)
    assert b.verify(_frame(rt, out, body)) == body
    assert b.rejected == 0


def test_verify_rejects_wrong_secret(tmp_path: Path) -> None:
    rt, out = _runtime(tmp_path, secret="other-secret")
    b = _bridge()
    assert b.verify(_frame(rt, out, _body())) is None
    assert b.rejected == 1


def test_verify_rejects_tampered_body(tmp_path: Path) -> None:
    rt, out = _runtime(tmp_path)
    b = _bridge()
    raw = _frame(rt, out, _body(op="echo"))
    _, sig = raw.split(":")
    forged = base64.b64encode(json.dumps(_body(op="final", value="pwned")).encode()).decode()
    assert b.verify(f"{forged}:{sig}") is None
    # flipping one character of the body is enough
    flipped = ("B" if raw[0] != "B" else "C") + raw[1:]
    assert b.verify(flipped) is None
    assert b.rejected == 2
    # the genuine frame still passes afterwards
    assert b.verify(raw) is not None


def test_verify_rejects_malformed_frames() -> None:
    b = _bridge()
    assert b.verify("") is None
    assert b.verify("no-colon-at-all") is None
    assert b.verify(":deadbeef") is None
    assert b.rejected == 3


def test_verify_rejects_signed_non_object_and_missing_id(tmp_path: Path) -> None:
    rt, out = _runtime(tmp_path)
    b = _bridge()
    out.seek(0)
    out.truncate()
    rt._frame([1, 2])  # type: ignore[arg-type]
    assert b.verify(out.getvalue()[len(FRAME_START) : -len(FRAME_END)]) is None
    assert b.verify(_frame(rt, out, {"exec": "exec-1", "op": "echo"})) is None
    assert b.rejected == 2


def test_verify_rejects_replayed_id(tmp_path: Path) -> None:
    rt, out = _runtime(tmp_path)
    b = _bridge()
    raw = _frame(rt, out, _body("same-id"))
    assert b.verify(raw) is not None
    assert b.verify(raw) is None
    # a fresh frame that reuses the id is a replay too
    assert b.verify(_frame(rt, out, _body("same-id", z=3))) is None
    assert b.rejected == 2


def test_verify_drops_late_frames_from_another_exec(tmp_path: Path) -> None:
    rt, out = _runtime(tmp_path)
    b = _bridge()
    assert b.verify(_frame(rt, out, _body("r1", exec_id="exec-0"))) is None
    b.end()  # no cell running: everything is late
    assert b.verify(_frame(rt, out, _body("r2", exec_id="exec-1"))) is None
    assert b.verify(_frame(rt, out, _body("r3", exec_id=""))) is None
    b.begin("exec-2")
    assert b.verify(_frame(rt, out, _body("r4", exec_id="exec-2"))) is not None


# -- Bridge.dispatch ---------------------------------------------------------------------------


def test_dispatch_runs_handler_on_a_thread_and_delivers_value(tmp_path: Path) -> None:
    rt, out = _runtime(tmp_path)
    seen: dict[str, Any] = {}

    def handler(op: str, args: dict[str, Any]) -> Any:
        seen["thread"] = threading.current_thread()
        seen["call"] = (op, args)
        return {"echo": args["x"], "list": [1, 2]}

    inbox = _Inbox()
    b = _bridge(handler=handler, deliver=inbox)
    b.dispatch(_frame(rt, out, _body("r1", op="echo", x=5)))
    assert inbox.got.wait(2)
    assert seen["thread"] is not threading.main_thread()
    assert seen["thread"].name == "bridge-echo"
    assert seen["call"] == ("echo", {"x": 5})
    assert inbox.replies == [("r1", {"ok": True, "value": {"echo": 5, "list": [1, 2]}})]
    assert _wait(lambda: b.pending() == 0)


def test_dispatch_refused_gives_error_reply(tmp_path: Path) -> None:
    rt, out = _runtime(tmp_path)

    def handler(op: str, args: dict[str, Any]) -> Any:
        raise BridgeRefused("max_depth reached: cannot spawn")

    inbox = _Inbox()
    b = _bridge(handler=handler, deliver=inbox)
    b.dispatch(_frame(rt, out, _body("r1", op="rlm_query")))
    assert inbox.got.wait(2)
    assert inbox.replies == [("r1", {"ok": False, "error": "max_depth reached: cannot spawn"})]


def test_dispatch_host_exception_gives_error_reply(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rt, out = _runtime(tmp_path)

    def handler(op: str, args: dict[str, Any]) -> Any:
        raise KeyError("boom")

    inbox = _Inbox()
    b = _bridge(handler=handler, deliver=inbox)
    b.dispatch(_frame(rt, out, _body("r1", op="tool")))
    assert inbox.got.wait(2)
    assert inbox.replies == [("r1", {"ok": False, "error": "tool failed on the host: 'boom'"})]


def test_dispatch_unserializable_value_gives_error_reply(tmp_path: Path) -> None:
    rt, out = _runtime(tmp_path)
    inbox = _Inbox()
    b = _bridge(handler=lambda op, args: object(), deliver=inbox)
    b.dispatch(_frame(rt, out, _body("r1", op="tool")))
    assert inbox.got.wait(2)
    ((rid, reply),) = inbox.replies
    assert rid == "r1" and reply["ok"] is False
    assert reply["error"].startswith("tool: result not serializable:")


def test_dispatch_drops_late_reply(tmp_path: Path) -> None:
    rt, out = _runtime(tmp_path)
    started, release = threading.Event(), threading.Event()

    def handler(op: str, args: dict[str, Any]) -> Any:
        started.set()
        release.wait(2)
        return "too late"

    inbox = _Inbox()
    b = _bridge(handler=handler, deliver=inbox)
    b.dispatch(_frame(rt, out, _body("r1", op="llm_query")))
    assert started.wait(2)
    assert b.pending() == 1
    b.begin("exec-2")  # the cell was interrupted; the next one runs
    release.set()
    assert _wait(lambda: b.pending() == 0)
    assert inbox.replies == []


def test_dispatch_ignores_rejected_frames(tmp_path: Path) -> None:
    rt, out = _runtime(tmp_path, secret="wrong")
    calls: list[str] = []
    b = _bridge(handler=lambda op, args: calls.append(op))
    b.dispatch(_frame(rt, out, _body("r1")))
    assert b.pending() == 0 and calls == [] and b.rejected == 1


def test_dispatch_snapshot_runs_inline_without_reply(tmp_path: Path) -> None:
    rt, out = _runtime(tmp_path)
    seen: list[Any] = []
    inbox = _Inbox()

    def handler(op: str, args: dict[str, Any]) -> Any:
        seen.append((op, args, threading.current_thread()))
        return None

    b = _bridge(handler=handler, deliver=inbox)
    out.seek(0)
    out.truncate()
    rt.snapshot()
    raw = out.getvalue()[len(FRAME_START) : -len(FRAME_END)]
    b.dispatch(raw)
    assert seen == [("snapshot", {"namespace": [], "answer": ""}, threading.current_thread())]
    assert inbox.replies == []


# -- round trip --------------------------------------------------------------------------------


class _SandboxStdout:
    """The sandbox's stdout as the host sees it: text is kept, frames go to the bridge."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.parser = FrameParser()
        self.shown: list[str] = []

    def write(self, text: str) -> int:
        shown, frames = self.parser.feed(text)
        self.shown.append(shown)
        for raw in frames:
            self.bridge.dispatch(raw)
        return len(text)

    def flush(self) -> None:
        pass


def _deliver_to(bridge_dir: Path) -> Any:
    def deliver(rid: str, data: bytes) -> None:  # as LocalSandbox._deliver: atomic rename
        tmp = os.path.join(bridge_dir, f".{rid}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, os.path.join(bridge_dir, f"{rid}.json"))

    return deliver


def _call_in_thread(fn: Any) -> dict[str, Any]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "Runtime.call never got its reply"
    return box


def test_round_trip_call_returns_value(tmp_path: Path) -> None:
    secret = new_secret()
    rt = Runtime(ns={}, cfg={"secret": secret, "bridge_dir": str(tmp_path)})
    bridge = Bridge(secret, lambda op, args: {"op": op, "args": args}, _deliver_to(tmp_path))
    stdout = _SandboxStdout(bridge)
    rt._out = stdout
    rt.begin("cell-1")
    bridge.begin("cell-1")
    box = _call_in_thread(lambda: rt.call("echo", x=1))
    assert box == {"value": {"op": "echo", "args": {"x": 1}}}
    assert "".join(stdout.shown) + stdout.parser.flush() == ""
    assert os.listdir(tmp_path) == []  # the reply file was consumed


def test_round_trip_refusal_raises_bridge_error(tmp_path: Path) -> None:
    secret = new_secret()
    rt = Runtime(ns={}, cfg={"secret": secret, "bridge_dir": str(tmp_path)})

    def handler(op: str, args: dict[str, Any]) -> Any:
        raise BridgeRefused(f"{op} is not allowed here")

    bridge = Bridge(secret, handler, _deliver_to(tmp_path))
    rt._out = _SandboxStdout(bridge)
    rt.begin("cell-1")
    bridge.begin("cell-1")
    box = _call_in_thread(lambda: rt.call("rlm_query", tasks=["t"]))
    assert isinstance(box.get("error"), BridgeError)
    assert str(box["error"]) == "rlm_query is not allowed here"


def test_call_with_unserializable_args_raises_type_error(tmp_path: Path) -> None:
    rt, _ = _runtime(tmp_path)
    with pytest.raises(TypeError, match="echo: arguments must be JSON-serializable"):
        rt.call("echo", x=object())
