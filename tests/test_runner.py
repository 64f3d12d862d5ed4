"""End-to-end runs on real local sandboxes (worktrees + IPython kernels) with scripted models."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import rlm_kernel
from rlm_kernel.config import RLMConfig
from rlm_kernel.events import Event, EventType
from rlm_kernel.runner import Run

Config = Callable[..., RLMConfig]


def nodes(tree: dict[str, Any] | None) -> list[dict[str, Any]]:
    out, stack = [], [tree] if tree else []
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(n["children"])
    return out


def test_sibling_sandboxes_are_isolated(make_repo: Callable[..., Path], config: Config) -> None:
    repo = make_repo()
    res = rlm_kernel.run("isolate", repo, config=config("isolation.py"))
    assert res.status == "done", res.error
    got = json.loads(res.answer)
    assert got["ids"] == ["root.0", "root.1"]
    assert got["children"][0].startswith("from A|") and got["children"][1].startswith("from B|")
    assert got["before"] is False  # the root sees neither child's file...
    assert got["after"] == "from A"  # ...until it applies one child's patch
    assert "shared.txt" in res.patch and "+from A" in res.patch


def test_max_iterations_gives_a_partial_answer(config: Config) -> None:
    res = rlm_kernel.run("iterations", config=config("limits.py", rlm__max_iterations=3))
    assert res.status == "budget"
    assert res.answer.startswith("[partial answer: budget: max_iterations (3) reached]")
    assert len(res.tree["iterations"]) == 3


def test_global_timeout_ends_the_run_and_removes_sandboxes(config: Config) -> None:
    t0 = time.monotonic()
    res = rlm_kernel.run("timeout", config=config("limits.py", rlm__global_timeout=3))
    elapsed = time.monotonic() - t0
    assert res.status == "timeout"
    # Ended by the 3 s timeout, not by the children's 120 s sleep (a hang guard: stopping and
    # removing three sandboxes takes seconds on a loaded machine).
    assert elapsed < 60, elapsed
    assert {n["status"] for n in nodes(res.tree)} == {"timeout"}
    assert res.answer.startswith("[partial answer: timeout")
    # the autouse fixture checks that no kernel, worktree or directory is left


def test_exec_timeout_interrupts_and_the_agent_goes_on(config: Config) -> None:
    res = rlm_kernel.run("spin", config=config("limits.py", rlm__exec_timeout=1))
    assert res.status == "done", res.error
    assert res.answer == "recovered kept=7 told=True"
    block = res.tree["iterations"][0]["code_blocks"][0]
    assert block["status"] == "timeout" and "KeyboardInterrupt" in block["output"]


def test_a_cell_that_ignores_interrupts_restarts_the_kernel(config: Config) -> None:
    res = rlm_kernel.run("deaf", config=config("limits.py", rlm__exec_timeout=1))
    assert res.status == "done", res.error
    assert res.answer == "x_survived=False told=True"
    assert res.tree["iterations"][1]["code_blocks"][0]["status"] == "restarted"


def test_a_dying_kernel_ends_only_that_agent(config: Config) -> None:
    res = rlm_kernel.run("dying", config=config("limits.py"))
    assert res.status == "done", res.error
    (dead_status, dead_text), (live_status, live_text) = json.loads(res.answer)
    assert dead_status == "error" and "died" in dead_text
    assert (live_status, live_text) == ("done", "child live")
    statuses = {n["agent_id"]: n["status"] for n in nodes(res.tree)}
    assert statuses == {"root": "done", "root.0": "error", "root.1": "done"}


def test_final_stops_the_cell_and_the_reply(make_repo: Callable[..., Path], config: Config) -> None:
    res = rlm_kernel.run("final", make_repo(), config=config("finals.py"))
    assert (res.status, res.answer) == ("done", "plain")
    assert res.patch == ""  # neither after.txt nor second.txt was written


def test_final_var(config: Config) -> None:
    res = rlm_kernel.run("final_var", config=config("finals.py"))
    assert (res.status, res.answer) == ("done", "{'k': [1, 2]}")


def test_answer_dict(config: Config) -> None:
    res = rlm_kernel.run("answer_dict", config=config("finals.py"))
    assert (res.status, res.answer) == ("done", "via the answer dict")
    assert len(res.tree["iterations"]) == 2


def test_typed_submit_reports_wrong_names_and_types(config: Config) -> None:
    res = rlm_kernel.run(
        "submit",
        config=config("finals.py"),
        signature="question: str -> answer: str, confidence: float",
    )
    assert res.status == "done", res.error
    assert res.answer == {"answer": "42", "confidence": 0.9}
    outputs = [it["code_blocks"][0]["output"] for it in res.tree["iterations"]]
    assert "unexpected field 'conf'" in outputs[0]
    assert "field 'confidence' must be float, got str 'high'" in outputs[1]


def test_a_reply_without_code_gets_a_corrective_turn(config: Config) -> None:
    res = rlm_kernel.run("no_code", config=config("finals.py"))
    assert (res.status, res.answer) == ("done", "4")


def test_an_unclosed_code_block_is_reported_as_such(config: Config) -> None:
    # the model checks the wording of each corrective turn (tests/models/finals.py "unclosed")
    res = rlm_kernel.run("unclosed", config=config("finals.py"))
    assert (res.status, res.answer) == ("done", "told twice"), res.error


def test_forged_bridge_requests_have_no_effect(config: Config) -> None:
    res = rlm_kernel.run("forge", config=config("security.py"))
    assert (res.status, res.answer) == ("done", "real answer")
    out = res.tree["iterations"][0]["code_blocks"][0]["output"]
    assert "still here" in out and "FORGED" not in out
    assert len(res.tree["iterations"]) == 2


def test_agent_code_finds_no_api_key(
    make_repo: Callable[..., Path], config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-123")
    monkeypatch.setenv("LLM_API_KEY", "sk-test-secret-456")
    res = rlm_kernel.run("keys", make_repo(), config=config("security.py"))
    got = json.loads(res.answer)
    assert got == {"files": [], "env": [], "scanned": got["scanned"]}
    assert got["scanned"] > 3  # it did look at the sandbox's files


def test_events_and_record_are_written_as_the_run_goes(config: Config, tmp_path: Path) -> None:
    seen: list[Event] = []
    r = Run("final_var", config=config("finals.py"), on_event=seen.append)
    res = r.execute()
    types = [e.type for e in seen]
    assert types[0] is EventType.RUN_STARTED and types[-1] is EventType.RUN_FINISHED
    assert EventType.SANDBOX_READY in types and EventType.ITERATION_FINISHED in types
    record = json.loads(Path(res.record_path or "").read_text())
    assert (
        record["status"] == "done"
        and record["root"]["iterations"][0]["namespace"][0]["name"] == "result"
    )
    index = json.loads((tmp_path / "results" / "index.json").read_text())
    assert index["runs"][0]["run_id"] == res.run_id


def test_three_level_run_through_the_cli(tmp_path: Path) -> None:
    from rlm_kernel.demo import prepare_demo

    repo, _, prompt = prepare_demo(tmp_path)
    log = tmp_path / "calls.log"
    patch = tmp_path / "out.patch"
    model = Path(__file__).parent / "models" / "demo_counting.py"
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "rlm"),
            "run",
            str(repo),
            "-p",
            prompt,
            "--model",
            f"scripted/{model}",
            "-o",
            str(patch),
            "--results-dir",
            str(tmp_path / "results"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_env(), "RLM_TEST_CALL_LOG": str(log)},
    )
    assert proc.returncode == 0, proc.stderr
    text = patch.read_text()
    assert "textkit/lines.py" in text and "tests/test_lines.py" in text and "new file mode" in text
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    subprocess.run(["git", "apply", "--check", str(patch)], cwd=clone, check=True)

    record = json.loads(next((tmp_path / "results").glob("*.detail.json")).read_text())
    all_nodes = nodes(record["root"])
    assert len(all_nodes) == 7
    by_id = {n["agent_id"]: n for n in all_nodes}
    assert sorted(by_id) == [
        "root",
        "root.0",
        "root.0.0",
        "root.1",
        "root.1.0",
        "root.2",
        "root.2.0",
    ]
    for aid, node in by_id.items():
        assert node["depth"] == aid.count(".")
        assert node["parent_id"] == (aid.rsplit(".", 1)[0] if "." in aid else None)
        assert node["status"] == "done"
        assert all(
            b["code"] and "output" in b for it in node["iterations"] for b in it["code_blocks"]
        )
    calls = log.read_text().splitlines()
    assert record["usage"]["llm_calls"] == len(calls) == 22
    per_agent = {aid: sum(1 for c in calls if c.split()[1] == aid) for aid in by_id}
    assert {aid: n["usage"]["llm_calls"] for aid, n in by_id.items()} == per_agent
    assert by_id["root.0"]["iterations"][1]["code_blocks"][0]["spawned"] == ["root.0.0"]


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_replay_of_a_recorded_run_gives_the_same_answer_and_patch(
    tmp_path: Path, config: Config
) -> None:
    from rlm_kernel.demo import demo_model, prepare_demo

    repo, _, prompt = prepare_demo(tmp_path)
    first = rlm_kernel.run(prompt, repo, config=config(demo_model()))
    assert first.status == "done"
    again = rlm_kernel.run(prompt, repo, config=config(f"replay/{first.record_path}"))
    assert (again.status, again.answer, again.patch) == ("done", first.answer, first.patch)
    assert again.usage.llm_calls == first.usage.llm_calls


def test_ctrl_c_cancels_the_tree_and_removes_every_sandbox(tmp_path: Path) -> None:
    import os
    import signal

    from rlm_kernel.paths import tmp_root

    before = set(os.listdir(tmp_root()))
    model = Path(__file__).parent / "models" / "limits.py"
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "rlm"),
            "run",
            "-p",
            "timeout",
            "--model",
            f"scripted/{model}",
            "--results-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # Ctrl-C as at a terminal
    )

    def sleeping() -> list[Path]:
        """The markers of the children whose 120 s cell runs (in their workspaces)."""
        runs = set(os.listdir(tmp_root())) - before
        return [m for r in runs for m in (tmp_root() / r).glob("*/work/sleeping")]

    try:
        # Both children are inside their cell (a loaded machine takes its time to get there).
        deadline = time.monotonic() + 120
        while len(markers := sleeping()) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        assert len(markers) == 2, "the two sleeping children did not start"
        slept_at = min(m.stat().st_mtime for m in markers)
        time.sleep(0.5)
        interrupted_at = time.time()
        proc.send_signal(signal.SIGINT)
        # A hang guard only: cancelling takes about a second; the exit (freeing a Python
        # process that imported litellm) takes several more on a loaded machine.
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "cancelled and its sandboxes removed" in err
    assert set(os.listdir(tmp_root())) - before == set()
    record = json.loads(next(tmp_path.glob("*.detail.json")).read_text())
    assert record["status"] == "cancelled"
    tree = nodes(record["root"])
    assert {n["status"] for n in tree} == {"cancelled"} and len(tree) == 3
    # Every agent ended because of the Ctrl-C, and the children's sleep was cut short.
    for n in tree:
        assert interrupted_at <= n["finished_at"] < slept_at + 120, (n["agent_id"], n["error"])


def test_reserved_names_are_restored_after_each_cell(config: Config) -> None:
    from rlm_kernel.llm import register_scripted

    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        if info["iteration"] == 0:
            return "```python\nFINAL = None\nanswer = 3\nllm_query = print\n```"
        return "```python\nFINAL(f\"{type(answer).__name__} {llm_query('hi')}\")\n```"

    def sub(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        return "sub" if info["kind"] == "llm_query" else respond(messages, info)

    res = rlm_kernel.run("rebind", config=config(register_scripted("rebind", sub)))
    assert (res.status, res.answer) == ("done", "dict sub")
