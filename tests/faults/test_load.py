"""Load: 100 agents alive at once (max_concurrency = 100) for 60 s; nothing leaks.

RLM_LOAD_SECONDS shortens the hold for local iteration; CI runs the full 60 s.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import rlm_kernel
from rlm_kernel.config import RLMConfig
from rlm_kernel.run_sandboxes import wait_all_closed
from rlm_kernel.sandbox import spare
from rlm_kernel.sandbox.kernels import live_kernel_pids

from .sandbox_helpers import child_pids

# Local sandboxes run unconfined here: agents report through files in the test directory.
pytestmark = pytest.mark.usefixtures("unconfined")

Config = Callable[..., RLMConfig]
AGENTS = 100
HOLD_S = float(os.environ.get("RLM_LOAD_SECONDS", "60"))


_FOREIGN_THREADS = frozenset({"daytona-subscription-expiry"})
_POOLS = ("litellm-logging", "rlm-llm-io")  # thread pools that grow lazily, bounded


def _resources() -> dict[str, object]:
    # litellm's logging pool is process-wide and grows lazily up to 100 threads, and so does the
    # LLM loop's executor (up to 64, rlm_kernel/llm/runtime.py); they are no leak, so they are
    # counted apart (and bounded below). Timer threads an earlier test's SDK left
    # (the Daytona SDK's subscription expiry) may end meanwhile: not ours either. The root's
    # sandbox finishes closing after the result, and the process's spare root sandbox is no
    # leak either (one, made ahead of the next run): both are waited for / closed first.
    wait_all_closed()
    spare.discard()
    names = [
        t.name
        for t in threading.enumerate()
        if t.name not in _FOREIGN_THREADS and not t.name.startswith(_POOLS)
    ]
    return {
        "threads": sorted(names),
        "child processes": child_pids(),
        "fds": len(os.listdir("/proc/self/fd")),
    }


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return next(int(ln.split()[1]) for ln in fh if ln.startswith("Pss:"))
    except (OSError, StopIteration, ValueError):
        return 0


@pytest.mark.slow
@pytest.mark.timeout(HOLD_S + 600)
def test_100_agents_alive_at_once_without_deadlock_or_leaks(config: Config, tmp_path: Path) -> None:
    cfg = config(
        "load.py",
        rlm__max_concurrency=AGENTS,
        rlm__max_sandboxes=AGENTS + 1,
        rlm__global_timeout=HOLD_S + 400,
    )
    warm = tmp_path / "warm"
    warm.mkdir()
    assert rlm_kernel.run(f"load 2 0 {warm}", config=cfg).status == "done"  # fork server, litellm
    before = _resources()

    where = tmp_path / "alive"
    where.mkdir()
    peak: list[int] = []
    pss: list[int] = []

    def sample() -> None:  # kernels alive (and their memory) while the children hold
        while not done.is_set():
            if len(os.listdir(where)) >= AGENTS:
                pids = live_kernel_pids()
                peak.append(len(pids))
                pss.append(sum(_pss_kb(p) for p in pids))
            done.wait(1.0)

    done = threading.Event()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    try:
        res = rlm_kernel.run(f"load {AGENTS} {HOLD_S} {where}", config=cfg)
    finally:
        done.set()
        sampler.join()
    elapsed = time.monotonic() - t0
    assert res.status == "done", res.error
    got = json.loads(res.answer)
    assert len(got) == AGENTS and {status for status, _ in got} == {"done"}
    held = [tuple(map(float, text.split())) for _, text in got]
    together = min(end for _, end in held) - max(start for start, _ in held)
    assert together >= HOLD_S * 0.9, f"all {AGENTS} agents were alive together for {together} s"
    assert peak and max(peak) == AGENTS + 1  # the root's kernel and its 100 children's
    print(
        f"\n{AGENTS} agents: run {elapsed:.1f} s, all alive together {together:.1f} s, "
        f"kernels' memory (PSS) {max(pss) / 1024:.0f} MB"
    )

    after = _resources()
    # Fewer descriptors is no leak: an earlier test's kept-alive HTTP connections (the plain-HTTP
    # LLM path keeps them 15 s) may close meanwhile.
    assert after["fds"] <= before["fds"]  # type: ignore[operator]
    assert {**after, "fds": 0} == {**before, "fds": 0}
    pool = [t for t in threading.enumerate() if t.name.startswith("litellm-logging")]
    assert len(pool) <= 100
    io = [t for t in threading.enumerate() if t.name.startswith("rlm-llm-io")]
    assert len(io) <= 64
