"""Notebook tests: the `rlm` kernelspec of tests/kernel, and the notebooks copied to a temp dir."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from kernel.conftest import rlm_kernelspec  # the session-wide private kernelspec

__all__ = ["NOTEBOOKS", "notebook_dir", "rlm_kernelspec"]

NOTEBOOKS = Path(__file__).parents[2] / "notebooks"


@pytest.fixture
def notebook_dir(tmp_path: Path) -> Path:
    """A copy of notebooks/ (notebooks, scripted models, data) to execute in; results go there."""
    work = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, work, ignore=shutil.ignore_patterns("results", "__pycache__"))
    return work
