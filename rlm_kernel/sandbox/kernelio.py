"""The stdout/stderr of sandbox kernels: ipykernel's `OutStream` without its redundant flush
waits, and with file-descriptor output that is never late for its cell.

ipykernel flushes stdout and stderr four times per request (after the cell, then again before
its idle status), and every flush from the cell's thread hands a callback to the IOPub thread
and waits for it, even with nothing to send: a thread hop and a GIL hand-over each. The wait is
a barrier (ipykernel sends a cell's execute_reply after it, so the cell's outputs come first);
one barrier is enough. Here a flush with nothing buffered returns at once when the IOPub thread
has run every callback handed to it since the last barrier (all of them numbered, `_Barrier`):
in a cell, the first flush waits and the three others do not, so the order of messages is the
same as with ipykernel's.

Output written at the file-descriptor level (subprocesses, C code, `os.write(1, ...)`) reaches
ipykernel's buffer through a thread that reads the pipe fd 1/2 are redirected to. ipykernel's
flush does not wait for that thread, so such output could come after the cell's idle status (and
be missing from the cell's result: 1 cell in 200 ending in `os.write` here). Here the pipe is
read under a lock, by that thread and by every flush: a flush first moves whatever the pipe
holds into the buffer, so everything written before it is sent before the cell ends.

After an agent's cell (branch `cellpath`) no barrier is needed at all: the host waits for the
cell's idle status, not its execute_reply, and the idle status is queued behind the outputs;
the kernel marks such a request's end `waitless` (`forkshell.SandboxKernel`). For that order to
hold, the IOPub thread sends a stream it flushes at once (ipykernel re-queued that send behind
whatever was queued meanwhile). Wake-ups of the IOPub thread are coalesced: one is on its way at
a time and the thread runs callbacks until none is queued.

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
from collections.abc import Callable
from typing import Any

from ipykernel.iostream import PIPE_BUFFER_SIZE, OutStream

__all__ = ["SandboxOutStream", "waitless"]


def _available(fd: int) -> int:
    """How many bytes a pipe holds (0 when empty or at its end)."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


class _Barrier:
    """What an IOPub thread has been given and done: `schedule` numbers every callback handed
    to it (the thread runs them in that order), and `passed` is the number of the last one a
    flush saw run, so every callback up to it has run.

    The lock covers the numbering and the append to the thread's queue only, never the wake-up
    sent on the thread's event pipe: that send blocks while the pipe is full (zmq's high-water
    mark: thousands of flushes in a burst), until the IOPub thread reads it, and the IOPub
    thread schedules too (every message it sends goes through `schedule`). Holding the lock
    across the send deadlocked a cell printing 20 000 flushed lines."""

    def __init__(self, pub_thread: Any) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._thread = pub_thread
        self._schedule = pub_thread.schedule
        self.scheduled = 0
        self.passed = 0
        # Set by the kernel once an agent's cell has run (`forkshell.SandboxKernel`), until its
        # next request begins: the flushes that end such a request hand their output over
        # without waiting (see `SandboxOutStream.flush`).
        self.waitless = False
        # One wake-up at a time (`woken`): the IOPub thread runs queued callbacks until the
        # queue is empty (`_drain`), so a callback queued while a wake-up is on its way or
        # being handled needs none of its own. On once `_drain` replaces ipykernel's handler
        # (which runs only the callbacks queued before its wake-up), on the IOPub thread.
        self.coalesce = False
        self.woken = False
        pub_thread.schedule = self.schedule  # every iopub send and stream flush comes through
        puller = getattr(pub_thread, "_event_puller", None)
        if puller is not None and pub_thread.thread.is_alive():
            self._schedule(lambda: self._take_over(puller))

    def _take_over(self, puller: Any) -> None:
        """On the IOPub thread: wake-ups run `_drain` from now on."""
        puller.on_recv(self._drain)
        with self._lock:
            self.coalesce = True

    def _drain(self, msg: Any) -> None:
        """On the IOPub thread, for a wake-up: run callbacks until none is queued."""
        events = self._thread._events
        while True:
            with self._lock:
                if not events:
                    self.woken = False
                    return
                f = events.popleft()
            f()

    def schedule(self, f: Callable[[], Any]) -> int:
        """Hand `f` to the IOPub thread, as `IOPubThread.schedule` does; returns its number (0
        when it ran at once: in a forked child, which has no IOPub thread and may have been
        forked while the lock was held, when the thread is not running, or on the IOPub thread
        itself)."""
        thread = self._thread
        if os.getpid() != self._pid or not thread.thread.is_alive():
            self._schedule(f)
            return 0
        if thread.thread.ident == threading.get_ident():
            # The IOPub thread itself (a stream's `_flush` sending what it took): it owns the
            # socket, so the send happens now, in the order the flush ran, not after what was
            # queued meanwhile (an agent cell's idle status, queued by a flush that did not wait).
            f()
            return 0
        with self._lock:
            self.scheduled += 1
            n = self.scheduled
            thread._events.append(f)  # numbered in the order the thread runs them
            wake = not (self.coalesce and self.woken)
            self.woken = True
        if wake:
            thread._event_pipe.send(b"")  # wakes the thread (it runs every queued callback)
        return n

    def idle(self) -> bool:
        """Whether every callback handed over so far has run (as far as a flush saw)."""
        with self._lock:
            return self.passed >= self.scheduled

    def reached(self, n: int) -> None:
        with self._lock:
            self.passed = max(self.passed, n)


