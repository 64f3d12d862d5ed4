"""Peers, in one run: the same long-context task on rlm-kernel, `rlms` and `dspy.RLM`.

The task: `context` is a list of N text chunks; the model's first turn sends one sub-LLM prompt
per chunk with `llm_query_batched`, then one aggregate `llm_query` over the answers; its second
turn submits the aggregate. Every system talks to the same local OpenAI-compatible server
(`openai_server.py`), which answers every call after the same latency L with a reply in that
system's own format. Each repetition runs one system in a fresh worker process; the parent
measures the wall time of its run, the CPU time of its whole process tree during the run (the
worker's CPU before it is subtracted) and the tree's peak memory. Each worker first makes a
warm-up run on 2 chunks, so one-time costs (imports, lazy imports, rlm-kernel's fork server) are
left out of the measured run for every system alike.

The critical path is 2 turns + 1 aggregate + the batch, which takes ceil(N / width) waves of L
where width is the system's own limit on concurrent sub-LLM calls.

    .venv/bin/python bench/bench_peers.py [--reps 3] [--latency 1.0] [--chunks 100]
    .venv/bin/python bench/bench_peers.py --smoke      # seconds; peers only if importable

Peers are optional: `pip install -e '.[bench]'` (rlms==0.1.3, dspy==3.4.1).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TreeMonitor, machine, median, run_worker, table
from openai_server import Server

QUESTION = "How many words are there in the chunks?"
# Concurrent sub-LLM calls of one llm_query_batched, per system, at the settings used here.
WIDTH = {
    "rlms": 16,  # LMHandler.batch_max_concurrent, fixed in rlms 0.1.3
    "dspy": 8,  # RLM._make_llm_tools(max_workers=8), fixed in dspy 3.4.1
}
MODULE = {"rlm-kernel": "rlm_kernel", "rlms": "rlm", "dspy": "dspy"}
ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "TOKENIZERS_PARALLELISM": "0"}


def chunks(n: int) -> list[str]:
    return [" ".join(f"w{i}_{j}" for j in range(20 + i % 13)) for i in range(n)]


def expected(n: int) -> str:
    return f"{sum(20 + i % 13 for i in range(n))} words in {n} chunks"


# -- workers: one system, one run, in this process --------------------------------------------


def _run_rlm_kernel(url: str, ctx: list[str], results: str, concurrency: int) -> str:
    os.environ["OPENAI_API_BASE"] = url
    os.environ["OPENAI_API_KEY"] = "bench"
    from rlm_kernel.config import RLMConfig
    from rlm_kernel.runner import Run

    cfg = RLMConfig().with_overrides(
        {
            "model.name": "openai/bench",
            "results_dir": results,
            "model.retries": 0,
            "rlm.max_concurrency": concurrency,
        }
    )
    t0 = time.perf_counter()
    res = Run(QUESTION, None, config=cfg, context=ctx).execute()
    _report(t0, res.answer)
    if res.status != "done":
        raise RuntimeError(f"rlm-kernel run ended {res.status}: {res.error}")
    return str(res.answer)


def _run_rlms(url: str, ctx: list[str]) -> str:
    from rlm import RLM

    r = RLM(
        backend="openai",
        backend_kwargs={"model_name": "bench", "base_url": url, "api_key": "bench"},
        environment="local",
        max_iterations=5,
    )
    t0 = time.perf_counter()
    out = r.completion(ctx, root_prompt=QUESTION)
    _report(t0, out.response)
    return str(out.response)


def _run_dspy(url: str, ctx: list[str]) -> str:
    import dspy
    from dspy.primitives.local_interpreter import LocalInterpreter

    lm = dspy.LM("openai/bench", api_base=url, api_key="bench", cache=False, num_retries=0)
    dspy.configure(lm=lm)
    # The default interpreter (Deno + Pyodide) downloads Pyodide at first use; LocalInterpreter
    # (a persistent CPython worker process) runs offline.
    rlm = dspy.RLM(
        "context: list[str], question: str -> answer: str",
        max_iters=5,
        max_llm_calls=len(ctx) + 10,
        interpreter_factory=LocalInterpreter,
    )
    t0 = time.perf_counter()
    out = rlm(context=ctx, question=QUESTION)
    _report(t0, out.answer)
    return str(out.answer)


_T: dict[str, float] = {}


def _report(t0: float, answer: Any) -> None:
    _T["wall"] = time.perf_counter() - t0
    _T["answer"] = answer


def worker(system: str, url: str, n: int) -> None:
    """A warm-up run on 2 chunks (imports, lazy imports, fork server…), then the measured run."""
    with tempfile.TemporaryDirectory(prefix="rlm-bench-peers-") as results:
        for size in (2, n):
            ctx = chunks(size)
            with TreeMonitor() as mon:
                if system.startswith("rlm-kernel"):
                    answer = _run_rlm_kernel(url, ctx, results, _concurrency(system))
                elif system == "rlms":
                    answer = _run_rlms(url, ctx)
                else:
                    answer = _run_dspy(url, ctx)
    print(json.dumps({"wall": _T["wall"], "answer": answer, **mon.summary()}), flush=True)


# -- the parent ---------------------------------------------------------------------------------


def _concurrency(system: str) -> int:
    """rlm.max_concurrency of `rlm-kernel` (16, the default) or `rlm-kernel:N`."""
    return int(system.split(":")[1]) if ":" in system else 16


def width(system: str) -> int:
    if system.startswith("rlm-kernel"):
        return 4 * _concurrency(system)  # llm_query_batched's width: 4 * rlm.max_concurrency
    return WIDTH[system]


def available(system: str) -> bool:
    return importlib.util.find_spec(MODULE[system.split(":")[0]]) is not None


def measure(system: str, url: str, n: int) -> dict[str, Any]:
    out = run_worker([__file__, "--worker", system, "--url", url, "--chunks", str(n)], ENV)
    data: dict[str, Any] = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
    if str(data["answer"]).strip() != expected(n):
        raise RuntimeError(f"{system}: wrong answer {data['answer']!r}, expected {expected(n)!r}")
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--latency", type=float, default=1.0)
    ap.add_argument("--chunks", type=int, default=100)
    ap.add_argument(
        "--systems",
        default="rlm-kernel,rlm-kernel:25,rlms,dspy",
        help="rlm-kernel:N sets rlm.max_concurrency = N (batch width 4N; default 16)",
    )
    ap.add_argument("--smoke", action="store_true", help="10 chunks, L = 0.05 s, 1 repetition")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.url, args.chunks)
        return
    if args.smoke:
        args.reps, args.latency, args.chunks = 1, 0.05, 10
    L, n = args.latency, args.chunks
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    print(f"{n} chunks, latency per LLM call L = {L} s, {args.reps} repetitions, medians\n")
    rows = []
    skipped = []
    with Server(L) as srv:
        for system in systems:
            if not available(system):
                skipped.append(
                    f"{system}: not installed (pip install -e '.[bench]' installs rlms and dspy)"
                )
                continue
            runs = [measure(system, srv.url, n) for _ in range(args.reps)]
            w = min(n, width(system))
            crit = (3 + math.ceil(n / w)) * L
            wall = median([r["wall"] for r in runs])
            rows.append(
                [
                    system,
                    w,
                    f"{crit:.2f}",
                    f"{wall:.2f}",
                    f"{wall / crit:.2f}",
                    f"{median([r['cpu_s'] for r in runs]):.2f}",
                    f"{median([r['peak_pss_mb'] for r in runs]):.0f}",
                    f"{median([r['peak_rss_mb'] for r in runs]):.0f}",
                    f"{median([r['procs'] for r in runs]):.0f}",
                ]
            )
        counts = dict(srv.counts)
    headers = [
        "system",
        "batch width",
        "critical path (s)",
        "wall (s)",
        "wall / critical path",
        "CPU, process tree (s)",
        "peak PSS (MB)",
        "peak RSS, summed (MB)",
        "processes",
    ]
    print(f"at the end: {machine()}\n")
    print(table(headers, rows))
    print(f"\nrequests served per kind: {counts}")
    for s in skipped:
        print(f"skipped {s}")


if __name__ == "__main__":
    main()
