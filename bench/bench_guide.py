"""The Daytona RLM guide's run, replicated: investigate the TODOs of scikit-learn, fix the easiest.

The guide (Daytona's "Build deep Recursive Language Models") ran a root agent on scikit-learn
that spawned 25 sub-agents, 15 of which recursed once more: 40 agents, 316 s with a real model.
Here the same shape of run uses the scripted model of `notebooks/03-repo-todos.ipynb`
(`notebooks/models/repo_todos.py`: root → one child per subpackage with TODOs via
`rlm_query_batched` → children with more than LARGE TODOs hand their busiest file to a
grandchild via `rlm_query` → the root fixes the easiest TODO with `edit_file`), on scikit-learn
1.7.2's sources from its PyPI wheel (cached under `$XDG_CACHE_HOME/rlm-kernel/`, downloaded once
with pip), every agent in its own git worktree, each LLM call taking L seconds.

The critical path is read from the run's tree: an agent's turns times L, plus the longest
critical path among its children (each agent here starts its children in one step).

    .venv/bin/python bench/bench_guide.py [--reps 3] [--latency 2] [--large 1]
    .venv/bin/python bench/bench_guide.py --smoke     # 4 subpackages, L = 0.05 s
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, breakdown, machine, median, table

from rlm_kernel import llm
from rlm_kernel.config import RLMConfig
from rlm_kernel.runner import Run

VERSION = "1.7.2"
PROMPT = (
    "Investigate the TODO comments across scikit-learn's sources. Spawn sub-agents to explore the "
    "subpackages in parallel and assess how hard each TODO is to fix. Then fix the easiest one."
)
GUIDE = {"agents": 40, "wall_s": 316}
GIT = ["git", "-c", "user.name=rlm", "-c", "user.email=rlm@localhost"]


def sklearn_repo() -> Path:
    """scikit-learn's wheel sources as a git repository (the notebook's cache, built if absent)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlm-kernel"
    repo = cache / f"scikit-learn-{VERSION}"
    if (repo / ".git").is_dir():
        return repo
    import zipfile

    wheels = cache / "wheels"
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:"]
    subprocess.run([*pip, f"scikit-learn=={VERSION}", "-d", str(wheels)], check=True)
    wheel = sorted(wheels.glob(f"scikit_learn-{VERSION}-*.whl"))[0]
    tmp = cache / f"scikit-learn-{VERSION}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.startswith("sklearn/") and n.endswith(".py")]
        z.extractall(tmp, names)
    _commit(tmp, f"scikit-learn {VERSION} (wheel sources)")
    tmp.rename(repo)
    return repo


def small_repo(src: Path, dest: Path, packages: list[str]) -> Path:
    """A few subpackages of the sources (and sklearn/utils/_array_api.py, the root's fix)."""
    for pkg in packages:
        shutil.copytree(src / "sklearn" / pkg, dest / "sklearn" / pkg)
    (dest / "sklearn" / "utils").mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "sklearn" / "__init__.py", dest / "sklearn" / "__init__.py")
    shutil.copy(src / "sklearn/utils/_array_api.py", dest / "sklearn/utils/_array_api.py")
    _commit(dest, "subset")
    return dest


def _commit(repo: Path, msg: str) -> None:
    subprocess.run([*GIT, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", msg], cwd=repo, check=True)


def load_model(latency: float, large: int) -> str:
    """The notebook's scripted model, registered with latency L and its LARGE threshold."""
    path = ROOT / "notebooks" / "models" / "repo_todos.py"
    spec = importlib.util.spec_from_file_location("bench_repo_todos", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.LARGE = large  # read by respond() at call time
    return llm.register_scripted(f"bench-guide-{latency}-{large}", mod.respond, latency_s=latency)


def walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = [node]
    for child in node.get("children") or []:
        out += walk(child)
    return out


def critical_turns(node: dict[str, Any]) -> int:
    kids = node.get("children") or []
    return len(node.get("iterations") or []) + max((critical_turns(c) for c in kids), default=0)


def run_once(
    model: str, repo: Path, results: str, events: list[Any] | None = None
) -> tuple[float, Any]:
    cfg = RLMConfig().with_overrides(
        {
            "model.name": model,
            "results_dir": results,
            "model.retries": 0,
            "rlm.max_concurrency": 64,
            "rlm.max_sandboxes": 64,
        }
    )
    t0 = time.perf_counter()
    res = Run(
        PROMPT, repo, config=cfg, on_event=events.append if events is not None else None
    ).execute()
    wall = time.perf_counter() - t0
    if res.status != "done" or "sklearn/utils/_array_api.py" not in (res.patch or ""):
        raise RuntimeError(f"run ended {res.status} without the expected patch: {res.error}")
    return wall, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--latency", type=float, default=2.0)
    ap.add_argument(
        "--large",
        type=int,
        default=1,
        help="children with more TODOs than this recurse (the notebook uses 15)",
    )
    ap.add_argument("--smoke", action="store_true", help="4 subpackages, L = 0.05 s, 1 repetition")
    args = ap.parse_args()
    L = args.latency
    src = sklearn_repo()
    work = Path(tempfile.mkdtemp(prefix="rlm-bench-guide-"))
    try:
        repo = src
        if args.smoke:
            args.reps, L = 1, 0.05
            repo = small_repo(src, work / "repo", ["svm", "manifold", "tree", "impute"])
        llm.import_litellm()  # the one-time import is not engine overhead
        model = load_model(L, args.large)
        results = str(work / "results")
        run_once(load_model(0.0, args.large), repo, results)  # warm: fork server, git caches
        events: list[Any] = []
        runs = [run_once(model, repo, results, events)]
        runs += [run_once(model, repo, results) for _ in range(args.reps - 1)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    walls = [w for w, _ in runs]
    res = runs[0][1]
    nodes = walk(res.tree)
    by_depth: dict[int, int] = {}
    for n in nodes:
        by_depth[int(n["depth"])] = by_depth.get(int(n["depth"]), 0) + 1
    turns = critical_turns(res.tree)
    crit = turns * L
    wall = median(walls)
    print(
        f"scikit-learn {VERSION} sources{' (4 subpackages)' if args.smoke else ''}, "
        f"L = {L} s per LLM call, LARGE = {args.large}, {args.reps} repetitions, medians; "
        f"at the end: {machine()}\n"
    )
    depths = ", ".join(f"{n} at depth {d}" for d, n in sorted(by_depth.items()))
    print(
        table(
            ["measure", "value"],
            [
                ["agents", f"{len(nodes)} ({depths})"],
                ["LLM turns, all agents", sum(len(n.get("iterations") or []) for n in nodes)],
                ["critical path", f"{turns} turns = {crit:.1f} s"],
                ["wall, median", f"{wall:.2f} s (min {min(walls):.2f}, max {max(walls):.2f})"],
                ["wall / critical path", f"{wall / crit:.3f}"],
                ["guide (real model, Daytona)", f"{GUIDE['agents']} agents, {GUIDE['wall_s']} s"],
            ],
        )
    )
    for depth in sorted(by_depth):
        prof = breakdown(events, depth, None, L)
        if prof:
            print(f"\nWhere the time goes, depth {depth} (first run)\n")
            print(table(["phase", "seconds"], prof))


if __name__ == "__main__":
    main()