def _barrier(pub_thread: Any) -> _Barrier:
    barrier = getattr(pub_thread, "_rlm_barrier", None)
    if barrier is None:
        barrier = pub_thread._rlm_barrier = _Barrier(pub_thread)
    return barrier


def waitless(stream: Any, on: bool) -> None:
    """Whether flushes of `stream` (and of every stream of its IOPub thread) hand their
    output over without waiting for it to be sent; no-op for another kind of stream."""
    barrier = getattr(stream, "_iopub", None)
    if isinstance(barrier, _Barrier):
        barrier.waitless = on


class SandboxOutStream(OutStream):
    """`OutStream` whose `flush` takes the fd's pending output first, and returns at once when
    there is nothing to send and nothing the IOPub thread has not yet done."""

    _pipe_lock: threading.Lock

    def __init__(self, session: Any, pub_thread: Any, name: str, **kwargs: Any) -> None:
        super().__init__(session, pub_thread, name, **kwargs)  # type: ignore[no-untyped-call]
        self._iopub = _barrier(pub_thread)

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
        """Take the fd's pending output, then, as ipykernel's flush, hand the buffer to the
        IOPub thread and wait until it has sent it and everything handed over before: the
        barrier ipykernel relies on before a reply (so a cell's outputs come before its
        execute_reply). Skipped when nothing is buffered and the thread has done everything
        it was given since the last barrier: ipykernel flushes four times per request, and
        each barrier is a thread hop and a GIL hand-over."""
        lock = getattr(self, "_pipe_lock", None)
        # Only the kernel reads its redirect pipe (a forked child shares it, and may have been
        # forked while the lock was held).
        master = self._is_master_process()  # type: ignore[no-untyped-call]
        if lock is not None and master and self._watching():
            with lock:
                n = _available(self._fid) if self._fid is not None else 0
                if n:
                    self._move_from_pipe(n)
        with self._buffer_lock:
            pending = any(buf.tell() for buf in self._buffers.values())
        iopub = self._iopub
        nothing = not (pending or self._subprocess_flush_pending or self.echo is not None)
        if nothing and (iopub.waitless or iopub.idle()):
            return
        thread = self.pub_thread.thread if self.pub_thread is not None else None
        if thread is None or not thread.is_alive() or thread.ident == threading.get_ident():
            self._flush()  # type: ignore[no-untyped-call]
            return
        iopub.schedule(self._flush)
        if iopub.waitless:
            # An agent's cell has ended: its outputs only need to come before its idle status,
            # which goes through the same queue of the IOPub thread after them; its
            # execute_reply, which the barrier orders, is not what the host waits for.
            return
        done = threading.Event()
        n = iopub.schedule(done.set)
        if done.wait(self.flush_timeout):
            iopub.reached(n)
        else:
            print("IOStream.flush timed out", file=sys.__stderr__)
