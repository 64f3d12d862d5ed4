"""The sandbox interface holds: callers ask capabilities, never a backend's name; the registry
reaches every backend's cleanup; the sandbox modules stay small."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlm_kernel.sandbox import BACKENDS, backend_class
from rlm_kernel.sandbox.base import Capabilities, Sandbox, SandboxError

PACKAGE = Path(__file__).resolve().parents[2] / "rlm_kernel"
NAME_CHECK = re.compile(
    r"backend\s*[!=]=|[!=]=\s*['\"](local|daytona)['\"]|isinstance\([^)]*(Daytona|Local)Sandbox"
)


def test_no_backend_name_checks_outside_the_backends() -> None:
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("local.py", "daytona.py", "daytona_api.py"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if NAME_CHECK.search(line):
                found.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert not found, "ask Sandbox.capabilities instead:\n" + "\n".join(found)


def test_sandbox_modules_stay_under_about_500_lines() -> None:
    sizes = {
        p.name: len(p.read_text().splitlines())
        for p in (PACKAGE / "sandbox").glob("*.py")
        if p.name != "runtime.py"  # the stdlib-only in-sandbox runtime is one file on purpose
    }
    assert max(sizes.values()) <= 520, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_every_backend_declares_capabilities_and_cleanup() -> None:
    for name in BACKENDS:
        cls = backend_class(name)
        assert issubclass(cls, Sandbox) and cls.backend == name
        assert isinstance(cls.capabilities, Capabilities)
        assert cls.cleanup.__func__ is not Sandbox.cleanup.__func__, name  # type: ignore[attr-defined]
    local, daytona = backend_class("local").capabilities, backend_class("daytona").capabilities
    assert local.pool and local.jupyter and local.stdin and local.isolation
    local_shutdown = backend_class("local").shutdown.__func__  # type: ignore[attr-defined]
    assert local_shutdown is not Sandbox.shutdown.__func__  # type: ignore[attr-defined]
    assert not (daytona.pool or daytona.jupyter or daytona.stdin or daytona.isolation)


def test_a_backend_without_a_pool_says_so() -> None:
    cls = backend_class("daytona")
    sb = cls.__new__(cls)
    with pytest.raises(SandboxError, match="keeps no sandbox pool"):
        sb.prepare()
