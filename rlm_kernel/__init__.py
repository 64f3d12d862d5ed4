"""rlm_kernel: a Jupyter kernel and engine for Recursive Language Models.

Importing this package is cheap (sandboxes import `rlm_kernel.sandbox.runtime`); the engine loads
on first use of `run`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import RunResult

__all__ = ["__version__", "load_ipython_extension", "run", "unload_ipython_extension"]
__version__ = "0.1.0"


def run(task: str, repo: Any = None, **kwargs: Any) -> RunResult:
    """Run an RLM on `task` (see `rlm_kernel.runner.run` for the options) and return its result."""
    from .runner import run as _run

    return _run(task, repo, **kwargs)


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext rlm_kernel`: the `%rlm`/`%%rlm` magics in any IPython (the root agent gets its
    own sandbox; variables come from this namespace)."""
    from .magics import register

    register(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """`%unload_ext rlm_kernel`: cancel this shell's runs and remove the magics."""
    from .magics import unregister

    unregister(ipython)
