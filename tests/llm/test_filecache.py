"""Tests for rlm_kernel.llm.filecache: files loaded once per modification time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rlm_kernel.llm.errors import LLMError
from rlm_kernel.llm.filecache import FileCache


def test_a_file_is_loaded_once_per_mtime_and_replaced_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    replaced: list[str] = []

    def load(path: Path) -> str:
        loads.append(path.read_text())
        return loads[-1]

    cache: FileCache[str] = FileCache(load, lambda key: f"{key} is missing", replaced.append)
    f = tmp_path / "model.txt"
    f.write_text("one")
    monkeypatch.chdir(tmp_path)
    assert cache.get("model.txt") == "one" and cache.get(str(f)) == "one"  # relative = absolute
    assert loads == ["one"]
    f.write_text("two")
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cache.get("model.txt") == "two"
    assert replaced == ["one"] and cache.loaded(str(f)) == "two"
    cache.clear()
    assert cache.loaded(str(f)) is None


def test_a_missing_file_gives_the_kinds_own_message(tmp_path: Path) -> None:
    cache: FileCache[str] = FileCache(lambda p: "x", lambda key: f"no such script {key}")
    with pytest.raises(LLMError, match=f"no such script {tmp_path / 'nope.py'}"):
        cache.get(str(tmp_path / "nope.py"))


def test_a_loader_may_load_another_file_of_the_same_kind(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("b")
    (tmp_path / "b").write_text("leaf")
    cache: FileCache[str] = FileCache(lambda p: "", lambda key: key)

    def load(path: Path) -> str:
        text = path.read_text()
        return text if text == "leaf" else "a->" + cache.get(str(tmp_path / text))

    cache = FileCache(load, lambda key: key)
    assert cache.get(str(tmp_path / "a")) == "a->leaf"  # no deadlock: the lock is re-entrant
