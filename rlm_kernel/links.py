"""The relay's connection to one sandbox kernel, and how it publishes on the RLM kernel's iopub.

`SandboxLink` holds the sockets to one sandbox kernel: a SUB socket on its iopub (read by a
ZMQStream on the kernel's main event loop) and a DEALER socket on its shell, plus the key that
checks what the sandbox sends and signs what the frontend sends it. `CellForward` is a forwarded
cell whose outputs are passed on as they arrive (stream text without the bridge's frames,
execute_result renumbered, the rest as received). `publish_raw` signs and sends a message on the
kernel's iopub without encoding its parts again. Which messages may pass, and where to, is
`comms.CommRouter`'s business.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import zmq
from jupyter_client.session import Session
from zmq.eventloop.zmqstream import ZMQStream

from .sandbox.bridge import FrameParser

if TYPE_CHECKING:
    from .relay import OutputRelay
    from .sandbox.base import Sandbox

__all__ = ["DELIM", "CellForward", "SandboxLink", "publish_raw"]

DELIM = b"<IDS|MSG>"
"""The delimiter between a message's routing identities and its signed parts."""


def _url(info: Mapping[str, Any], port: str) -> str:
    if info.get("transport", "tcp") == "ipc":
        return f"ipc://{info['ip']}-{info[port]}"
    return f"tcp://{info['ip']}:{info[port]}"


class SandboxLink:
    """The relay's sockets to one sandbox kernel (one kernel process: a restart makes a new link).

    Made on the kernel's main thread (the SUB socket is read by a ZMQStream on its event loop);
    `shell` is used from that thread only.
    """

    def __init__(
        self,
        sandbox: Sandbox,
        connection_file: str,
        context: zmq.Context[Any],
        on_message: Callable[[SandboxLink, list[Any]], None],
    ) -> None:
        with open(connection_file) as fh:
            info = json.load(fh)
        self.sandbox = sandbox
        self.connection_file = connection_file
        key = str(info.get("key") or "").encode()
        scheme = str(info.get("signature_scheme") or "hmac-sha256")
        if scheme != "hmac-sha256":
            raise ValueError(f"unsupported signature scheme {scheme!r}")
        self.session = Session(key=key, signature_scheme=scheme)  # signs what the frontend sends
        self.auth = hmac.new(key, digestmod=hashlib.sha256) if key else None
        self.comms: dict[str, str] = {}  # comm_id -> target_name, of this kernel's relayed comms
        self.last_parent = (
            b"{}"  # the latest frontend request sent here (parent of stray comm msgs)
        )
        self.ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.refused = 0
        self.closed = False
        sub = context.socket(zmq.SUB)
        sub.linger = 0
        # No receive limit (default: 1000 messages, then the rest of a burst is dropped, the
        # cell's idle status included): the relay reads continuously on the event loop.
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        # ipykernel greets each new subscription (iopub_welcome), the proof that nothing sent
        # from now on is lost; b"" is not new (the sandbox's own client has it), a unique one is.
        sub.setsockopt(zmq.SUBSCRIBE, f"rlm-relay-{secrets.token_hex(8)}".encode())
        shell = context.socket(zmq.DEALER)
        shell.linger = 0
        try:
            sub.connect(_url(info, "iopub_port"))
            shell.connect(_url(info, "shell_port"))
        except Exception:
            sub.close()
            shell.close()
            raise
        self.shell = shell
        self.stream = ZMQStream(sub)
        self.stream.on_recv(lambda frames: on_message(self, frames), copy=False)

    @property
    def name(self) -> str:
        """The sandbox's id, for log lines."""
        return str(getattr(self.sandbox, "id", "") or "?")

    def stale(self) -> bool:
        """Whether the sandbox closed or its kernel is not the one this link talks to any more."""
        if self.closed or self.sandbox.closed:
            return True
        return self.sandbox.kernel_connection() != self.connection_file

    def close(self) -> None:
        """Close both sockets (idempotent)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.stream.close(linger=0)
        with contextlib.suppress(Exception):
            self.shell.close(linger=0)
        if not self.ready.done():
            self.ready.set_result(None)


class CellForward:
    """A forwarded cell whose outputs the relay passes on (registered under its msg_id)."""

    def __init__(self, link: SandboxLink, relay: OutputRelay) -> None:
        self.link = link
        self.relay = relay
        self.msg_id = relay.msg_id
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._parsers: dict[str, FrameParser] = {}

    def output(self, mtype: str, metadata: Any, content: Any, buffers: list[Any]) -> None:
        """Pass one output message of the cell on (main thread)."""
        relay = self.relay
        if mtype == "stream":
            body = json.loads(bytes(content))
            name, text = str(body.get("name", "stdout")), body.get("text")
            if not isinstance(text, str):
                raise ValueError("stream text is not a string")
            parser = self._parsers.get(name)
            if parser is None:
                parser = self._parsers[name] = FrameParser()
            # Bridge frames (llm_query from the cell) are the cell's collector's business.
            text, _frames = parser.feed(text)
            if text:
                relay.stream(name, text)
        elif mtype == "execute_result":
            body = json.loads(bytes(content))
            if not isinstance(body, dict):
                raise ValueError("execute_result content is not an object")
            relay.result(body)
        else:
            relay.forward_raw(mtype, metadata, content, buffers)

    def idle(self) -> None:
        """The sandbox kernel finished the cell: show held-back text and wake the waiter."""
        for name, parser in self._parsers.items():
            rest = parser.flush()
            if rest:
                self.relay.stream(name, rest)
        self._parsers.clear()
        if not self.done.done():
            self.done.set_result(None)


def publish_raw(
    session: Any,
    socket: Any,
    topic: Callable[[str], bytes],
    mtype: str,
    parent: bytes,
    metadata: Any,
    content: Any,
    buffers: Iterable[Any] = (),
) -> None:
    """Sign and send one message on a kernel's iopub without encoding its parts again."""
    header = session.pack(session.msg_header(mtype))
    sig = session.sign([header, parent, metadata, content])
    socket.send_multipart(
        [topic(mtype), DELIM, sig, header, parent, metadata, content, *buffers], copy=False
    )
