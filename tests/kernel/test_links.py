"""`links`: publishing a message on the kernel's iopub as received, and a forwarded cell's outputs
(bridge frames removed, results renumbered, hostile contents refused). The relay around them, over
the real protocol: test_comms.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rlm_kernel.links import CellForward, _url, publish_raw
from rlm_kernel.sandbox.runtime import FRAME_END, FRAME_START

from .wire import IOPub


def forward(iopub: IOPub) -> CellForward:
    return CellForward(None, iopub.relay(count=7))  # type: ignore[arg-type]  # no link needed


def test_publish_raw_passes_the_parts_on_untouched(iopub: IOPub) -> None:
    parent = iopub.session.pack(iopub.request["header"])
    content = b'{"data": {"text/plain": "x"}, "metadata": {}}'
    publish_raw(
        iopub.session, iopub.socket, iopub.topic, "display_data", parent, b"{}", content, [b"bin"]
    )
    (msg,) = iopub.messages()
    assert msg["topic"] == b"kernel.test.display_data"
    assert msg["msg_type"] == "display_data"
    assert msg["parent_header"]["msg_id"] == iopub.request["header"]["msg_id"]
    assert msg["content"] == json.loads(content)
    assert [bytes(b) for b in msg["buffers"]] == [b"bin"]


def test_a_cells_stream_loses_its_bridge_frames_across_chunks(iopub: IOPub) -> None:
    cell = forward(iopub)
    frame = f'{FRAME_START}{{"op": "llm_query"}}{FRAME_END}'
    half = len(frame) // 2
    for text in ("before ", frame[:half], frame[half:] + " after\n", FRAME_START[:3]):
        cell.output("stream", b"{}", json.dumps({"name": "stdout", "text": text}).encode(), [])
    assert not cell.done.done()
    cell.idle()  # the held-back prefix of a marker was text after all
    assert cell.done.done()
    text = "".join(m["content"]["text"] for m in iopub.messages())
    assert text == "before  after\n" + FRAME_START[:3]


def test_a_cells_result_gets_the_kernels_count(iopub: IOPub) -> None:
    content = {"data": {"text/plain": "2"}, "metadata": {}, "execution_count": 99}
    forward(iopub).output("execute_result", b"{}", json.dumps(content).encode(), [])
    (msg,) = iopub.messages()
    assert msg["content"]["execution_count"] == 7 and msg["content"]["data"] == content["data"]


@pytest.mark.parametrize(
    ("mtype", "content"),
    [
        ("stream", {"name": "stdout", "text": ["not", "a", "string"]}),
        ("stream", {"name": "stdout", "text": None}),
        ("execute_result", ["not", "an", "object"]),
    ],
)
def test_hostile_output_contents_are_refused(iopub: IOPub, mtype: str, content: Any) -> None:
    with pytest.raises(ValueError):
        forward(iopub).output(mtype, b"{}", json.dumps(content).encode(), [])
    with pytest.raises(json.JSONDecodeError):
        forward(iopub).output(mtype, b"{}", b"{not json", [])
    assert iopub.messages(timeout_ms=100) == []


def test_connection_urls() -> None:
    info = {"transport": "ipc", "ip": "/tmp/k", "iopub_port": 3, "shell_port": 4}
    assert _url(info, "iopub_port") == "ipc:///tmp/k-3"
    assert _url({"ip": "127.0.0.1", "shell_port": 5}, "shell_port") == "tcp://127.0.0.1:5"
