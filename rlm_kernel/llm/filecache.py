"""Things loaded from files (scripted models, replayed run records), loaded again when the file
changes: one cache per kind, keyed by absolute path, checked by modification time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from .errors import LLMError

__all__ = ["FileCache"]

T = TypeVar("T")


class FileCache(Generic[T]):
    """`get(name)` loads the file `name` (relative to the working directory) once per mtime.

    `load(path)` makes the value (raising LLMError with its own message); `missing(path)` is the
    message for a file that is not there; `on_replace(old)` runs when a changed file replaces a
    value that was loaded before."""

    def __init__(
        self,
        load: Callable[[Path], T],
        missing: Callable[[str], str],
        on_replace: Callable[[T], None] | None = None,
    ) -> None:
        self._load = load
        self._missing = missing
        self._on_replace = on_replace
        self._items: dict[str, tuple[int, T]] = {}
        self._lock = threading.RLock()  # a loader may load another file of the same kind

    def get(self, name: str) -> T:
        """The value of file `name`, loaded now if it is new or changed."""
        path = Path(name).expanduser()
        if not path.is_absolute():
            path = Path.cwd() / path
        key = str(path)
        try:
            mtime = path.stat().st_mtime_ns
        except OSError as exc:
            raise LLMError(self._missing(key)) from exc
        cached = self._items.get(key)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        with self._lock:
            cached = self._items.get(key)
            if cached is not None and cached[0] == mtime:
                return cached[1]
            value = self._load(path)
            if cached is not None and self._on_replace is not None:
                self._on_replace(cached[1])
            self._items[key] = (mtime, value)
            return value

    def loaded(self, path: str) -> T | None:
        """The value loaded from the absolute `path`, if any (without checking the file)."""
        cached = self._items.get(path)
        return cached[1] if cached is not None else None

    def clear(self) -> None:
        """Forget every loaded value."""
        with self._lock:
            self._items.clear()
