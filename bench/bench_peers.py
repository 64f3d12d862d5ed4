"""Peers, side by side in one invocation: rlm-kernel, `rlms` and `dspy.RLM` on the same workloads.

Every system talks to the same local OpenAI-compatible server (`openai_server.py`), which answers
every call after the workload's latency L with a scripted reply in that system's own format. The
workloads (the same code for all three systems, each through its own REPL functions):

- W1: one `llm_query_batched` of 100 prompts, all in flight at once, then submit (L = 0.5 s;
  critical path 3 L = 1.5 s).
- W2: 10 children through each system's own recursion, all in flight: rlm-kernel
  `rlm_query_batched`; rlms `rlm_query_batched` with `max_depth=2, max_concurrent_subcalls=10`;
  dspy.RLM has no recursion, so its `rlm_query_batched` is a host tool that runs one child
  `dspy.RLM` per task from a pool of 10 threads. Each child takes 2 turns; the root's second turn
  submits (L = 1 s; critical path 4 L = 4 s).
- W3: 30 trivial turns (assign and print a number), then submit (L = 0: pure overhead per
  iteration). "ms / iteration" is the run's wall time / 30 (its start and end included: a
  sandbox, an interpreter to start); "median turn gap" is the median time between two of the
  root's LLM calls, from the server's arrival times (one iteration, nothing else); "growth" is
  that gap over the last 10 turns against the first 10.
- mapreduce (the earlier single task, `--workloads mapreduce`): 100 chunks of `context` through
  `llm_query_batched`, then one aggregate `llm_query`.

Equal settings: every system gets the same width. W1: 100 concurrent sub-LLM calls (rlm-kernel
`rlm.max_concurrency = 25`, as its batches are 4 times that wide; rlms's fixed
`LMHandler.batch_max_concurrent` (16) and dspy's fixed `_make_llm_tools(max_workers=8)` are raised
to 100 with a one-line patch in the worker). W2: 10 children at once for all.

Each repetition runs one system and workload in a fresh worker process, after a warm-up run of
the same workload in that process (imports, lazy imports, rlm-kernel's fork server are left out
for all). CPU is the worker's whole process tree during the measured run: its own, what it reaped,
and every other descendant's own and reaped CPU (a forked kernel's CPU is reaped by its init,
and that by the fork server, not by the worker; each counted once), sampled every 0.1 s, less
the sampling's own CPU (`_common.TreeMonitor`); memory is the tree's peak PSS (shared pages split
between the processes that share them) and summed RSS, sampled every 0.2 s.

    .venv/bin/python bench/bench_peers.py [--reps 3] [--workloads w1,w2,w3] [--systems ...]
    .venv/bin/python bench/bench_peers.py --smoke      # seconds; peers only if importable

Peers are optional: `pip install -e '.[bench]'` (rlms==0.1.3, dspy==3.4.1).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TreeMonitor, machine, median, run_worker, table
from openai_server import W1_CALLS, W2_CHILDREN, W3_TURNS, Server, expected

QUESTION = "How many words are there in the chunks?"
MODULE = {"rlm-kernel": "rlm_kernel", "rlms": "rlm", "dspy": "dspy"}
ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "TOKENIZERS_PARALLELISM": "0"}
LATENCY = {"w1": 0.5, "w2": 1.0, "w3": 0.0, "mapreduce": 1.0}
SMOKE_LATENCY = {"w1": 0.05, "w2": 0.05, "w3": 0.0, "mapreduce": 0.05}
# Concurrent sub-LLM calls / children, the same for every system.
WIDTH = {"w1": W1_CALLS, "w2": W2_CHILDREN, "w3": 1, "mapreduce": 16}


def chunks(n: int) -> list[str]:
    return [" ".join(f"w{i}_{j}" for j in range(20 + i % 13)) for i in range(n)]


def critical_path(workload: str, latency: float, n_chunks: int) -> float:
    """The chain of LLM calls that must happen one after another, in seconds."""
    if workload == "w1":
        return 3 * latency
    if workload == "w2":
        return 4 * latency
    if workload == "w3":
        return W3_TURNS * latency
    return (3 + math.ceil(n_chunks / WIDTH["mapreduce"])) * latency


# -- workers: one system, one run, in this process --------------------------------------------


def _run_rlm_kernel(url: str, workload: str, ctx: list[str] | None, results: str) -> str:
    os.environ["OPENAI_API_BASE"] = url
    os.environ["OPENAI_API_KEY"] = "bench"
    from rlm_kernel.config import RLMConfig
    from rlm_kernel.runner import Run

    concurrency = {"w1": W1_CALLS // 4, "mapreduce": WIDTH["mapreduce"] // 4}.get(workload, 16)
    cfg = RLMConfig().with_overrides(
        {
            "model.name": f"openai/{workload}",
            "results_dir": results,
            "model.retries": 0,
            "rlm.max_concurrency": concurrency,
            "rlm.max_iterations": W3_TURNS + 5,
            # Experiments: e.g. RLM_BENCH_CONFIG='{"sandbox.pool_size": 0}'
            **json.loads(os.environ.get("RLM_BENCH_CONFIG") or "{}"),
        }
    )
    kwargs: dict[str, Any] = {} if ctx is None else {"context": ctx}
    t0 = time.perf_counter()
    res = Run(QUESTION if ctx else f"Workload {workload}", None, config=cfg, **kwargs).execute()
    _report(t0, res.answer)
    if res.status != "done":
        raise RuntimeError(f"rlm-kernel run ended {res.status}: {res.error}")
    return str(res.answer)


def _run_rlms(url: str, workload: str, ctx: list[str] | None) -> str:
    import rlm.core.lm_handler as lm_handler
    from rlm import RLM

    width = WIDTH[workload]
    init = lm_handler.LMHandler.__init__
    if getattr(init, "_bench_width", None) != width:  # rlms 0.1.3 fixes batch width at 16

        def patched(self: Any, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            self.batch_max_concurrent = width

        patched._bench_width = width  # type: ignore[attr-defined]
        lm_handler.LMHandler.__init__ = patched  # type: ignore[method-assign]
    r = RLM(
        backend="openai",
        backend_kwargs={"model_name": workload, "base_url": url, "api_key": "bench"},
        environment="local",
        max_iterations=W3_TURNS + 5,
        max_depth=2 if workload == "w2" else 1,
        max_concurrent_subcalls=W2_CHILDREN,
    )
    t0 = time.perf_counter()
    # A child's task reaches it only as its `context` (the server tells roots by "ROOT ").
    root_prompt = QUESTION if ctx else f"ROOT {workload}"
    out = r.completion(ctx if ctx is not None else "", root_prompt=root_prompt)
    _report(t0, out.response)
    return str(out.response)


def _run_dspy(url: str, workload: str, ctx: list[str] | None) -> str:
    import functools

    import dspy
    from dspy.primitives.local_interpreter import LocalInterpreter

    lm = dspy.LM(f"openai/{workload}", api_base=url, api_key="bench", cache=False, num_retries=0)
    dspy.configure(lm=lm)
    width = WIDTH[workload]
    # dspy 3.4.1 fixes llm_query_batched's thread pool at 8 workers.
    if not hasattr(dspy.RLM, "_bench_make_llm_tools"):
        dspy.RLM._bench_make_llm_tools = dspy.RLM._make_llm_tools  # type: ignore[attr-defined]
    dspy.RLM._make_llm_tools = functools.partialmethod(  # type: ignore[method-assign]
        dspy.RLM._bench_make_llm_tools,  # type: ignore[attr-defined]
        max_workers=width,
    )

    def child(task: str) -> str:
        sub = dspy.RLM(
            "task: str -> answer: str", max_iters=5, interpreter_factory=LocalInterpreter
        )
        return str(sub(task=task).answer)

    def rlm_query_batched(tasks: list[str]) -> list[str]:
        """Run one child agent per task, all at once, and return their answers in order."""
        with ThreadPoolExecutor(max_workers=W2_CHILDREN) as pool:
            return list(pool.map(child, tasks))

    # The default interpreter (Deno + Pyodide) downloads Pyodide at first use; LocalInterpreter
    # (a persistent CPython worker process) runs offline.
    if ctx is not None:
        sig, inputs = "context: list[str], question: str -> answer: str", {"context": ctx}
        inputs["question"] = QUESTION  # type: ignore[assignment]
    else:
        sig, inputs = "task: str -> answer: str", {"task": f"Workload {workload}"}  # type: ignore[dict-item]
    rlm = dspy.RLM(
        sig,
        max_iters=W3_TURNS + 5,
        max_llm_calls=W1_CALLS + (len(ctx) if ctx else 0) + 10,
        interpreter_factory=LocalInterpreter,
        tools=[rlm_query_batched] if workload == "w2" else None,
    )
    t0 = time.perf_counter()
    out = rlm(**inputs)
    _report(t0, out.answer)
    return str(out.answer)


_T: dict[str, Any] = {}


def _report(t0: float, answer: Any) -> None:
    _T["wall"] = time.perf_counter() - t0
    _T["answer"] = answer


def worker(system: str, workload: str, url: str, n: int) -> None:
    """A warm-up run (imports, lazy imports, fork server…), then the measured run."""
    with tempfile.TemporaryDirectory(prefix="rlm-bench-peers-") as results:
        for size in (2, n):
            ctx = chunks(size) if workload == "mapreduce" else None
            with TreeMonitor() as mon:
                t_start = time.monotonic()
                if system == "rlm-kernel":
                    answer = _run_rlm_kernel(url, workload, ctx, results)
                elif system == "rlms":
                    answer = _run_rlms(url, workload, ctx)
                else:
                    answer = _run_dspy(url, workload, ctx)
    out = {
        "wall": _T["wall"],
        "answer": answer,
        "t_start": t_start,
        "split": mon.split(),
        **mon.summary(),
    }
    print(json.dumps(out), flush=True)


# -- the parent ---------------------------------------------------------------------------------


def available(system: str) -> bool:
    return importlib.util.find_spec(MODULE[system]) is not None


def measure(system: str, workload: str, srv: Server, n: int) -> dict[str, Any]:
    mark = len(srv.log)
    argv = [__file__, "--worker", system, "--workload", workload, "--url", srv.url]
    out = run_worker([*argv, "--chunks", str(n)], ENV)
    data: dict[str, Any] = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
    want = expected(workload, n)
    data["correct"] = str(data["answer"]).strip() == want
    if not data["correct"]:
        msg = f"{system} {workload}: wrong answer {str(data['answer'])[:300]!r}, expected {want!r}"
        if system == "rlm-kernel":
            raise RuntimeError(msg)
        print(f"note: {msg}", file=sys.stderr)
    # The root's LLM calls of the measured run (after the worker's start time).
    calls = [
        t
        for t, sysname, role, _, _ in srv.log[mark:]
        if sysname == system and role == "root" and t >= data["t_start"]
    ]
    data["root_calls"] = calls
    return data


def split_line(system: str, workload: str, run: dict[str, Any]) -> str:
    """One run's CPU by process: the host's own, then each process name's (count, CPU-s)."""
    parts = [f"host {run['cpu_own_s']:.3f}"]
    for name, (n, cpu) in sorted(run["split"].items(), key=lambda kv: -kv[1][1]):
        parts.append(f"{name} x{n} {cpu:.3f}")
    return f"split {workload} {system}: tree {run['cpu_s']:.3f} = " + ", ".join(parts)


