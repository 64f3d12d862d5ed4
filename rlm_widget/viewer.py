"""The standalone run viewer: one self-contained HTML page over a results directory.

The page inlines the widget's own ESM and CSS (static/agent_tree.js, agent_tree.css) plus a small
page script (static/viewer.js) that drives the ESM with an in-page model, so the viewer and the
notebook widget are the same front end. By default the index and every record are embedded, so
the file works from a file URL; with `embed=False` the page fetches `index.json` and the records
from the results directory (serve it with `python -m http.server`).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from rlm_kernel.records import load_index, load_record

from .tree import STATIC

__all__ = ["build_viewer", "collect_runs", "viewer_html"]

DEFAULT_NAME = "viewer.html"


def collect_runs(results_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The runs of `index.json`, newest first; without an index, one entry per `*.detail.json`."""
    root = Path(results_dir)
    runs = load_index(root)
    if runs:
        return runs
    entries = []
    files = sorted(root.glob("*.detail.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in files:
        try:
            rec = load_record(path)
        except (OSError, ValueError):
            continue
        entries.append(
            {
                "run_id": rec.get("run_id") or path.name.removesuffix(".detail.json"),
                "task": str(rec.get("task", ""))[:300],
                "status": rec.get("status"),
                "started_at": rec.get("started_at"),
                "elapsed_s": rec.get("elapsed_s"),
                "usage": rec.get("usage"),
                "file": path.name,
            }
        )
    return entries


def _script_safe(text: str, what: str) -> str:
    if "</script" in text.lower() or "<!--" in text:
        raise ValueError(f"{what} cannot be inlined in a <script> element")
    return text


def viewer_html(
    runs: list[dict[str, Any]],
    records: dict[str, dict[str, Any]] | None,
    *,
    title: str = "RLM runs",
    base: str = "",
) -> str:
    """The viewer page: `records` embedded (run_id → record), or None to fetch them from `base`."""
    data = {"index": runs, "records": records or {}, "embedded": records is not None, "base": base}
    # "<" never appears in JSON outside strings, and "\u003c" inside them keeps </script> inert.
    payload = json.dumps(data, ensure_ascii=False, default=str).replace("<", "\\u003c")
    esm = _script_safe((STATIC / "agent_tree.js").read_text(encoding="utf-8"), "agent_tree.js")
    page = _script_safe((STATIC / "viewer.js").read_text(encoding="utf-8"), "viewer.js")
    css = (STATIC / "agent_tree.css").read_text(encoding="utf-8")
    page_css = (STATIC / "viewer.css").read_text(encoding="utf-8")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{html.escape(title)}</title>
<style>
{css}
{page_css}
</style>
</head>
<body>
<div class="rlm-viewer">
<header class="rlm-v-top"><h1>{html.escape(title)}</h1><span class="rlm-v-sub" id="rlm-v-count"></span></header>
<div class="rlm-v-main">
<nav class="rlm-v-runs" id="rlm-v-runs"></nav>
<main class="rlm-v-tree" id="rlm-v-tree"></main>
</div>
</div>
<script type="application/json" id="rlm-data">{payload}</script>
<script type="module">
{esm}
{page}
</script>
</body>
</html>
"""


def build_viewer(
    results_dir: str | os.PathLike[str] = "results",
    out: str | os.PathLike[str] | None = None,
    *,
    embed: bool = True,
) -> Path:
    """Write the viewer of `results_dir` (default file: RESULTS_DIR/viewer.html); return its path."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no results directory {root}")
    target = Path(out) if out is not None else root / DEFAULT_NAME
    runs = collect_runs(root)
    records: dict[str, dict[str, Any]] | None = None
    if embed:
        records = {}
        for entry in runs:
            path = root / str(entry.get("file") or f"{entry.get('run_id')}.detail.json")
            try:
                records[str(entry.get("run_id"))] = load_record(path)
            except (OSError, ValueError):
                continue  # listed, but its record is gone: the page says it cannot load it
    base = os.path.relpath(root.resolve(), target.resolve().parent).replace(os.sep, "/")
    base = "" if base == "." else base.rstrip("/") + "/"
    title = f"RLM runs — {root.resolve().name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(viewer_html(runs, records, title=title, base=base), encoding="utf-8")
    return target
