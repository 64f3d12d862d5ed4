"""W3 of `bench_peers.py` (30 trivial turns at L = 0), taken apart: where one iteration goes.

rlm-kernel only, in this process, against `openai_server.py` in a process of its own (as in
`bench_peers.py`: the server's work is not the engine's, and shares no GIL with it). The
engine's steps are timed by wrapping them (time.perf_counter marks, and the agent thread's own
CPU time): the LLM call from the agent's request to the server's arrival time and from there to
the parsed reply, the cell (sent → idle, with its namespace summary), the events and the live
record; and, once per run, the sandbox's start (workspace, kernel spawn, sockets bound, kernel
ready, runtime installed) and the run's end (diff, close). Medians over `--reps` runs after a
warm-up run; the first and last iterations of each run are left out of the per-iteration rows.

    .venv/bin/python bench/bench_w3.py [--reps 3] [--config '{"sandbox.isolation": "none"}']
    .venv/bin/python bench/bench_w3.py --smoke      # one run after the warm-up (CI)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine
from openai_server import W3_TURNS

from rlm_kernel import agent, records, runner
from rlm_kernel.config import RLMConfig
from rlm_kernel.sandbox import base, kernels, local

_MARKS: list[tuple[float, str, float]] = []  # (time.time(), name, the thread's CPU time)


def _mark(name: str) -> None:
    _MARKS.append((time.time(), name, time.thread_time()))


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _mark(name + "<")
        try:
            return fn(*args, **kwargs)
        finally:
            _mark(name + ">")

    return wrapper


def instrument() -> None:
    """Wrap the engine's steps (this process only; a benchmark, not the engine)."""
    for owner, attr, name in [
        (agent.Agent, "_turn", "llm"),
        (base.Sandbox, "execute", "cell"),
        (runner.Run, "emit", "emit"),
        (records.Recorder, "__call__", "record"),
        (local.LocalSandbox, "start", "sandbox start"),
        (local.LocalSandbox, "prepare", "workspace + kernel"),
        (local.LocalSandbox, "_install_runtime", "runtime install"),
        (local.LocalSandbox, "close", "sandbox close"),
        (local.LocalSandbox, "diff", "diff"),
        (kernels.KernelHandle, "_spawn_confined", "kernel spawn"),
        (kernels.KernelHandle, "_spawn_forked", "kernel spawn"),
        (kernels.KernelHandle, "shutdown", "kernel shutdown"),
    ]:
        setattr(owner, attr, _timed(name, getattr(owner, attr)))
    for fn in ("_wait_bound", "_wait_ready"):
        setattr(kernels, fn, _timed("kernel " + fn[1:].replace("_", " "), getattr(kernels, fn)))


