"""The local sandbox: push/pull values, workspace moves, and its REPL state across calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rlm_kernel.sandbox.base import SandboxSpec
from rlm_kernel.sandbox.local import LocalSandbox
from rlm_kernel.sandbox.workspace import Target, resolve_target


def _sandbox(target: Target | None = None) -> LocalSandbox:
    def handler(op: str, args: dict[str, Any]) -> Any:
        return None

    sb = LocalSandbox(SandboxSpec("t-local", "root", target or Target(None, None, None), handler))
    sb.start()
    return sb


def test_push_pull_round_trip() -> None:
    sb = _sandbox()
    try:
        sb.push("data", {"a": [1, 2, 3]})
        assert sb.execute("data['a'].append(4)", timeout=10).status == "ok"
        assert sb.pull("data") == {"a": [1, 2, 3, 4]}
        with pytest.raises(KeyError):
            sb.pull("nothing_here")
    finally:
        sb.close()


def test_set_workspace_keeps_the_namespace(make_repo: Any, tmp_path: Path) -> None:
    repo = make_repo({"f.txt": "hello\n"})
    sb = _sandbox()
    try:
        sb.execute("x = 1", timeout=10)
        old = sb.path
        sb.set_workspace(resolve_target(repo))
        out = sb.execute(
            "import os\nprint(x, open('f.txt').read().strip(), os.getcwd() == os.path.realpath('.'))",
            timeout=10,
        )
        assert out.output == "1 hello True\n"
        assert not Path(old).exists() and Path(sb.path).exists()
        sb.execute("open('f.txt', 'w').write('bye\\n')", timeout=10)
        assert "+bye" in sb.diff()
    finally:
        sb.close()


def test_a_flood_of_flushed_prints_ends() -> None:
    # 20 000 messages in a burst: past 1000 queued (the sandbox kernel's iopub and the client's
    # SUB socket each hold that many), zmq drops the rest of a burst, and when the cell's idle
    # status was among them the cell never ended. Now its execute_reply ends it.
    sb = _sandbox()
    try:
        for _ in range(2):
            res = sb.execute(
                "for i in range(20000):\n    print(i, flush=True)\nprint('done')", timeout=120
            )
            assert res.status == "ok" and res.output.startswith("0\n1\n2\n")
        assert sb.execute("print('next')", timeout=30).output == "next\n"
    finally:
        sb.close()


def test_a_cell_under_a_frontends_msg_id_returns_its_reply() -> None:
    sb = _sandbox()
    try:
        res = sb.execute(
            "import os\nhere = 7\nzip?",
            timeout=30,
            msg_id="frontend-request-1",
            user_expressions={"twice": "2 * here"},
        )
        assert res.status == "ok"
        (page,) = res.reply["payload"]
        assert page["source"] == "page" and "zip" in page["data"]["text/plain"]
        assert res.reply["user_expressions"]["twice"]["data"] == {"text/plain": "14"}
        assert sb.execute("x = 1", timeout=10).reply == {}  # without a msg_id: none
    finally:
        sb.close()


def test_a_started_sandbox_got_its_runtime_from_its_kernels_start() -> None:
    """start(): the forked kernel installed the runtime while starting (no install request), the
    configuration file (it holds the bridge secret) is gone, and the REPL functions work."""
    sb = _sandbox()
    try:
        assert sb.kernel is not None and sb.kernel.launcher == "fork"
        assert not Path(sb.bridge_dir, ".runtime.json").exists()
        res = sb.execute("print(type(__rlm__).__name__, callable(FINAL))", timeout=30)
        assert res.output.split() == ["Runtime", "True"], res
    finally:
        sb.close()
