"""Engine overhead against the critical path, with scripted models of known latency.

The critical path of a run is its chain of LLM calls that must happen one after another; with a
scripted model of latency L it takes (calls on the chain) * L. Everything above that is overhead:
sandbox creation, kernels, bridge round trips, events, records. Reports medians (machines here are
shared and noisy), as a Markdown table.

    .venv/bin/python bench/bench_overhead.py [--reps 5] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rlm_kernel import llm
from rlm_kernel.config import RLMConfig
from rlm_kernel.demo import demo_model, prepare_demo
from rlm_kernel.runner import Run


def _chain(latency: float) -> str:
    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        it = info["iteration"]
        return "```python\nFINAL('done')\n```" if it >= 9 else f"```python\nx{it} = {it}\n```"

    return llm.register_scripted(f"bench-chain-{latency}", respond, latency_s=latency)


def _fanout(latency: float) -> str:
    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        if info["depth"] == 1:
            return "```python\nFINAL('child')\n```"
        if info["iteration"] == 0:
            return "```python\nr = rlm_query_batched([f'task {i}' for i in range(12)])\n```"
        return "```python\nFINAL(str(len(r)))\n```"

    return llm.register_scripted(f"bench-fanout-{latency}", respond, latency_s=latency)


def _bridge(latency: float) -> str:
    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        if info["kind"] == "llm_query":
            return "pong"
        return (
            "```python\nimport time\nts = []\nfor _ in range(50):\n    t = time.perf_counter()\n"
            "    llm_query('ping')\n    ts.append(time.perf_counter() - t)\nts.sort()\n"
            "FINAL(str(ts[25]))\n```"
        )

    return llm.register_scripted(f"bench-bridge-{latency}", respond, latency_s=latency)


def _run(
    model: str, results: Path, repo: Path | None = None, task: str = "bench"
) -> tuple[float, Any]:
    cfg = RLMConfig().with_overrides(
        {"model.name": model, "results_dir": str(results), "model.retries": 0}
    )
    t0 = time.perf_counter()
    res = Run(task, repo, config=cfg).execute()
    assert res.status == "done", res.error
    return time.perf_counter() - t0, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--latency", type=float, default=0.2)
    args = ap.parse_args()
    L = args.latency
    llm.import_litellm()  # the one-time ~3.5 s import is not engine overhead
    work = Path(tempfile.mkdtemp(prefix="rlm-bench-"))
    repo, _, prompt = prepare_demo(work)
    scenarios = [
        ("chain: 1 agent, 10 iterations", lambda: _run(_chain(L), work / "r"), 10),
        ("fan-out: root + 12 children", lambda: _run(_fanout(L), work / "r"), 3),
        (
            "demo: 7 agents, 3 levels, worktrees",
            lambda: _run(demo_model(), work / "r", repo, prompt),
            None,
        ),
    ]
    print(f"latency per LLM call L = {L} s, {args.reps} repetitions, medians\n")
    print("| scenario | critical path (s) | wall (s) | overhead (s) | wall / critical path |")
    print("|---|---:|---:|---:|---:|")
    for name, fn, chain_calls in scenarios:
        fn()  # warm: fork server, caches
        walls = [fn()[0] for _ in range(args.reps)]
        wall = statistics.median(walls)
        if chain_calls is None:  # demo: root 4 turns, child 3, grandchild 2 + its llm_query
            chain_calls = 10
            crit = chain_calls * 0.2  # the demo model's own LATENCY_S
        else:
            crit = chain_calls * L
        print(f"| {name} | {crit:.2f} | {wall:.2f} | {wall - crit:.2f} | {wall / crit:.2f} |")
    _, res = _run(_bridge(0.0), work / "r")
    print(
        f"\nllm_query round trip through the bridge at L = 0 (median of 50 in one cell): {float(res.answer) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