@contextmanager
def server() -> Iterator[tuple[str, Path]]:
    """The scripted server in its own process; yields its URL and its arrivals file."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as log:
        path = Path(log.name)
    script = str(Path(__file__).resolve().parent / "openai_server.py")
    with open(path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, script, "--port", str(port), "--latency", "0", "--arrivals"],
            stdout=out,
        )
    try:
        deadline = time.monotonic() + 30
        while "serving" not in path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1", path
    finally:
        proc.terminate()
        proc.wait()
        path.unlink()


def arrivals(path: Path) -> list[float]:
    return [
        float(ln.split()[1]) for ln in path.read_text().splitlines() if ln.startswith("ARRIVAL")
    ]


def one_run(url: str, results: str, extra: dict[str, Any]) -> tuple[float, float, float]:
    """One W3 run; returns (start, end, process CPU seconds)."""
    os.environ["OPENAI_API_BASE"], os.environ["OPENAI_API_KEY"] = url, "bench"
    cfg = RLMConfig().with_overrides(
        {
            "model.name": "openai/w3",
            "results_dir": results,
            "model.retries": 0,
            "rlm.max_iterations": W3_TURNS + 5,
            **extra,
        }
    )
    _MARKS.clear()
    t0, c0 = time.time(), time.process_time()
    res = runner.Run("Workload w3", None, config=cfg).execute()
    if res.status != "done":
        raise RuntimeError(f"the run ended {res.status}: {res.error}")
    return t0, time.time(), time.process_time() - c0


def spans(name: str) -> list[tuple[float, float, float, float]]:
    """(start, end, thread CPU, thread CPU clock at the start) of every call of a wrapped
    step, in order."""
    starts = [(t, c) for t, n, c in _MARKS if n == name + "<"]
    ends = [(t, c) for t, n, c in _MARKS if n == name + ">"]
    return [(a[0], b[0], b[1] - a[1], a[1]) for a, b in zip(starts, ends, strict=False)]


def breakdown(
    t0: float, t1: float, cpu: float, arr: list[float], rows: dict[str, list[float]]
) -> None:
    llm, cell = spans("llm"), spans("cell")
    n = len(llm)
    for i in range(1, n - 1):  # the first waits for the sandbox, the last ends the run
        rows["iteration: one turn to the next (wall)"].append(llm[i + 1][0] - llm[i][0])
        rows["  LLM: request made → server's arrival"].append(arr[i] - llm[i][0])
        rows["  LLM: arrival → reply parsed (agent thread)"].append(llm[i][1] - arr[i])
        rows["  reply → cell sent (code blocks, step gate, events)"].append(cell[i][0] - llm[i][1])
        rows["  cell: sent → idle, summary in (wall)"].append(cell[i][1] - cell[i][0])
        rows["  cell end → next request (events, record, prompt)"].append(
            llm[i + 1][0] - cell[i][1]
        )
        rows["agent thread CPU per iteration"].append(llm[i + 1][3] - llm[i][3])
        rows["  of which in the LLM call"].append(llm[i][2])
        rows["  of which in the cell"].append(cell[i][2])
    for name in ("emit", "record"):
        rows[f"{name}: total per iteration"].append(sum(s[1] - s[0] for s in spans(name)) / n)
    rows["run: start → first LLM request"].append(llm[0][0] - t0)
    rows["run: first reply → first cell sent (waits for the sandbox)"].append(
        cell[0][0] - llm[0][1]
    )
    for name in (
        "sandbox start",
        "workspace + kernel",
        "kernel spawn",
        "kernel wait bound",
        "kernel wait ready",
        "runtime install",
    ):
        rows[f"  {name}"].append(sum(s[1] - s[0] for s in spans(name)))
    rows["run: first cell (wall)"].append(cell[0][1] - cell[0][0])
    rows["run: last cell's end → result"].append(t1 - cell[-1][1])
    for name in ("diff", "sandbox close", "kernel shutdown"):
        rows[f"  {name}"].append(sum(s[1] - s[0] for s in spans(name)))
    rows["run: wall"].append(t1 - t0)
    rows["run: wall / 30"].append((t1 - t0) / W3_TURNS)
    rows["run: host process CPU"].append(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--config", default="{}", help="config overrides (JSON)")
    ap.add_argument("--smoke", action="store_true", help="one run after the warm-up (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.reps = 1
    extra = json.loads(args.config)
    instrument()
    rows: dict[str, list[float]] = defaultdict(list)
    print(f"{machine()} at the start; {args.reps} runs after a warm-up run")
    with server() as (url, log), tempfile.TemporaryDirectory() as results:
        for rep in range(args.reps + 1):
            seen = len(arrivals(log))
            t0, t1, cpu = one_run(url, results, extra)
            arr = arrivals(log)[seen:]
            if rep:
                breakdown(t0, t1, cpu, arr, rows)
    print("| step | median (ms) |\n|---|---:|")
    for name, values in rows.items():
        print(f"| {name} | {1000 * statistics.median(values):.2f} |")
    print(f"\nat the end: {machine()}")


if __name__ == "__main__":
    main()
