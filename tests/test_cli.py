"""The `rlm` command line: help, one-line errors with exit code 2, the demo, cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlm_kernel.cli import main

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
        [RLM, "demo", "--results-dir", str(tmp_path / "results")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "+    return len(text.splitlines())" in proc.stdout
    assert "done: 7 agents, depth 2" in proc.stderr
    assert len(list((tmp_path / "results").glob("*.detail.json"))) == 1


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
