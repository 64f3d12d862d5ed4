"""The stdout/stderr of sandbox kernels: ipykernel's `OutStream` without empty flushes, and with
file-descriptor output that is never late for its cell.

ipykernel flushes stdout and stderr four times per request (after the cell, then again before
its idle status), and every flush from the cell's thread hands a callback to the IOPub thread
and waits for it, even with nothing to send: four thread hops (and GIL hand-overs) per cell,
~0.5 ms of a trivial cell's ~3. Here a flush with nothing buffered returns at once: whatever an
earlier flush took from the buffer is already queued on the IOPub thread, ahead of anything the
kernel publishes next (its idle status included), so the order on iopub is unchanged.

Output written at the file-descriptor level (subprocesses, C code, `os.write(1, ...)`) reaches
ipykernel's buffer through a thread that reads the pipe fd 1/2 are redirected to. ipykernel's
flush does not wait for that thread, so such output could come after the cell's idle status (and
be missing from the cell's result: 1 cell in 200 ending in `os.write` here). Here the pipe is
read under a lock, by that thread and by every flush: a flush first moves whatever the pipe
holds into the buffer, so everything written before it is sent before the cell ends.

Sandbox kernels get it through `KERNEL_OPTIONS` (`--IPKernelApp.outstream_class`).
"""

from __future__ import annotations

import array
import fcntl
import os
import select
import sys
import termios
import threading

from ipykernel.iostream import PIPE_BUFFER_SIZE, OutStream

__all__ = ["SandboxOutStream"]


def _available(fd: int) -> int:
    """How many bytes a pipe holds (0 when empty or at its end)."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


class SandboxOutStream(OutStream):
    """`OutStream` whose `flush` takes the fd's pending output first and skips empty sends."""

    _pipe_lock: threading.Lock

    def _setup_stream_redirects(self, name: str) -> None:
        self._pipe_lock = threading.Lock()
        super()._setup_stream_redirects(name)  # type: ignore[no-untyped-call]

    def _watching(self) -> bool:
        """Whether fd output is redirected into this stream (close() ends it)."""
        return bool(self._should_watch)

    def _move_from_pipe(self, n: int) -> None:
        """Move `n` bytes the pipe holds into the buffer (caller holds `_pipe_lock`, the only
        reader, so the reads never block)."""
        fid = self._fid
        while fid is not None and n > 0:
            data = os.read(fid, min(n, PIPE_BUFFER_SIZE))
            if not data:
                return
            n -= len(data)
            self.write(data.decode(errors="replace"))
            os.write(self._original_stdstream_copy, data)  # the kernel's log, as ipykernel does

    def _watch_pipe_fd(self) -> None:
        fid = self._fid
        if fid is None:
            return
        try:
            while self._watching():
                select.select([fid], [], [])  # no GIL held while waiting
                if not self._watching():
                    return  # close() woke us up
                with self._pipe_lock:
                    n = _available(fid)
                    if n == 0:  # readable and empty: the pipe's end
                        return
                    self._move_from_pipe(n)
        except Exception:
            self._exc = sys.exc_info()

    def flush(self) -> None:
        """Take the fd's pending output, then send what is buffered (waiting for the IOPub
        thread); nothing to send, no wait."""
        lock = getattr(self, "_pipe_lock", None)
        if lock is not None and self._watching():
            with lock:
                n = _available(self._fid) if self._fid is not None else 0
                if n:
                    self._move_from_pipe(n)
        with self._buffer_lock:
            pending = any(buf.tell() for buf in self._buffers.values())
        if pending or self._subprocess_flush_pending or self.echo is not None:
            super().flush()  # type: ignore[no-untyped-call]
