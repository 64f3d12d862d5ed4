"""AgentTree widget traffic and rendering for a 200-agent run.

A scripted run (root → 20 children → 9 grandchildren each: 201 agents, real local sandboxes) is
bound to an `AgentTree` with `AgentTree.from_run(run)`. Every message the widget would put on
its comm (custom-message deltas and trait syncs, hooked at `Widget._send`) is counted and sized.
Then headless Chromium renders the final tree from the widget's final state with the widget's
own ESM (the tests' fake-model harness), timed with performance.now() around `render`.
Reports medians over the repetitions, as Markdown.

    .venv/bin/python bench/bench_widget.py [--reps 3] [--latency 0.02] [--renders 7]
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rlm_kernel import llm
from rlm_kernel.config import RLMConfig
from rlm_kernel.runner import Run
from rlm_widget import AgentTree

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "rlm_widget" / "static"
HARNESS = ROOT / "tests" / "browser" / "harness.html"
CHROMIUM = "/usr/bin/chromium"
CHILDREN, GRANDCHILDREN = 20, 9


def _model(latency: float) -> str:
    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        depth, it = info["depth"], info["iteration"]
        if depth == 2:
            return f"```python\nprint('leaf {info['agent_id']}')\nFINAL('leaf')\n```"
        n = CHILDREN if depth == 0 else GRANDCHILDREN
        if it == 0:
            return f"```python\nr = rlm_query_batched([f'part {{i}}' for i in range({n})])\n```"
        return "```python\nFINAL(str(len(r)))\n```"

    return llm.register_scripted(f"bench-widget-{latency}", respond, latency_s=latency)


def one_run(model: str, results: Path) -> dict[str, Any]:
    """Run the 201-agent tree with a widget attached; count and size what the widget sends."""
    cfg = RLMConfig().with_overrides(
        {
            "model.name": model,
            "results_dir": str(results),
            "model.retries": 0,
            "rlm.max_sandboxes": 250,
            "rlm.max_depth": 2,
        }
    )
    run = Run("bench: a 201-agent tree", config=cfg)
    run.prepare()
    sent: list[tuple[float, int, str]] = []
    lock = threading.Lock()
    tree = AgentTree.from_run(run)

    def spy(msg: dict[str, Any], buffers: Any = None) -> None:
        size = len(json.dumps(msg, default=str))
        kind = msg.get("content", {}).get("kind") if msg["method"] == "custom" else "state"
        with lock:
            sent.append((time.monotonic(), size, str(kind)))

    tree._send = spy
    t0 = time.monotonic()
    run.start()
    res = run.wait(600)
    wall = time.monotonic() - t0
    assert res.status == "done", res.error
    agents = len(tree._state.nodes)
    times = [t - t0 for t, _, _ in sent]
    peak = max(sum(1 for u in times if s <= u < s + 1.0) for s in times) if times else 0
    final = [size for _, size, kind in sent if kind == "state"][-1]
    return {
        "wall": wall,
        "agents": agents,
        "messages": len(sent),
        "per_s": len(sent) / wall,
        "peak_1s": peak,
        "bytes": sum(size for _, size, _ in sent),
        "delta_bytes": sum(size for _, size, kind in sent if kind == "delta"),
        "final_bytes": final,
        "state": {"record": tree.record, "summary": tree.summary},
    }


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def render_times(state: dict[str, Any], renders: int) -> list[float]:
    """Milliseconds to render the final tree in headless Chromium (fresh page each time)."""
    from playwright.sync_api import sync_playwright

    site = Path(tempfile.mkdtemp(prefix="rlm-bench-site-"))
    for name in ("agent_tree.js", "agent_tree.css"):
        shutil.copy(STATIC / name, site / name)
    shutil.copy(HARNESS, site / "index.html")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/index.html"
    out = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run"],
            )
            for _ in range(renders):
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url)
                page.wait_for_function("window.harnessReady === true")
                out.append(float(page.evaluate("s => harness.mount(s)", state)))
                rows = page.locator(".rlm-row").count()
                assert rows == 1 + CHILDREN * (1 + GRANDCHILDREN), rows
                page.close()
            browser.close()
    finally:
        srv.shutdown()
        shutil.rmtree(site, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=3, help="runs (default 3)")
    ap.add_argument("--latency", type=float, default=0.02, help="seconds per LLM call")
    ap.add_argument("--renders", type=int, default=7, help="Chromium renders (default 7)")
    args = ap.parse_args()
    llm.import_litellm()  # the one-time litellm import is not part of the run
    model = _model(args.latency)
    work = Path(tempfile.mkdtemp(prefix="rlm-bench-widget-"))
    try:
        runs = [one_run(model, work / f"r{i}") for i in range(args.reps)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ms = render_times(runs[-1]["state"], args.renders)

    def med(key: str) -> float:
        return statistics.median(float(r[key]) for r in runs)

    print(
        f"{runs[0]['agents']} agents (root → {CHILDREN} → {GRANDCHILDREN} each), "
        f"LLM latency {args.latency} s, {args.reps} runs, medians\n"
    )
    print("| measure | value |")
    print("|---|---:|")
    print(f"| run wall time | {med('wall'):.1f} s |")
    print(f"| widget messages per run (deltas + state syncs) | {med('messages'):.0f} |")
    print(f"| messages per second, average (limit 10) | {med('per_s'):.2f} |")
    print(f"| messages in the busiest second | {med('peak_1s'):.0f} |")
    print(f"| bytes sent per run | {med('bytes') / 1e3:.0f} kB |")
    print(f"| of which live deltas | {med('delta_bytes') / 1e3:.0f} kB |")
    print(f"| final state (the whole record) | {med('final_bytes') / 1e3:.0f} kB |")
    print(
        f"| Chromium: render of the final 201-node tree (limit 1000 ms; median of {len(ms)}) | "
        f"{statistics.median(ms):.0f} ms |"
    )


if __name__ == "__main__":
    main()
