"""rlm_widget.AgentTree on the Python side: throttled deltas, details on request, the final state,
records, and binding to real runs (scripted model, real sandboxes)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eventkit import event

from rlm_kernel.config import RLMConfig
from rlm_kernel.events import Event, EventType, GateState, LLMText
from rlm_kernel.records import load_record
from rlm_kernel.runner import Run
from rlm_widget import AgentTree
from rlm_widget.summary import agent_summary

from .synth import agent_ids, synth_events, synth_record

MODEL = Path(__file__).parent / "models" / "tree7.py"


class Spy:
    """Records what the widget sends to the front end (custom messages and state updates)."""

    def __init__(self, tree: AgentTree) -> None:
        self.msgs: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        tree._send = self.capture

    def capture(self, msg: dict[str, Any], buffers: Any = None) -> None:
        with self._lock:
            self.msgs.append((time.monotonic(), msg))

    def custom(self, kind: str | None = None) -> list[dict[str, Any]]:
        out = [m["content"] for _, m in self.msgs if m["method"] == "custom"]
        return [c for c in out if kind is None or c.get("kind") == kind]

    def updates(self) -> list[dict[str, Any]]:
        return [m["state"] for _, m in self.msgs if m["method"] == "update"]


def _wait(cond: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def test_agent_summary_fields() -> None:
    node = synth_record()["root"]["children"][1]
    s = agent_summary(node)
    assert s["id"] == "root.1" and s["parent"] == "root" and s["depth"] == 1
    assert (s["status"], s["iterations"], s["executed"], s["children"]) == (
        "done",
        2,
        2,
        ["root.1.0"],
    )
    assert s["tokens"] == 920 and s["calls"] == 2 and s["cost"] == pytest.approx(0.00104)
    assert s["elapsed_s"] == pytest.approx(node["finished_at"] - node["started_at"], abs=1e-3)
    running = {**node, "status": "running", "finished_at": None, "error": "x" * 1000}
    live = agent_summary(running, now=node["started_at"] + 2.5)
    assert live["elapsed_s"] == pytest.approx(2.5) and len(live["error"]) == 300


def test_bursts_are_throttled_into_small_deltas() -> None:
    events = synth_events(children=20, grandchildren=9)  # 201 agents, ~2,200 events
    tree = AgentTree(min_interval_s=0.2)
    spy = Spy(tree)
    t0 = time.monotonic()
    for i, e in enumerate(events[:-1]):
        tree.on_event(e)
        if i % 100 == 0:
            time.sleep(0.02)  # ~0.5 s of events
    time.sleep(0.3)
    tree.on_event(events[-1])
    elapsed = time.monotonic() - t0
    deltas = spy.custom("delta")
    assert len(spy.msgs) <= elapsed / 0.2 + 3, (len(spy.msgs), elapsed)
    times = [t for t, m in spy.msgs if m["method"] == "custom"]
    assert all(b - a >= 0.19 for a, b in itertools.pairwise(times)), "deltas closer than 0.2 s"
    # the deltas together describe every agent, and each one is small
    seen: set[str] = set()
    for d in deltas:
        seen |= set(d["nodes"])
    assert seen == set(agent_ids(20, 9))
    assert max(len(json.dumps(d)) for d in deltas) < 200_000
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    # the end: one state update that holds the whole record
    final = spy.updates()[-1]
    assert final["summary"]["status"] == "done" and final["summary"]["live"] is False
    assert final["record"]["root"]["agent_id"] == "root"
    assert len(json.dumps(final["record"])) > 100_000


def test_details_are_sent_on_request_and_sync_sends_everything() -> None:
    events = synth_events()
    tree = AgentTree(min_interval_s=0.01)
    spy = Spy(tree)
    for e in events[:40]:
        tree.on_event(e)
    tree._on_msg(tree, {"kind": "detail", "agent_id": "root"}, [])
    (detail,) = spy.custom("detail")
    node = detail["node"]
    assert detail["agent_id"] == "root" and "children" not in node
    assert (
        node["children_ids"]
        == ["root.0", "root.1", "root.2", "root.3"][: len(node["children_ids"])]
    )
    assert node["iterations"][0]["llm_response"].startswith("Let me look.")
    tree._on_msg(tree, {"kind": "sync"}, [])
    (snap,) = spy.custom("snapshot")
    assert set(snap["nodes"]) == {a for a in agent_ids(4, 1) if a in tree._state.nodes}
    assert snap["run"]["live"] is True and snap["run"]["controls"] is False
    tree._on_msg(tree, {"kind": "detail", "agent_id": "nobody"}, [])
    tree._on_msg(tree, "not a dict", [])
    assert len(spy.custom("detail")) == 1


def test_from_record_path_and_dict(tmp_path: Path) -> None:
    rec = synth_record(statuses={"root.3": "timeout"})
    path = tmp_path / "run.detail.json"
    path.write_text(json.dumps(rec))
    for source in (path, str(path), rec):
        tree = AgentTree.from_record(source)
        assert tree.record == load_record(path)
        assert tree.summary["live"] is False and tree.summary["root"] == "root"
        assert tree.summary["status"] == "done"
    assert repr(tree) == "AgentTree(run='20260101-120000-aaaaaa', status='done')"


def _config(tmp_path: Path, **extra: Any) -> RLMConfig:
    flat = {
        "model.name": f"scripted/{MODEL}",
        "results_dir": str(tmp_path / "results"),
        "model.retries": 0,
        **extra,
    }
    return RLMConfig().with_overrides(flat)


@pytest.mark.slow
def test_on_event_consumer_of_a_real_run(tmp_path: Path) -> None:
    tree = AgentTree()
    spy = Spy(tree)
    run = Run("survey the project", config=_config(tmp_path), on_event=tree.on_event)
    res = run.execute()
    assert res.status == "done"
    assert tree.record["root"] == json.loads(json.dumps(res.tree, default=str))
    assert tree.record["status"] == "done" and tree.summary["live"] is False
    assert sorted(tree._state.nodes) == [
        "root",
        "root.0",
        "root.0.0",
        "root.1",
        "root.1.0",
        "root.2",
        "root.3",
    ]
    assert spy.custom("delta") and not spy.custom("snapshot")
    assert tree.summary["controls"] is False  # no Run object: nothing to control


@pytest.mark.slow
def test_attach_late_then_step_and_resume_through_the_controls(tmp_path: Path) -> None:
    seen: list[Event] = []
    run = Run("survey the project", config=_config(tmp_path), step=True, on_event=seen.append)

    def gate() -> GateState:
        state = GateState()
        for ev in list(seen):
            state = state.after(ev)
        return state

    run.start()
    try:
        _wait(lambda: gate().waiting, 30)
        tree = AgentTree.from_run(run, min_interval_s=0.05)  # joins a run already under way
        spy = Spy(tree)
        assert tree.summary["controls"] is True and tree.summary["stepping"] is True
        assert [w["agent_id"] for w in tree.summary["waiting"]] == ["root"]
        assert "root" in tree._state.nodes  # copied from what happened before
        tree._on_msg(tree, {"kind": "control", "action": "step", "code": None}, [])
        # the four children wait at the gate, and the browser is told
        _wait(lambda: any(len(c["run"].get("waiting", [])) == 4 for c in spy.custom("delta")), 30)
        tree._on_msg(tree, {"kind": "control", "action": "pause"}, [])
        assert gate().paused
        tree._on_msg(tree, {"kind": "control", "action": "cancel", "agent_id": "root.3"}, [])
        tree._on_msg(tree, {"kind": "control", "action": "resume"}, [])
        res = run.wait(60)
    finally:
        run.cancel()
        run.wait(60)
    assert res.status == "done"
    statuses = {n["agent_id"]: n["status"] for n in tree._state.nodes.values()}
    assert statuses["root.3"] == "cancelled" and statuses["root.2"] == "done"
    assert tree.record["root"]["children"][3]["status"] == "cancelled"
    # a finished tree ignores controls and events
    tree.control("pause")
    assert seen[-1].type is EventType.RUN_FINISHED and not gate().paused
    n = len(seen)
    run.pause()  # a finished run emits nothing more
    assert len(seen) == n
    n = len(spy.msgs)
    tree.on_event(event(EventType.NOTICE, run.run_id, "root", {"message": "late"}))
    assert len(spy.msgs) == n


def test_a_reply_being_written_grows_in_the_live_updates() -> None:
    events = synth_events()
    first_response = next(i for i, e in enumerate(events) if e.type is EventType.LLM_RESPONSE)
    run_id, aid = events[0].run_id, events[first_response].agent_id
    index = events[first_response].data["index"]
    tree = AgentTree(min_interval_s=0.05)
    spy = Spy(tree)
    for e in events[:first_response]:
        tree.on_event(e)
    words = ["Let", " me", " look", " at", " the", " files.\n```python\nprint(1)\n```"]
    offset = 0
    for word in words:
        tree.on_event(Event(LLMText(index, offset, word), run_id, aid))
        offset += len(word)
        time.sleep(0.06)

    def lives() -> list[str]:
        out = []
        for d in spy.custom("delta"):
            live = (d["nodes"].get(aid) or {}).get("live")
            if live:
                out.append(live["text"])
        return out

    _wait(lambda: lives() and lives()[-1] == "".join(words))
    seen = lives()
    assert len(seen) >= 3 and all(b.startswith(a) for a, b in itertools.pairwise(seen))  # grows
    # text alone does not make the agent's detail stale (no re-fetch of its whole record node)
    text_only = [d for d in spy.custom("delta") if (d["nodes"].get(aid) or {}).get("live")]
    assert all(aid not in d["touched"] for d in text_only[1:])
    # a retried call starts the reply over (offset 0)
    tree.on_event(Event(LLMText(index, 0, "Again"), run_id, aid))
    _wait(lambda: lives()[-1] == "Again")
    # the whole reply ends the live text; records never carry it
    tree.on_event(events[first_response])
    _wait(
        lambda: any((d["nodes"].get(aid) or {}).get("live", 0) is None for d in spy.custom("delta"))
    )
    for e in events[first_response + 1 :]:
        tree.on_event(e)
    assert "Again" not in json.dumps(tree.record)
