"""The `%rlm` subcommands that show runs: `status`, `runs`, `tree`, `result` and `ns`.

Each reads a live run's record (`RunHandle.view`, fed by the run's events) or a recorded run in
the results directory (`records`), and shows it as a table or text; none changes a run.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError

from . import display
from .session import RLMSession, RunHandle

__all__ = ["VIEWS", "agent_ids", "ns", "record", "result", "runs", "sandbox_of", "status", "tree"]


def status(s: RLMSession, _: argparse.Namespace) -> None:
    """`%rlm status`: running and finished runs of this session, with usage."""
    if not s.runs:
        print("no %%rlm run in this session yet")
        return
    rows = []
    for h in s.runs.values():
        rec = h.view.record()
        gate = h.view.gate
        agents, iterations = _count(rec.get("root"))
        waiting = ", ".join(
            f"{w['agent_id']}@{w['index']}" for w in ([] if gate.ended else gate.waiting)
        )
        state = rec.get("status") or h.run.status
        if gate.paused:
            state = f"{state} (step mode)"
        u = rec.get("usage") or {}
        tokens = int(u.get("prompt_tokens") or 0) + int(u.get("completion_tokens") or 0)
        cached = int(u.get("cache_read_tokens") or 0)
        rows.append(
            [
                h.run_id,
                state,
                agents,
                iterations,
                waiting or "-",
                f"{tokens:,}" + (f" ({cached:,} cached)" if cached else ""),
                f"${float(u.get('cost_usd') or 0.0):.4f}",
                _secs(rec),
            ]
        )
    display.show(
        display.table_bundle(
            [
                "run",
                "status",
                "agents",
                "iterations",
                "waiting at gate",
                "tokens",
                "cost",
                "time",
            ],
            rows,
        )
    )


def runs(s: RLMSession, _: argparse.Namespace) -> None:
    """`%rlm runs`: this session's runs, then those in the results index."""
    from .records import load_index

    seen: set[str] = set()
    rows = []
    for h in reversed(list(s.runs.values())):
        rec = h.view.record()
        rows.append(
            [
                h.run_id,
                rec.get("status"),
                _count(rec.get("root"))[0],
                rec.get("started_at"),
                _short(h.run.task),
            ]
        )
        seen.add(h.run_id)
    for r in load_index(s.config().results_dir):
        if r.get("run_id") in seen:
            continue
        rows.append(
            [
                r.get("run_id"),
                r.get("status"),
                r.get("agents"),
                r.get("started_at"),
                _short(r.get("task")),
            ]
        )
    if not rows:
        print("no runs yet")
        return
    display.show(display.table_bundle(["run", "status", "agents", "started", "task"], rows))


def tree(s: RLMSession, a: argparse.Namespace) -> None:
    """`%rlm tree [RUN]`: the agent tree of a live or recorded run."""
    from .console import render_tree

    rec, h = record(s, a.ref)
    if h is not None:
        print(h.view.text())
    else:
        print("\n".join([*render_tree(rec.get("root")), display.summary_text(rec)]))


def result(s: RLMSession, a: argparse.Namespace) -> None:
    """`%rlm result [RUN]`: a finished run's answer, patch and summary again."""
    rec, h = record(s, a.ref)
    if h is not None and not h.run.done:
        raise UsageError(f"run {h.run_id} is still running (%rlm status)")
    res = h.run.result if h is not None else None
    answer = res.answer if res else rec.get("answer")
    patch = res.patch if res else rec.get("patch") or ""
    path = res.patch_path if res else rec.get("patch_path")
    error = res.error if res else (rec.get("root") or {}).get("error")
    for bundle in display.result_bundles(rec, answer, patch, path, error, quiet=False):
        display.show(bundle)


