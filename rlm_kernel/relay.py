"""How a cell the kernel forwards to a sandbox talks to the frontend (used by `forward.py`).

Outputs go onto the kernel's iopub with the request as parent (passed on by `comms.CommRouter`
for a sandbox with a Jupyter kernel, by the cell's worker thread otherwise), ``input()`` requests
go to the frontend's stdin channel, and SIGINT becomes the cell's cancel event. See the
`rlm_kernel.forward` docstring for the threads involved.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import zmq

from .links import publish_raw
from .sandbox.base import Sandbox

__all__ = [
    "FrontendInput",
    "InputCancelled",
    "OutputRelay",
    "merge_matches",
    "prepare_repl",
    "route_sigint",
]

log = logging.getLogger(__name__)

FORWARDED = frozenset(
    {"stream", "display_data", "execute_result", "error", "clear_output", "update_display_data"}
)
"""Output message types re-published from a sandbox cell (not execute_input, status or comms)."""

NOTEBOOK_STREAM_CAP = 1_000_000
"""Characters of a cell's stdout/stderr the notebook gets; beyond that, a note and the last
`NOTEBOOK_STREAM_TAIL` characters (a browser tab chokes on megabytes of text in one output)."""
NOTEBOOK_STREAM_TAIL = 10_000


class InputCancelled(Exception):
    """The cell was interrupted while it waited for the user's input."""


class OutputRelay:
    """Re-publishes a sandbox cell's output messages on the kernel's iopub (from any thread).

    ipykernel's iopub socket queues sends onto its IOPub thread, so publishing from the worker
    thread is safe and stays ordered before the kernel's own "idle" status. Messages as dicts
    (`__call__`, a sandbox's on_output hook) or, from `links.CellForward`, as received (`stream`,
    `result`, `forward_raw`).
    """

    def __init__(
        self,
        session: Any,
        iopub_socket: Any,
        topic: Callable[[str], bytes],
        parent: dict[str, Any],
        count: int,
        silent: bool,
    ) -> None:
        self.session = session
        self.iopub_socket = iopub_socket
        self.topic = topic
        self.parent = parent
        self.count = count
        self.silent = silent
        self.streamed = 0  # stream characters forwarded
        self.dropped = 0  # stream bytes held back since the last note
        self._tail: collections.deque[tuple[str, str]] = collections.deque()
        self._tail_len = 0
        self._parent_bytes: bytes | None = None

    @property
    def msg_id(self) -> str:
        """The msg_id of the frontend's request."""
        return str(self.parent.get("header", {}).get("msg_id", ""))

    @property
    def parent_bytes(self) -> bytes:
        """The request's header, packed (the parent of every message this relay publishes)."""
        if self._parent_bytes is None:
            self._parent_bytes = bytes(self.session.pack(self.parent.get("header") or {}))
        return self._parent_bytes

    def __call__(self, msg: dict[str, Any]) -> None:
        """The sandbox's on_output hook: forward one output message, renumbering results."""
        mtype = str(msg.get("msg_type"))
        if mtype not in FORWARDED:
            return
        content = dict(msg.get("content") or {})
        if mtype == "stream":
            self.stream(str(content.get("name", "stdout")), str(content.get("text", "")))
            return
        if mtype == "execute_result":
            self.result(content)
            return
        self.finish()  # the note and the tail go before what came after them
        self.send(mtype, content)

    def result(self, content: dict[str, Any]) -> None:
        """Publish the cell's execute_result under the kernel's execution count."""
        self.finish()
        if self.silent:
            return
        self.send("execute_result", {**content, "execution_count": self.count})

    def forward_raw(self, mtype: str, metadata: Any, content: Any, buffers: list[Any]) -> None:
        """Publish an output message as the sandbox sent it (metadata, content and buffers are
        not decoded): only its header and parent are new."""
        self.finish()
        publish_raw(
            self.session,
            self.iopub_socket,
            self.topic,
            mtype,
            self.parent_bytes,
            metadata,
            content,
            buffers,
        )

    def stream(self, name: str, text: str) -> None:
        """Publish stream text, at most `NOTEBOOK_STREAM_CAP` characters per cell (then a tail)."""
        room = NOTEBOOK_STREAM_CAP - self.streamed
        if room > 0:
            head = text[:room]
            self.streamed += len(head)
            self.send("stream", {"name": name, "text": head})
            text = text[room:]
        if not text:
            return
        self.dropped += len(text.encode("utf-8", "replace"))
        text = text[-NOTEBOOK_STREAM_TAIL:]
        self._tail.append((name, text))
        self._tail_len += len(text)
        while self._tail_len - len(self._tail[0][1]) >= NOTEBOOK_STREAM_TAIL:
            self._tail_len -= len(self._tail.popleft()[1])

    def finish(self) -> None:
        """Publish the note about held-back output and its tail (call when the cell ends)."""
        if not self._tail:
            return
        tail = list(self._tail)
        kept = sum(len(t) for _, t in tail)
        if kept > NOTEBOOK_STREAM_TAIL:
            cut = kept - NOTEBOOK_STREAM_TAIL
            tail[0] = (tail[0][0], tail[0][1][cut:])
            kept = NOTEBOOK_STREAM_TAIL
        more = max(0, self.dropped - kept)
        note = (
            f"\n[output truncated: {more / 1e6:.1f} MB more not shown; the last {kept} "
            "characters follow. Print less, or write large output to a file]\n"
        )
        self.send("stream", {"name": "stderr", "text": note})
        for name, text in tail:
            self.send("stream", {"name": name, "text": text})
        self._tail.clear()
        self._tail_len = 0
        self.dropped = 0

    def send(self, mtype: str, content: dict[str, Any]) -> None:
        """Publish one message with the cell's request as parent."""
        self.session.send(
            self.iopub_socket, mtype, content, parent=self.parent, ident=self.topic(mtype)
        )

    def error(self, ename: str, evalue: str) -> dict[str, Any]:
        """Publish an error the sandbox did not report itself, and return the error reply."""
        content = {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}
        self.send("error", content)
        return {"status": "error", **content}


