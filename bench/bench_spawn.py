"""Spawn latency of a sub-agent, with and without the sandbox pool, on scikit-learn's sources;
and memory per live child.

A scripted root agent "thinks" for `--think` seconds per turn (its LLM latency), then calls
`rlm_query` once per turn; its child answers at once (latency 0) with one cell that reports the
time its code started, its kernel's memory and ends. Measured per spawn:

- to first LLM request: from the `rlm_query` call (the parent's cell) to the child's first LLM
  request reaching the (scripted) model;
- to first code: from the `rlm_query` call to the child's first cell starting in its sandbox
  (worktree + kernel + runtime ready). With a fast model this is what a spawn costs the critical
  path; the targets (pool <= 150 ms, no pool <= 1.5 s) are checked against it.

Memory: the child's kernel RSS and PSS (from /proc/self/status and /proc/self/smaps_rollup, read
by the child's own code; PSS shares the pages forked kernels have in common), and the host
process's RSS growth per agent while `--fanout` children are alive at once.

The repository is scikit-learn 1.7.2's wheel sources (~620 files), downloaded once with pip and
committed as a git repository under `$XDG_CACHE_HOME/rlm-kernel/` (as notebooks/03-repo-todos
does). `--smoke` uses a tiny repository instead and few spawns (for CI; nothing is checked).

    .venv/bin/python bench/bench_spawn.py [--spawns 12] [--think 0.5] [--fanout 8] [--smoke]
        [--isolation auto|bwrap|none|both] [--rounds N]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from typing import Any

from rlm_kernel import llm
from rlm_kernel.config import RLMConfig
from rlm_kernel.runner import Run
from rlm_kernel.sandbox import isolation

VERSION = "1.7.2"
_GIT = ["git", "-c", "user.name=rlm", "-c", "user.email=rlm@localhost"]


def sklearn_repo() -> str:
    """scikit-learn's wheel sources as a git repository (made once, cached; as notebook 03)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
    cache = pathlib.Path(base) / "rlm-kernel"
    repo = cache / f"scikit-learn-{VERSION}"
    if (repo / ".git").is_dir():
        return str(repo)
    wheels = cache / "wheels"
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:"]
    subprocess.run([*pip, f"scikit-learn=={VERSION}", "-d", str(wheels)], check=True)
    wheel = sorted(wheels.glob(f"scikit_learn-{VERSION}-*.whl"))[0]
    tmp = cache / f"scikit-learn-{VERSION}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.startswith("sklearn/") and n.endswith(".py")]
        z.extractall(tmp, names)
    subprocess.run([*_GIT, "init", "-q"], cwd=tmp, check=True)
    subprocess.run([*_GIT, "add", "-A"], cwd=tmp, check=True)
    msg = f"scikit-learn {VERSION} (wheel sources)"
    subprocess.run([*_GIT, "commit", "-q", "-m", msg], cwd=tmp, check=True)
    tmp.rename(repo)
    return str(repo)


def tiny_repo(where: str) -> str:
    """A one-file git repository (smoke mode)."""
    repo = os.path.join(where, "tiny")
    os.makedirs(os.path.join(repo, "pkg"))
    pathlib.Path(repo, "pkg", "mod.py").write_text("VALUE = 1  # TODO: more\n")
    subprocess.run([*_GIT, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*_GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*_GIT, "commit", "-q", "-m", "init"], cwd=repo, check=True)
    return repo


def _host_rss_kb() -> int:
    gc.collect()
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# The child's only cell: when it started, and its kernel's memory.
CHILD_CODE = """```python
import json, time
_t = time.time()
def _kb(path, key):
    try:
        with open(path) as fh:
            return sum(int(l.split()[1]) for l in fh if l.startswith(key))
    except OSError:
        return 0
FINAL(json.dumps({"t": _t, "rss_kb": _kb("/proc/self/status", "VmRSS:"),
                  "pss_kb": _kb("/proc/self/smaps_rollup", "Pss:")}))
```"""

