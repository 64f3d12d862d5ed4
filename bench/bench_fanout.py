"""Fan-out against the critical path: a root and N children, each child K iterations.

A scripted model of latency L (seconds per LLM call): the root's first turn starts N children
with one `rlm_query_batched`; each child runs K turns (the last one FINAL); the root's second
turn FINALs. Critical path: (2 + K) * L. Every child gets its own sandbox (a forked kernel in a
scratch workspace); `rlm.max_concurrency` and `rlm.max_sandboxes` are raised so that all
children run at once.

Also measured, while the children are live: the memory of each child's kernel (PSS, its share of
pages shared with the fork server and its siblings; RSS; USS, its private pages) read from
/proc, and the host process's memory growth per agent (peak RSS during the first measured run
less RSS before it, divided by the agents).

    .venv/bin/python bench/bench_fanout.py [--reps 3] [--latency 1] [--sizes 25x3,100x2]
    .venv/bin/python bench/bench_fanout.py --smoke     # seconds
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MB, TreeMonitor, breakdown, machine, median, table

from rlm_kernel import llm
from rlm_kernel.config import RLMConfig
from rlm_kernel.runner import Run
from rlm_kernel.sandbox.kernels import live_kernel_pids

TARGETS = {(25, 3): 1.15, (100, 2): 1.3}


def model(n: int, k: int, latency: float) -> str:
    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        it = int(info["iteration"])
        if info["depth"] == 0:
            if it == 0:
                return f"```python\nr = rlm_query_batched([f'part {{i}}' for i in range({n})])\n```"
            return "```python\nFINAL(str(sum(x == 'ok' for x in r)))\n```"
        if it >= k - 1:
            return "```python\nFINAL('ok')\n```"
        return f"```python\nv{it} = [i * i for i in range(1000)]\nprint(len(v{it}))\n```"

    return llm.register_scripted(f"bench-fanout-{n}x{k}-{latency}", respond, latency_s=latency)


class KernelMemory:
    """Sample the live kernels' memory; keep the sample with the most kernels alive."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.best: tuple[int, float, float, float] = (0, 0.0, 0.0, 0.0)  # n, pss, rss, uss
        self.host_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._me = psutil.Process()

    def __enter__(self) -> KernelMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.host_peak = max(self.host_peak, self._me.memory_info().rss)
            pids = live_kernel_pids()
            if len(pids) <= self.best[0]:
                continue
            pss = rss = uss = 0
            n = 0
            for pid in pids:
                try:
                    info = psutil.Process(pid).memory_full_info()
                except psutil.Error:
                    continue
                pss, rss, uss, n = pss + info.pss, rss + info.rss, uss + info.uss, n + 1
            if n > self.best[0]:
                self.best = (n, pss / n / MB, rss / n / MB, uss / n / MB)


def run_once(name: str, results: str, events: list[Any] | None = None) -> float:
    cfg = RLMConfig().with_overrides(
        {
            "model.name": name,
            "results_dir": results,
            "model.retries": 0,
            "rlm.max_concurrency": 128,
            "rlm.max_sandboxes": 256,
        }
    )
    t0 = time.perf_counter()
    sink = events.append if events is not None else None
    res = Run("fan out", None, config=cfg, on_event=sink).execute()
    wall = time.perf_counter() - t0
    if res.status != "done":
        raise RuntimeError(f"run ended {res.status}: {res.error}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--latency", type=float, default=1.0)
    ap.add_argument("--sizes", default="25x3,100x2", help="children x iterations, comma-separated")
    ap.add_argument("--smoke", action="store_true", help="5 children x 2 iterations, L = 0.05 s")
    args = ap.parse_args()
    if args.smoke:
        args.reps, args.latency, args.sizes = 1, 0.05, "5x2"
    L = args.latency
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    llm.import_litellm()  # the one-time import is not engine overhead
    results = tempfile.mkdtemp(prefix="rlm-bench-fanout-")
    run_once(model(2, 2, 0.0), results)  # warm: fork server, caches
    print(f"latency per LLM call L = {L} s, {args.reps} repetitions, medians; {machine()}")
    rows, mem_rows, profiles = [], [], []
    for n, k in sizes:
        name = model(n, k, L)
        crit = (2 + k) * L
        rss0 = psutil.Process().memory_info().rss
        events: list[Any] = []
        with KernelMemory() as mem, TreeMonitor(interval=0.2, memory=False) as cpu:
            walls = [run_once(name, results, events)]
        profiles.append(
            (f"{n} children x {k} iterations (first run)", breakdown(events, 1, k * L, L))
        )
        host_per_agent = (mem.host_peak - rss0) / MB / (n + 1)
        walls += [run_once(name, results) for _ in range(args.reps - 1)]
        wall = median(walls)
        target = TARGETS.get((n, k))
        rows.append(
            [
                f"{n} children x {k} iterations",
                f"{crit:.2f}",
                f"{wall:.2f}",
                f"{min(walls):.2f}",
                f"{wall - crit:.2f}",
                f"{wall / crit:.3f}",
                f"≤ {target}" if target else "-",
                ("yes" if wall / crit <= target else "no") if target else "-",
            ]
        )
        live, pss, rss, uss = mem.best
        mem_rows.append(
            [
                f"{n} children",
                live,
                f"{pss:.1f}",
                f"{rss:.1f}",
                f"{uss:.1f}",
                f"{host_per_agent:.2f}",
                f"{cpu.cpu_s / n:.2f}",
            ]
        )
    shutil.rmtree(results, ignore_errors=True)
    print(f"at the end: {machine()}\n")
    print(
        table(
            [
                "scenario",
                "critical path (s)",
                "wall, median (s)",
                "wall, min (s)",
                "overhead (s)",
                "wall / critical path",
                "target",
                "met",
            ],
            rows,
        )
    )
    print()
    print(
        table(
            [
                "run",
                "kernels live at once",
                "PSS per child kernel (MB)",
                "RSS per child kernel (MB)",
                "USS per child kernel (MB)",
                "host growth per agent (MB)",
                "CPU per child, host + kernels (s)",
            ],
            mem_rows,
        )
    )
    for title, prof in profiles:
        print(f"\nWhere the time goes: {title}\n")
        print(table(["phase", "seconds"], prof))


if __name__ == "__main__":
    main()
