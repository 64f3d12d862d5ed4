"""The host side of the bridge: parse and verify request frames, dispatch them, deliver replies.

The protocol is described in `runtime.py`. Every backend uses this class; a backend only supplies
how a reply reaches the sandbox (`deliver`: a local file write, or a Daytona file upload).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import threading
from collections.abc import Callable
from typing import Any

from .runtime import FRAME_END, FRAME_START

__all__ = ["Bridge", "BridgeRefused", "FrameParser", "new_secret"]

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], Any]
Deliver = Callable[[str, bytes], None]
NOTICES = frozenset({"snapshot", "display", "cell_error"})  # ops that get no reply (run in order)


class BridgeRefused(Exception):
    """Raised by a handler to send an error reply (its message goes to the sandbox)."""


def new_secret() -> str:
    """A fresh per-sandbox secret."""
    return secrets.token_hex(16)


class FrameParser:
    """Splits a stream of output text into clean text and raw frames, across chunk boundaries."""

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> tuple[str, list[str]]:
        """Return the text to show and the complete frames found so far."""
        data = self._pending + text
        self._pending = ""
        out: list[str] = []
        frames: list[str] = []
        pos = 0
        while True:
            start = data.find(FRAME_START, pos)
            if start < 0:
                tail = data[pos:]
                # Keep a possible frame prefix back until the next chunk.
                keep = _prefix_overlap(tail, FRAME_START)
                out.append(tail[: len(tail) - keep])
                self._pending = tail[len(tail) - keep :]
                break
            end = data.find(FRAME_END, start)
            if end < 0:
                out.append(data[pos:start])
                self._pending = data[start:]
                break
            # A start marker the program printed itself must not swallow the next real frame.
            start = data.rfind(FRAME_START, start, end)
            out.append(data[pos:start])
            frames.append(data[start + len(FRAME_START) : end])
            pos = end + len(FRAME_END)
        return "".join(out), frames

    def flush(self) -> str:
        """Whatever is held back (an unterminated frame is shown as text)."""
        rest, self._pending = self._pending, ""
        return rest


def _prefix_overlap(text: str, marker: str) -> int:
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class Bridge:
    """Verifies frames from one sandbox and runs their requests on threads."""

    def __init__(
        self,
        secret: str,
        handler: Handler,
        deliver: Deliver,
        discard: Callable[[str], None] | None = None,
    ) -> None:
        self.secret = secret.encode()
        self.handler = handler
        self.deliver = deliver
        self.discard = discard  # removes a delivered reply nobody read (an interrupted cell)
        self.exec_id = ""
        self._delivered: list[str] = []  # replies of the current cell
        self.seen: set[str] = set()
        self.rejected = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def begin(self, exec_id: str) -> None:
        """Requests are accepted only from the cell with this id from now on."""
        self.exec_id = exec_id

    def end(self) -> None:
        """No cell is running: every later request is late and dropped, and replies of this
        cell that its code never read (it was interrupted while waiting) are removed."""
        with self._lock:
            self.exec_id = ""
            delivered, self._delivered = self._delivered, []
        if self.discard is not None:
            for rid in delivered:
                try:
                    self.discard(rid)
                except Exception:
                    log.exception("bridge: could not remove an unread reply")

    def verify(self, raw: str) -> dict[str, Any] | None:
        """Decode and authenticate one frame; None when forged, malformed, replayed or late."""
        body_b64, _, sig = raw.rpartition(":")
        want = hmac.new(self.secret, body_b64.encode(), hashlib.sha256).hexdigest()
        # compare_digest raises TypeError on non-ASCII str: any printed text can reach here
        if not body_b64 or not sig.isascii() or not hmac.compare_digest(want, sig):
            self.rejected += 1
            log.warning("bridge: dropped a frame with a bad signature")
            return None
        try:
            body = json.loads(base64.b64decode(body_b64, validate=True))
        except (binascii.Error, ValueError):
            self.rejected += 1
            return None
        if not isinstance(body, dict):
            self.rejected += 1
            return None
        with self._lock:
            rid = str(body.get("id", ""))
            if not rid or rid in self.seen:
                self.rejected += 1
                return None
            self.seen.add(rid)
        if body.get("exec") != self.exec_id or not self.exec_id:
            log.info("bridge: dropped a late request from an earlier cell")
            return None
        return body

    def dispatch(self, raw: str) -> None:
        """Verify a frame and run its request; notices run inline, requests on a thread."""
        body = self.verify(raw)
        if body is None:
            return
        op = str(body.get("op"))
        args = body.get("args") or {}
        if op in NOTICES:
            self._run(body, op, args, reply=False)
            return
        t = threading.Thread(
            target=self._run, args=(body, op, args, True), name=f"bridge-{op}", daemon=True
        )
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()

    def _run(self, body: dict[str, Any], op: str, args: dict[str, Any], reply: bool) -> None:
        exec_id = body.get("exec")
        try:
            value = self.handler(op, args)
            payload: dict[str, Any] = {"ok": True, "value": value}
        except BridgeRefused as exc:
            payload = {"ok": False, "error": str(exc)}
        except Exception as exc:  # a host bug must reach the model as text, not hang the cell
            log.exception("bridge: %s failed", op)
            payload = {"ok": False, "error": f"{op} failed on the host: {exc}"}
        if not reply:
            return
        try:
            data = json.dumps(payload).encode()
        except TypeError as exc:
            data = json.dumps(
                {"ok": False, "error": f"{op}: result not serializable: {exc}"}
            ).encode()
        rid = str(body["id"])
        if exec_id != self.exec_id:
            return  # the cell was interrupted meanwhile: drop the late reply
        try:
            self.deliver(rid, data)
        except Exception:
            log.exception("bridge: could not deliver the reply to %s", op)
            return
        with self._lock:
            if exec_id == self.exec_id:
                self._delivered.append(rid)
                return
        # The cell ended while the reply was written: nobody will read it.
        if self.discard is not None:
            try:
                self.discard(rid)
            except Exception:
                log.exception("bridge: could not remove an unread reply")

    def pending(self) -> int:
        """Requests still being handled."""
        with self._lock:
            return sum(1 for t in self._threads if t.is_alive())
