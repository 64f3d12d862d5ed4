"""Fixtures of the widget tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def plain_comms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Widgets here run without a kernel: use comm's own DummyComm even when an earlier test
    imported ipykernel (which swaps in kernel comms that drop state updates without a kernel)."""
    import comm

    monkeypatch.setattr(comm, "create_comm", lambda *a, **k: comm.DummyComm(*a, **k))
