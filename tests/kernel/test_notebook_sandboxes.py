"""`notebook_sandboxes`: the root sandbox started on first use (and again after it went away),
its target, an attached sandbox, and closing them all; a backend that cannot start creates
nothing. The same through the kernel: test_kernel_protocol.py, test_rlm_magic.py (attach)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rlm_kernel.config import RLMConfig
from rlm_kernel.notebook_sandboxes import NotebookSandboxes
from rlm_kernel.sandbox.base import SandboxError, SandboxSpec
from rlm_kernel.sandbox.local import LocalSandbox
from rlm_kernel.sandbox.workspace import Target, resolve_target


def refuse(op: str, args: dict[str, Any]) -> Any:
    raise AssertionError(f"no bridge request expected, got {op}")


def test_the_root_starts_on_first_use_and_again_after_it_went_away(
    config: Callable[..., RLMConfig], make_repo: Callable[..., Path]
) -> None:
    asked: list[int] = []

    def cfg() -> RLMConfig:
        asked.append(1)
        return config("echo.py")

    boxes = NotebookSandboxes("t-notebook", cfg, refuse)
    target = resolve_target(make_repo())
    boxes.set_target(target)  # before the start: the root gets it when it starts
    assert boxes.running_root is None and boxes.live() is None and boxes.for_cell() is None
    assert boxes.host_path("/tmp/x") == "/tmp/x" and asked == []
    try:
        root = boxes.root()
        assert boxes.root() is root and boxes.running_root is root and asked == [1]
        assert root.spec.agent_id == "root" and root.spec.target == target
        assert root.spec.handler is refuse
        assert boxes.for_cell() is root and boxes.live() is root
        assert root.execute("x = 41", timeout=30).status == "ok"
        root.close()  # e.g. it died
        assert boxes.running_root is None and boxes.live() is None
        again = boxes.root()
        assert again is not root and again.execute("print(1)", timeout=30).output == "1\n"
        assert boxes.target is target
    finally:
        boxes.close()
    assert boxes.running_root is None and again.closed


def test_an_attached_sandbox_takes_the_cells_and_is_closed_at_shutdown(
    config: Callable[..., RLMConfig],
) -> None:
    boxes = NotebookSandboxes("t-notebook", lambda: config("echo.py"), refuse)
    kept = LocalSandbox(SandboxSpec("t-kept", "root.0", Target(None, None, None), refuse))
    kept.start()
    try:
        boxes.attach(kept)
        assert boxes.attached is kept and boxes.for_cell() is kept and boxes.live() is kept
        assert boxes.running_root is None  # attaching starts no root
        assert boxes.detach(kept) and boxes.attached is None and not boxes.detach(kept)
        boxes.attach(kept)
        boxes.attach(None)  # %rlm detach: the root again, the kept one still closed at the end
        assert boxes.for_cell() is None
    finally:
        boxes.close()
    assert kept.closed and boxes.attached is None


def test_a_backend_that_cannot_start_creates_nothing(
    config: Callable[..., RLMConfig], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env with a key
    monkeypatch.delenv("DAYTONA_API_KEY", raising=False)
    boxes = NotebookSandboxes(
        "t-notebook", lambda: config("echo.py", sandbox__backend="daytona"), refuse
    )
    with pytest.raises(SandboxError, match="needs DAYTONA_API_KEY"):
        boxes.root()
    assert boxes.running_root is None
    boxes.close()
