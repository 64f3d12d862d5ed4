"""Tests for rlm_kernel.records: the run record and index built from events, written atomically."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from eventkit import event

from rlm_kernel.events import Event, EventType, HistoryFolded, LLMText
from rlm_kernel.records import Recorder, TreeState, load_index, load_record, write_json_atomic

RUN_KEYS = {
    "run_id",
    "task",
    "repo",
    "branch",
    "commit",
    "model",
    "config",
    "started_at",
    "finished_at",
    "elapsed_s",
    "status",
    "answer",
    "patch",
    "usage",
    "root",
}
NODE_KEYS = {
    "agent_id",
    "parent_id",
    "depth",
    "task",
    "status",
    "result",
    "error",
    "started_at",
    "finished_at",
    "usage",
    "sandbox",
    "iterations",
    "children",
}
USAGE_KEYS = {"llm_calls", "prompt_tokens", "completion_tokens", "cost_usd"}
ITERATION_KEYS = {"index", "llm_response", "code_blocks", "namespace"}
BLOCK_KEYS = {"code", "output", "error", "elapsed_s", "spawned"}
VAR_KEYS = {"name", "type", "repr", "size"}


def _usage(calls: int, p: int, c: int, cost: float, cached: int = 0) -> dict[str, Any]:
    return {
        "llm_calls": calls,
        "prompt_tokens": p,
        "completion_tokens": c,
        "cache_read_tokens": cached,
        "cost_usd": cost,
    }


def _events(run_id: str = "run-1", started_at: str = "2025-01-01T10:00:00") -> list[Event]:
    def ev(t: EventType, agent: str | None = None, **data: Any) -> Event:
        return event(t, run_id, agent, data)

    ns = [{"name": "x", "type": "int", "repr": "1", "size": None}]
    return [
        ev(
            EventType.RUN_STARTED,
            task="count words",
            repo="/r",
            branch="main",
            commit="abc123",
            model="scripted/m.py",
            config={"model": {"api_key": "<redacted>"}},
            started_at=started_at,
            step=False,
        ),
        ev(
            EventType.AGENT_STARTED,
            "root",
            parent_id=None,
            depth=0,
            task="count words",
            started_at=1.0,
        ),
        ev(
            EventType.SANDBOX_READY,
            "root",
            sandbox={"backend": "local", "id": "sb1", "path": "/tmp/sb1"},
        ),
        ev(EventType.ITERATION_STARTED, "root", index=0),
        ev(
            EventType.LLM_RESPONSE,
            "root",
            index=0,
            text="```python\nrlm_query_batched(['a','b'])\n```",
            usage=_usage(1, 100, 20, 0.01),
        ),
        ev(
            EventType.AGENT_STARTED,
            "root.1",
            parent_id="root",
            depth=1,
            task="part b",
            started_at=2.0,
        ),
        ev(
            EventType.AGENT_STARTED,
            "root.0",
            parent_id="root",
            depth=1,
            task="part a",
            started_at=2.1,
        ),
        ev(
            EventType.LLM_RESPONSE, "root.0", index=0, text="child a", usage=_usage(1, 10, 5, 0.001)
        ),
        ev(
            EventType.LLM_QUERY,
            "root.0",
            prompt="p",
            response="r",
            model="m",
            usage=_usage(1, 7, 3, 0.002),
            error=None,
        ),
        ev(
            EventType.CODE_EXECUTED,
            "root.0",
            index=0,
            block=0,
            code="FINAL('A')",
            output="",
            error=None,
            elapsed_s=0.01,
            spawned=[],
        ),
        ev(
            EventType.AGENT_FINISHED,
            "root.0",
            status="done",
            result="A",
            error=None,
            usage={},
            finished_at=3.0,
            patch="",
        ),
        ev(
            EventType.AGENT_FINISHED,
            "root.1",
            status="error",
            result="partial",
            error="boom",
            usage={},
            finished_at=3.1,
            patch="",
        ),
        ev(
            EventType.CODE_EXECUTED,
            "root",
            index=0,
            block=0,
            code="rlm_query_batched(['a','b'])",
            output="['A', 'partial']\n",
            error=None,
            elapsed_s=1.5,
            spawned=["root.0", "root.1"],
        ),
        ev(EventType.ITERATION_FINISHED, "root", index=0, namespace=ns),
        ev(
            EventType.LLM_RESPONSE,
            "root",
            index=1,
            text="FINAL",
            usage=_usage(1, 200, 10, 0.02, cached=150),
        ),
        ev(
            EventType.CODE_EXECUTED,
            "root",
            index=1,
            block=0,
            code="FINAL('42')",
            output="",
            error=None,
            elapsed_s=0.02,
            spawned=[],
        ),
        ev(EventType.ITERATION_FINISHED, "root", index=1, namespace=None),
        ev(
            EventType.AGENT_FINISHED,
            "root",
            status="done",
            result="42",
            error=None,
            usage={},
            finished_at=4.0,
            patch="diff --git a/x b/x\n",
        ),
        ev(
            EventType.RUN_FINISHED,
            status="done",
            answer="42",
            patch="diff --git a/x b/x\n",
            usage=_usage(4, 317, 38, 0.033),
            elapsed_s=3.0,
            finished_at="2025-01-01T10:00:03",
        ),
    ]


def _check_node(node: dict[str, Any]) -> None:
    assert set(node) >= NODE_KEYS, NODE_KEYS - set(node)
    assert set(node["usage"]) >= USAGE_KEYS
    for it in node["iterations"]:
        assert set(it) >= ITERATION_KEYS
        for block in it["code_blocks"]:
            assert set(block) >= BLOCK_KEYS
        for var in it["namespace"]:
            assert set(var) >= VAR_KEYS
    for kid in node["children"]:
        assert kid["parent_id"] == node["agent_id"]
        assert kid["depth"] == node["depth"] + 1
        _check_node(kid)


def test_record_has_contract_keys_and_nesting(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    for ev in _events():
        rec(ev)
    assert rec.path == tmp_path / "run-1.detail.json"
    data = load_record(rec.path)
    assert set(data) >= RUN_KEYS, RUN_KEYS - set(data)
    assert set(data["usage"]) >= USAGE_KEYS
    assert data["run_id"] == "run-1" and data["task"] == "count words"
    assert (data["repo"], data["branch"], data["commit"]) == ("/r", "main", "abc123")
    assert data["config"] == {"model": {"api_key": "<redacted>"}}
    assert data["status"] == "done" and data["answer"] == "42"
    assert data["patch"] == "diff --git a/x b/x\n"
    assert data["finished_at"] == "2025-01-01T10:00:03" and data["elapsed_s"] == 3.0

    root = data["root"]
    _check_node(root)
    assert root["agent_id"] == "root" and root["parent_id"] is None and root["depth"] == 0
    assert root["status"] == "done" and root["result"] == "42" and root["finished_at"] == 4.0
    assert root["sandbox"] == {"backend": "local", "id": "sb1", "path": "/tmp/sb1"}
    assert [c["agent_id"] for c in root["children"]] == ["root.0", "root.1"]
    a, b = root["children"]
    assert (a["status"], a["result"], a["error"]) == ("done", "A", None)
    assert (b["status"], b["result"], b["error"]) == ("error", "partial", "boom")
    assert b["sandbox"] is None and b["iterations"] == [] and b["children"] == []

    its = root["iterations"]
    assert [it["index"] for it in its] == [0, 1]
    assert its[0]["llm_response"].startswith("```python")
    assert its[0]["code_blocks"] == [
        {
            "code": "rlm_query_batched(['a','b'])",
            "output": "['A', 'partial']\n",
            "error": None,
            "elapsed_s": 1.5,
            "spawned": ["root.0", "root.1"],
            "status": "ok",  # the payload's default
        }
    ]
    assert its[0]["namespace"] == [{"name": "x", "type": "int", "repr": "1", "size": None}]
    assert its[1]["namespace"] == []  # namespace=None keeps the empty default
    assert a["llm_queries"] == [{"prompt": "p", "response": "r", "model": "m", "error": None}]


def test_usage_is_summed_per_node_and_for_the_run(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, min_interval_s=0)
    for ev in _events()[:-1]:  # the run's usage while it goes (RUN_FINISHED brings the total)
        rec(ev)
    data = load_record(tmp_path / "run-1.detail.json")
    root = data["root"]
    assert root["usage"] == _usage(2, 300, 30, 0.03, cached=150)
    assert root["children"][0]["usage"] == _usage(2, 17, 8, 0.003)
    assert root["children"][1]["usage"] == _usage(0, 0, 0, 0.0)
    run = data["usage"]
    assert (run["llm_calls"], run["prompt_tokens"], run["completion_tokens"]) == (4, 317, 38)
    assert abs(run["cost_usd"] - 0.033) < 1e-12


def test_run_finished_usage_overrides_the_sum() -> None:
    state = TreeState()
    evs = _events()
    evs[-1] = event(
        EventType.RUN_FINISHED, "run-1", None, {"status": "done", "usage": _usage(9, 9, 9, 9.0)}
    )
    for ev in evs:
        state.apply(ev)
    assert state.to_dict()["usage"] == _usage(9, 9, 9, 9.0)


def test_children_sorted_numerically() -> None:
    state = TreeState()
    state.apply(event(EventType.RUN_STARTED, "r", None, {"task": "t"}))
    state.apply(event(EventType.AGENT_STARTED, "r", "root", {"parent_id": None, "depth": 0}))
    for kid in ("root.10", "root.2", "root.0", "root.1"):
        state.apply(event(EventType.AGENT_STARTED, "r", kid, {"parent_id": "root", "depth": 1}))
    state.apply(
        event(EventType.AGENT_STARTED, "r", "root.2.1", {"parent_id": "root.2", "depth": 2})
    )
    state.apply(
        event(EventType.AGENT_STARTED, "r", "root.2.0", {"parent_id": "root.2", "depth": 2})
    )
    root = state.to_dict()["root"]
    assert [c["agent_id"] for c in root["children"]] == ["root.0", "root.1", "root.2", "root.10"]
    assert [c["agent_id"] for c in root["children"][2]["children"]] == ["root.2.0", "root.2.1"]


def test_events_for_unknown_agents_are_ignored() -> None:
    state = TreeState()
    state.apply(event(EventType.LLM_RESPONSE, "r", "ghost", {"index": 0, "text": "x"}))
    state.apply(event(EventType.NOTICE, "r", None, {"message": "hi"}))
    assert state.to_dict() == {"root": None}


def test_step_waiting_then_code_executed() -> None:
    state = TreeState()
    state.apply(event(EventType.AGENT_STARTED, "r", "root", {"depth": 0}))
    state.apply(event(EventType.STEP_WAITING, "r", "root", {"index": 0, "code": "x = 1"}))
    it = state.to_dict()["root"]["iterations"][0]
    assert it["pending_code"] == "x = 1"
    state.apply(
        event(EventType.CODE_EXECUTED, "r", "root", {"index": 0, "code": "x = 1", "output": ""})
    )
    it = state.to_dict()["root"]["iterations"][0]
    assert "pending_code" not in it and it["code_blocks"][0]["code"] == "x = 1"


def test_file_is_valid_json_after_every_event(tmp_path: Path) -> None:
    for interval in (0.0, 60.0):
        results = tmp_path / f"results-{interval}"
        rec = Recorder(results, min_interval_s=interval)
        for ev in _events():
            rec(ev)
            data = json.loads((results / "run-1.detail.json").read_text(encoding="utf-8"))
            assert data["run_id"] == "run-1"
            index = json.loads((results / "index.json").read_text(encoding="utf-8"))
            assert [r["run_id"] for r in index["runs"]] == ["run-1"]
            assert not [p.name for p in results.iterdir() if p.name.endswith(".tmp")]


def test_record_written_as_the_run_goes(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, min_interval_s=0)
    evs = _events()
    for ev in evs[:7]:  # up to both children started
        rec(ev)
    partial = load_record(tmp_path / "run-1.detail.json")
    assert partial["status"] == "running" and partial["finished_at"] is None
    assert [c["agent_id"] for c in partial["root"]["children"]] == ["root.0", "root.1"]
    assert all(c["status"] == "running" for c in partial["root"]["children"])


def test_milestones_written_even_when_throttled(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, min_interval_s=3600)
    evs = _events()
    for ev in evs[:-1]:
        rec(ev)
    # agent_finished(root) is a milestone: the file has the root's result
    assert load_record(tmp_path / "run-1.detail.json")["root"]["result"] == "42"
    rec(evs[-1])
    assert load_record(tmp_path / "run-1.detail.json")["status"] == "done"


def _children_status(path: Path) -> list[str]:
    root = load_record(path).get("root") or {}
    return [c["status"] for c in root.get("children", [])]


def test_a_sub_agents_end_is_throttled_and_flushed(tmp_path: Path) -> None:
    """Children of one batch that end together are not a whole-record write each: a child's end
    waits for the throttle (and is written by its timer); the root's end is written at once."""
    evs = _events()
    child_end = next(
        i
        for i, e in enumerate(evs)
        if e.type is EventType.AGENT_FINISHED and e.agent_id == "root.0"
    )
    rec = Recorder(tmp_path, min_interval_s=3600)
    for ev in evs[: child_end + 1]:
        rec(ev)
    assert "done" not in _children_status(tmp_path / "run-1.detail.json")
    for ev in evs[child_end + 1 : -1]:  # up to the root's end: a milestone
        rec(ev)
    assert sorted(_children_status(tmp_path / "run-1.detail.json")) == ["done", "error"]
    assert load_record(tmp_path / "run-1.detail.json")["root"]["result"] == "42"
    rec(evs[-1])

    quick = Recorder(tmp_path / "quick", min_interval_s=0.05)
    for ev in evs[: child_end + 1]:
        quick(ev)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the held-back end comes with the throttle's timer
        if "done" in _children_status(tmp_path / "quick" / "run-1.detail.json"):
            break
        time.sleep(0.02)
    else:
        raise AssertionError("the child's end never reached the record")
    quick(evs[-1])