# A child that stays alive until told (fan-out memory): it waits for a file to appear.
HOLD_CODE = """```python
import json, os, time
def _kb(path, key):
    try:
        with open(path) as fh:
            return sum(int(l.split()[1]) for l in fh if l.startswith(key))
    except OSError:
        return 0
open(os.path.join({hold!r}, "alive-" + str(os.getpid())), "w").close()
while not os.path.exists(os.path.join({hold!r}, "release")):
    time.sleep(0.02)
FINAL(json.dumps({{"rss_kb": _kb("/proc/self/status", "VmRSS:"),
                   "pss_kb": _kb("/proc/self/smaps_rollup", "Pss:")}}))
```"""


def spawn_model(spawns: int, think: float, first_llm: dict[str, float]) -> str:
    """Root: `spawns` turns, each thinking `think` s then one rlm_query; children answer at once."""
    lock = threading.Lock()

    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        if info["depth"] >= 1:
            if info["iteration"] == 0:
                with lock:
                    first_llm[info["agent_id"]] = time.time()
            return CHILD_CODE
        time.sleep(think)  # the root's LLM latency: the pool fills meanwhile
        it = info["iteration"]
        if it == 0:
            return "```python\nimport json, time\nspawns = []\n```"
        if it <= spawns:
            return (
                "```python\n_t0 = time.time()\n_r = rlm_query('report when your code starts')\n"
                "spawns.append({'t0': _t0, 'agent': _r.agent_id, 'child': json.loads(_r)})\n```"
            )
        return "```python\nFINAL(json.dumps(spawns))\n```"

    return llm.register_scripted(f"bench-spawn-{spawns}-{think}", respond, latency_s=0.0)


def measure_spawns(
    repo: str, spawns: int, think: float, pool: str, results: str, isolation: str = "auto"
) -> dict[str, Any]:
    """One run with `spawns` sequential rlm_query calls; latencies in seconds."""
    first_llm: dict[str, float] = {}
    cfg = RLMConfig().with_overrides(
        {
            "model.name": spawn_model(spawns, think, first_llm),
            "results_dir": results,
            "model.retries": 0,
            "sandbox.pool_size": int(pool) if pool.isdigit() else pool,
            "sandbox.isolation": isolation,
            "rlm.max_iterations": spawns + 3,
        }
    )
    res = Run("spawn bench", repo, config=cfg).execute()
    assert res.status == "done", res.error
    rows = json.loads(res.answer)
    to_llm = [first_llm[r["agent"]] - r["t0"] for r in rows]
    to_code = [r["child"]["t"] - r["t0"] for r in rows]
    return {
        "to_llm": to_llm,
        "to_code": to_code,
        "rss_kb": [r["child"]["rss_kb"] for r in rows],
        "pss_kb": [r["child"]["pss_kb"] for r in rows],
    }


def measure_fanout(repo: str, n: int, results: str, isolation: str = "auto") -> dict[str, float]:
    """`n` children alive at once: their kernels' RSS/PSS and the host's RSS growth per agent."""
    hold = tempfile.mkdtemp(prefix="rlm-bench-hold-")
    code = HOLD_CODE.format(hold=hold)
    host: dict[str, int] = {}

    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        if info["depth"] >= 1:
            return code
        if info["iteration"] == 0:
            host["before"] = _host_rss_kb()
            return f"```python\nimport json\nr = rlm_query_batched(['hold'] * {n})\n```"
        return (
            "```python\nFINAL(json.dumps([json.loads(x) if x.status == 'done' else "
            "{'error': str(x)} for x in r]))\n```"
        )

    def watch() -> None:  # all children alive: measure the host, then let them finish
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len([f for f in os.listdir(hold) if f.startswith("alive-")]) >= n:
                host["alive"] = _host_rss_kb()
                break
            time.sleep(0.02)
        open(os.path.join(hold, "release"), "w").close()

    model = llm.register_scripted(f"bench-fanout-mem-{n}", respond, latency_s=0.0)
    cfg = RLMConfig().with_overrides(
        {
            "model.name": model,
            "results_dir": results,
            "model.retries": 0,
            "sandbox.isolation": isolation,
        }
    )
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        res = Run("fan-out memory", repo, config=cfg).execute()
    finally:
        watcher.join()
        shutil.rmtree(hold, ignore_errors=True)
    assert res.status == "done", res.error
    rows = json.loads(res.answer)
    kids = [k for k in rows if "error" not in k]
    for k in rows:
        if "error" in k:
            print(f"a child failed: {k['error'][:300]}", file=sys.stderr)
    return {
        "rss_mb": statistics.median(k["rss_kb"] for k in kids) / 1024,
        "pss_mb": statistics.median(k["pss_kb"] for k in kids) / 1024,
        "host_mb_per_agent": (host.get("alive", 0) - host.get("before", 0)) / 1024 / n,
    }