def turn_gap(calls: list[float]) -> float:
    """Median time between two of the root's LLM calls (W3: one iteration, without the run's
    start and end), in seconds."""
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    return median(gaps) if gaps else float("nan")


def growth(calls: list[float]) -> float:
    """Median gap between the root's LLM calls over the last 10 turns / over the first 10."""
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    if len(gaps) < 20:
        return float("nan")
    return median(gaps[-10:]) / max(median(gaps[:10]), 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workloads", default="w1,w2,w3", help="w1, w2, w3, mapreduce")
    ap.add_argument("--systems", default="rlm-kernel,rlms,dspy")
    ap.add_argument("--chunks", type=int, default=100, help="mapreduce: chunks of context")
    ap.add_argument("--smoke", action="store_true", help="1 repetition, L = 0.05 s (w3: 0)")
    ap.add_argument(
        "--split", action="store_true", help="also print each run's CPU by process name"
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.workload, args.url, args.chunks)
        return
    latencies = dict(LATENCY)
    if args.smoke:
        args.reps, args.chunks, latencies = 1, 10, dict(SMOKE_LATENCY)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    skipped = [s for s in systems if not available(s)]
    systems = [s for s in systems if s not in skipped]
    print(f"{args.reps} repetitions, medians; {machine()} at the start\n")
    headers = [
        "workload",
        "system",
        "right answers",
        "critical path (s)",
        "wall (s)",
        "wall / critical path",
        "ms / iteration",
        "median turn gap (ms)",
        "growth (last 10 / first 10)",
        "CPU, process tree (s)",
        "peak PSS (MB)",
        "peak RSS, summed (MB)",
    ]
    rows = []
    for workload in workloads:
        latency = latencies[workload]
        crit = critical_path(workload, latency, args.chunks)
        with Server(latency) as srv:
            # Interleaved repetitions: a slow minute of the machine hits every system alike.
            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
            for _ in range(args.reps):
                for system in systems:
                    runs[system].append(measure(system, workload, srv, args.chunks))
                    if args.split:
                        print(split_line(system, workload, runs[system][-1]), flush=True)
        for system in systems:
            rs = runs[system]
            wall = median([r["wall"] for r in rs])
            per_it = (
                f"{1000 * wall / W3_TURNS:.1f}" if workload == "w3" else "–"
            )  # W3: all of the wall time is overhead
            grow = median([growth(r["root_calls"]) for r in rs]) if workload == "w3" else None
            gap = median([turn_gap(r["root_calls"]) for r in rs]) if workload == "w3" else None
            rows.append(
                [
                    workload.upper() if workload != "mapreduce" else workload,
                    system,
                    f"{sum(r['correct'] for r in rs)}/{len(rs)}",
                    f"{crit:.2f}",
                    f"{wall:.2f}",
                    f"{wall / crit:.2f}" if crit else "–",
                    per_it,
                    f"{1000 * gap:.1f}" if gap is not None else "–",
                    f"{grow:.2f}" if grow is not None else "–",
                    f"{median([r['cpu_s'] for r in rs]):.2f}",
                    f"{median([r['peak_pss_mb'] for r in rs]):.0f}",
                    f"{median([r['peak_rss_mb'] for r in rs]):.0f}",
                ]
            )
    print(table(headers, rows, align="ll" + "r" * (len(headers) - 2)))
    print(f"\nat the end: {machine()}")
    for s in skipped:
        print(f"skipped {s}: not installed (pip install -e '.[bench]' installs rlms and dspy)")


if __name__ == "__main__":
    main()
