"""Engine overhead per iteration: one agent, many iterations, a scripted model of zero latency.

With `LATENCY_S = 0` the LLM call costs nothing but the litellm call path, so the time from one
iteration's start to the next is pure engine overhead: the litellm call, prompt building, the
cell's bridge round trips, the namespace snapshot, events and the run record. Reports the median
(and p25/p75) of the gaps between consecutive `iteration_started` events, over several runs.

    .venv/bin/python bench/bench_iteration.py [--reps 3] [--iterations 60] [--smoke]

To see where the host's time goes, run it under py-spy (`pip install py-spy`; the agent loop runs
on a worker thread): `py-spy record -r 500 -f raw --threads -o prof.txt -- .venv/bin/python
bench/bench_iteration.py`.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rlm_kernel import llm
from rlm_kernel.config import RLMConfig
from rlm_kernel.events import Event, EventType
from rlm_kernel.runner import Run


def _model(n: int) -> str:
    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        it = info["iteration"]
        if it >= n - 1:
            return "```python\nFINAL('done')\n```"
        return f"Step {it}.\n```python\nx{it} = {it} * 2\nprint(x{it})\n```"

    return llm.register_scripted(f"bench-iteration-{n}", respond, latency_s=0.0)


PHASES = {
    EventType.ITERATION_STARTED: "start",
    EventType.LLM_RESPONSE: "llm",
    EventType.CODE_EXECUTED: "cell",
    EventType.ITERATION_FINISHED: "snapshot",
}
_parts: dict[str, list[float]] = {}


ISOLATION = {"value": "auto"}  # sandbox.isolation of every run (--isolation)
STREAM = {"value": True}  # model.stream (--no-stream)


def one_run(n: int, results: Path) -> list[float]:
    """Gaps (s) between consecutive iteration starts of one agent running `n` iterations."""
    starts: list[float] = []
    last: list[float] = []

    def sink(ev: Event) -> None:
        phase = PHASES.get(ev.type)
        if phase is None:
            return
        now = time.perf_counter()
        if phase == "start":
            starts.append(now)
            if last:
                _parts.setdefault("events, record, prompt", []).append(now - last[0])
        elif last:
            _parts.setdefault(phase, []).append(now - last[0])
        last[:] = [now]

    cfg = RLMConfig().with_overrides(
        {
            "model.name": _model(n),
            "results_dir": str(results),
            "model.retries": 0,
            "rlm.max_iterations": n + 1,
            "sandbox.isolation": ISOLATION["value"],
            "model.stream": STREAM["value"],
        }
    )
    res = Run("bench", None, config=cfg, on_event=sink).execute()
    assert res.status == "done", res.error
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    return gaps[1:]  # the first gap includes waiting for the sandbox


def measure(reps: int, n: int, results: Path) -> dict[str, float]:
    """Medians over `reps` runs of `n` iterations (one warm-up run first)."""
    one_run(min(n, 5), results)  # warm: fork server, litellm's first call
    _parts.clear()
    gaps: list[float] = []
    for _ in range(reps):
        gaps += one_run(n, results)
    gaps.sort()
    q = statistics.quantiles(gaps, n=4) if len(gaps) > 1 else [gaps[0]] * 3
    return {"median": statistics.median(gaps), "p25": q[0], "p75": q[2], "count": len(gaps)}


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for CI (no targets checked)")
    ap.add_argument("--isolation", default="auto", help="sandbox.isolation: auto, bwrap or none")
    ap.add_argument("--no-stream", action="store_true", help="model.stream: false")
    args = ap.parse_args(argv)
    ISOLATION["value"] = args.isolation
    STREAM["value"] = not args.no_stream
    reps, n = (1, 4) if args.smoke else (args.reps, args.iterations)
    llm.import_litellm()  # the one-time import is not per-iteration overhead
    with tempfile.TemporaryDirectory(prefix="rlm-bench-") as work:
        results = Path(work) / "results"
        stats = measure(reps, n, results)
        print(
            f"per-iteration overhead at LATENCY_S = 0, isolation {args.isolation} "
            f"({stats['count']:.0f} iterations, {reps} runs): "
            f"median {stats['median'] * 1000:.1f} ms "
            f"(p25 {stats['p25'] * 1000:.1f}, p75 {stats['p75'] * 1000:.1f}; target <= 15 ms)"
        )
        print(
            "where it goes (medians, ms): "
            + ", ".join(f"{k} {statistics.median(v) * 1000:.1f}" for k, v in _parts.items())
        )
    return stats


if __name__ == "__main__":
    main()
