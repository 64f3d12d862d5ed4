"""Nothing an LLM provider does crashes the RLM kernel: `%%rlm` and `llm_query` against a failing
server (real kernel over jupyter_client, litellm's real HTTP path), then ordinary cells."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel.harness import Cell, RLMKernelProcess

from .conftest import FAKE_KEY
from .openai_server import FaultServer, error, hang, malformed, reply


@pytest.fixture
def kernel(tmp_path: Path, llm_server: FaultServer) -> Iterator[RLMKernelProcess]:
    """An `rlm` kernel whose model is `openai/fault-model` at the fault server (fake key)."""
    k = RLMKernelProcess(tmp_path, "--RLMKernel.model=openai/fault-model")
    ok(
        k.execute(
            f"%rlm config results_dir=results model.api_base={llm_server.api_base} "
            "model.retries=0 model.timeout=30"
        )
    )
    yield k
    k.shutdown()
    assert not list(k.sandbox_root.iterdir()), "sandboxes left behind"


def ok(cell: Cell) -> Cell:
    assert cell.content["status"] == "ok", cell.content
    return cell


def _text(cell: Cell) -> str:
    parts = [cell.stdout]
    for c in cell.of_type("display_data") + cell.of_type("execute_result"):
        parts += [str(c["data"].get(m, "")) for m in ("text/plain", "text/markdown")]
    return "\n".join(parts)


def test_failing_provider_never_crashes_the_kernel(
    kernel: RLMKernelProcess, llm_server: FaultServer, tmp_path: Path
) -> None:
    ok(kernel.execute("before = 41"))

    llm_server.default = error(500, message="the provider is on fire")
    cell = ok(kernel.execute("%%rlm -o res\nAnything", timeout=120))
    assert "the provider is on fire" in _text(cell), _text(cell)[:2000]
    got = ok(kernel.execute("print(res.status, before + 1)"))
    assert got.stdout == "error 42\n"

    llm_server.default = hang(60)
    ok(kernel.execute("%rlm config model.timeout=2"))
    ok(kernel.execute("%%rlm -o res2\nAnything", timeout=120))
    ok(kernel.execute("%rlm config model.timeout=30"))
    got = ok(kernel.execute("print(res2.status, 'timed out after 2 s' in res2.answer)"))
    assert got.stdout == "error True\n"

    llm_server.default = malformed()
    # a plain cell gets what a run's code gets: an error string that says what failed
    got = ok(kernel.execute("print(llm_query('ping'))")).stdout
    assert got.startswith("Error: LLM call to model 'openai/fault-model' failed after 1 attempts")
    assert "Expecting value" in got  # %rlm config applies (retries=0: 1 attempt)

    llm_server.default = reply("pong")
    assert ok(kernel.execute("print(llm_query('ping'), before)")).stdout == "pong 41\n"
    records = list((tmp_path / "results").glob("*.detail.json"))
    assert len(records) == 2
    for path in records:
        assert FAKE_KEY not in path.read_text()
        assert json.loads(path.read_text())["status"] == "error"