class FrontendInput:
    """Asks the frontend for a line of input on the kernel's stdin socket (worker thread).

    It sends the ``input_request`` ipykernel's `raw_input` sends (same parent and routing
    identity) and polls for the reply, giving up when `cancel` is set. The main thread does not
    use the stdin socket while a forwarded cell holds the shell, so the worker may.
    """

    poll_s = 0.05

    def __init__(
        self,
        session: Any,
        stdin_socket: Any,
        ident: Any,
        parent: dict[str, Any],
        cancel: threading.Event,
        before_ask: Callable[[], None] | None = None,
    ) -> None:
        self.session = session
        self.socket = stdin_socket
        self.ident = ident
        self.parent = parent
        self.cancel = cancel
        self.before_ask = before_ask  # e.g. pass on what the cell printed before it asked

    def __call__(self, prompt: str, password: bool) -> str:
        """The sandbox's stdin hook: the line the user typed; InputCancelled on interrupt."""
        sock = self.socket
        while True:  # purge stale replies, as ipykernel's _input_request does
            try:
                sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError as e:
                if e.errno == zmq.EAGAIN:
                    break
                raise
        if self.before_ask is not None:
            self.before_ask()
        content = {"prompt": prompt, "password": password}
        self.session.send(sock, "input_request", content, self.parent, ident=self.ident)
        while True:
            if self.cancel.is_set():
                raise InputCancelled("interrupted while waiting for input")
            rlist, _, xlist = zmq.select([sock], [], [sock], self.poll_s)
            if rlist or xlist:
                _, reply = self.session.recv(sock)
                if reply is not None:
                    try:
                        return str(reply["content"]["value"])
                    except (KeyError, TypeError):
                        log.error("bad input_reply: %s", reply)
                        return ""


def route_sigint(loop: asyncio.AbstractEventLoop, cancel: threading.Event) -> Callable[[], None]:
    """Make SIGINT set `cancel` (main thread only); return the function that restores it."""
    if threading.current_thread() is not threading.main_thread() or sys.platform == "win32":
        return lambda: None

    def on_sigint(signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(cancel.set)  # not Event.set here: a handler must not take locks

    previous = signal.signal(signal.SIGINT, on_sigint)

    def restore() -> None:
        signal.signal(signal.SIGINT, previous)

    return restore


def merge_matches(
    code: str, sandbox: dict[str, Any], host: dict[str, Any], prefixes: tuple[str, ...]
) -> list[str]:
    """The sandbox's matches plus the host's that start with `prefixes`, rebased on the
    sandbox's cursor_start."""
    matches = list(sandbox.get("matches", []))
    start = int(sandbox.get("cursor_start", 0))
    host_start = int(host.get("cursor_start", start))
    for m in host.get("matches", []):
        if not m.startswith(prefixes):
            continue
        if host_start < start:  # the sandbox replaces less text: drop the common head
            head = code[host_start:start]
            if not m.startswith(head):
                continue
            m = m[len(head) :]
        else:
            m = code[start:host_start] + m
        if m not in matches:
            matches.append(m)
    return matches


def prepare_repl(sb: Sandbox) -> None:
    """One-time setup of a sandbox REPL on this machine for notebook use: `RLM_NOTEBOOK_DIR` (the
    kernel's working directory: the notebook's folder) in its environment, since its own working
    directory is the sandbox's workspace. (`obj?` help reaches the frontend as the pager payload of the
    sandbox kernel's execute_reply, which the kernel passes on.)"""
    if not sb.capabilities.host_files:
        return  # e.g. a Daytona context runs on another machine
    code = f"__import__('os').environ['RLM_NOTEBOOK_DIR'] = {os.getcwd()!r}\n"
    res = sb.execute(code, timeout=30, store_history=False)
    if res.error:
        log.warning("could not set RLM_NOTEBOOK_DIR in the sandbox: %s", res.error)
