"""A trivial cell's round trip: the `rlm` kernel against stock ipykernel.

Both kernels are started by jupyter_client from their kernelspecs (`rlm kernel install --prefix`
and ipykernel's own `python3` spec, both installed into a temporary prefix found through
JUPYTER_PATH, with private Jupyter and IPython directories). After a few warm-up cells (the rlm
kernel starts its root sandbox on the first cell), each kernel runs `x = 1 + 1` N times with
`execute_interactive`; a round trip is from sending the execute_request until the kernel reports
idle. In the rlm kernel an ordinary cell runs in the notebook's root sandbox, a second IPython
kernel behind the rlm kernel, so a round trip there crosses two kernels.

    .venv/bin/python bench/bench_kernel_roundtrip.py [--n 200] [--reps 3] [--cell CODE]
    .venv/bin/python bench/bench_kernel_roundtrip.py --smoke     # seconds

`--cell` times another cell instead (e.g. one with a large display, for the relay's share of
forwarding outputs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, median, table
from jupyter_client.manager import KernelManager

TARGET = 1.3  # issue 18
CELL = "x = 1 + 1"


def setup_jupyter(base: Path) -> None:
    """Kernelspecs `rlm` and `python3` in a private prefix; Jupyter/IPython dirs private too."""
    from ipykernel.kernelspec import install as install_ipykernel

    from rlm_kernel.cli import main as rlm_main

    prefix = base / "prefix"
    if rlm_main(["kernel", "install", "--prefix", str(prefix)]) != 0:
        raise SystemExit("rlm kernel install failed")
    install_ipykernel(prefix=str(prefix))
    os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    for var, sub in (
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("IPYTHONDIR", "ipython"),
    ):
        os.environ[var] = str(base / sub)


def round_trips(kernel_name: str, n: int, warm: int, cell: str = CELL) -> list[float]:
    km = KernelManager(kernel_name=kernel_name, transport="ipc")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        for _ in range(warm):
            reply = kc.execute_interactive(cell, timeout=120, output_hook=lambda m: None)
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"{kernel_name}: warm-up cell failed: {reply['content']}")
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            kc.execute_interactive(cell, timeout=60, output_hook=lambda m: None)
            times.append(time.perf_counter() - t0)
        return times
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="cells per kernel and repetition")
    ap.add_argument("--reps", type=int, default=3, help="kernel starts per kind (alternating)")
    ap.add_argument("--smoke", action="store_true", help="20 cells, 1 repetition")
    ap.add_argument("--cell", default=CELL, help=f"the cell to time (default: {CELL!r})")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.reps = 20, 1
    base = Path(tempfile.mkdtemp(prefix="rlm-bench-kernel-"))
    os.environ["TMPDIR"] = str(base / "tmp")
    (base / "tmp").mkdir()
    tempfile.tempdir = None
    try:
        setup_jupyter(base)
        times: dict[str, list[float]] = {"python3": [], "rlm": []}
        per_rep: dict[str, list[float]] = {"python3": [], "rlm": []}
        for _ in range(args.reps):
            for name in ("python3", "rlm"):  # alternate, so both see the same machine load
                t = round_trips(name, args.n, warm=5, cell=args.cell)
                times[name] += t
                per_rep[name].append(statistics.median(t))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rows = []
    for name, label in (
        ("python3", "stock ipykernel (python3)"),
        ("rlm", "rlm (cell in root sandbox)"),
    ):
        t = sorted(times[name])
        q = statistics.quantiles(t, n=20)
        rows.append(
            [
                label,
                len(t),
                f"{median(t) * 1000:.2f}",
                f"{q[4] * 1000:.2f}",
                f"{q[14] * 1000:.2f}",
                f"{q[18] * 1000:.2f}",
                " / ".join(f"{x * 1000:.2f}" for x in per_rep[name]),
            ]
        )
    ratio = median(times["rlm"]) / median(times["python3"])
    print(
        f"`{args.cell}` with execute_interactive, {args.reps} kernel starts per kind, "
        f"{args.n} cells each; at the end: {machine()}\n"
    )
    print(
        table(
            [
                "kernel",
                "cells",
                "median (ms)",
                "p25 (ms)",
                "p75 (ms)",
                "p95 (ms)",
                "median per start (ms)",
            ],
            rows,
        )
    )
    met = "met" if ratio <= TARGET else "NOT met"
    print(f"\nratio rlm / stock (medians): {ratio:.2f} (target ≤ {TARGET}: {met})")


if __name__ == "__main__":
    main()
