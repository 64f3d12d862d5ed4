"""`llm_query` round trip through the bridge on the Daytona backend, against the local emulator.

A Daytona sandbox (tests/daytona/emulator.py, driven by the real `daytona` SDK) runs a cell that
calls `llm_query` N times; the host answers at once (a scripted model of latency 0), so each
round trip is pure overhead: the request frame streamed over the code-interpreter WebSocket,
parsed and verified on the host, the reply uploaded as a file (bulk-upload), and the runtime
polling for it. Prints the median and quartiles in ms.

    .venv/bin/python bench/bench_daytona.py [--n 50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "daytona"))

from emulator import DaytonaEmulator

from rlm_kernel.sandbox.base import SandboxSpec
from rlm_kernel.sandbox.workspace import resolve_target


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    args = ap.parse_args()
    emu = DaytonaEmulator().start()
    os.environ.update(DAYTONA_API_KEY=emu.api_key, DAYTONA_API_URL=emu.api_url)
    from rlm_kernel.sandbox.daytona import DaytonaSandbox

    def handler(op: str, a: dict[str, Any]) -> Any:
        return ["ok" for _ in a.get("prompts", [])]  # the model: latency 0

    spec = SandboxSpec("bench", "root", resolve_target(None), handler, {"tools": []})
    sb = DaytonaSandbox(spec)
    t0 = time.perf_counter()
    sb.start()
    start_s = time.perf_counter() - t0
    try:
        sb.execute("llm_query('warm-up')", timeout=60)
        code = (
            "import time, json\nts = []\n"
            f"for _ in range({args.n}):\n"
            "    t = time.perf_counter(); llm_query('x'); ts.append(time.perf_counter() - t)\n"
            "print(json.dumps(ts))"
        )
        res = sb.execute(code, timeout=300)
        ts = json.loads(res.output.strip().splitlines()[-1])
        t1 = time.perf_counter()
        sb.execute("1", timeout=60)
        cell_ms = (time.perf_counter() - t1) * 1000
    finally:
        sb.close()
        emu.stop()
    q = statistics.quantiles([t * 1000 for t in ts], n=4)
    print(f"sandbox start (create + workspace + context + runtime): {start_s * 1000:.0f} ms")
    print(f"empty cell round trip: {cell_ms:.1f} ms")
    print(
        f"llm_query round trip over the bridge, n={len(ts)}: median {statistics.median(ts) * 1000:.1f} ms "
        f"(p25 {q[0]:.1f}, p75 {q[2]:.1f}, max {max(ts) * 1000:.1f})"
    )


if __name__ == "__main__":
    main()
