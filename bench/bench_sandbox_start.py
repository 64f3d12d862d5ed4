"""A local sandbox's start, phase by phase: CPU (host, kernel, the rest of the tree) and wall.

Sandboxes are made one after another (no repository: a scratch workspace), each going through
what `LocalSandbox.start()` and an agent do: `prepare()` (workspace + kernel until ready; the
kernel installs the runtime itself where it can), the runtime install (by an execute request when
the kernel did not), two trivial cells, `close()`. Measured per sandbox, medians:

- wall of each phase (the host's clock);
- the host process's CPU in each phase (`time.process_time`: every host thread);
- the kernel's CPU at each phase's end (``/proc/<pid>/task/*/schedstat``: ns, live threads);
- the whole tree's CPU over the sandbox's life (clock ticks of the host and every live
  descendant, reaped children included), less host and kernel: the fork, the kernel's namespace
  set-up and init (under bwrap), the kernel's shutdown and the fork server's own work.

    .venv/bin/python bench/bench_sandbox_start.py [--n 12] [--isolation auto|bwrap|none]
        [--json] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlm_kernel.sandbox import isolation
from rlm_kernel.sandbox.base import SandboxSpec
from rlm_kernel.sandbox.local import LocalSandbox
from rlm_kernel.sandbox.workspace import Target

CLK_TCK = os.sysconf("SC_CLK_TCK")


def kernel_cpu(pid: int) -> float:
    """CPU seconds of a live process's threads (schedstat: nanoseconds)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total / 1e9


def minor_faults(pid: int) -> int:
    """Minor page faults of a process so far (mostly pages copied from the fork server)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rfind(")") + 2 :].split()[7])


def tree_cpu(root: int) -> float:
    """CPU seconds of `root` and its live descendants, with what each reaped (clock ticks)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        stats[int(name)] = fields
        children.setdefault(int(fields[1]), []).append(int(name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        f = stats.get(pid)
        if f is None:
            continue
        total += sum(int(x) for x in f[11:15])
        todo.extend(children.get(pid, []))
    return total / CLK_TCK


def proc_cpu(pid: int) -> tuple[float, float]:
    """(own, reaped children's) CPU seconds of a process (clock ticks)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    f = raw[raw.rfind(")") + 2 :].split()
    return (int(f[11]) + int(f[12])) / CLK_TCK, (int(f[13]) + int(f[14])) / CLK_TCK


def fork_server_pid(iso: isolation.Isolation) -> int:
    """The pid of the fork server serving `iso` (in this PID namespace)."""
    from rlm_kernel.sandbox import forkclient

    server = forkclient._confined.get(iso.key) if iso.confined else forkclient._server
    assert server is not None
    pid = int(server.pid)
    if iso.confined:  # bwrap's own processes stand between: find the python below them
        todo = [pid]
        while todo:
            p = todo.pop()
            try:
                exe = os.readlink(f"/proc/{p}/exe")
            except OSError:
                exe = ""
            if "python" in exe:
                return p
            for name in os.listdir("/proc"):
                if name.isdigit():
                    try:
                        raw = Path(f"/proc/{name}/stat").read_text()
                    except OSError:
                        continue
                    if int(raw[raw.rfind(")") + 2 :].split()[1]) == p:
                        todo.append(int(name))
    return pid


def one(iso: isolation.Isolation, i: int) -> dict[str, float]:
    """Make, use and close one sandbox; return its phases' figures."""

    def handler(op: str, args: dict[str, Any]) -> Any:
        return None

    me = os.getpid()
    spec = SandboxSpec("bench-start", f"a{i}", Target(None, None, None), handler, isolation=iso)
    tree0 = tree_cpu(me)
    fs = fork_server_pid(iso) if i >= 0 else 0
    fs0 = proc_cpu(fs) if fs else (0.0, 0.0)
    h0, w0 = time.process_time(), time.perf_counter()
    sb = LocalSandbox(spec)
    if "install" in inspect.signature(sb.prepare).parameters:
        sb.prepare(install=True)  # as start() does: the kernel installs the runtime itself
    else:
        sb.prepare()
    h1, w1 = time.process_time(), time.perf_counter()
    assert sb.kernel is not None
    pid = sb.kernel.pid
    k1 = kernel_cpu(pid)
    f1 = minor_faults(pid)
    sb._install_runtime()
    h2, w2 = time.process_time(), time.perf_counter()
    k2 = kernel_cpu(pid)
    for _ in range(2):
        res = sb.execute("x = 1", timeout=30)
        assert res.status == "ok", res
    h3, w3 = time.process_time(), time.perf_counter()
    k3 = kernel_cpu(pid)
    sb.close()
    h4, w4 = time.process_time(), time.perf_counter()
    time.sleep(0.05)  # the fork server reaps the kernel and its init
    tree = tree_cpu(me) - tree0
    fs1 = proc_cpu(fs) if fs else (0.0, 0.0)
    return {
        "wall_ready": (w1 - w0) * 1e3,
        "wall_install": (w2 - w1) * 1e3,
        "wall_cells": (w3 - w2) * 1e3,
        "wall_close": (w4 - w3) * 1e3,
        "host_ready": (h1 - h0) * 1e3,
        "host_install": (h2 - h1) * 1e3,
        "host_cells": (h3 - h2) * 1e3,
        "host_close": (h4 - h3) * 1e3,
        "kernel_ready": k1 * 1e3,
        "kernel_faults_ready": f1,
        "kernel_install": (k2 - k1) * 1e3,
        "kernel_cells": (k3 - k2) * 1e3,
        "tree": tree * 1e3,
        "rest": (tree - (h4 - h0) - k3) * 1e3,
        "forkserver_self": (fs1[0] - fs0[0]) * 1e3,
        "forkserver_reaped_less_kernel": (fs1[1] - fs0[1] - k3) * 1e3,
    }


def main() -> None:
    """Run the benchmark and print medians (ms)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--isolation", default="auto")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    n = 2 if args.smoke else args.n
    iso = isolation.resolve(args.isolation)
    one(iso, -1)  # the fork server's start, and warm caches
    rows = [one(iso, i) for i in range(n)]
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    if args.json:
        print(json.dumps(med))
        return
    print(f"isolation {iso.tier}, {n} sandboxes, load {os.getloadavg()[0]:.2f}; medians (ms)")
    print("| phase | wall | host CPU | kernel CPU |")
    print("|---|---:|---:|---:|")
    for phase in ("ready", "install", "cells", "close"):
        k = f"{med.get('kernel_' + phase, 0):.1f}" if phase != "close" else "–"
        print(f"| {phase} | {med['wall_' + phase]:.1f} | {med['host_' + phase]:.1f} | {k} |")
    print(f"kernel page faults until ready: {med['kernel_faults_ready']:.0f}")
    print(
        f"| tree CPU per sandbox | | {med['tree']:.0f} | rest (fork, init, exit): {med['rest']:.0f} |"
    )
    print(
        f"rest: fork server {med['forkserver_self']:.0f} ms, reaped less the kernel's CPU before "
        f"close (init, the kernel's exit) {med['forkserver_reaped_less_kernel']:.0f} ms"
    )


if __name__ == "__main__":
    main()
