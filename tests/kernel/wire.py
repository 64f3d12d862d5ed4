"""A kernel's iopub in miniature: a signing Session and a real zmq socket pair, for the pieces of
the RLM kernel that publish (`relay.OutputRelay`, `links.publish_raw`) without a kernel around."""

from __future__ import annotations

from typing import Any

import zmq
from jupyter_client.session import Session

from rlm_kernel.relay import OutputRelay

__all__ = ["IOPub"]


class IOPub:
    """`socket` is what the code under test publishes on; `messages()` reads and checks it."""

    def __init__(self) -> None:
        self.session = Session(key=b"test-key")
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PAIR)
        self.reader = self.context.socket(zmq.PAIR)
        self.socket.linger = self.reader.linger = 0
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.reader.connect(f"tcp://127.0.0.1:{port}")
        self.request = self.session.msg("execute_request", {"code": "x"})

    @staticmethod
    def topic(mtype: str) -> bytes:
        """The kernel's iopub topic of a message type."""
        return f"kernel.test.{mtype}".encode()

    def relay(self, count: int = 7, silent: bool = False) -> OutputRelay:
        """An OutputRelay for the request `self.request`, numbering results `count`."""
        return OutputRelay(self.session, self.socket, self.topic, self.request, count, silent)

    def messages(self, timeout_ms: int = 2000) -> list[dict[str, Any]]:
        """Every message published so far, signature checked (the topic as `msg["topic"]`)."""
        out = []
        while self.reader.poll(timeout_ms if not out else 100):
            frames = self.reader.recv_multipart()
            idents, rest = self.session.feed_identities(frames)
            msg = self.session.deserialize(rest)  # raises on a bad signature
            msg["topic"] = idents[0]
            out.append(msg)
        return out

    def close(self) -> None:
        """Close the sockets and the context."""
        self.socket.close()
        self.reader.close()
        self.context.term()
