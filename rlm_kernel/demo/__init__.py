"""The offline demo: a small bundled repository and a scripted model (no API key, no network)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..sandbox.workspace import git

__all__ = ["DEMO_PROMPT", "demo_model", "prepare_demo"]

HERE = Path(__file__).parent

DEMO_PROMPT = (
    "Investigate the TODO comments across this repository. Spawn sub-agents to explore the modules "
    "in parallel and assess how hard each TODO is to fix (easy/medium/hard). Then fix the easiest "
    "one, with a test."
)


def demo_model() -> str:
    """The scripted model name of the demo."""
    return f"scripted/{HERE / 'model.py'}"


def prepare_demo(work: Path) -> tuple[Path, str, str]:
    """Copy the bundled repository into `work/textkit` as a fresh git repository."""
    repo = work / "textkit"
    shutil.copytree(HERE / "repo", repo, ignore=shutil.ignore_patterns("__pycache__"))
    git("init", "-q", str(repo))
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "textkit: initial import", cwd=repo)
    return repo, demo_model(), DEMO_PROMPT
