"""Sandboxes: one workspace and persistent REPL per agent, behind one interface and one bridge.

`BACKENDS` is the registry of sandbox backends: `sandbox.backend`'s choices, the `--sandbox`
flags and their help come from it.
"""

from __future__ import annotations

import importlib
import shlex
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Sandbox

__all__ = ["BACKENDS", "Backend", "backend_class", "require_sdk", "shutdown_backends"]


@dataclass(frozen=True)
class Backend:
    """A registered sandbox backend: where its class lives and what it needs installed."""

    path: str  # "module:Class", imported on first use (the local backend never loads an SDK)
    sdk: str | None = None  # a top-level module it needs that the base install lacks
    extra: str | None = None  # the rlm-kernel extra that installs `sdk`


BACKENDS: dict[str, Backend] = {
    "local": Backend("rlm_kernel.sandbox.local:LocalSandbox"),
    "daytona": Backend("rlm_kernel.sandbox.daytona:DaytonaSandbox", sdk="daytona", extra="daytona"),
}


def require_sdk(name: str) -> None:
    """Import backend `name`'s SDK; a SandboxError with the pip command when it is missing."""
    from .base import SandboxError

    backend = BACKENDS[name]
    if backend.sdk is None:
        return
    try:
        importlib.import_module(backend.sdk)
    except ImportError as exc:
        pip = f"{shlex.quote(sys.executable)} -m pip install 'rlm-kernel[{backend.extra}]'"
        if exc.name != backend.sdk:  # installed, but one of its own imports fails
            raise SandboxError(
                f"the {name} sandbox backend cannot import its SDK ({backend.sdk}): {exc}; "
                f"reinstall it with {pip}"
            ) from None
        raise SandboxError(
            f"the {name} sandbox backend needs the {backend.sdk} package, which is not "
            f"installed: install it with {pip}"
        ) from None


def backend_class(name: str) -> type[Sandbox]:
    """The Sandbox class for a backend name; a clear error for unknown or unavailable backends."""
    from .base import SandboxError

    backend = BACKENDS.get(name)
    if backend is None:
        raise SandboxError(
            f"unknown sandbox backend {name!r}; choose one of: {', '.join(BACKENDS)}"
        )
    require_sdk(name)
    module, _, cls = backend.path.partition(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def shutdown_backends() -> None:
    """Stop what every backend in use runs for this process (`Sandbox.shutdown`): at the end of
    a kernel or a host. A backend never imported has nothing running and is not loaded."""
    for backend in BACKENDS.values():
        module, _, cls = backend.path.partition(":")
        loaded = sys.modules.get(module)
        if loaded is not None:
            getattr(loaded, cls).shutdown()
