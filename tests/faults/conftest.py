"""Fault-injection tests: a local OpenAI-compatible server, configs pointing at it, a fake key.

The `rlm` kernelspec fixture of tests/kernel is reused for the tests that drive a real kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kernel.conftest import rlm_kernelspec  # the session-wide private kernelspec
from session_checks import close_llm_clients

from rlm_kernel.config import RLMConfig
from rlm_kernel.llm import import_litellm

from .openai_server import FaultServer

__all__ = ["FAKE_KEY", "fault_config", "llm_server", "rlm_kernelspec", "server"]

FAKE_KEY = "sk-faults-0123456789-not-a-real-key"
"""The API key every fault test runs with; it must never reach a sandbox or a record."""


@pytest.fixture(scope="session")
def server() -> Iterator[FaultServer]:
    """One fault-injection server for the whole session.

    litellm is imported first, so that every test's calls take the same path: plain HTTP
    requests (rlm_kernel.llm.direct, `model.direct` on by default) with litellm's error mapping
    and retries (tests/llm/test_direct.py covers the switch to litellm's path and cold start)."""
    import_litellm()
    srv = FaultServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def llm_server(server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultServer]:
    """The server with an empty script and log, and the fake key in OPENAI_API_KEY."""
    server.reset()
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.delenv("LLM_API_KEY", raising=False)
    yield server
    server.reset()
    close_llm_clients()  # litellm keeps a client (and its connection) per request timeout


@pytest.fixture
def fault_config(llm_server: FaultServer, tmp_path: Path) -> Callable[..., RLMConfig]:
    """An RLMConfig whose model is `openai/fault-model` at the fault server (records in tmp_path)."""

    def make(**overrides: Any) -> RLMConfig:
        flat: dict[str, Any] = {
            "model.name": "openai/fault-model",
            "model.api_base": llm_server.api_base,
            "model.retries": 2,
            "model.timeout": 30,
            "results_dir": str(tmp_path / "results"),
            "rlm.max_iterations": 5,
        }
        flat.update({k.replace("__", "."): v for k, v in overrides.items()})
        return RLMConfig().with_overrides(flat)

    return make