def _ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:.0f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spawns", type=int, default=12, help="sequential rlm_query calls per run")
    ap.add_argument("--think", type=float, default=0.5, help="root's LLM latency (s)")
    ap.add_argument("--fanout", type=int, default=8, help="children alive at once (memory)")
    ap.add_argument("--smoke", action="store_true", help="tiny repo, few spawns (CI)")
    ap.add_argument(
        "--isolation",
        default="auto",
        help="sandbox.isolation: auto, bwrap, none, or 'both' (none and bwrap, run alternately, "
        "with the bwrap/none ratio of the medians)",
    )
    ap.add_argument("--rounds", type=int, default=1, help="runs per pool setting and tier")
    args = ap.parse_args(argv)
    tiers = ["none", "bwrap"] if args.isolation == "both" else [args.isolation]
    llm.import_litellm()  # the one-time import is not spawn latency
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rlm-bench-") as work:
        results = os.path.join(work, "results")
        if args.smoke:
            repo, spawns, think, fanout = tiny_repo(work), 2, 0.2, 2
        else:
            repo, spawns, think, fanout = sklearn_repo(), args.spawns, args.think, args.fanout
        for tier in tiers:  # warm: fork servers, litellm, git caches
            measure_spawns(repo, 1, 0.0, "0", results, tier)
        print(f"repo {repo}; {spawns} sequential spawns per run; root thinks {think} s per turn\n")
        print(
            "| pool | isolation | to first LLM request, median (ms) | to first code, median (ms) "
            "| p90 to first code (ms) | target |"
        )
        print("|---|---|---:|---:|---:|---|")
        for pool, target in (("auto", "<= 150 ms"), ("0", "<= 1500 ms")):
            got: dict[str, dict[str, list[float]]] = {
                t: {"to_llm": [], "to_code": []} for t in tiers
            }
            for _ in range(args.rounds):
                for tier in tiers:  # alternate, so that load changes hit both tiers alike
                    m = measure_spawns(repo, spawns, think, pool, results, tier)
                    got[tier]["to_llm"] += m["to_llm"]
                    got[tier]["to_code"] += m["to_code"]
            label = "auto (on)" if pool == "auto" else "0 (off)"
            for tier in tiers:
                m = got[tier]
                codes = sorted(m["to_code"])
                p90 = codes[min(len(codes) - 1, int(0.9 * len(codes)))]
                print(
                    f"| {label} | {tier} | {_ms(m['to_llm'])} | {_ms(m['to_code'])} | "
                    f"{p90 * 1000:.0f} | {target} |"
                )
                out[pool if len(tiers) == 1 else f"{pool}/{tier}"] = m
            if len(tiers) == 2:
                ratio = statistics.median(got["bwrap"]["to_code"]) / statistics.median(
                    got["none"]["to_code"]
                )
                print(f"| {label} | bwrap / none | | {ratio:.2f} × | | <= 1.5 × |")
        # Memory on the none tier: the children's hold files live in the host's /tmp, which a
        # confined kernel cannot see (it has a private /tmp); the kernels themselves are alike.
        for tier in [t for t in tiers if t == "none"] or tiers[:1]:
            if isolation.resolve(tier).confined:
                print(
                    f"\n(memory measured on the none tier: {tier} kernels cannot see the hold files)"
                )
                tier = "none"
            f = measure_fanout(repo, fanout, results, tier)
            out["fanout" if len(tiers) == 1 else f"fanout/{tier}"] = f
            print(
                f"\nmemory ({tier}), {fanout} children alive at once: kernel RSS "
                f"{f['rss_mb']:.0f} MB, PSS {f['pss_mb']:.0f} MB (median per child); host RSS "
                f"growth {f['host_mb_per_agent']:.2f} MB per agent"
            )
    return out


if __name__ == "__main__":
    main()
