"""The fork server's prebuilt IPython shell: every forked kernel adopts a pristine copy of it, with
its own kernel, directories, environment and history, and nothing of another kernel."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm_kernel.sandbox.kernels import KernelHandle, start_kernel

from .helpers import no_leftover_kernels  # noqa: F401 (an autouse fixture)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX kernels only")

Starter = Callable[..., KernelHandle]


def run(handle: KernelHandle, code: str) -> str:
    """Execute `code`; return its stdout (the cell must succeed)."""
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])

    reply = handle.client.execute_interactive(code, timeout=30, output_hook=hook)
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(out)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Starter]:
    """Start forked kernels in their own directory, HOME and TMPDIR (as sandboxes are)."""
    started: list[KernelHandle] = []

    def _start(name: str, **kw: Any) -> KernelHandle:
        base = tmp_path / name
        for sub in ("work", "home", "tmp"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(base / "home"),
            "TMPDIR": str(base / "tmp"),
            "TERM": "dumb",
        }
        kw.setdefault("launcher", "fork")
        h = start_kernel(str(base / "work"), env, runtime_dir=str(base / "rt"), **kw)
        started.append(h)
        return h

    yield _start
    for h in started:
        h.shutdown()


STATE = """
import json, os, sys, tempfile, __main__
ip = get_ipython()
k = ip.kernel
print(json.dumps({
    "shell": type(ip).__name__,
    "prebuilt": ip.prebuilt,
    "kernel_is_mine": k is not None and k.shell is ip and ip.parent is k,
    "cwd": os.getcwd(),
    "starting_dir": ip.starting_dir,
    "dh": [str(d) for d in ip.user_ns["_dh"]],
    "ipython_dir": str(ip.ipython_dir),
    "profile": str(ip.profile_dir.location),
    "tmp": tempfile.gettempdir(),
    "hist_file": ip.history_manager.hist_file,
    "in_is_history": ip.user_ns["In"] is ip.history_manager.input_hist_parsed,
    "main_is_user_ns": __main__.__dict__ is ip.user_ns,
    "term": os.environ.get("TERM"),
    "pager": os.environ.get("PAGER"),
    "stdout_restored_at_exit": ip._orig_sys_module_state["stdout"] is sys.stdout,
    "atexit": ip.atexit_operations.__func__ is type(ip).atexit_operations,
}))
"""


def test_a_forked_kernel_adopts_the_prebuilt_shell_as_its_own(start: Starter) -> None:
    h = start("a")
    base = Path(h.cwd).parent
    run(h, "x = 1")
    state = json.loads(run(h, STATE))
    assert state == {
        "shell": "SandboxShell",
        "prebuilt": True,
        "kernel_is_mine": True,
        "cwd": h.cwd,
        "starting_dir": h.cwd,
        "dh": [h.cwd],
        "ipython_dir": str(base / "home" / ".ipython"),
        "profile": str(base / "home" / ".ipython" / "profile_default"),
        "tmp": str(base / "tmp"),
        "hist_file": ":memory:",
        "in_is_history": True,
        "main_is_user_ns": True,
        "term": "xterm-color",  # what ipykernel's shell sets in every kernel
        "pager": "cat",
        "stdout_restored_at_exit": True,
        "atexit": True,
    }
    # no heartbeat thread (nobody pings a sandbox kernel); the threads that serve it are there
    names = run(h, "import threading; print(*(t.name for t in threading.enumerate()), sep='|')")
    assert {"Control", "IOPub", "Shell channel", "rlm-lifeline"} <= set(names.strip().split("|"))
    assert "Heartbeat" not in names
    # history, execution count, %who: as in any kernel
    out = run(h, "y = 2\n%who int\nprint(In[1], len(In), get_ipython().execution_count)")
    assert out.split() == ["x", "y", "x", "=", "1", "5", "5"]


def test_nothing_of_one_kernel_reaches_the_next(start: Starter) -> None:
    """Kernel A changes everything it can reach of its shell (namespace, builtins, magics,
    events, formatters, history, configuration, modules); a kernel started after it, from the same
    fork server, has a pristine shell."""
    a = start("a")
    run(
        a,
        "import builtins, json\n"
        "secret_of_a = 'a-secret'\n"
        "builtins.leak = 1\n"
        "ip = get_ipython()\n"
        "ip.register_magic_function(lambda line: line, 'line', 'leaky')\n"
        "ip.events.register('post_run_cell', lambda result: None)\n"
        "ip.display_formatter.formatters['text/plain'].for_type_by_name('m', 'Leaky', print)\n"
        "ip.colors = 'nocolor'\n"
        "ip.ast_node_interactivity = 'all'\n"
        "ip.user_ns_hidden['hidden_of_a'] = 1\n"
        "import sys; sys.modules['leaky_module'] = json\n",
    )
    b = start("b")
    out = run(
        b,
        "import builtins, sys, json\n"
        "ip = get_ipython()\n"
        "print(json.dumps([\n"
        "    'secret_of_a' in globals(), hasattr(builtins, 'leak'),\n"
        "    'leaky' in ip.magics_manager.magics['line'],\n"
        "    len(ip.events.callbacks['post_run_cell']),\n"
        "    ('m', 'Leaky') in ip.display_formatter.formatters['text/plain'].deferred_printers,\n"
        "    ip.colors, ip.ast_node_interactivity, 'hidden_of_a' in ip.user_ns_hidden,\n"
        "    'leaky_module' in sys.modules, len(ip.history_manager.input_hist_parsed),\n"
        "]))",
    )
    fresh = json.loads(out)
    assert fresh[:3] == [False, False, False]
    assert fresh[4:] == [False, "neutral", "last_expr", False, False, 2]
    callbacks = json.loads(run(a, "print(len(get_ipython().events.callbacks['post_run_cell']))"))
    assert fresh[3] == callbacks - 1  # a's extra callback only in a


def test_a_kernel_with_a_config_file_builds_its_own_shell(start: Starter, tmp_path: Path) -> None:
    """The prebuilt shell has the kernels' fixed configuration: a kernel that loads a config
    file (the user's, unconfined) drops it and builds its shell with that configuration."""
    profile = tmp_path / "c" / "home" / ".ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text(
        "c.InteractiveShell.ast_node_interactivity = 'all'\n"
    )
    h = start("c")
    out = run(h, "ip = get_ipython()\nprint(ip.prebuilt, ip.ast_node_interactivity)")
    assert out.split() == ["False", "all"]
    assert json.loads(run(h, STATE))["kernel_is_mine"] is True