def test_index_newest_first_and_updated_in_place(tmp_path: Path) -> None:
    old = Recorder(tmp_path)
    for ev in _events("run-old", "2025-01-01T09:00:00"):
        old(ev)
    new = Recorder(tmp_path)
    new_events = _events("run-new", "2025-01-02T09:00:00")
    new(new_events[0])
    runs = load_index(tmp_path)
    assert [r["run_id"] for r in runs] == ["run-new", "run-old"]
    assert runs[0]["status"] == "running" and runs[1]["status"] == "done"
    for ev in new_events[1:]:
        new(ev)
    runs = load_index(tmp_path)
    assert [r["run_id"] for r in runs] == ["run-new", "run-old"]
    entry = runs[0]
    assert entry["status"] == "done" and entry["answer"] == "42" and entry["agents"] == 3
    assert entry["file"] == "run-new.detail.json" and entry["root_status"] == "done"
    assert entry["task"] == "count words" and entry["model"] == "scripted/m.py"
    # an older run recorded later still sorts below the newer one
    older = Recorder(tmp_path)
    older(_events("run-oldest", "2024-12-31T09:00:00")[0])
    assert [r["run_id"] for r in load_index(tmp_path)] == ["run-new", "run-old", "run-oldest"]


def test_load_index_missing_or_broken(tmp_path: Path) -> None:
    assert load_index(tmp_path) == []
    (tmp_path / "index.json").write_text("{not json")
    assert load_index(tmp_path) == []
    (tmp_path / "index.json").write_text(json.dumps([{"run_id": "a"}, 3]))
    assert load_index(tmp_path) == [{"run_id": "a"}]


