"""Smoke runs of the benchmarks in bench/ (small sizes, `--smoke`): they run to the end, print
their tables, and leave nothing behind. No timing is asserted; bench/RESULTS.md has the figures."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "bench"


def smoke(script: str, *args: str, timeout: float = 240) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{script} --smoke failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_fanout() -> None:
    out = smoke("bench_fanout.py")
    assert "| 5 children x 2 iterations |" in out
    assert "PSS per child kernel (MB)" in out


def test_sandbox_start() -> None:
    out = smoke("bench_sandbox_start.py")
    assert "| ready |" in out and "| install |" in out
    assert "kernel page faults until ready" in out


def test_guide() -> None:
    out = smoke("bench_guide.py")
    assert "| agents |" in out
    assert "at depth 1" in out
    assert "at depth 2" in out  # the model's recursion ran
    assert "wall / critical path" in out


def test_kernel_roundtrip() -> None:
    out = smoke("bench_kernel_roundtrip.py")
    assert "| stock ipykernel (python3) | 20 |" in out
    assert "| rlm (cell in root sandbox) | 20 |" in out
    assert "ratio rlm / stock" in out


def test_w3_breakdown() -> None:
    out = smoke("bench_w3.py")
    for row in ("iteration: one turn to the next (wall)", "kernel wait ready", "run: wall / 30"):
        assert f"{row} |" in out, out


def test_peers_rlm_kernel() -> None:
    out = smoke("bench_peers.py", "--systems", "rlm-kernel")
    for workload in ("W1", "W2", "W3"):
        assert f"| {workload} | rlm-kernel | 1/1 |" in out  # ran, and answered right


@pytest.mark.parametrize(("system", "module"), [("rlms", "rlm"), ("dspy", "dspy")])
def test_peers_optional(system: str, module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{system} is not installed (optional: pip install -e '.[bench]')")
    out = smoke("bench_peers.py", "--systems", system)
    for workload in ("W1", "W2", "W3"):
        assert f"| {workload} | {system} |" in out


def test_events() -> None:
    out = smoke("bench_events.py")
    assert "| recorder | 61 |" in out  # 4 agents x (3 + 4 x 3 iterations) + RUN_FINISHED
    assert "| recorder, RunView, AgentTree | 61 |" in out


def test_llm() -> None:
    out = smoke("bench_llm.py")
    for path in ("(plain HTTP, `model.direct`)", "(litellm)"):  # both call paths, one invocation
        assert f"| sequential {path} | 10 |" in out
        assert f"| sequential, streamed {path} | 10 |" in out
        assert f"| 10 in flight {path} | 10 |" in out
    assert "| `rlm run` | 1 |" in out and "| kernel start + `%%rlm` cell | 1 |" in out
