"""Events for tests of the consumers (records, console, widget): built from the JSON form's
kind and `data`, as the engine would send them, or partial, as a damaged stream might."""

from __future__ import annotations

import dataclasses
from typing import Any

from rlm_kernel.events import PAYLOAD_TYPES, Event, EventType

__all__ = ["event"]


def event(
    t: EventType,
    run_id: str = "r",
    agent_id: str | None = None,
    data: dict[str, Any] | None = None,
    *,
    ts: float | None = None,
) -> Event:
    """An event of kind `t` with `data` as its payload's fields; a field `data` leaves out takes
    the payload's default, or None when it has none."""
    cls = PAYLOAD_TYPES[t]
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            fields[f.name] = None
    fields.update(data or {})
    payload = cls(**fields)
    return Event(payload, run_id, agent_id) if ts is None else Event(payload, run_id, agent_id, ts)  # type: ignore[arg-type]
