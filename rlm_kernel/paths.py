"""Where rlm-kernel keeps temporary files and caches (honours TMPDIR and XDG_CACHE_HOME)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["cache_root", "repo_cache_dir", "tmp_root"]


def _user() -> str:
    try:
        return str(os.getuid())
    except AttributeError:  # pragma: no cover - Windows
        return os.environ.get("USERNAME", "user")


def tmp_root() -> Path:
    """The per-user directory under TMPDIR that holds every run's sandboxes."""
    root = Path(tempfile.gettempdir()) / f"rlm-kernel-{_user()}"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def cache_root() -> Path:
    """The per-user cache directory (`$XDG_CACHE_HOME/rlm-kernel`, default `~/.cache`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = Path(base) / "rlm-kernel"
    root.mkdir(parents=True, exist_ok=True)
    return root


def repo_cache_dir() -> Path:
    """Where clones of remote repositories are cached, one bare clone per URL."""
    d = cache_root() / "repos"
    d.mkdir(parents=True, exist_ok=True)
    return d
