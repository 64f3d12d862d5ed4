"""The process's spare root sandbox (`sandbox.spare`): made once a run's root has its sandbox,
adopted by the next run's root (fresh: nothing of an earlier run crosses), discarded when the
settings differ, replaced when it died while idle, within `rlm.max_sandboxes`, and never left
behind (the leftovers fixture checks every test; `discard`, shutdown and exit close it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rlm_kernel import llm
from rlm_kernel.config import ConfigError, RLMConfig
from rlm_kernel.events import Event, SandboxReady
from rlm_kernel.runner import Run, RunResult
from rlm_kernel.sandbox import isolation, spare
from rlm_kernel.sandbox.cleanup import cleanup_local
from rlm_kernel.sandbox.kernels import live_kernel_pids
from rlm_kernel.sandbox.local import LocalSandbox

Config = Callable[..., RLMConfig]

# Run 1's agent plants what a later run must not see: a file in its workspace and in its /tmp,
# a module in sys.modules, an environment variable, a background thread, a global.
PLANT = """```python
import os, sys, threading, types, tempfile, time
open("planted.txt", "w").write("run 1")
open(os.path.join(tempfile.gettempdir(), "rlm-planted.txt"), "w").write("run 1")
sys.modules["rlm_planted"] = types.ModuleType("rlm_planted")
os.environ["RLM_PLANTED"] = "run 1"
threading.Thread(target=lambda: time.sleep(600), name="rlm-planted", daemon=True).start()
planted_global = 1
FINAL("planted")
```"""

# Run 2's root reports what it sees.
LOOK = """```python
import json, os, sys, threading, tempfile
FINAL(json.dumps({
    "file": os.path.exists("planted.txt"),
    "tmp": os.path.exists(os.path.join(tempfile.gettempdir(), "rlm-planted.txt")),
    "module": "rlm_planted" in sys.modules,
    "env": "RLM_PLANTED" in os.environ,
    "thread": any(t.name == "rlm-planted" for t in threading.enumerate()),
    "global": "planted_global" in globals(),
    "context": globals().get("context"),
    "cwd": os.getcwd(),
    "files": sorted(os.listdir(".")),
}))
```"""


def _model(code: str) -> str:
    return llm.register_scripted(f"spare-{uuid.uuid4().hex[:8]}", lambda _m, _i: code)


def _wait(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _run(config: Config, code: str, repo: Path | None = None, **kw: Any) -> tuple[RunResult, str]:
    """Run `code` as the root's only turn; the result and the root sandbox's id."""
    events: list[Event] = []
    context = kw.pop("context", None)
    cfg = config(_model(code), **kw)
    extra: dict[str, Any] = {} if context is None else {"context": context}
    res = Run("t", repo, config=cfg, on_event=events.append, **extra).execute()
    ids = [e.payload.sandbox["id"] for e in events if isinstance(e.payload, SandboxReady)]
    assert res.status == "done", res.error
    return res, ids[0]


def test_next_run_adopts_the_spare_and_sees_nothing_of_the_last(config: Config) -> None:
    made, taken = spare.stats()
    _, first = _run(config, PLANT)
    assert not first.startswith("spare-")  # nothing was ready for the process's first run
    _wait(lambda: spare.stats()[0] > made)  # made while run 1 went on
    res, second = _run(config, LOOK)
    assert second.startswith("spare-"), "run 2's root should have adopted the spare"
    assert spare.stats()[1] == taken + 1
    seen = json.loads(str(res.answer))
    # /tmp is private under bwrap only (`none` shares the user's: README, "Sandboxes")
    private_tmp = isolation.resolve("auto").tier == "bwrap"
    kinds = (
        ("file", "tmp", "module", "env", "thread", "global")
        if private_tmp
        else ("file", "module", "env", "thread", "global")
    )
    assert not any(seen[k] for k in kinds), seen
    assert "planted.txt" not in seen["files"]


def test_the_spare_gets_the_runs_repository_and_context(config: Config, make_repo: Any) -> None:
    repo = make_repo({"pkg/mod.py": "VALUE = 1\n"})
    _run(config, '```python\nFINAL("warm")\n```')
    _wait(lambda: spare.pending() and not _making())
    res, sid = _run(config, LOOK, repo, context={"k": [1, 2]})
    assert sid.startswith("spare-")
    seen = json.loads(str(res.answer))
    assert seen["context"] == {"k": [1, 2]}
    assert "pkg" in seen["files"]


def test_a_kept_adopted_spare_is_found_by_cleanup_of_its_run(config: Config) -> None:
    """The adopted spare's directory keeps its spare-… name (its kernel's paths point into it):
    `rlm cleanup --run <id>` of the run that adopted it still removes it."""
    _run(config, '```python\nFINAL("warm")\n```')
    _wait(lambda: spare.pending() and not _making())
    events: list[Event] = []
    cfg = config(_model('```python\nFINAL("kept")\n```'), sandbox__keep=True)
    run = Run("t", config=cfg, on_event=events.append)
    res = run.execute()
    assert run.release(remove=False) == 1  # its REPL stops, its workspace stays
    ready = [e.payload.sandbox for e in events if isinstance(e.payload, SandboxReady)]
    assert ready[0]["id"].startswith("spare-")
    kept = Path(ready[0]["path"]).parent
    assert (kept / "kept").exists()
    assert kept.parent.name != res.run_id
    (kept / "owner").write_text("999999999 0\n")  # its process is gone
    assert cleanup_local(run_id="20000101-000000-other0") == []
    assert cleanup_local(run_id=res.run_id) == [str(kept)]
    assert not kept.parent.exists()


def test_other_settings_discard_the_spare_and_start_their_own(config: Config) -> None:
    _run(config, '```python\nFINAL("warm")\n```')
    _wait(lambda: spare.stats()[0] > 0 and spare.pending())
    taken = spare.stats()[1]
    # Tools change the runtime installed at the kernel's start: a different key.
    events: list[Event] = []

    def tool(x: int) -> int:
        """Double x."""
        return 2 * x

    res = Run(
        "t",
        config=config(_model("```python\nFINAL(str(tool(21)))\n```")),
        tools=[tool],
        on_event=events.append,
    ).execute()
    assert res.status == "done" and res.answer == "42", res.error
    ids = [e.payload.sandbox["id"] for e in events if isinstance(e.payload, SandboxReady)]
    assert not ids[0].startswith("spare-")
    assert spare.stats()[1] == taken


def test_a_spare_that_died_while_idle_is_replaced(config: Config) -> None:
    _run(config, '```python\nFINAL("warm")\n```')
    _wait(lambda: spare.pending() and not _making())
    sb = spare._SPARE._sandbox
    assert sb is not None and isinstance(sb, LocalSandbox) and sb.kernel is not None
    os.kill(sb.kernel.pid, signal.SIGKILL)
    _wait(lambda: not sb.kernel.is_alive())  # type: ignore[union-attr]
    res, sid = _run(config, '```python\nFINAL("fresh")\n```')
    assert res.answer == "fresh" and not sid.startswith("spare-")
    assert sb.closed and not os.path.exists(sb.root)


def test_off_makes_no_spare_and_budget_of_one_makes_it_at_the_end(config: Config) -> None:
    _run(config, '```python\nFINAL("x")\n```', sandbox__spare=False)
    assert not spare.pending()
    # max_sandboxes = 1: the root has the only one while the run goes on; made when it ends.
    _run(config, '```python\nFINAL("x")\n```', rlm__max_sandboxes=1)
    assert spare.pending()


def test_a_child_taking_the_last_sandbox_discards_the_runs_spare(config: Config) -> None:
    def respond(_m: Any, info: dict[str, Any]) -> str:
        if info["depth"]:
            return '```python\nFINAL("child")\n```'
        if info["iteration"] == 0:
            _wait(lambda: spare.pending() and not _making())
            return "```python\nr = rlm_query('go')\n```"
        return "```python\nFINAL(r)\n```"

    model = llm.register_scripted(f"spare-{uuid.uuid4().hex[:8]}", respond)
    seen: list[int] = []
    cfg = config(model, rlm__max_sandboxes=2, sandbox__pool_size=0)
    run = Run("t", config=cfg, on_event=lambda e: seen.append(len(live_kernel_pids())))
    res = run.execute()
    assert res.status == "done", res.error
    assert max(seen) <= 2  # root + child; the spare went when the child took the last one


def test_discard_and_shutdown_leave_nothing(config: Config) -> None:
    _run(config, '```python\nFINAL("x")\n```')
    _wait(lambda: spare.pending() and not _making())
    sb = spare._SPARE._sandbox
    assert sb is not None
    LocalSandbox.shutdown()  # the kernel host's shutdown
    assert not spare.pending() and sb.closed and not live_kernel_pids()


def test_process_exit_closes_the_spare(tmp_path: Path) -> None:
    """A process that ends with a spare (ready or being made) leaves no kernel or directory."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from rlm_kernel import llm