def test_top_level_await_still_runs_and_other_cells_skip_the_async_check(start: Starter) -> None:
    """The shell skips IPython's second compile of a cell (to look for a top-level `await`) when
    the cell never says `await` or `async`; cells that do still run on the coroutine runner."""
    h = start("aw")
    assert run(h, "import asyncio\nawait asyncio.sleep(0)\nprint('awaited')") == "awaited\n"
    assert run(h, "async def f():\n    return 41\nprint(await f() + 1)") == "42\n"
    assert run(h, "print('async' + 'await')") == "asyncawait\n"  # words only: checked, not async
    got = json.loads(
        run(
            h,
            "import json; ip = get_ipython()\n"
            "print(json.dumps([ip.should_run_async('x = 1', transformed_cell='x = 1\\n'),"
            " ip.should_run_async('await f()', transformed_cell='await f()\\n')]))",
        )
    )
    assert got == [False, True]


def test_execute_requests_ask_for_run_cells_signature_once(start: Starter) -> None:
    """ipykernel checks `run_cell_async`'s parameters on every execute request; the sandbox
    kernel remembers the answer per function, the same answer ipykernel gives."""
    h = start("sig")
    code = (
        "import json, inspect\n"
        "from ipykernel import ipkernel, kernelbase\n"
        "ip = get_ipython()\n"
        "mine = ipkernel._accepts_parameters(ip.run_cell_async, ['cell_id', 'cell_meta'])\n"
        "theirs = kernelbase._accepts_parameters(ip.run_cell_async, ['cell_id', 'cell_meta'])\n"
        "print(json.dumps([mine == theirs, ipkernel._accepts_parameters is not "
        "kernelbase._accepts_parameters, mine]))"
    )
    assert json.loads(run(h, code)) == [True, True, {"cell_id": True, "cell_meta": True}]


