"""Tests for rlm_kernel.sandbox.kernels: both launchers, lifecycle, clean-up, parallel start."""

from __future__ import annotations

import gc
import json
import logging
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm_kernel.sandbox import forkclient, isolation, kernels
from rlm_kernel.sandbox.kernels import KernelHandle, live_kernel_pids, shutdown_all, start_kernel

from .helpers import no_leftover_kernels  # noqa: F401 (an autouse fixture)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX kernels only")

LAUNCHERS = ["fork", "subprocess"]
SECRET = "sk-host-secret-do-not-leak"

Starter = Callable[..., KernelHandle]


# -- helpers -----------------------------------------------------------------------------------
def kernel_env(**extra: str) -> dict[str, str]:
    """A scrubbed kernel environment, as the engine would build it."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": os.environ.get("HOME", "/tmp")}
    env.update(extra)
    return env


def run(handle: KernelHandle, code: str, timeout: float = 20.0) -> tuple[dict[str, Any], str]:
    """Execute code; return the execute_reply content and the cell's stdout."""
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])

    reply = handle.client.execute_interactive(
        code, timeout=timeout, output_hook=hook, allow_stdin=False
    )
    return reply["content"], "".join(out)


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rfind(")") + 2 :].split()


def gone(pid: int) -> bool:
    """Whether pid no longer runs (absent, or a zombie waiting for its reaper)."""
    st = proc_stat(pid)
    return st is None or st[0] in ("Z", "X")


def wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    """Poll pred every 10 ms until it holds or timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def files_under(path: Path) -> list[str]:
    """Every file and directory below path (relative names)."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Starter]:
    """start_kernel with a per-test runtime dir; shuts the test's kernels down afterwards."""
    started: list[KernelHandle] = []
    workdir = tmp_path / "work"
    workdir.mkdir()

    def _start(launcher: str, **kw: Any) -> KernelHandle:
        kw.setdefault("runtime_dir", str(tmp_path / "rt"))
        cwd = kw.pop("cwd", str(workdir))
        env = kw.pop("env", kernel_env())
        handle = start_kernel(cwd, env, launcher=launcher, **kw)
        started.append(handle)
        return handle

    yield _start
    for h in started:
        h.shutdown()


