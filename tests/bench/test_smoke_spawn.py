"""Smoke runs of bench/bench_spawn.py and bench/bench_iteration.py (tiny sizes, no timing checks)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}_smoke", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_bench_iteration_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    stats = _load("bench_iteration").main(["--smoke"])
    assert stats["count"] >= 1 and stats["median"] > 0
    assert "per-iteration overhead" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_spawn_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    out = _load("bench_spawn").main(["--smoke"])
    for pool in ("auto", "0"):
        assert len(out[pool]["to_code"]) == 2 and all(t > 0 for t in out[pool]["to_code"])
    assert out["fanout"]["rss_mb"] > 0
    text = capsys.readouterr().out
    assert "| auto (on) |" in text and "| 0 (off) |" in text and "kernel RSS" in text
