"""Tests for rlm_kernel.events: one typed payload per event kind, the JSON form, the gate fold."""

from __future__ import annotations

import dataclasses
import json
import time
import typing

import pytest

import rlm_kernel.events as events_mod
from rlm_kernel.events import (
    PAYLOAD_TYPES,
    AgentStarted,
    CodeExecuted,
    Event,
    EventPayload,
    EventType,
    GateState,
    GateWaiter,
    Notice,
    RunFinished,
    RunStarted,
    StepMode,
)


def _sample(cls: type[EventPayload]) -> EventPayload:
    """A payload of `cls` with every field set to a JSON value."""
    values: dict[str, typing.Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        values[f.name] = {"waiting": ({"agent_id": "root", "index": 0, "code": "x = 1"},)}.get(
            f.name, f"{f.name}-value"
        )
    return cls(**values)


def test_every_kind_has_exactly_one_typed_payload() -> None:
    assert set(PAYLOAD_TYPES) == set(EventType)
    assert set(typing.get_args(events_mod.Payload)) == set(PAYLOAD_TYPES.values())
    for kind, cls in PAYLOAD_TYPES.items():
        assert cls.kind is kind
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        hints = typing.get_type_hints(cls, vars(events_mod))
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            typed = f.name in hints and hints[f.name] is not typing.Any
            assert typed or f.name in ("result", "answer"), f"{cls.__name__}.{f.name} needs a type"
        assert cls.__doc__, f"{cls.__name__} needs a docstring"


def test_type_values_are_snake_case_names() -> None:
    for t in EventType:
        assert t.value == t.name.lower()


@pytest.mark.parametrize("kind", list(EventType))
def test_every_kind_round_trips_through_json(kind: EventType) -> None:
    ev = Event(_sample(PAYLOAD_TYPES[kind]), "r", "root.1")  # type: ignore[arg-type]
    d = json.loads(json.dumps(ev.to_dict()))
    assert d["type"] == kind.value and d["agent_id"] == "root.1" and d["run_id"] == "r"
    back = Event.from_dict(d)
    assert back == ev and back.type is kind


def test_to_dict_is_the_json_form() -> None:
    p = CodeExecuted(0, 1, "x", "out", None, 0.5, spawned=["root.0.0"])
    ev = Event(p, "run-1", "root.0")
    assert ev.to_dict() == {
        "type": "code_executed",
        "run_id": "run-1",
        "agent_id": "root.0",
        "ts": ev.ts,
        "data": {
            "index": 0,
            "block": 1,
            "code": "x",
            "output": "out",
            "error": None,
            "elapsed_s": 0.5,
            "status": "ok",
            "spawned": ["root.0.0"],
        },
    }
    assert ev.data == ev.to_dict()["data"] and ev.data is not ev.data  # a fresh dict each time


def test_payloads_keep_references_not_copies() -> None:
    """Emission is on every iteration's path: a payload holds the engine's values as they are."""
    spawned = ["root.0"]
    p = CodeExecuted(0, 0, "x", "", None, 0.0, spawned=spawned)
    assert p.spawned is spawned and Event(p, "r").payload is p


def test_from_dict_drops_unknown_keys_and_names_missing_ones() -> None:
    ev = Event.from_dict(
        {"type": "notice", "run_id": "r", "data": {"level": "info", "message": "m", "new": 1}}
    )
    assert ev.payload == Notice("info", "m") and ev.agent_id is None
    with pytest.raises(TypeError, match="message"):
        Event.from_dict({"type": "notice", "run_id": "r", "data": {"level": "info"}})
    with pytest.raises(ValueError):
        Event.from_dict({"type": "no_such_kind", "run_id": "r", "data": {}})


def test_a_payload_that_is_not_typed_is_refused_with_what_to_do() -> None:
    with pytest.raises(TypeError, match=r"typed payloads of rlm_kernel.events .*Event.from_dict"):
        Event(EventType.NOTICE, "r")  # type: ignore[arg-type]  # the old positional form


def test_events_and_payloads_are_immutable() -> None:
    before = time.time()
    ev = Event(Notice("info", "m"), "r")
    assert before <= ev.ts <= time.time()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.run_id = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.payload.message = "other"  # type: ignore[misc, union-attr]


def _run_started(step: bool) -> Event:
    return Event(RunStarted("t", None, None, None, "m", {}, "2026-01-01T00:00:00", step), "r")


def test_gate_state_folds_step_mode_run_started_and_run_finished() -> None:
    g = GateState()
    assert not g.paused
    g = g.after(_run_started(True))
    assert g.paused and g.waiting == ()
    w: GateWaiter = {"agent_id": "root", "index": 2, "code": "x = 1"}
    g = g.after(Event(StepMode(True, (w,), 1), "r"))
    assert (g.stepping, g.waiting, g.pending_steps) == (True, (w,), 1)
    same = g.after(Event(AgentStarted("root", 1, "t", 0.0), "r", "root.0"))
    assert same is g  # other events leave it alone
    g = g.after(Event(StepMode(False), "r"))
    assert not g.paused and g.waiting == () and g.pending_steps == 0
    g = g.after(Event(StepMode(True, (w,)), "r"))
    g = g.after(Event(RunFinished("cancelled", None, "", {}, 1.0, "x"), "r"))
    assert g.ended and not g.paused and g.waiting == ()


def test_gate_state_before_the_run_started_keeps_a_pause() -> None:
    """A pause before the run starts comes as StepMode first, then RUN_STARTED says step=True."""
    g = GateState().after(Event(StepMode(True), "r")).after(_run_started(True))
    assert g.paused
