"""The sandboxes a notebook's ordinary cells run in: the root sandbox, or an attached one.

The root sandbox (the root agent's REPL) starts on the first cell that needs it, with the backend
and isolation the notebook's configuration names at that moment; its workspace target can be set
before it starts (`%%rlm --repo`, `%rlm repo`). `%rlm attach` sends the following cells to a kept
agent's sandbox instead. The kernel closes every sandbox it ran cells in when it shuts down.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable

from .config import RLMConfig
from .relay import prepare_repl
from .sandbox import backend_class
from .sandbox.base import Handler, Sandbox, SandboxSpec
from .sandbox.isolation import announce
from .sandbox.isolation import resolve as resolve_isolation
from .sandbox.workspace import Target

__all__ = ["NotebookSandboxes"]


class NotebookSandboxes:
    """The root sandbox (started on first use, thread-safe), the attached one, and the adopted
    ones that are closed at shutdown.

    `config` gives the notebook's configuration when the root sandbox starts; `handler` answers
    the bridge requests of the root sandbox's cells.
    """

    def __init__(self, run_id: str, config: Callable[[], RLMConfig], handler: Handler) -> None:
        self._run_id = run_id
        self._config = config
        self._handler = handler
        self._root: Sandbox | None = None
        self._lock = threading.Lock()
        self._target = Target(None, None, None)
        self._attached: Sandbox | None = None
        self._adopted: list[Sandbox] = []

    def root(self) -> Sandbox:
        """The root sandbox, started now if it is not running."""
        with self._lock:
            if self._root is not None and not self._root.closed:
                return self._root
            cfg = self._config()
            cls = backend_class(cfg.sandbox.backend)
            cls.check(cfg)
            iso = None
            if cls.capabilities.isolation:
                iso = resolve_isolation(cfg.sandbox.isolation, cfg.sandbox.network)
                announce(iso)
            spec = SandboxSpec(
                run_id=self._run_id,
                agent_id="root",
                target=self._target,
                handler=self._handler,
                runtime_cfg={"agent_id": "root", "depth": 0, "tools": []},
                snapshot=cfg.sandbox.snapshot,
                isolation=iso,
                readable=(os.getcwd(),),  # RLM_NOTEBOOK_DIR, read-only under bwrap
            )
            sb = cls(spec)
            try:
                sb.start()
            except BaseException:
                sb.close()
                raise
            prepare_repl(sb)
            self._root = sb
            return sb

    @property
    def running_root(self) -> Sandbox | None:
        """The root sandbox if it is running (this never starts it)."""
        root = self._root
        return root if root is not None and not root.closed else None

    @property
    def target(self) -> Target:
        """The workspace the root sandbox has (or will have when it starts)."""
        return self._target

    def set_target(self, target: Target) -> None:
        """Give the root sandbox a workspace of `target` now, or at its start if not started."""
        with self._lock:
            if self._root is not None and not self._root.closed:
                self._root.set_workspace(target)
            self._target = target

    def host_path(self, path: str) -> str:
        """`path` as the host finds it (a bwrap root sandbox's /tmp is private)."""
        root = self.running_root
        return root.host_path(path) if root is not None else path

    @property
    def attached(self) -> Sandbox | None:
        """The sandbox ordinary cells run in instead of the root, if any."""
        return self._attached

    def attach(self, sandbox: Sandbox | None) -> None:
        """Send the following cells to `sandbox` (None: to the root sandbox again)."""
        if sandbox is not None and sandbox is not self._root and sandbox not in self._adopted:
            self._adopted.append(sandbox)
            with contextlib.suppress(Exception):
                prepare_repl(sandbox)
        self._attached = sandbox

    def detach(self, sandbox: Sandbox) -> bool:
        """Stop sending cells to `sandbox` if it is the attached one (it died); whether it was."""
        if sandbox is not self._attached:
            return False
        self._attached = None
        return True

    def for_cell(self) -> Sandbox | None:
        """Where the next cell goes: the attached sandbox, else the running root (else None:
        the root is to be started)."""
        return self._attached if self._attached is not None else self.running_root

    def live(self) -> Sandbox | None:
        """The sandbox cells go to, if it is running (completion never starts one)."""
        sb = self._attached if self._attached is not None else self._root
        return sb if sb is not None and not sb.closed else None

    def close(self) -> None:
        """Close the attached, adopted and root sandboxes (idempotent)."""
        self._attached = None
        with self._lock:
            sandboxes = [*self._adopted, *([self._root] if self._root is not None else [])]
            self._adopted, self._root = [], None
        for sb in sandboxes:
            sb.close()
