"""Agent and run summaries: the small, JSON-ready dicts the widget sends while a run is live.

The front end builds the same shapes from a whole record (`summarizeRecord` in
static/agent_tree.js), so the tree looks the same live, when finished and offline.
"""

from __future__ import annotations

import json
import time
from typing import Any

__all__ = ["agent_detail", "agent_summary", "jsonable", "run_summary"]

_ERROR_CHARS = 300
_ANSWER_CHARS = 2000


def jsonable(value: Any) -> Any:
    """A deep copy made of JSON types only (what a comm message can carry)."""
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def agent_summary(node: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """One agent for the tree: status, task, counts, usage, elapsed time and child ids.

    `iterations` counts LLM turns (the one in progress too), `executed` the code blocks run.

    `now` (a `time.time()` value) gives a running agent's elapsed time so far.
    """
    usage = node.get("usage") or {}
    t0, t1 = _num(node.get("started_at")), _num(node.get("finished_at"))
    if t0 is not None and t1 is None and now is not None and node.get("status") == "running":
        t1 = now
    error = node.get("error")
    return {
        "id": node.get("agent_id"),
        "parent": node.get("parent_id"),
        "depth": int(node.get("depth") or 0),
        "task": str(node.get("task") or ""),
        "status": str(node.get("status") or "running"),
        "iterations": len(node.get("iterations") or []),
        "executed": sum(len(it.get("code_blocks") or []) for it in node.get("iterations") or []),
        "calls": int(usage.get("llm_calls") or 0),
        "tokens": int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0),
        "cost": float(usage.get("cost_usd") or 0.0),
        "elapsed_s": None if t0 is None or t1 is None else round(max(0.0, t1 - t0), 3),
        "children": [str(c.get("agent_id")) for c in node.get("children") or []],
        "error": None if not error else str(error)[:_ERROR_CHARS],
    }


def agent_detail(node: dict[str, Any]) -> dict[str, Any]:
    """One agent's full record node, with its children as ids (fetched when it is selected)."""
    out = {k: v for k, v in node.items() if k != "children"}
    out["children_ids"] = [str(c.get("agent_id")) for c in node.get("children") or []]
    return jsonable(out)  # type: ignore[no-any-return]


def run_summary(run: dict[str, Any], root_id: str | None, started: float | None) -> dict[str, Any]:
    """The run's header fields: status, task, model, usage, answer, elapsed time and the root id.

    `started` (a `time.time()` value) gives a live run's elapsed time so far.
    """
    elapsed = _num(run.get("elapsed_s"))
    if elapsed is None and started is not None:
        elapsed = round(time.time() - started, 3)
    answer = run.get("answer")
    if answer is not None and not isinstance(answer, str):
        answer = json.dumps(answer, ensure_ascii=False, default=str)
    return jsonable(  # type: ignore[no-any-return]
        {
            "run_id": run.get("run_id"),
            "task": run.get("task"),
            "model": run.get("model"),
            "repo": run.get("repo"),
            "status": run.get("status") or ("running" if run else "starting"),
            "started_at": run.get("started_at"),
            "elapsed_s": elapsed,
            "usage": run.get("usage") or {},
            "answer": None if answer is None else answer[:_ANSWER_CHARS],
            "root": root_id,
        }
    )
