"""Start the `rlm` kernel with jupyter_client and talk to it over the real protocol."""

from __future__ import annotations

import contextlib
import os
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager

__all__ = ["Cell", "RLMKernelProcess", "pid_alive"]


@dataclass
class Cell:
    """What one execute_request produced."""

    msg_id: str
    reply: dict[str, Any] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)  # iopub, minus status/input
    inputs: list[dict[str, Any]] = field(default_factory=list)  # execute_input contents

    @property
    def content(self) -> dict[str, Any]:
        """The execute_reply's content."""
        return dict(self.reply.get("content", {}))

    @property
    def stdout(self) -> str:
        """Everything the cell printed to stdout."""
        return "".join(
            m["content"]["text"]
            for m in self.outputs
            if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
        )

    def of_type(self, msg_type: str) -> list[dict[str, Any]]:
        """The contents of the output messages of one type."""
        return [m["content"] for m in self.outputs if m["msg_type"] == msg_type]


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


class RLMKernelProcess:
    """An `rlm` kernel started by jupyter_client with a private TMPDIR under `workdir`."""

    def __init__(self, workdir: Path, *extra_arguments: str, env: dict[str, str] | None = None):
        self.workdir = workdir
        self.tmpdir = workdir / "tmp"
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        kernel_env = {**os.environ, "TMPDIR": str(self.tmpdir), **(env or {})}
        self.km = KernelManager(kernel_name="rlm", transport="ipc", ip=str(workdir / "ipc"))
        self.km.start_kernel(
            env=kernel_env, extra_arguments=list(extra_arguments), cwd=str(workdir)
        )
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=60)
        except RuntimeError:
            self.shutdown()
            raise

    @property
    def sandbox_root(self) -> Path:
        """The kernel's `$TMPDIR/rlm-kernel-<uid>` (where its sandboxes live)."""
        return self.tmpdir / f"rlm-kernel-{os.getuid()}"

    def send(self, code: str, *, allow_stdin: bool = False, silent: bool = False) -> str:
        """Send an execute_request and return its msg_id."""
        msg_id: str = self.kc.execute(code, allow_stdin=allow_stdin, silent=silent)
        return msg_id

    def collect(self, msg_id: str, timeout: float = 60) -> Cell:
        """Gather a request's iopub messages until idle, then its reply."""
        cell = Cell(msg_id)
        deadline = time.monotonic() + timeout
        while True:
            msg = self.kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status":
                if msg["content"]["execution_state"] == "idle":
                    break
            elif msg["msg_type"] == "execute_input":
                cell.inputs.append(msg["content"])
            else:
                cell.outputs.append(msg)
        while True:
            reply = self.kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                cell.reply = reply
                return cell

    def execute(self, code: str, timeout: float = 60) -> Cell:
        """Run a cell and return everything it produced."""
        return self.collect(self.send(code), timeout)

    def request(self, msg_type: str, timeout: float = 60, **content: Any) -> dict[str, Any]:
        """Send a shell request (complete, inspect, …) and return its reply's content."""
        msg = self.kc.session.msg(msg_type, content)
        self.kc.shell_channel.send(msg)
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self.kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no {msg_type} reply within {timeout} s") from None
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                return dict(reply["content"])

    def sandbox_pid(self) -> int:
        """The pid (on this host) of the Python process that runs ordinary cells."""
        pid, cwd = self.execute("import os; print(os.getpid(), os.getcwd())").stdout.split()
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/cwd") == cwd:
                return int(pid)
        # A bwrap sandbox has its own PID namespace: find its kernel by its working directory.
        for entry in os.listdir("/proc"):
            with contextlib.suppress(OSError):
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
                if (
                    entry.isdigit()
                    and comm == "rlm-kernel"
                    and os.readlink(f"/proc/{entry}/cwd") == cwd
                ):
                    return int(entry)
        raise AssertionError(f"no kernel process works in {cwd}")

    def shutdown(self) -> None:
        """Ask the kernel to shut down (as a frontend does) and wait for its process to end."""
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)
