"""The `rlm` command line: help, one-line errors with exit code 2, the demo, cleanup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rlm_kernel.cli import main
from rlm_kernel.records import load_record

RLM = str(Path(sys.executable).parent / "rlm")

RUN_OPTIONS = [
    "REPO_OR_PATH", "-p", "--prompt", "-b", "--branch", "--commit", "-c", "--config", "-o", "--output",
    "--model", "--sub-model", "--sandbox", "--results-dir", "--max-depth", "--max-sandboxes",
    "--max-iterations", "--timeout", "--keep", "--answer", "--verbose", "--quiet",
]  # fmt: skip


def test_run_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for opt in RUN_OPTIONS:
        assert opt in out, opt
    # every option has a help text (argparse prints a line after the flag)
    assert "cloned once into the cache" in out and "global timeout" in out


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert proc.stdout == ""
    return lines[0]


def test_bad_option_is_a_one_line_error() -> None:
    proc = subprocess.run(
        [RLM, "run", ".", "-p", "x", "--max-depht", "2"], capture_output=True, text=True
    )
    line = _one_line_error(proc)
    assert "unrecognized arguments: --max-depht" in line


def test_missing_prompt_is_a_one_line_error() -> None:
    line = _one_line_error(subprocess.run([RLM, "run", "."], capture_output=True, text=True))
    assert "-p/--prompt" in line


def test_missing_repository_is_a_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [RLM, "run", str(tmp_path / "nope"), "-p", "x", "--model", "scripted/x.py"],
        capture_output=True,
        text=True,
    )
    line = _one_line_error(proc)
    assert "repository not found" in line and "nope" in line


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rlm:\n  max_iteration: 3\n")
    proc = subprocess.run([RLM, "run", "-p", "x", "-c", str(cfg)], capture_output=True, text=True)
    line = _one_line_error(proc)
    assert "rlm.max_iteration" in line and "rlm.max_iterations" in line


def test_missing_api_key_is_reported_before_anything_starts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    proc = subprocess.run(
        [RLM, "run", "-p", "x", "--model", "openai/gpt-4o-mini", "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    line = _one_line_error(proc)
    assert "LLM_API_KEY" in line and "OPENAI_API_KEY" in line
    assert not list(tmp_path.iterdir())  # no record, nothing created


def test_demo_runs_offline(tmp_path: Path) -> None:
    proc = subprocess.run(
        [RLM, "demo", "--results-dir", "results"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "COLUMNS": "60"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "+    return len(text.splitlines())" in proc.stdout
    assert "done: 7 agents, depth 2" in " ".join(proc.stderr.split())
    (record,) = (tmp_path / "results").glob("*.detail.json")
    # the record as the user can open it from anywhere; nothing but records in results/
    assert f"record: {record}\n" in proc.stderr and record.is_absolute()
    assert sorted(p.suffix for p in record.parent.iterdir()) == [".json", ".json", ".patch"]

    # progress lines fit COLUMNS, tasks are cut at word boundaries, and the three
    # sub-sub-agents (same long task, different TODO) can be told apart
    progress = [  # after the "Demo: …" line, without the isolation tier's one-time notice
        ln
        for ln in proc.stderr.split("\nAnswer:\n")[0].splitlines()[1:]
        if not ln.startswith("rlm: local sandboxes run ")
    ]
    assert progress and all(len(ln) <= 60 for ln in progress), progress
    rec = json.loads(record.read_text())
    tasks = {n["agent_id"]: n["task"] for n in _walk(rec["root"])}
    started = {ln.split()[1]: ln.split(": ", 1)[1] for ln in progress if ln.startswith("▶ ")}
    assert set(started) == set(tasks)
    for agent, shown in started.items():
        words = tasks[agent].split()
        for part in shown.split(" … "):
            part = part.removeprefix("… ").removesuffix("…")
            got = part.split()
            # every shown word is a word of the task; only the last one may be cut short
            assert any(words[i : i + len(got) - 1] == got[:-1] for i in range(len(words))), shown
            assert any(w.startswith(got[-1]) for w in words), shown
    cousins = [a for a in started if a.count(".") == 2]  # in the order they started
    assert len({started[a] for a in cousins}) == 3, started
    for agent in cousins[1:]:  # those that started after a cousin show what is theirs
        module = tasks[agent].split("reason: ")[1].split(":")[0]
        assert module in started[agent], started[agent]


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for c in node["children"] for n in _walk(c))]


def test_refused_sub_agents_are_one_line(tmp_path: Path) -> None:
    model = Path(__file__).parent / "models" / "limits.py"
    cmd = [RLM, "run", "-p", "refused", "--model", f"scripted/{model}", "--max-sandboxes", "3"]
    proc = subprocess.run(
        [*cmd, "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "2 done\n"
    refusals = [ln for ln in proc.stderr.splitlines() if "budget" in ln]
    assert refusals == ["! root: sandbox budget exhausted (max_sandboxes=3) (10 times)"]


def test_a_10_mb_answer_is_capped_on_the_terminal(
    tmp_path: Path, make_repo: Callable[..., Path]
) -> None:
    model = Path(__file__).parent / "models" / "finals.py"
    answer_file = tmp_path / "answer.txt"
    cmd = [RLM, "run", "-p", "huge", "--model", f"scripted/{model}", "--results-dir", "results"]
    proc = subprocess.run(
        [*cmd, str(make_repo()), "--answer", "answer.txt"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # the (empty) patch
    assert len(proc.stderr) < 25_000  # not 10 MB
    assert "the answer has 10,000,005 characters; all of it is in " in proc.stderr
    assert f"in {answer_file} (--answer) and in the record {tmp_path}/results/" in proc.stderr
    assert answer_file.read_text() == "line\n" + "x" * 10_000_000 + "\n"
    (record,) = (tmp_path / "results").glob("*.detail.json")
    assert record.stat().st_size < 10_000_000 + 100_000  # the answer is stored once
    assert load_record(record)["root"]["result"] == "line\n" + "x" * 10_000_000

    # without a repository the answer is the command's output: whole when redirected
    proc = subprocess.run(
        [*cmd, "--quiet"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "line\n" + "x" * 10_000_000 + "\n" and proc.stderr == ""


def test_run_without_repository_prints_the_answer(tmp_path: Path) -> None:
    model = Path(__file__).parent / "models" / "finals.py"
    proc = subprocess.run(
        [
            RLM,
            "run",
            "-p",
            "final_var",
            "--model",
            f"scripted/{model}",
            "--quiet",
            "--results-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "{'k': [1, 2]}\n"


def test_failed_run_exits_1_with_the_partial_answer(tmp_path: Path) -> None:
    model = Path(__file__).parent / "models" / "limits.py"
    proc = subprocess.run(
        [
            RLM,
            "run",
            "-p",
            "iterations",
            "--model",
            f"scripted/{model}",
            "--quiet",
            "--max-iterations",
            "2",
            "--results-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stdout.startswith("[partial answer: budget")
    assert proc.stderr.startswith("rlm: error: run budget: max_iterations (2) reached")


def test_cleanup_removes_sandboxes_of_dead_runs() -> None:
    from rlm_kernel.paths import tmp_root
    from rlm_kernel.sandbox.cleanup import cleanup_local

    dead = tmp_root() / "20000101-000000-dead00" / "root"
    (dead / "work").mkdir(parents=True)
    (dead / "owner").write_text("999999999 0\n")
    removed = cleanup_local(run_id="20000101-000000-dead00")
    assert removed == [str(dead)]
    assert not dead.parent.exists()


def test_an_interrupt_wrapped_by_a_library_still_counts_as_an_interrupt() -> None:
    """Ctrl-C while pydantic builds a model class (litellm's import) comes out as a SchemaError
    whose context is the KeyboardInterrupt: `rlm` must still exit 130 with one line."""
    from rlm_kernel.cli import _interrupt_in

    def wrapped() -> BaseException:
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise RuntimeError("Error building 'union' validator") from None
        except RuntimeError as exc:
            return exc

    err = wrapped()
    assert err.__cause__ is None and isinstance(err.__context__, KeyboardInterrupt)
    assert _interrupt_in(err)
    assert _interrupt_in(ValueError("x").with_traceback(None)) is False
    loop = ValueError("a")
    loop.__context__ = TypeError("b")
    loop.__context__.__context__ = loop  # a cycle ends the walk
    assert _interrupt_in(loop) is False
