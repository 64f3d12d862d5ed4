"""The Daytona backend against the local emulator (tests/daytona/emulator.py), real SDK unmodified."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# tests/daytona is on sys.path (it has no __init__.py: the name `daytona` is the SDK's)
from emulator import DaytonaEmulator

import rlm_kernel
from rlm_kernel.config import RLMConfig
from rlm_kernel.run_sandboxes import wait_all_closed
from rlm_kernel.runner import Run
from rlm_kernel.sandbox.base import SandboxError, SandboxSpec
from rlm_kernel.sandbox.workspace import resolve_target


@pytest.fixture(scope="module")
def emulator_server() -> Iterator[DaytonaEmulator]:
    emu = DaytonaEmulator(timeout_grace_s=0.5).start()
    yield emu
    emu.stop()


@pytest.fixture
def emulator(
    emulator_server: DaytonaEmulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DaytonaEmulator]:
    """The emulator, with DAYTONA_* pointing at it and its fault knobs reset."""
    emu = emulator_server
    monkeypatch.setenv("DAYTONA_API_KEY", emu.api_key)
    monkeypatch.setenv("DAYTONA_API_URL", emu.api_url)
    monkeypatch.setenv("DAYTONA_TARGET", "emu")
    emu.fail_creates = 0
    emu.fail_agents = set()
    emu.drop_next_ws = False
    emu.created = emu.deleted = emu.create_requests = 0
    yield emu
    assert not emu.sandboxes, f"sandboxes left in the emulator: {list(emu.sandboxes)}"


Config = Callable[..., RLMConfig]


def nodes(tree: dict[str, Any] | None) -> list[dict[str, Any]]:
    out, stack = [], [tree] if tree else []
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(n["children"])
    return out


def _sandbox(repo: Path | None = None, handler: Any = None) -> Any:
    return _sandbox_for(resolve_target(repo), handler)


def _sandbox_for(target: Any, handler: Any = None) -> Any:
    from rlm_kernel.sandbox.daytona import DaytonaSandbox

    spec = SandboxSpec(
        run_id="t-" + os.urandom(3).hex(),
        agent_id="root",
        target=target,
        handler=handler or (lambda op, args: ["reply:" + json.dumps(args)]),
        runtime_cfg={"agent_id": "root", "depth": 0, "tools": []},
    )
    sb = DaytonaSandbox(spec)
    sb.start()
    return sb


def test_three_level_demo_run_matches_the_local_backend(
    tmp_path: Path, emulator: DaytonaEmulator
) -> None:
    from rlm_kernel.demo import prepare_demo

    repo, model, prompt = prepare_demo(tmp_path)
    flat = {"model.name": model, "model.retries": 0}
    local = rlm_kernel.run(
        prompt,
        repo,
        config=RLMConfig().with_overrides({**flat, "results_dir": str(tmp_path / "local")}),
    )
    res = rlm_kernel.run(
        prompt,
        repo,
        config=RLMConfig().with_overrides(
            {**flat, "results_dir": str(tmp_path / "dt"), "sandbox.backend": "daytona"}
        ),
    )
    assert local.status == res.status == "done", res.error
    assert res.patch == local.patch
    assert "textkit/lines.py" in res.patch and "new file mode" in res.patch
    assert res.answer == local.answer
    record_text = Path(str(res.record_path)).read_text()
    assert emulator.api_key not in record_text
    record = json.loads(record_text)
    local_record = json.loads(Path(str(local.record_path)).read_text())
    got = {n["agent_id"]: n for n in nodes(record["root"])}
    want = {n["agent_id"]: n for n in nodes(local_record["root"])}
    assert len(got) == 7 and sorted(got) == sorted(want)
    for aid, node in got.items():
        assert node["status"] == want[aid]["status"] == "done"
        assert node["sandbox"]["backend"] == "daytona"
        assert node["usage"]["llm_calls"] == want[aid]["usage"]["llm_calls"]
        outs = [b["output"] for it in node["iterations"] for b in it["code_blocks"]]
        assert outs == [b["output"] for it in want[aid]["iterations"] for b in it["code_blocks"]]
    wait_all_closed()  # the root's sandbox is deleted just after the result
    assert emulator.created == 7 and emulator.deleted == 7


def test_repl_basics_display_errors_push_pull_diff(
    tmp_path: Path, make_repo: Any, emulator: DaytonaEmulator
) -> None:
    repo = make_repo()
    sb = _sandbox(repo)
    try:
        assert sb.id in emulator.sandboxes
        labels = emulator.sandboxes[sb.id].labels
        assert labels["rlm-run"] == sb.spec.run_id and labels["rlm-agent"] == "root"
        assert emulator.sandboxes[sb.id].auto_stop_interval == 0
        r = sb.execute("x = 20\nprint('hi')\nx + 1", timeout=30)
        assert r.status == "ok" and r.output == "hi\n21\n", r
        r = sb.execute("print(llm_query('q'))", timeout=30)
        assert r.output.startswith("reply:") and '"prompts": ["q"]' in r.output
        r = sb.execute("def f():\n    raise ValueError('boom')\nf()", timeout=30)
        assert r.status == "error" and "ValueError: boom" in (r.error or "")
        assert "run_cell" not in (r.error or "") and 'File "<cell>"' in (r.error or "")
        r = sb.execute("FINAL('done')\nprint('after')", timeout=30)
        assert r.status == "ok" and "after" not in r.output and "Traceback" not in r.output
        r = sb.execute(
            "class H:\n    def _repr_html_(self):\n        return '<b>x</b>'\ndisplay(H())",
            timeout=30,
        )
        assert r.outputs[0]["content"]["data"]["text/html"] == "<b>x</b>"
        # No stdin here (capabilities say so): input() fails with a message saying why.
        assert not sb.capabilities.stdin and sb.kernel_connection() == ""
        r = sb.execute("input('name? ')", timeout=30, stdin_hook=lambda prompt, pw: "x")
        assert r.status == "error" and "has no stdin" in (r.error or ""), r
        sb.push("pushed", {"a": [1, 2]})
        assert sb.pull("pushed") == {"a": [1, 2]}
        with pytest.raises(KeyError):
            sb.pull("nope")
        sb.execute(
            "edit_file('pkg/mod.py', 'VALUE = 1', 'VALUE = 2')\nopen('new.txt','w').write('n')",
            timeout=30,
        )
        patch = sb.diff()
        assert "+VALUE = 2" in patch and "new.txt" in patch
        names = {v["name"] for v in sb.snapshot()}
        assert {"x", "pushed"} <= names
    finally:
        sb.close()
        sb.close()  # idempotent
    assert sb.id not in emulator.sandboxes


def test_a_restarted_context_is_detected_and_reported(emulator: DaytonaEmulator) -> None:
    sb = _sandbox()
    try:
        assert sb.execute("x = 1", timeout=30).status == "ok"
        assert emulator.restart_contexts(sb.id) == 1
        r = sb.execute("print(x)", timeout=30)
        assert r.status == "restarted" and r.namespace_lost
        assert "variables are lost" in (r.error or "")
        r = sb.execute("print('x' in globals(), callable(llm_query))", timeout=30)
        assert r.status == "ok" and r.output == "False True\n"  # the runtime is back
    finally:
        sb.close()


def test_a_timeout_restart_is_reported_to_the_model(
    config: Config, emulator: DaytonaEmulator
) -> None:
    res = rlm_kernel.run(
        "restart",
        config=config(
            str(Path(__file__).parent / "scripted_restart.py"),
            sandbox__backend="daytona",
            rlm__exec_timeout=1,
        ),
    )
    assert res.status == "done", res.error
    assert res.answer == "x_survived=False told=True"
    block = res.tree["iterations"][1]["code_blocks"][0]
    assert "variables are lost" in block["output"]


def test_a_dropped_websocket_does_not_rerun_the_cell(emulator: DaytonaEmulator) -> None:
    sb = _sandbox()
    try:
        emulator.drop_next_ws = True
        code = "import time\nprint('start', flush=True)\ntime.sleep(0.3)\nopen('runs.txt', 'a').write('x')"
        r = sb.execute(code, timeout=30)
        assert r.status == "error" and "NOT run again" in (r.error or "")
        r = sb.execute("print(open('runs.txt').read())", timeout=30)
        assert r.output == "x\n", r  # it ran exactly once
    finally:
        sb.close()


def test_a_failed_creation_fails_that_agent_and_the_run_goes_on(
    config: Config, emulator: DaytonaEmulator
) -> None:
    emulator.fail_agents = {"root.1"}
    res = rlm_kernel.run("sandboxes", config=config("limits.py", sandbox__backend="daytona"))
    assert res.status == "done", res.error
    got = json.loads(res.answer)
    assert [g[1] for g in got] == ["done", "error", "done"]
    assert "500" in got[1][0] or "could not create" in got[1][0], got[1][0]
    failed = next(n for n in nodes(res.tree) if n["agent_id"] == "root.1")
    assert failed["status"] == "error" and "Daytona could not create" in failed["error"]
    wait_all_closed()  # the root's sandbox is deleted just after the result
    assert emulator.created == emulator.deleted == 3


def test_cancel_in_the_middle_removes_every_sandbox(
    config: Config, emulator: DaytonaEmulator
) -> None:
    run = Run("timeout", config=config("limits.py", sandbox__backend="daytona"))
    run.start()
    deadline = time.monotonic() + 30
    while len(emulator.sandboxes) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert len(emulator.sandboxes) == 3
    run.cancel()
    res = run.wait(60)  # a hang guard: the children sleep 120 s
    assert res.status == "cancelled"
    wait_all_closed()  # the root's sandbox is deleted just after the result
    assert not emulator.sandboxes and emulator.created == emulator.deleted == 3


def test_global_timeout_removes_every_sandbox(config: Config, emulator: DaytonaEmulator) -> None:
    res = rlm_kernel.run(
        "timeout", config=config("limits.py", sandbox__backend="daytona", rlm__global_timeout=4)
    )
    assert res.status == "timeout"
    assert {n["status"] for n in nodes(res.tree)} == {"timeout"}
    wait_all_closed()  # the root's sandbox is deleted just after the result
    assert not emulator.sandboxes and emulator.created == emulator.deleted == 3


@pytest.mark.parametrize("key", ["wrong-key", ""])
def test_a_wrong_or_missing_key_is_a_clear_error_before_anything_is_created(
    config: Config,
    emulator: DaytonaEmulator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    key: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("DAYTONA_API_KEY", key)
    run = Run("x", config=config("limits.py", sandbox__backend="daytona"))
    with pytest.raises(SandboxError, match="DAYTONA_API_KEY") as info:
        run.prepare()
    if key:
        assert key not in str(info.value) and "rejected" in str(info.value)
    assert emulator.create_requests == 0


def test_cleanup_deletes_labelled_leftovers(emulator: DaytonaEmulator) -> None:
    import subprocess
    import sys

    a, b = _sandbox(), _sandbox()
    try:
        env = dict(os.environ)
        rlm = str(Path(sys.executable).parent / "rlm")
        proc = subprocess.run(
            [rlm, "cleanup", "--sandbox", "daytona", "--run", a.spec.run_id],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert "1 leftover" in proc.stderr
        assert a.id not in emulator.sandboxes and b.id in emulator.sandboxes
        proc = subprocess.run(
            [rlm, "cleanup", "--sandbox", "daytona"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == 0 and not emulator.sandboxes
    finally:
        a.close()
        b.close()


# What `rlm` sees when the Daytona SDK cannot be imported: blocked at the import boundary (None in
# sys.modules, as for a base install without the `daytona` extra), or a broken installation.
_NO_SDK = """import sys
sys.modules["daytona"] = None
from rlm_kernel.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["run", "-p", "a task", "--sandbox", "daytona"],
        ["cleanup", "--sandbox", "daytona"],
    ],
    ids=["run", "cleanup"],
)
def test_the_backend_without_the_sdk_says_which_pip_command_installs_it(
    tmp_path: Path, args: list[str]
) -> None:
    import shlex
    import subprocess
    import sys

    model = f"scripted/{Path(__file__).parents[1] / 'models' / 'echo.py'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAYTONA_")}
    proc = subprocess.run(
        [sys.executable, "-c", _NO_SDK, *args, *(["--model", model] if args[0] == "run" else [])],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr  # one line, no traceback
    pip = f"{shlex.quote(sys.executable)} -m pip install 'rlm-kernel[daytona]'"
    assert (
        "the daytona sandbox backend needs the daytona package, which is not installed" in lines[0]
    )
    assert lines[0].endswith(f"install it with {pip}")
    assert not (tmp_path / "results").exists()  # nothing was created


def test_a_broken_sdk_installation_is_named_with_the_command_that_repairs_it(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    fake = tmp_path / "site" / "daytona"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import daytona_api_client_that_is_missing\n")
    code = (
        "from rlm_kernel.sandbox import backend_class\n"
        "from rlm_kernel.sandbox.base import SandboxError\n"
        "try:\n    backend_class('daytona')\nexcept SandboxError as exc:\n    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    ).stdout
    assert "the daytona sandbox backend cannot import its SDK (daytona)" in out
    assert (
        "daytona_api_client_that_is_missing" in out and "pip install 'rlm-kernel[daytona]'" in out
    )


def test_parallel_creation(config: Config, emulator: DaytonaEmulator) -> None:
    emulator.create_delay_s = 2.0
    emulator.create_spans.clear()
    try:
        res = rlm_kernel.run("sandboxes", config=config("limits.py", sandbox__backend="daytona"))
    finally:
        emulator.create_delay_s = 0.0
    assert res.status == "done", res.error
    # The root's sandbox, then the three children's at once: their creations (2 s each at the
    # emulator) overlap, which wall time on a loaded machine would not show.
    spans = sorted(emulator.create_spans)
    assert len(spans) == 4 and spans[0][1] <= spans[1][0], spans
    children = spans[1:]
    assert max(a for a, _ in children) < min(b for _, b in children), spans


def test_a_url_target_is_cloned_through_daytonas_git_api(
    make_repo: Callable[..., Path],
    emulator: DaytonaEmulator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    repo = make_repo(files={"pkg/mod.py": "VALUE = 1\n"})
    url = f"file://{repo}"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    emulator.git_clones.clear()
    target = resolve_target(url)
    sb = _sandbox_for(target)
    try:
        assert [
            (c["url"], c.get("commit_id") or c.get("commitId")) for c in emulator.git_clones
        ] == [(url, target.commit)]
        r = sb.execute("print(open('pkg/mod.py').read(), end='')", timeout=30)
        assert r.output == "VALUE = 1\n"
        sb.execute("open('pkg/mod.py', 'w').write('VALUE = 2\\n')", timeout=30)
        assert "-VALUE = 1\n+VALUE = 2" in sb.diff()
    finally:
        sb.close()


def test_ctrl_c_of_the_cli_removes_every_daytona_sandbox(
    emulator: DaytonaEmulator, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys

    model = Path(__file__).parents[1] / "models" / "limits.py"
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "rlm"),
            "run",
            "-p",
            "timeout",
            "--model",
            f"scripted/{model}",
            "--sandbox",
            "daytona",
            "--results-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
        # Ctrl-C as at a terminal: a suite started in the background of a script inherits
        # SIGINT ignored, and `rlm` would inherit that too.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        while len(emulator.sandboxes) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the root and both sleeping children
        assert len(emulator.sandboxes) == 3, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "cancelled and its sandboxes removed" in err
    assert emulator.api_key not in err
    wait_all_closed()  # the root's sandbox is deleted just after the result
    assert not emulator.sandboxes and emulator.created == emulator.deleted == 3
    record = json.loads(next(tmp_path.glob("*.detail.json")).read_text())
    assert record["status"] == "cancelled"
    assert emulator.api_key not in json.dumps(record)


def test_sandboxes_come_from_the_configured_snapshot_with_auto_stop_off(
    emulator: DaytonaEmulator,
) -> None:
    from rlm_kernel.sandbox.daytona import DaytonaSandbox

    emulator.create_bodies.clear()
    spec = SandboxSpec(
        run_id="t-" + os.urandom(3).hex(),
        agent_id="root",
        target=resolve_target(None),
        handler=lambda op, args: None,
        snapshot="rlm-python",
    )
    sb = DaytonaSandbox(spec)
    try:
        sb.start()
        (body,) = emulator.create_bodies
        assert body["snapshot"] == "rlm-python"
        # A notebook's sandbox lives as long as the kernel: Daytona must not stop it when idle.
        assert body["autoStopInterval"] == 0
        assert {"rlm-run": spec.run_id, "rlm-agent": "root"}.items() <= body["labels"].items()
    finally:
        sb.close()
