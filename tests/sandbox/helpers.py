"""Fixtures shared by the sandbox kernel tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rlm_kernel.sandbox.kernels import live_kernel_pids, shutdown_all


@pytest.fixture(scope="module", autouse=True)
def no_leftover_kernels() -> Iterator[None]:
    """After the module's tests: every kernel they started is shut down and none is left alive."""
    yield
    shutdown_all()
    assert live_kernel_pids() == []
