"""One cell collector for every backend: turns a REPL's raw output stream into a `CellResult`.

A backend feeds it what its REPL says while a cell runs (stream text, Jupyter output messages,
or bridge notices converted to them); the collector parses bridge frames out of stdout and
dispatches them, keeps the text output bounded (`OutputBuffer`), renders displays and errors as
the model sees them, forwards everything to the cell's output hook, and says when the cell must
be stopped (cancel or timeout). What differs between backends, how to stop a cell and how to
tell that the REPL died, stays in the backend.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .base import CellResult, OutputBuffer, OutputHook, strip_ansi
from .bridge import Bridge, FrameParser

__all__ = ["CellCollector", "display_text", "error_text"]

DISPLAY_TYPES = ("execute_result", "display_data")


def display_text(data: dict[str, Any]) -> str:
    """How a display reads in the model's output: its text/plain, else the kinds it has."""
    if "text/plain" in data:
        return str(data["text/plain"]) + "\n"
    return f"<display: {', '.join(sorted(data)) or 'empty'}>\n"


def error_text(content: dict[str, Any]) -> str:
    """An `error` message's traceback without colour codes, headed by `ename: evalue` if absent."""
    tb = strip_ansi("\n".join(str(line) for line in content.get("traceback") or []))
    head = f"{content.get('ename', 'Error')}: {content.get('evalue', '')}"
    return tb if tb and head.split(":")[0] in tb else f"{head}\n{tb}".rstrip("\n")


class CellCollector:
    """What one running cell has said so far, and whether it must be stopped."""

    def __init__(
        self,
        bridge: Bridge,
        on_output: OutputHook | None,
        *,
        timeout: float,
        cancel: threading.Event | None = None,
    ) -> None:
        self.bridge = bridge
        self.on_output = on_output
        self.cancel = cancel
        self.result = CellResult()
        self.t0 = time.monotonic()
        self.deadline = self.t0 + timeout
        self._parser = FrameParser()
        self._parts = OutputBuffer()

    def stream(self, name: str, text: str, *, show: bool = True) -> None:
        """Stream text: bridge frames in stdout are dispatched, the rest is output (if `show`)."""
        if name == "stdout":
            text, frames = self._parser.feed(text)
            for raw in frames:
                self.bridge.dispatch(raw)
        if not show or not text:
            return
        self._parts.append(text)
        if self.on_output is not None:
            self.on_output({"msg_type": "stream", "content": {"name": name, "text": text}})

    def message(self, msg: dict[str, Any]) -> None:
        """A Jupyter output message (display_data, execute_result, error, clear_output, ...)."""
        if self.on_output is not None:
            self.on_output(msg)
        mtype, content = msg["msg_type"], msg["content"]
        self.result.outputs.append({"msg_type": mtype, "content": content})
        if mtype in DISPLAY_TYPES:
            self._parts.append(display_text(content.get("data") or {}))
        elif mtype == "error":
            self.fail("error", error_text(content), keep_status=True)

    def fail(
        self, status: str, error: str, *, keep_status: bool = False, show: bool = True
    ) -> None:
        """The cell ended badly: `status` (unless `keep_status` and one is set), `error` shown."""
        res = self.result
        res.error = error
        if show:
            self._parts.append(error.rstrip() + "\n")
        if not keep_status or res.status == "ok":
            res.status = status

    def stop_reason(self, slack: float = 0.0) -> str | None:
        """ "cancelled" or "timeout" (more than `slack` s after the deadline) when the cell must
        stop now; None while it may run on."""
        if self.cancel is not None and self.cancel.is_set():
            return "cancelled"
        if time.monotonic() > self.deadline + slack:
            return "timeout"
        return None

    def finish(self) -> CellResult:
        """The result: held-back text flushed, the output assembled, the time taken."""
        rest = self._parser.flush()
        if rest:
            self._parts.append(rest)
        res = self.result
        res.output = self._parts.getvalue()
        res.elapsed_s = time.monotonic() - self.t0
        return res