def test_load_record_rejects_non_object(tmp_path: Path) -> None:
    path = tmp_path / "x.detail.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="is not a run record"):
        load_record(path)


def test_write_json_atomic_creates_dirs_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c.json"
    write_json_atomic(target, {"x": [1, 2], "when": Path("/p")})
    assert json.loads(target.read_text()) == {"x": [1, 2], "when": "/p"}
    write_json_atomic(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["c.json"]


def test_secret_values_are_masked_in_records_and_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOME_API_KEY", "sk-live-abcdef123456")
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to mask without mangling text
    monkeypatch.setenv("PLAIN_SETTING", "sk-live-abcdef123456-not-secret-by-name")
    write_json_atomic(tmp_path / "r.json", {"task": "use sk-live-abcdef123456 and abc"})
    assert load_record(tmp_path / "r.json") == {"task": "use *** and abc"}


def test_index_updates_in_turn_and_leave_no_lock_file(tmp_path: Path) -> None:
    import threading

    def one(i: int) -> None:
        rec = Recorder(tmp_path)
        for ev in _events(f"run-{i}", f"2025-01-01T10:00:{i:02d}"):
            rec(ev)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r["run_id"] for r in load_index(tmp_path)] == [f"run-{i}" for i in range(7, -1, -1)]
    # only the records and the index: no lock file, no temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["index.json", *(f"run-{i}.detail.json" for i in range(8))]
    )


