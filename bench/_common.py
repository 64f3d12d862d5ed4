"""Shared helpers of the benchmarks: medians, Markdown tables, process-tree CPU and memory."""

from __future__ import annotations

import os
import re
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from rlm_kernel.events import AgentStarted

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
MB = 1024 * 1024


def machine() -> str:
    """CPUs and the 1-minute load average, for the caveat line of every table."""
    return f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A Markdown table; `align` has one letter per column (l or r), default l then r."""
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pss_or_rss(proc: psutil.Process) -> tuple[int, int]:
    """(rss, pss) bytes of a process; pss falls back to rss where smaps is unreadable."""
    try:
        with open(f"/proc/{proc.pid}/smaps_rollup", "rb") as fh:
            text = fh.read()
        fields = dict(_ROLLUP.findall(text))  # the two lines only (psutil parses every field)
        return int(fields[b"Rss"]) * 1024, int(fields[b"Pss"]) * 1024
    except (OSError, KeyError):
        pass
    try:
        info = proc.memory_full_info()
        return int(info.rss), int(getattr(info, "pss", info.rss))
    except psutil.AccessDenied:
        rss = int(proc.memory_info().rss)
        return rss, rss


_HAVE_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")

_ROLLUP = re.compile(rb"^(Rss|Pss):\s+(\d+) kB", re.MULTILINE)


class TreeMonitor:
    """CPU time and peak memory of this process and its descendants while it is active.

    CPU = this process's own CPU + that of the children it reaped meanwhile (rusage) + the last
    sampled CPU of every other descendant (grandchildren such as forked kernels, and children
    still alive at the end), less what they had used when the monitor started. A descendant's
    CPU includes what it reaped (`children_user/system`: a fork server reaps its kernels), and a
    dead descendant is left to the nearest ancestor that lived on (this process, or a live
    descendant), whose reaped CPU holds it and every dead process between them (a kernel reaped
    by its PID namespace's init, reaped by the fork server), so nothing counts twice. A
    descendant whose parent does not reap it loses at most one interval. Memory: the largest sum of PSS
    (proportional set size: shared pages split between the processes sharing them) and of RSS
    over the tree seen in one sample.

    The sampling itself (reading /proc for every process: `smaps_rollup` walks a process's page
    tables) runs on this process's threads and is not the measured system's work: its thread CPU
    time is left out of `cpu_s` (and reported as `monitor_cpu_s`). With 25 processes sampled
    every 50 ms it was over a CPU-second on a 7 s run, charged to the systems with many processes,
    and taking a third of a core from them: samples come every 0.1 s (one scan of /proc each),
    memory on every `memory_every`-th (every 0.2 s: ~17 ms of reads for 25 processes), and only
    its two lines are parsed.
    """

    def __init__(self, interval: float = 0.1, memory: bool = True, memory_every: int = 2) -> None:
        self.me = psutil.Process()
        self.memory = memory
        self.interval = interval
        self.memory_every = memory_every  # memory on every n-th sample (the costly part)
        self._samples = 0
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_procs = 0
        self._last: dict[tuple[int, float], tuple[float, bool]] = {}  # -> (cpu, direct child)
        self._own: dict[
            tuple[int, float], tuple[str, float]
        ] = {}  # -> (comm, own CPU, no children)
        self._parent: dict[tuple[int, float], int] = {}  # -> ppid
        self._base: dict[tuple[int, float], float] = {}
        self._base_own: dict[tuple[int, float], float] = {}
        self._procs: dict[tuple[int, float], psutil.Process] = {}
        self._by_pid: dict[int, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._sampling_s = 0.0  # thread CPU time spent sampling (not the measured work)
        self.monitor_cpu_s = 0.0
        self.cpu_s = self.cpu_own_s = 0.0

    def __enter__(self) -> TreeMonitor:
        self._r0 = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        self.sample()
        self._base = {k: v[0] for k, v in self._last.items()}
        self._base_own = {k: v[1] for k, v in self._own.items()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        s1, c1 = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        s0, c0 = self._r0
        self.monitor_cpu_s = self._sampling_s
        own = (s1.ru_utime + s1.ru_stime) - (s0.ru_utime + s0.ru_stime) - self.monitor_cpu_s
        reaped = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
        alive = {(p.pid, k[1]) for k, p in self._procs.items() if _alive(p)}
        alive_pids = {pid for pid, _ in alive} | {self.me.pid}
        by_pid = {key[0]: key for key in self._last}
        others = 0.0
        for key, (cpu, _direct) in self._last.items():
            if key not in alive and self._reaped_by_survivor(key, alive_pids, by_pid):
                continue  # in `reaped`, or in a live descendant's children_* times
            others += max(0.0, cpu - self._base.get(key, 0.0))
        self.cpu_s = own + reaped + others
        self.cpu_own_s = own  # this process alone (the host, for the engines)

    def _reaped_by_survivor(
        self,
        key: tuple[int, float],
        alive_pids: set[int],
        by_pid: dict[int, tuple[int, float]],
    ) -> bool:
        """Whether a dead descendant's CPU reached a live ancestor (or this process) through a
        chain of parents that all ended (each reaped by the next)."""
        seen: set[int] = set()
        ppid = self._parent.get(key)
        while ppid is not None and ppid not in seen:
            if ppid in alive_pids:
                return True
            seen.add(ppid)
            parent = by_pid.get(ppid)
            ppid = self._parent.get(parent) if parent is not None else None
        return False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        t0 = time.thread_time()
        try:
            self._sample()
        finally:
            self._sampling_s += time.thread_time() - t0

    def _sample(self) -> None:
        try:
            procs = [self.me, *self._descendants()]
        except psutil.Error:
            return
        rss = pss = 0
        memory = self.memory and self._samples % self.memory_every == 0
        self._samples += 1
        for p in procs:
            try:
                key = (p.pid, p.create_time())
                p = self._procs.setdefault(key, p)
                if memory:
                    r, s = pss_or_rss(p)
                    rss += r
                    pss += s
                if p.pid != self.me.pid:
                    t = p.cpu_times()
                    cpu = t.user + t.system + t.children_user + t.children_system
                    if key not in self._parent:
                        self._parent[key] = p.ppid()
                    self._last[key] = (cpu, self._parent[key] == self.me.pid)
                    # The name is read when first seen and every tenth sample (a forked kernel
                    # renames itself after its fork).
                    name = self._own[key][0] if key in self._own else ""
                    if not name or self._samples % 10 == 0:
                        name = p.name()
                    self._own[key] = (name, t.user + t.system)
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(procs))

    def _descendants(self) -> list[psutil.Process]:
        """This process's descendants, from the kernel's per-thread `children` lists: a few
        small reads, where psutil's `children(recursive=True)` reads the stat file of every
        process on the machine (~4 ms and ~1.6 ms of CPU here with ~100 processes, holding the
        measured process's GIL on and off: it delayed the measured engine's threads)."""
        if not _HAVE_CHILDREN_FILES:
            return list(self.me.children(recursive=True))
        out: list[psutil.Process] = []
        stack = [self.me.pid]
        while stack:
            pid = stack.pop()
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                        kids = [int(k) for k in fh.read().split()]
                except (OSError, ValueError):
                    continue
                for kid in kids:
                    stack.append(kid)
                    proc = self._by_pid.get(kid)
                    if proc is None or not proc.is_running():  # a reused pid is a new process
                        try:
                            proc = self._by_pid[kid] = psutil.Process(kid)
                        except psutil.Error:
                            continue
                    out.append(proc)
        return out

    def split(self) -> dict[str, tuple[int, float]]:
        """Own CPU (without reaped children) of the descendants by process name, as last
        sampled (a process that ended loses at most one interval): name -> (processes, CPU-s).
        The host's own CPU is `cpu_own_s`."""
        out: dict[str, tuple[int, float]] = {}
        for key, (name, cpu) in self._own.items():
            n, total = out.get(name, (0, 0.0))
            base = self._base_own.get(key, 0.0)
            out[name] = (n + 1, total + max(0.0, cpu - base))
        return out

    def summary(self) -> dict[str, float]:
        return {
            "cpu_s": self.cpu_s,
            "monitor_cpu_s": self.monitor_cpu_s,
            "cpu_own_s": self.cpu_own_s,
            "peak_pss_mb": self.peak_pss / MB,
            "peak_rss_mb": self.peak_rss / MB,
            "procs": float(self.peak_procs),
        }


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def run_worker(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Run `python argv…` as a child process and return its stdout (raise with its stderr)."""
    proc = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {argv} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def wait_for(pred: Any, timeout: float, interval: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


def breakdown(
    events: list[Any], depth: int, ideal_life: float | None, latency: float
) -> list[list[str]]:
    """Where the time of a run's agents at `depth` went, from the run's events (seconds)."""
    by: dict[str, dict[str, list[float]]] = {}
    depths: dict[str, int] = {}
    parents: dict[str, str] = {}
    for e in events:
        if not e.agent_id:
            continue
        by.setdefault(e.agent_id, {}).setdefault(e.type.value, []).append(e.ts)
        if isinstance(e.payload, AgentStarted):
            depths[e.agent_id] = e.payload.depth
            parents[e.agent_id] = e.payload.parent_id or ""
    agents = [a for a, d in depths.items() if d == depth and "agent_finished" in by[a]]
    if not agents:
        return []

    def stat(xs: list[float]) -> str:
        return f"{median(xs):.2f} / {max(xs):.2f}" if xs else "-"

    def pairs(a: str, first: str, second: str, skip: int) -> list[float]:
        xs, ys = by[a].get(first, []), by[a].get(second, [])[skip:]
        return [y - x for x, y in zip(xs, ys, strict=False)]

    started = [by[a]["agent_started"][0] for a in agents]
    finished = [by[a]["agent_finished"][0] for a in agents]
    resume = []
    for p in {parents[a] for a in agents}:
        done = max(by[a]["agent_finished"][0] for a in agents if parents[a] == p)
        nxt = [t for t in by.get(p, {}).get("iteration_started", []) if t > done]
        if nxt:
            resume.append(nxt[0] - done)
    ideal = f"ideal {ideal_life:.2f}; " if ideal_life is not None else ""
    return [
        ["agents", str(len(agents))],
        ["started: last − first", f"{max(started) - min(started):.2f}"],
        [
            "sandbox ready after agent start (median / max)",
            stat(
                [
                    by[a]["sandbox_ready"][0] - by[a]["agent_started"][0]
                    for a in agents
                    if "sandbox_ready" in by[a]
                ]
            ),
        ],
        [
            f"LLM turn (ideal {latency:.2f}; median / max)",
            stat([x for a in agents for x in pairs(a, "iteration_started", "llm_response", 0)]),
        ],
        [
            "gap between turns: code (with any sub-agents it waits for), snapshot, events (median / max)",
            stat([x for a in agents for x in pairs(a, "llm_response", "iteration_started", 1)]),
        ],
        [
            "last turn's reply → agent finished (median / max)",
            stat(
                [
                    by[a]["agent_finished"][0] - by[a]["llm_response"][-1]
                    for a in agents
                    if "llm_response" in by[a]
                ]
            ),
        ],
        [
            f"lifetime ({ideal}median / max)",
            stat([f - s for s, f in zip(started, finished, strict=False)]),
        ],
        ["finished: last − first", f"{max(finished) - min(finished):.2f}"],
        ["last one finished → its parent's next turn (median / max)", stat(resume)],
    ]
