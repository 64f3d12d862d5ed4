"""Synthetic runs for widget tests and benches: engine-shaped event streams, folded by the real
`TreeState` into real records (no sandbox, no LLM; fast and deterministic)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlm_kernel.events import PAYLOAD_TYPES, Event, EventType
from rlm_kernel.records import Recorder, TreeState

__all__ = ["agent_ids", "synth_events", "synth_record", "write_results"]

T0 = 1_760_000_000.0


def agent_ids(children: int, grandchildren: int) -> list[str]:
    """The agent ids of a root with `children` children of `grandchildren` children each."""
    ids = ["root"]
    for c in range(children):
        ids.append(f"root.{c}")
        ids += [f"root.{c}.{g}" for g in range(grandchildren)]
    return ids


def synth_events(
    run_id: str = "20260101-120000-aaaaaa",
    task: str = "survey the project",
    children: int = 4,
    grandchildren: int | tuple[int, ...] = (1, 1, 0, 0),
    statuses: dict[str, str] | None = None,
    started_at: str = "2026-01-01T12:00:00",
) -> list[Event]:
    """A finished run: every agent has two iterations with code, output and a namespace."""
    statuses = statuses or {}
    per_child = (
        list(grandchildren) if not isinstance(grandchildren, int) else [grandchildren] * children
    )
    clock = [T0]
    out: list[Event] = []

    def ev(t: EventType, agent: str | None = None, **data: Any) -> None:
        clock[0] += 0.05
        out.append(Event(PAYLOAD_TYPES[t](**data), run_id, agent, ts=clock[0]))

    usage = {"llm_calls": 1, "prompt_tokens": 400, "completion_tokens": 60, "cost_usd": 0.00052}

    def agent(aid: str, parent: str | None, depth: int, task: str, kids: list[str]) -> None:
        ev(
            EventType.AGENT_STARTED,
            aid,
            parent_id=parent,
            depth=depth,
            task=task,
            started_at=clock[0],
        )
        ev(
            EventType.SANDBOX_READY,
            aid,
            sandbox={"backend": "local", "id": aid, "path": f"/tmp/{aid}"},
        )
        ev(EventType.ITERATION_STARTED, aid, index=0)
        code = f'found = {len(task)}\nprint("working on {task}:", found)  # step one'
        if kids:
            code = f"answers = rlm_query_batched({[f'sub-task {k}' for k in kids]!r})\nprint(len(answers))"
        ev(
            EventType.LLM_RESPONSE,
            aid,
            index=0,
            text=f"Let me look.\n```python\n{code}\n```",
            usage=usage,
        )
        for i, kid in enumerate(kids):
            agent(kid, aid, depth + 1, f"sub-task {i} of {aid}", _kids_of(kid))
        ev(
            EventType.CODE_EXECUTED,
            aid,
            index=0,
            block=0,
            code=code,
            output=f"working on {task}: {len(task)}\n" if not kids else f"{len(kids)}\n",
            error=None,
            elapsed_s=0.012,
            spawned=kids,
            status="ok",
        )
        ns = [
            {"name": "found", "type": "int", "repr": str(len(task)), "size": None},
            {"name": "notes", "type": "list", "repr": "['a', 'b']", "size": 2},
        ]
        ev(EventType.ITERATION_FINISHED, aid, index=0, namespace=ns)
        ev(EventType.ITERATION_STARTED, aid, index=1)
        ev(EventType.LLM_RESPONSE, aid, index=1, text='```python\nFINAL("ok")\n```', usage=usage)
        ev(
            EventType.CODE_EXECUTED,
            aid,
            index=1,
            block=0,
            code='FINAL("ok")',
            output="",
            error=None,
            elapsed_s=0.003,
            spawned=[],
            status="ok",
        )
        ev(EventType.ITERATION_FINISHED, aid, index=1, namespace=ns)
        status = statuses.get(aid, "done")
        ev(
            EventType.AGENT_FINISHED,
            aid,
            status=status,
            result=f"{aid} result" if status == "done" else None,
            error=None if status == "done" else f"{aid} ended: {status}",
            usage={k: v * 2 for k, v in usage.items()},
            finished_at=clock[0],
            patch="",
        )

    tree: dict[str, list[str]] = {"root": [f"root.{c}" for c in range(children)]}
    for c in range(children):
        tree[f"root.{c}"] = [f"root.{c}.{g}" for g in range(per_child[c])]

    def _kids_of(aid: str) -> list[str]:
        return tree.get(aid, [])

    ev(
        EventType.RUN_STARTED,
        task=task,
        repo=None,
        branch=None,
        commit=None,
        model="scripted/synth.py",
        config={},
        started_at=started_at,
        step=False,
    )
    agent("root", None, 0, task, tree["root"])
    n = 1 + sum(len(v) for v in tree.values())
    ev(
        EventType.RUN_FINISHED,
        status=statuses.get("root", "done"),
        answer="root result",
        patch="",
        usage={k: v * 2 * n for k, v in usage.items()},
        elapsed_s=round(clock[0] - T0, 3),
        finished_at="2026-01-01T12:00:09",
    )
    return out


def synth_record(**kwargs: Any) -> dict[str, Any]:
    """The record (`detail.json` content) of `synth_events(**kwargs)`."""
    state = TreeState()
    for e in synth_events(**kwargs):
        state.apply(e)
    return json.loads(json.dumps(state.to_dict(), default=str))  # type: ignore[no-any-return]


def write_results(results: Path, runs: list[dict[str, Any]]) -> list[str]:
    """Write records and index.json through the real Recorder; `runs` are synth_events kwargs."""
    ids = []
    for kw in runs:
        rec = Recorder(results, min_interval_s=0.0)
        for e in synth_events(**kw):
            rec(e)
        ids.append(str(kw["run_id"]))
    return ids