def _iopub_of(handle: KernelHandle, code: str, cell_id: str | None) -> list[tuple[str, Any]]:
    """Send `code` as an execute_request (with `cell_id` as the cellId the host sets for an
    agent's cell); its iopub messages up to its idle status, as (type, content)."""
    kc = handle.client
    meta = {"cellId": cell_id} if cell_id is not None else {}
    msg = kc.session.msg(
        "execute_request",
        {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": False,
        },
        metadata=meta,
    )
    kc.shell_channel.send(msg)
    seen: list[tuple[str, Any]] = []
    while True:
        m = kc.get_iopub_msg(timeout=30)
        if m["parent_header"].get("msg_id") != msg["header"]["msg_id"]:
            continue
        seen.append((m["msg_type"], m["content"]))
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            break
    reply = kc.get_shell_msg(timeout=30)
    assert reply["parent_header"]["msg_id"] == msg["header"]["msg_id"]
    assert reply["content"]["status"] == "ok", reply["content"]
    return seen


def test_agent_cells_publish_their_outputs_before_idle_and_no_input_or_busy(
    start: Starter,
) -> None:
    """An agent's cell (the host's cellId) publishes neither execute_input nor its busy status
    and its end-of-cell flushes do not wait for the IOPub thread; all its outputs (printed,
    written to fd 1, displayed) still come before its idle status, cell after cell. A request
    of anyone else (the notebook, a console) gets ipykernel's messages."""
    h = start("agent")
    code = (
        "import os, sys\nprint('a' * 5000)\nsys.stderr.write('err\\n')\n"
        "display({'text/plain': 'shown'}, raw=True)\nos.write(1, b'fd\\n')\nprint('last')"
    )
    for i in range(30):
        seen = _iopub_of(h, code, f"__rlm__:e{i}:1")
        kinds = [k for k, _ in seen]
        assert "execute_input" not in kinds and kinds.count("status") == 1, kinds
        out = "".join(c["text"] for k, c in seen if k == "stream" and c["name"] == "stdout")
        err = "".join(c["text"] for k, c in seen if k == "stream" and c["name"] == "stderr")
        # (fd output and Python's are not ordered with each other, as in ipykernel)
        head, rest = out[:5001], out[5001:]
        assert head == "a" * 5000 + "\n" and rest.replace("fd\n", "", 1) == "last\n", (i, rest)
        assert err == "err\n" and "display_data" in kinds, (i, kinds)
    seen = _iopub_of(h, "print('notebook')", None)
    assert [k for k, _ in seen] == ["status", "execute_input", "stream", "status"], seen
    assert seen[0][1]["execution_state"] == "busy"
    # A cellId that is not the host's prefix is anyone's cell.
    kinds = [k for k, _ in _iopub_of(h, "1", "some-notebook-cell")]
    assert kinds[:2] == ["status", "execute_input"], kinds


def test_a_cell_is_transformed_once_and_magics_still_run(start: Starter) -> None:
    h = start("transform")
    run(
        h,
        "ip = get_ipython(); tm = ip.input_transformer_manager; calls = []\n"
        "orig = tm.transform_cell\n"
        "tm.transform_cell = lambda cell: (calls.append(cell), orig(cell))[1]",
    )
    assert run(h, "y = 2") == ""
    assert run(h, "y = 2") == ""  # the same text in the next request is transformed again
    assert run(h, "print(len(calls))") == "3\n"  # one per request (2 before this one's)
    assert run(h, "!echo shell\n%time z = 1\nprint(y + z)").splitlines()[0] == "shell"
    assert run(h, "print(z)") == "1\n"