from rlm_kernel.config import RLMConfig
from rlm_kernel.runner import Run
from rlm_kernel.sandbox import spare
from rlm_kernel.sandbox.kernels import live_kernel_pids
m = llm.register_scripted("exit", lambda _m, _i: '```python\\nFINAL("x")\\n```')
cfg = RLMConfig().with_overrides({{"model.name": m, "results_dir": {str(tmp_path / "r")!r}}})
print(Run("t", config=cfg).execute().status, flush=True)
print("pending", spare.pending(), flush=True)
"""
    env = {**os.environ, "TMPDIR": str(tmp)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["done", "pending", "True"], out.stdout
    roots = [p for p in tmp.iterdir() if p.name.startswith("rlm-kernel-")]
    assert all(not any(r.iterdir()) for r in roots), [list(r.iterdir()) for r in roots]


def test_spare_setting_is_validated() -> None:
    assert RLMConfig().sandbox.spare is True
    assert (
        RLMConfig().with_overrides({"sandbox.spare": "false"}, parse_strings=True).sandbox.spare
        is False
    )
    with pytest.raises(ConfigError, match=r"sandbox\.spare"):
        RLMConfig().with_overrides({"sandbox.spare": "sometimes"})


def _making() -> bool:
    return spare._SPARE._maker is not None
