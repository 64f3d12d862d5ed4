"""Benchmark kernel start-up: 1 and 12 kernels started in parallel threads, per launcher.

Run: ``.venv/bin/python bench/bench_kernels.py [--reps 5] [--sizes 1,12]``. Prints a Markdown
table of medians: wall time until every kernel is ready (client connected, kernel_info answered,
iopub subscribed), the time to the first cell's output, and the CPU each kernel process used.
"fork (cold)" includes starting the fork server (the first kernel of a host process pays it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlm_kernel.sandbox import kernels
from rlm_kernel.sandbox.kernels import KernelHandle, shutdown_all, start_kernel

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds used so far by pid (Linux /proc)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start_many(n: int, launcher: str, root: str) -> tuple[float, float, list[KernelHandle]]:
    """Start n kernels from n threads; return (wall to all ready, wall to first output, handles)."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": os.environ.get("HOME", "/tmp")}
    handles: list[KernelHandle] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            h = start_kernel(root, env, runtime_dir=os.path.join(root, "rt"), launcher=launcher)
        except BaseException as exc:
            with lock:
                errors.append(exc)
            return
        with lock:
            handles.append(h)

    threads = [threading.Thread(target=one) for _ in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ready = time.perf_counter() - t0
    if errors:
        raise errors[0]
    out: list[str] = []
    handles[0].client.execute_interactive(
        "print('ok')",
        timeout=30,
        output_hook=lambda m: out.append(m["content"].get("text", "")),
    )
    first_output = time.perf_counter() - t0
    assert "ok" in "".join(out)
    return ready, first_output, handles


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sizes", default="1,12")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    cases = [("fork (cold)", "fork", 1)]
    cases += [(launcher, launcher, n) for launcher in ("fork", "subprocess") for n in sizes]
    with tempfile.TemporaryDirectory(prefix="bench-k") as root:
        for label, launcher, n in cases:
            walls, firsts, cpus = [], [], []
            for _ in range(args.reps):
                if label == "fork (cold)":
                    shutdown_all()  # the next kernel starts a fresh fork server
                elif launcher == "fork":
                    kernels._get_fork_server(30.0)  # warm: the server already runs
                ready, first, handles = start_many(n, launcher, root)
                walls.append(ready)
                firsts.append(first)
                cpus += [cpu_seconds(h.pid) for h in handles]
                for h in handles:
                    h.shutdown()
            rows.append(
                (
                    label,
                    n,
                    statistics.median(walls),
                    min(walls),
                    max(walls),
                    statistics.median(firsts),
                    statistics.median(cpus),
                )
            )
            print(f"  {label} N={n}: {[round(w, 3) for w in walls]}", file=sys.stderr)
    shutdown_all()
    print(f"\n{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {args.reps} repetitions\n")
    print(
        "| launcher | N | all ready, median (s) | min (s) | max (s) "
        "| first output, median (s) | CPU per kernel, median (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, n, med, lo, hi, first, cpu in rows:
        print(f"| {label} | {n} | {med:.3f} | {lo:.3f} | {hi:.3f} | {first:.3f} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
