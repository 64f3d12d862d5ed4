"""Tests for rlm_kernel.events: event types and their JSON form."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from rlm_kernel.events import Event, EventType


def test_to_dict_is_json_serializable_with_type_string() -> None:
    ev = Event(
        EventType.CODE_EXECUTED,
        "run-1",
        "root.0",
        {"index": 0, "code": "x", "spawned": ["root.0.0"]},
    )
    d = ev.to_dict()
    assert type(d["type"]) is str and d["type"] == "code_executed"
    assert json.loads(json.dumps(d)) == {
        "type": "code_executed",
        "run_id": "run-1",
        "agent_id": "root.0",
        "ts": ev.ts,
        "data": {"index": 0, "code": "x", "spawned": ["root.0.0"]},
    }


@pytest.mark.parametrize("t", list(EventType))
def test_every_type_round_trips(t: EventType) -> None:
    d = json.loads(json.dumps(Event(t, "r").to_dict()))
    assert d["type"] == t.value and EventType(d["type"]) is t
    assert d["agent_id"] is None and d["data"] == {}


def test_type_values_are_snake_case_names() -> None:
    for t in EventType:
        assert t.value == t.name.lower()


def test_defaults_and_immutability() -> None:
    before = time.time()
    a, b = Event(EventType.NOTICE, "r"), Event(EventType.NOTICE, "r")
    assert before <= a.ts <= time.time()
    assert a.data == {} and a.data is not b.data  # no shared mutable default
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.run_id = "other"  # type: ignore[misc]