def _with_answer(answer: Any, patch: str) -> list[Event]:
    out = []
    for ev in _events():
        if ev.agent_id == "root" and ev.type is EventType.AGENT_FINISHED:
            ev = event(ev.type, ev.run_id, "root", {**ev.data, "result": answer, "patch": patch})
        elif ev.type is EventType.RUN_FINISHED:
            ev = event(ev.type, ev.run_id, None, {**ev.data, "answer": answer, "patch": patch})
        out.append(ev)
    return out


@pytest.mark.parametrize(
    "answer", ["y" * 200_000, {"rows": ["z" * 100] * 1000, "n": 1}], ids=["str", "dict"]
)
def test_a_long_answer_is_stored_once(tmp_path: Path, answer: Any) -> None:
    patch = "+" + "p" * 100_000 + "\n"
    rec = Recorder(tmp_path)
    for ev in _with_answer(answer, patch):
        rec(ev)
    assert rec.path is not None
    raw = rec.path.read_text()
    size = len(json.dumps(answer)) + len(patch)
    assert size < len(raw) < size + 10_000  # the answer and the patch once, not twice
    on_disk = json.loads(raw)
    assert on_disk["answer"] == answer and on_disk["patch"] == patch
    assert on_disk["root"]["result"].startswith("[stored once: the same as the record's 'answer'")
    loaded = load_record(rec.path)  # readers get the whole tree back
    assert loaded["root"]["result"] == answer and loaded["root"]["patch"] == patch
    # a short answer stays in both places (records stay easy to read)
    small = Recorder(tmp_path / "small")
    for ev in _events():
        small(ev)
    assert small.path is not None
    assert json.loads(small.path.read_text())["root"]["result"] == "42"


def test_streamed_text_is_not_recorded_but_the_whole_reply_and_folds_are(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, min_interval_s=0)
    events = _events()
    first_response = next(i for i, e in enumerate(events) if e.type is EventType.LLM_RESPONSE)
    streamed = [
        Event(LLMText(0, 0, "Let me"), "run-1", "root"),
        Event(LLMText(0, 6, " look"), "run-1", "root"),
        Event(HistoryFolded(0, 3, 1, 9000, 4000, 8000, retry=False), "run-1", "root"),
    ]
    for ev in events[:first_response] + streamed + events[first_response:]:
        rec(ev)
    text = (tmp_path / "run-1.detail.json").read_text()
    assert "Let me" not in text and " look" not in text
    root = load_record(tmp_path / "run-1.detail.json")["root"]
    assert root["iterations"][0]["llm_response"] == events[first_response].data["text"]
    assert root["history_folds"] == [streamed[2].data]
