"""Tests for replay models (rlm_kernel.llm.replay): a recorded run answers again, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlm_kernel.llm import LLMError

from .helpers import client, user


def _record(tmp_path: Path) -> Path:
    record = {
        "run_id": "r1",
        "task": "t",
        "root": {
            "agent_id": "root",
            "parent_id": None,
            "depth": 0,
            "iterations": [
                {"index": 0, "llm_response": "root turn 0", "code_blocks": []},
                {"index": 1, "llm_response": "root turn 1", "code_blocks": []},
            ],
            "llm_queries": [
                {"prompt": "p1", "response": "a1"},
                {"prompt": "p2", "response": "a2"},
                {"prompt": "p1", "response": "a1 again"},
                {"prompt": "p3", "response": "a3"},
                {"prompt": "p4", "response": None, "error": "budget exhausted"},
            ],
            "children": [
                {
                    "agent_id": "root.1",
                    "parent_id": "root",
                    "depth": 1,
                    "iterations": [{"index": 0, "llm_response": "child turn 0"}],
                    "children": [],
                }
            ],
        },
    }
    path = tmp_path / "r1.detail.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def test_replay_agent_turns(tmp_path: Path) -> None:
    model = f"replay/{_record(tmp_path)}"
    c = client()

    def turn(agent_id: str, iteration: int) -> str:
        info = {"agent_id": agent_id, "iteration": iteration, "kind": "agent"}
        return c.complete(user("go"), model=model, info=info).text

    assert turn("root", 1) == "root turn 1"
    assert turn("root", 0) == "root turn 0"
    assert turn("root.1", 0) == "child turn 0"
    with pytest.raises(LLMError, match="no recorded response for agent root iteration 5"):
        turn("root", 5)
    with pytest.raises(LLMError, match="no recorded response for agent ghost iteration 0"):
        turn("ghost", 0)
    streamed = c.complete(
        user("go"),
        model=model,
        info={"agent_id": "root", "iteration": 1},
        on_text=lambda _o, _t: None,
    )
    assert streamed.text == "root turn 1"


def test_replay_llm_queries_by_prompt(tmp_path: Path) -> None:
    model = f"replay/{_record(tmp_path)}"
    c = client()

    def query(prompt: str, run_id: str | None = "run-a") -> str:
        messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": prompt}]
        info = {"agent_id": "root", "iteration": 1, "kind": "llm_query"}
        if run_id is not None:
            info["run_id"] = run_id
        return c.complete(messages, model=model, info=info).text

    assert query("p2") == "a2"
    assert query("p1") == "a1"
    assert query("p1") == "a1 again"
    with pytest.raises(LLMError, match="recorded llm_query failed: budget exhausted"):
        query("p4")  # a failed recorded call fails again
    assert query("never asked") == "a3"  # falls back to the next unused query of the agent
    with pytest.raises(LLMError, match="no recorded llm_query response for agent root"):
        query("p1")
    assert query("p1", run_id="run-b") == "a1"  # another run replays from the start
    # an agent's first turn starts its queries over (for callers that pass no run_id)
    assert query("p1", run_id=None) == "a1"
    assert query("p1", run_id=None) == "a1 again"
    c.complete(user("go"), model=model, info={"agent_id": "root", "iteration": 0})
    assert query("p1", run_id=None) == "a1"


def test_replay_missing_record(tmp_path: Path) -> None:
    with pytest.raises(LLMError, match="not found"):
        client().complete(user("x"), model=f"replay/{tmp_path / 'none.detail.json'}")
    bad = tmp_path / "bad.detail.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(LLMError, match="cannot read the run record"):
        client().complete(user("x"), model=f"replay/{bad}")