# -- tests -------------------------------------------------------------------------------------
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_cwd_env_and_no_host_secrets(
    launcher: str, start: Starter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutdown_all()  # a fresh fork server, started while the host has the secret
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    h = start(launcher, env=kernel_env(MARKER="m-123"))
    assert h.launcher == launcher
    assert h.is_alive()
    content, out = run(
        h,
        'import os; print(os.getcwd(), os.environ.get("MARKER"), os.environ.get("OPENAI_API_KEY"))',
    )
    assert content["status"] == "ok", content
    assert out.split() == [str(tmp_path / "work"), "m-123", "None"]
    assert Path(h.connection_file).is_file()
    # the kernel's own stdout/stderr go to its log, not to the host's terminal
    content, _ = run(h, "import sys; print('log-marker', file=sys.__stderr__, flush=True)")
    assert content["status"] == "ok"
    assert wait_until(lambda: "log-marker" in Path(h.log_path).read_text(), 2.0)
    if launcher == "fork":
        zygote = int(proc_stat(h.pid)[1])  # type: ignore[index]  # ppid
        assert b"forkserver" in Path(f"/proc/{zygote}/cmdline").read_bytes()
        environ = Path(f"/proc/{zygote}/environ").read_bytes()
        assert b"OPENAI_API_KEY" not in environ
        assert SECRET.encode() not in environ
        assert SECRET.encode() not in Path(f"/proc/{h.pid}/environ").read_bytes()


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_history_stays_in_memory(launcher: str, start: Starter) -> None:
    """Dozens of kernels must not share (and corrupt) the user's ~/.ipython history.sqlite."""
    h = start(launcher)
    content, out = run(h, "x = 1")
    content, out = run(h, "print(get_ipython().history_manager.hist_file)")
    assert content["status"] == "ok", content
    assert out.strip() == ":memory:"


def test_forked_kernels_read_their_fixed_argv_without_traitlets_parser() -> None:
    """The forked kernels' app reads `-f FILE --Class.trait=value` itself (traitlets' parser
    touches every configurable class: memory copied out of the zygote); anything else falls back."""
    from traitlets.config import Config
    from traitlets.config.loader import DeferredConfigString

    from rlm_kernel.sandbox.forkchild import KERNEL_OPTIONS, _fixed_argv_config

    cfg = _fixed_argv_config(["-f", "/k.json", *KERNEL_OPTIONS], Config, DeferredConfigString)
    assert cfg is not None
    assert cfg.IPKernelApp.connection_file == "/k.json"
    assert cfg.HistoryManager.hist_file == ":memory:"
    assert cfg.IPythonKernel._execute_sleep == "0"  # converted by the trait, as from a command line
    for other in (["--debug"], ["-f"], ["--A.b"], ["--A.b.c=1"], ["x"], ["--A=1"], ["--1.b=2"]):
        assert _fixed_argv_config(other, Config, DeferredConfigString) is None, other


def test_forked_kernel_has_no_debugger_but_agents_can_import_debugpy(start: Starter) -> None:
    """Nothing ever sends a sandbox kernel a debug request: the zygote imports ipykernel without
    debugpy (no Debugger per kernel), and debugpy stays importable by an agent's code."""
    h = start("fork")
    content, out = run(
        h,
        "import ipykernel.debugger as d, sys\n"
        "k = get_ipython().kernel\n"
        "print(d._is_debugpy_available, 'debugpy' in sys.modules, k._execute_sleep)\n"
        "import debugpy\n"
        "print(debugpy.__name__)",
    )
    assert content["status"] == "ok", content
    assert out.split() == ["False", "False", "0.0", "debugpy"]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_interrupt_busy_loop(launcher: str, start: Starter) -> None:
    h = start(launcher)
    kc = h.client
    # stop_on_error=False: otherwise ipykernel may abort the next request too ("aborted")
    msg_id = kc.execute("while True: pass", stop_on_error=False)
    deadline = time.monotonic() + 10
    while True:  # wait until the cell runs
        msg = kc.iopub_channel.get_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_input":
            break
    time.sleep(0.05)
    t0 = time.monotonic()
    h.interrupt()
    while True:  # the loop never ends by itself: 30 s is a hang guard (it takes milliseconds)
        left = 30.0 - (time.monotonic() - t0)
        try:
            reply = kc.shell_channel.get_msg(timeout=max(left, 0.01))
        except queue.Empty:
            pytest.fail("no execute_reply within 30 s of the interrupt")
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    # the kernel survives and keeps its namespace
    content, out = run(h, "x = 41; print(x + 1)")
    assert content["status"] == "ok" and out.strip() == "42"


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_is_alive_false_after_os_exit(launcher: str, start: Starter) -> None:
    h = start(launcher)
    assert h.is_alive()
    h.client.execute("import os; os._exit(1)")
    t0 = time.monotonic()
    assert wait_until(lambda: not h.is_alive(), 1.0), "is_alive() still true 1 s after os._exit"
    print(f"\n[{launcher}] is_alive() false after {time.monotonic() - t0:.3f} s")
    assert h.pid not in live_kernel_pids()


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_restart_gives_fresh_namespace(launcher: str, start: Starter) -> None:
    h = start(launcher)
    content, _ = run(h, "secret_value = 17")
    assert content["status"] == "ok"
    old_pid, old_client, old_cf = h.pid, h.client, h.connection_file
    h.restart()
    assert h.pid != old_pid and gone(old_pid)
    assert h.client is not old_client
    assert not Path(old_cf).exists()
    assert h.is_alive()
    assert h.pid in live_kernel_pids() and old_pid not in live_kernel_pids()
    content, out = run(h, "print('secret_value' in globals()); import os; print(os.getcwd())")
    assert content["status"] == "ok"
    assert out.split() == ["False", h.cwd]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_shutdown_kills_process_group_and_removes_files(
    launcher: str, start: Starter, tmp_path: Path
) -> None:
    rt = tmp_path / "rt"
    h = start(launcher, runtime_dir=str(rt))
    content, out = run(h, 'import subprocess; p = subprocess.Popen(["sleep", "60"]); print(p.pid)')
    assert content["status"] == "ok", content
    child = int(out.strip())
    assert not gone(child)
    assert int(proc_stat(child)[2]) == h.pid  # type: ignore[index]  # pgrp = the kernel's group
    pid = h.pid
    h.shutdown()
    h.shutdown()  # idempotent
    assert not h.is_alive()
    assert gone(pid)
    assert wait_until(lambda: gone(child), 1.0), "the kernel's subprocess survived shutdown"
    assert pid not in live_kernel_pids()
    assert live_kernel_pids() == []
    # only the log is kept
    assert files_under(rt) == [Path(h.log_path).name]
    assert not Path(h.connection_file).exists()


def test_shutdown_is_thread_safe(start: Starter) -> None:
    h = start("fork")
    errors: list[BaseException] = []

    def stop() -> None:
        try:
            h.shutdown(timeout=1.0)
        except BaseException as exc:  # pragma: no cover - shutdown never raises
            errors.append(exc)

    threads = [threading.Thread(target=stop) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert not h.is_alive() and gone(h.pid)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_twelve_kernels_in_parallel(launcher: str, start: Starter, tmp_path: Path) -> None:
    if launcher == "fork":
        shutdown_all()  # cold: the threads race to start the fork server (started once)
    handles: list[KernelHandle] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            h = start(launcher, runtime_dir=str(tmp_path / "rt"), env=kernel_env(N=str(i)))
            with lock:
                handles.append(h)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    print(f"\n[{launcher}] 12 kernels ready in {wall:.2f} s")
    assert errors == []
    assert len(handles) == 12
    assert {h.launcher for h in handles} == {launcher}
    if launcher == "fork":
        assert len({int(proc_stat(h.pid)[1]) for h in handles}) == 1  # type: ignore[index]
    assert len({h.pid for h in handles}) == 12
    assert len({h.connection_file for h in handles}) == 12
    assert sorted(h.pid for h in handles) == live_kernel_pids()
    seen = []
    for h in handles:
        content, out = run(h, 'import os; print(os.environ["N"])')
        assert content["status"] == "ok"
        seen.append(out.strip())
    assert sorted(seen) == sorted(str(i) for i in range(12))
    # A hang guard (12 starts take about a second; a loaded machine stretches that); how fast
    # they are, alone and 12 at once, is bench/bench_kernels.py's.
    assert wall < 120


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_long_runtime_dir(launcher: str, start: Starter, tmp_path: Path) -> None:
    rt = tmp_path / ("r" * 60) / ("t" * 60)
    assert len(str(rt)) > 100
    h = start(launcher, runtime_dir=str(rt))
    assert Path(h.connection_file).parent.parent == rt
    info = json.loads(Path(h.connection_file).read_text())
    ipc_dir = Path(info["ip"]).parent
    assert info["transport"] == "ipc"
    assert ipc_dir.parent == Path("/tmp") and ipc_dir.name.startswith("rlm-k")
    assert len(f"{info['ip']}-{info['control_port']}") < 100
    content, out = run(h, "print('hello')")
    assert content["status"] == "ok" and out == "hello\n"
    h.shutdown()
    assert not ipc_dir.exists()
    assert files_under(rt) == [Path(h.log_path).name]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_missing_cwd_is_a_start_error(launcher: str, start: Starter, tmp_path: Path) -> None:
    with pytest.raises(kernels.KernelStartError) as info:
        start(launcher, cwd=str(tmp_path / "missing"))
    assert "missing" in str(info.value)
    assert live_kernel_pids() == []
    assert [f for f in files_under(tmp_path / "rt") if not f.endswith(".log")] == []


def test_forked_kernel_crash_during_startup_is_reported(
    start: Starter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ipdir = tmp_path / "ipython"
    (ipdir / "profile_default").mkdir(parents=True)
    (ipdir / "profile_default" / "ipython_kernel_config.py").write_text(
        "raise SystemExit('boom from kernel config')\n"
    )
    with pytest.raises(kernels.KernelStartError) as info:
        start("fork", env=kernel_env(IPYTHONDIR=str(ipdir)), ready_timeout=10)
    msg = str(info.value)
    assert "did not become ready" in msg
    assert "launcher=fork" in msg
    assert live_kernel_pids() == []


def test_launcher_env_override_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLM_KERNEL_LAUNCHER", "subprocess")
    assert kernels._resolve_launcher(None) == "subprocess"
    assert kernels._resolve_launcher("fork") == "fork"
    monkeypatch.delenv("RLM_KERNEL_LAUNCHER")
    assert kernels._resolve_launcher(None) == "fork"
    with pytest.raises(ValueError):
        kernels._resolve_launcher("docker")


def test_fork_server_eof_stops_its_kernels(start: Starter) -> None:
    h = start("fork")
    server = forkclient._server
    assert server is not None
    zygote = server.pid
    assert int(proc_stat(h.pid)[1]) == zygote  # type: ignore[index]  # the kernel's parent
    kernels._stop_fork_server()  # EOF on the zygote's socket, as when the host dies
    assert gone(zygote)
    assert wait_until(lambda: not h.is_alive(), 1.0)
    h.shutdown()  # still fine
    assert live_kernel_pids() == []


def test_kernels_outlive_a_killed_zygote(start: Starter) -> None:
    # Agent code can kill the fork server (os.kill(os.getppid(), 9) from any kernel): the other
    # kernels must live on, and the next start brings up a new fork server.
    h = start("fork")
    server = forkclient._server
    assert server is not None
    content, _ = run(h, "import os; os.kill(os.getppid(), 9)")
    assert content["status"] == "ok"
    assert wait_until(lambda: gone(server.pid), 5.0)
    time.sleep(1.5)  # ipykernel's parent poller would have stopped the kernel by now
    assert h.is_alive()
    content, out = run(h, "print(6 * 7)")
    assert content["status"] == "ok" and out == "42\n"
    h2 = start("fork")
    assert h2.is_alive() and forkclient._server is not None and forkclient._server.pid != server.pid
    content, out = run(h2, "print(1 + 1)")
    assert content["status"] == "ok" and out == "2\n"


HOST = """
import os, sys, time
from rlm_kernel.sandbox.kernels import start_kernel
h = start_kernel(sys.argv[1], {"PATH": os.environ["PATH"]}, runtime_dir=sys.argv[2])
h.client.execute("import subprocess; p = subprocess.Popen(['sleep', '60']); print(p.pid)")
print(h.pid, flush=True)
time.sleep(60)
"""


def test_kernels_die_with_their_host(tmp_path: Path) -> None:
    # The lifeline: when the host process is SIGKILLed, every kernel it started (and what they
    # started) goes, even though the kernels' parent is the fork server.
    proc = subprocess.Popen(
        [sys.executable, "-c", HOST, str(tmp_path), str(tmp_path / "rt")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        kernel_pid = int(proc.stdout.readline())
        assert not gone(kernel_pid)

        def children() -> list[int]:
            path = Path(f"/proc/{kernel_pid}/task/{kernel_pid}/children")
            return [int(p) for p in path.read_text().split()]

        assert wait_until(lambda: bool(children()), 10.0), "the kernel's subprocess did not start"
        pids = [kernel_pid, *children()]
        proc.kill()
        proc.wait()
        assert wait_until(lambda: all(gone(p) for p in pids), 5.0), "a kernel outlived its host"
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_fallback_to_subprocess_when_fork_server_cannot_start(
    start: Starter, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    shutdown_all()
    monkeypatch.setattr(forkclient, "_FORKSERVER_MODULE", "rlm_kernel.sandbox.no_such_module")
    with caplog.at_level(logging.WARNING, logger="rlm_kernel.sandbox"):
        h1 = start("fork")
        h2 = start("fork")
    assert h1.launcher == h2.launcher == "subprocess"
    content, out = run(h1, "print('still works')")
    assert content["status"] == "ok" and out == "still works\n"
    fallbacks = [r for r in caplog.records if "falling back" in r.getMessage()]
    assert len(fallbacks) == 1, caplog.text
    assert "no_such_module" in caplog.text  # the fork server's stderr is logged too
    shutdown_all()  # the next fork launch tries the fork server again


def test_client_calls_from_worker_threads_leave_no_event_loops(start: Starter) -> None:
    h = start("fork")
    results: list[str] = []

    def work() -> None:
        _, out = run(h, "print('from a thread')")
        results.append(out)
        with pytest.raises(queue.Empty):
            h.client.get_iopub_msg(timeout=0)  # the cell's messages were all consumed
        with pytest.raises(queue.Empty):
            h.client.get_shell_msg(timeout=0)

    for _ in range(3):  # one thread at a time: a client's zmq sockets are not thread-safe
        t = threading.Thread(target=work)
        t.start()
        t.join()
    gc.collect()  # an unclosed loop would now be reported (warnings are errors)
    assert results == ["from a thread\n"] * 3


# -- start-up deadlines ------------------------------------------------------------------------
# Fork servers whose forked children hang or die: a `sitecustomize` on PYTHONPATH (which the host
# passes to its fork servers) registers an at-fork hook that runs in every child a fork server
# forks, before the child can become a kernel: a set-up that never reports or dies without a word
# (bwrap tier), a kernel that never binds its sockets (unconfined). Nothing of rlm_kernel is
# replaced.
HANG_AFTER_FORK = """\
import os, time

def _hang():
    os.setsid()  # its own process group, as a kernel's
    time.sleep(600)

os.register_at_fork(after_in_child=_hang)
"""
DIE_AFTER_FORK = """\
import os

os.register_at_fork(after_in_child=lambda: os._exit(3))
"""


@pytest.fixture
def fork_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """fork_hook(code): fork servers started from now on run `code` as their sitecustomize."""

    def install(code: str) -> None:
        hook = tmp_path / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(code)
        shutdown_all()  # the next start brings up a fork server with the hook
        monkeypatch.setenv("PYTHONPATH", str(hook))

    yield install
    shutdown_all()  # stops the hooked fork servers and the children they parked
    monkeypatch.delenv("PYTHONPATH", raising=False)


def require_bwrap() -> None:
    why = isolation.probe()
    if why is not None:
        if os.environ.get("CI") and isolation.bwrap_path():
            pytest.fail(
                f"CI is set and bwrap is installed, but the bwrap tier does not work: {why}"
            )
        pytest.skip(f"the bwrap tier cannot run here: {why}")


BWRAP = isolation.Isolation("bwrap")


def test_a_confined_kernel_whose_set_up_hangs_gives_a_clear_error(
    start: Starter, fork_hook: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    require_bwrap()
    fork_hook(HANG_AFTER_FORK)
    forkclient._get_confined_server(time.monotonic() + 120, 120, BWRAP)  # up, however loaded
    monkeypatch.setenv(kernels.START_TIMEOUT_ENV, "8")
    t0 = time.monotonic()
    with pytest.raises(kernels.KernelStartError) as info:
        start("fork", isolation=BWRAP)
    took = time.monotonic() - t0
    msg = str(info.value)
    # The fork server's own wait gave up first (at 8 s - 2 s margin) and says which step hung;
    # the host's waits (8 s) came after; the message says what to do.
    assert re.search(
        r"^the fork server could not start the kernel: the kernel's set-up \(its namespaces and "
        r"mounts\) did not finish within 6 s; the kernel start-up budget is 8 s; a loaded "
        rf"machine may need more: set {kernels.START_TIMEOUT_ENV}=<seconds> ",
        msg,
    ), msg
    assert took >= 5.9, took  # it waited for the set-up, not less
    assert live_kernel_pids() == []
    # The hung set-up was killed by its fork server (no process parked in a PID namespace).
    server = forkclient._confined[BWRAP.key]
    assert wait_until(lambda: _children_of(server.pid) == [], 10.0), _children_of(server.pid)


def test_a_confined_set_up_that_dies_is_reported_at_once(
    start: Starter, fork_hook: Callable[[str], None]
) -> None:
    require_bwrap()
    fork_hook(DIE_AFTER_FORK)
    t0 = time.monotonic()
    with pytest.raises(kernels.KernelStartError) as info:
        start("fork", isolation=BWRAP, ready_timeout=120)
    took = time.monotonic() - t0
    assert "the kernel's set-up ended without reporting (its process exited" in str(info.value)
    # Not after a wait for the deadline. (Was: its report socket was a datagram pair, which
    # never tells that the other end closed; the fork server waited its whole timeout.)
    assert took < 60, took
    assert live_kernel_pids() == []


def test_a_kernel_that_never_binds_its_sockets_gives_a_clear_error(
    start: Starter, fork_hook: Callable[[str], None]
) -> None:
    fork_hook(HANG_AFTER_FORK)
    assert forkclient._get_fork_server(time.monotonic() + 120, 120) is not None
    with pytest.raises(kernels.KernelStartError) as info:
        start("fork", ready_timeout=3)
    msg = str(info.value)
    assert re.search(
        r"^kernel pid \d+ did not become ready: it did not bind its sockets in time; the kernel "
        rf"start-up budget is 3 s; a loaded machine may need more: set "
        rf"{kernels.START_TIMEOUT_ENV}=<seconds> .*\[launcher=fork, ",
        msg,
    ), msg
    assert live_kernel_pids() == []
    server = forkclient._server
    assert server is not None and _children_of(server.pid) == []


def _children_of(pid: int) -> list[int]:
    """The live (not zombie) child processes of pid."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(k) for k in kids if not gone(int(k))]


@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf", "nan"])
def test_a_bad_start_timeout_is_a_clear_error(
    value: str, start: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(kernels.START_TIMEOUT_ENV, value)
    with pytest.raises(kernels.KernelStartError) as info:
        start("fork")
    assert str(info.value) == (
        f"${kernels.START_TIMEOUT_ENV} must be a number of seconds > 0 (how long a sandbox "
        f"kernel may take to start; default 120), got {value!r}"
    )
    assert live_kernel_pids() == []


def test_the_lifeline_can_already_be_on_its_descriptor() -> None:
    """A fork server whose lifeline pipe got descriptor 3 (LIFELINE_FD) made every kernel's set-up
    fail with EINVAL (dup2 without inheritance is dup3, which refuses equal descriptors)."""
    import subprocess
    import sys

    code = (
        "import os\n"
        "from rlm_kernel.sandbox.forkchild import move_fd\n"
        "r, w = os.pipe()\n"
        "if r != 3:\n"
        "    os.dup2(r, 3); os.close(r); r = 3\n"
        "os.set_inheritable(3, True)\n"
        "move_fd(3, 3)\n"
        "assert not os.get_inheritable(3)\n"
        "os.write(w, b'x'); assert os.read(3, 1) == b'x'\n"
        "r2, w2 = os.pipe()\n"
        "move_fd(r2, 3)\n"
        "assert not os.get_inheritable(3)\n"
        "os.write(w2, b'y'); assert os.read(3, 1) == b'y'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def _runtime_cfg(tmp_path: Path) -> dict[str, Any]:
    bridge = tmp_path / "bridge"
    bridge.mkdir(exist_ok=True)
    return {"secret": "s3cret-of-this-sandbox", "bridge_dir": str(bridge)}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_forked_kernel_installs_the_runtime_at_start_up(
    launcher: str, start: Starter, tmp_path: Path
) -> None:
    """One execute request less per sandbox: a forked kernel installs the agent runtime from the
    file it was given before it answers anything, and removes the file (the handle says so). The
    subprocess launcher leaves it to the caller; a restarted kernel starts without it."""
    cfg_file = tmp_path / "bridge" / ".runtime.json"
    cfg_file.parent.mkdir()
    cfg_file.write_text(json.dumps(_runtime_cfg(tmp_path)))
    h = start(launcher, runtime_file=str(cfg_file))
    installed = launcher == "fork"
    assert h.runtime_installed is installed
    assert cfg_file.exists() is not installed
    content, out = run(h, "print('__rlm__' in globals(), callable(globals().get('FINAL')))")
    assert content["status"] == "ok", content
    assert out.split() == [str(installed)] * 2
    h.restart()
    assert h.runtime_installed is False
    content, out = run(h, "print('__rlm__' in globals())")
    assert out.split() == ["False"]


def test_a_runtime_file_that_is_not_a_plain_file_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel reads its runtime configuration only from a regular file of its own user:
    never through a link (or a FIFO) planted in the sandbox's bridge directory; nothing is
    installed and the file is left for the host, which installs by an execute request."""
    from rlm_kernel.sandbox.forkchild import install_runtime

    # The runtime installed into a plain dict (here, in the test process) sets MPLBACKEND when
    # it is unset: restored afterwards, so that later kernels of this process get the default.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    real = tmp_path / "real.json"
    real.write_text(json.dumps(_runtime_cfg(tmp_path)))
    link = tmp_path / "link.json"
    link.symlink_to(real)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    for path in (link, fifo, tmp_path / "missing.json"):
        ns: dict[str, Any] = {}
        assert install_runtime(ns, str(path)) is False
        assert "__rlm__" not in ns
    assert link.is_symlink() and real.exists()
    broken = tmp_path / "broken.json"
    broken.write_text("[1, 2]")
    assert install_runtime({}, str(broken)) is False and broken.exists()
    ns = {}
    assert install_runtime(ns, str(real)) is True
    assert "__rlm__" in ns and not real.exists()


def test_a_forked_kernel_whose_runtime_file_is_bad_still_starts(
    start: Starter, tmp_path: Path
) -> None:
    """A runtime file the kernel cannot use leaves the kernel serving, without the runtime, and
    says why in its log; the caller installs the runtime by an execute request instead."""
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    h = start("fork", runtime_file=str(bad))
    assert h.runtime_installed is False and bad.exists()
    content, out = run(h, "print('__rlm__' in globals())")
    assert content["status"] == "ok" and out.split() == ["False"]
    assert wait_until(
        lambda: "could not install the agent runtime" in Path(h.log_path).read_text(), 2.0
    )
