"""rlm_kernel: a Jupyter kernel and engine for Recursive Language Models.

Importing this package is cheap (sandboxes import `rlm_kernel.sandbox.runtime`); the engine loads
on first use of `run`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import RunResult

__all__ = ["__version__", "run"]
__version__ = "0.1.0"


def run(task: str, repo: Any = None, **kwargs: Any) -> RunResult:
    """Run an RLM on `task` (see `rlm_kernel.runner.run` for the options) and return its result."""
    from .runner import run as _run

    return _run(task, repo, **kwargs)
