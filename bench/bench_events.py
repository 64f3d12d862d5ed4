"""Cost of the engine's events: emitting (with the run's consumers subscribed) and replaying.

Every iteration of every agent emits events, and each one goes through the run's emit lock to
the recorder, the notebook's `RunView` and the `AgentTree` widget. This measures that path
alone, without sandboxes or LLM calls: one thread emits what AGENTS agents emit (started,
sandbox ready, ITERATIONS times [iteration started, LLM response, code executed, iteration
finished], finished; iterations interleaved as concurrent agents interleave them) into a run
that is never started. One thread, so the figure is the events' own cost and not the
scheduling of many threads on a shared machine (tests/test_engine_api.py covers many threads).
Reports microseconds per event (the median and the best of the repetitions) with the recorder
only and with all three consumers, and the time a late `Run.subscribe` takes to replay it all.

    .venv/bin/python bench/bench_events.py [--reps 5] [--agents 50] [--iterations 20] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from rlm_kernel.config import RLMConfig
from rlm_kernel.display import RunView
from rlm_kernel.events import (
    AgentFinished,
    AgentStarted,
    CodeExecuted,
    Event,
    IterationFinished,
    IterationStarted,
    LLMResponse,
    RunFinished,
    SandboxReady,
)
from rlm_kernel.runner import Run
from rlm_widget import AgentTree

USAGE = {"llm_calls": 1, "prompt_tokens": 900, "completion_tokens": 80, "cost_usd": 0.0004}
NAMESPACE = [{"name": f"v{i}", "type": "int", "repr": str(i), "size": None} for i in range(8)]


def one(
    results: Path, agents: int, iterations: int, consumers: bool
) -> tuple[list[float], int, float]:
    """µs per event of each round of iterations; the events; the ms of a late replay."""
    run = Run("bench", config=RLMConfig().with_overrides({"results_dir": str(results)}))
    tree = None
    if consumers:
        run.subscribe(RunView(run, quiet=True, notebook=False))
        tree = AgentTree.from_run(run)
        tree._send = lambda *a, **k: None  # type: ignore[method-assign]  # no front end here
    ids = ["root"] + [f"root.{n}" for n in range(agents - 1)]
    for aid in ids:
        run.emit(AgentStarted("root" if aid != "root" else None, 1, f"task of {aid}", 0.0), aid)
        run.emit(SandboxReady({"backend": "local", "id": aid, "path": f"/tmp/{aid}"}), aid)
    # The timed part: the events of every iteration, as agent.py emits them (an agent's start
    # and end are milestones the recorder writes the record for: not the events' own cost).
    rounds: list[float] = []  # µs per event of each round (every agent's iteration i)
    for i in range(iterations):
        t0 = time.perf_counter()
        text = f"Step {i}.\n```python\nx{i} = {i}\nprint(x{i})\n```"
        for aid in ids:
            run.emit(IterationStarted(i), aid)
            run.emit(LLMResponse(i, text, USAGE), aid)
            run.emit(CodeExecuted(i, 0, f"x{i} = {i}\nprint(x{i})", f"{i}\n", None, 0.004), aid)
            run.emit(IterationFinished(i, NAMESPACE), aid)
        rounds.append((time.perf_counter() - t0) / (4 * len(ids)) * 1e6)
    timed = agents * 4 * iterations
    for aid in ids:
        run.emit(AgentFinished("done", "ok", None, USAGE, 1.0, ""), aid)
    run.emit(RunFinished("done", "ok", "", USAGE, 1.0, "2026-01-01T00:00:00"))
    got: list[Event] = []
    t1 = time.perf_counter()
    run.subscribe(got.append)
    replay = time.perf_counter() - t1
    assert len(got) == timed + 3 * agents + 1
    if tree is not None:
        tree.close()
    return rounds, len(got), replay * 1e3


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = ap.parse_args(argv)
    reps, agents, iterations = (
        (1, 4, 3) if args.smoke else (args.reps, args.agents, args.iterations)
    )
    print("| consumers | events | µs per event, median (best) | replay to a late subscriber (ms) |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="rlm-bench-") as work:
        for consumers in (False, True):
            rows = [
                one(Path(work) / f"r{consumers}{r}", agents, iterations, consumers)
                for r in range(reps)
            ]
            name = "recorder, RunView, AgentTree" if consumers else "recorder"
            rounds = [x for r in rows for x in r[0]]
            per, best = statistics.median(rounds), min(rounds)
            replay = statistics.median(r[2] for r in rows)
            print(f"| {name} | {rows[0][1]} | {per:.1f} ({best:.1f}) | {replay:.1f} |")


if __name__ == "__main__":
    main()
