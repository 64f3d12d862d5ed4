"""Round trip of one small cell through `LocalSandbox.execute`: the kernel cell loop and the cell
collector (frames, output, the namespace summary sent with the cell's end), without the LLM.

    .venv/bin/python bench/bench_cell.py [--cells 150] [--isolation auto]

Reports the median (p25, p75) over `--cells` cells of `print(i); x = i` after 20 warm-up cells.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from rlm_kernel.sandbox import isolation
from rlm_kernel.sandbox.base import SandboxSpec
from rlm_kernel.sandbox.kernels import shutdown_all
from rlm_kernel.sandbox.local import LocalSandbox
from rlm_kernel.sandbox.workspace import resolve_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=150)
    ap.add_argument("--isolation", default="auto", help="sandbox.isolation: auto, bwrap or none")
    args = ap.parse_args()
    spec = SandboxSpec(
        run_id="bench-cell-" + os.urandom(3).hex(),
        agent_id="root",
        target=resolve_target(None),
        handler=lambda op, a: None,
        runtime_cfg={"agent_id": "root", "depth": 0, "tools": []},
        isolation=isolation.resolve(args.isolation),
    )
    sb = LocalSandbox(spec)
    sb.start()
    sb.snapshot_on_end = True  # as a run's sandboxes
    try:
        for _ in range(20):
            sb.execute("x = 1", timeout=30)
        times = []
        for i in range(args.cells):
            t = time.perf_counter()
            res = sb.execute(f"print({i})\nx = {i}", timeout=30)
            times.append((time.perf_counter() - t) * 1000)
            assert res.status == "ok" and res.output == f"{i}\n", res
        q = statistics.quantiles(times, n=4)
        print(
            f"cell round trip ({sb.isolation.tier}): median {statistics.median(times):.2f} ms "
            f"(p25 {q[0]:.2f}, p75 {q[2]:.2f}), {args.cells} cells"
        )
    finally:
        sb.close()
        shutdown_all()


if __name__ == "__main__":
    main()