def ns(s: RLMSession, a: argparse.Namespace) -> None:
    """`%rlm ns AGENT [--live]`: an agent's variables (recorded snapshot, or live)."""
    if a.live:
        sandbox = sandbox_of(s, a.run, a.agent, kept_only=False)
        rows = sandbox.snapshot()
        where = f"live namespace of {a.agent}"
    else:
        rec, _ = record(s, a.run)
        node = _find_node(rec.get("root"), a.agent)
        if node is None:
            ids = ", ".join(agent_ids(rec.get("root"))) or "none"
            raise UsageError(f"run {rec.get('run_id')} has no agent {a.agent!r} (agents: {ids})")
        snaps = [it.get("namespace") for it in node.get("iterations") or [] if it.get("namespace")]
        rows = snaps[-1] if snaps else []
        where = f"{a.agent}'s namespace after its last iteration"
    if not rows:
        print(f"{where}: no variables")
        return
    table = [
        [
            r.get("name"),
            r.get("type"),
            "" if r.get("size") is None else r.get("size"),
            r.get("repr"),
        ]
        for r in rows
    ]
    print(where + ":")
    display.show(display.table_bundle(["name", "type", "size", "repr"], table))


def record(s: RLMSession, ref: str | None) -> tuple[dict[str, Any], RunHandle | None]:
    """A live run's record (this session) or a recorded one (results dir)."""
    from .records import load_record

    try:
        h = s.find(ref)
        return h.view.record(), h
    except UsageError:
        if not ref:
            raise
    results = s.config().results_dir
    path = os.path.join(results, f"{ref}.detail.json")
    if not os.path.isfile(path):
        raise UsageError(f"no run {ref!r} in this session or in {results}/") from None
    return load_record(path), None


def sandbox_of(s: RLMSession, ref: str | None, agent: str, *, kept_only: bool) -> Any:
    """The sandbox of a run's agent: a kept one (`kept_only`), else also a live one."""
    h = s.find(ref)
    if agent == "root" and h.in_root_sandbox:
        if kept_only:
            raise UsageError(
                "the root agent ran in the notebook's own sandbox: its variables are already here"
            )
        return s.root_sandbox()
    kept = h.run.sandbox_of(agent, kept_only=True)
    if kept is not None:
        return kept
    if kept_only:
        if not h.run.config.sandbox.keep:
            raise UsageError(
                f"run {h.run_id} did not keep its sandboxes: start it with %%rlm --keep "
                "to attach to an agent"
            )
        raise UsageError(
            f"run {h.run_id} kept no sandbox of agent {agent!r} (it may still be running)"
        )
    live = h.run.sandbox_of(agent)
    if live is None:
        raise UsageError(
            f"agent {agent!r} of run {h.run_id} has no live sandbox (finished and not kept); "
            "use %rlm ns without --live for its recorded snapshot"
        )
    return live


VIEWS: dict[str, Callable[[RLMSession, argparse.Namespace], None]] = {
    "status": status,
    "runs": runs,
    "tree": tree,
    "result": result,
    "ns": ns,
}
"""The subcommands this module answers, by name."""


# -- a record's agent tree -------------------------------------------------------------------------


def _walk(root: dict[str, Any] | None) -> list[dict[str, Any]]:
    out, stack = [], [root] if root else []
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node.get("children") or []))
    return out


def agent_ids(root: dict[str, Any] | None) -> list[str]:
    """The ids of a record's agents, depth first."""
    return [str(n["agent_id"]) for n in _walk(root)]


def _find_node(root: dict[str, Any] | None, agent: str) -> dict[str, Any] | None:
    return next((n for n in _walk(root) if n.get("agent_id") == agent), None)


def _count(root: dict[str, Any] | None) -> tuple[int, int]:
    nodes = _walk(root)
    return len(nodes), sum(len(n.get("iterations") or []) for n in nodes)


def _secs(rec: dict[str, Any]) -> str:
    e = rec.get("elapsed_s")
    return f"{float(e):.1f} s" if e is not None else ""


def _short(text: Any, n: int = 60) -> str:
    t = " ".join(str(text or "").split())
    return t if len(t) <= n else t[: n - 1] + "…"
