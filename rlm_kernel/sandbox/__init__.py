"""Sandboxes: one workspace and persistent REPL per agent, behind one interface and one bridge."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Sandbox

__all__ = ["BACKENDS", "backend_class"]

# name -> "module:Class"; imported on first use so the local backend never loads the Daytona SDK.
BACKENDS: dict[str, str] = {
    "local": "rlm_kernel.sandbox.local:LocalSandbox",
    "daytona": "rlm_kernel.sandbox.daytona:DaytonaSandbox",
}


def backend_class(name: str) -> type[Sandbox]:
    """The Sandbox class for a backend name; a clear error for unknown or unavailable backends."""
    from .base import SandboxError

    path = BACKENDS.get(name)
    if path is None:
        raise SandboxError(
            f"unknown sandbox backend {name!r}; choose one of: {', '.join(BACKENDS)}"
        )
    module, _, cls = path.partition(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]
