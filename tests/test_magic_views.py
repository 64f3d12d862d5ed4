"""The subcommands that show runs (`%rlm status/runs/tree/result/ns`): on a live run of the session,
on a recorded run in the results directory (a new session), and the record-tree helpers alone."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from test_magics import loaded_shell

from rlm_kernel.magic_views import VIEWS, _count, _find_node, _secs, _short, agent_ids
from rlm_kernel.magics import session_for

TREE: dict[str, Any] = {
    "agent_id": "root",
    "iterations": [{}, {}],
    "children": [
        {"agent_id": "root.0", "iterations": [{}], "children": [{"agent_id": "root.0.0"}]},
        {"agent_id": "root.1", "iterations": None, "children": None},
    ],
}


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Any]:
    with loaded_shell(tmp_path / "results") as sh:
        yield sh


def test_the_views_are_the_inspection_subcommands() -> None:
    assert set(VIEWS) == {"status", "runs", "tree", "result", "ns"}


def test_the_agent_tree_is_walked_depth_first() -> None:
    assert agent_ids(TREE) == ["root", "root.0", "root.0.0", "root.1"]
    assert agent_ids(None) == [] and _count(None) == (0, 0)
    assert _count(TREE) == (4, 3)
    node = _find_node(TREE, "root.0.0")
    assert node is not None and node["agent_id"] == "root.0.0"
    assert _find_node(TREE, "root.9") is None


def test_times_and_tasks_are_shortened_for_tables() -> None:
    assert _secs({"elapsed_s": 1.26}) == "1.3 s" and _secs({}) == ""
    assert _short("  a\n  b  ") == "a b" and _short(None) == ""
    long = _short("x" * 100)
    assert len(long) == 60 and long.endswith("…")


def test_inspection_commands_after_a_run(
    shell: Any, make_repo: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_cell_magic("rlm", f"--repo {make_repo()} --quiet", "FIX it")
    run_id = session_for(shell).latest().run_id
    capsys.readouterr()
    shell.run_line_magic("rlm", "status")
    out = capsys.readouterr().out
    assert run_id in out and "done" in out
    shell.run_line_magic("rlm", "tree")
    out = capsys.readouterr().out
    assert "✓ root [done, 1 it] FIX it" in out and "└─ ✓ root.0 [done, 1 it]" in out
    shell.run_line_magic("rlm", "ns root.0")
    out = capsys.readouterr().out
    assert "child_note" in out and "'VALUE = 1'" in out and "child_count" in out
    shell.run_line_magic("rlm", "runs")
    assert run_id in capsys.readouterr().out
    shell.run_line_magic("rlm", f"result {run_id[-6:]}")
    out = capsys.readouterr().out
    assert "**Fixed**" in out and "+VALUE = 2" in out and "2 agents, depth 1" in out
    with pytest.raises(UsageError, match=r"has no agent 'root\.7'"):
        shell.run_line_magic("rlm", "ns root.7")
    with pytest.raises(UsageError, match="no live sandbox"):
        shell.run_line_magic("rlm", "ns root.0 --live")
    with pytest.raises(UsageError, match="has already finished"):
        shell.run_line_magic("rlm", "continue")


def test_a_recorded_run_is_shown_from_the_results_directory(
    tmp_path: Path, make_repo: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    with loaded_shell(results) as sh:
        sh.run_cell_magic("rlm", f"--repo {make_repo()} --quiet", "FIX it")
        run_id = session_for(sh).latest().run_id
    capsys.readouterr()
    with loaded_shell(results) as sh:  # a new session: the run is only on disk
        sh.run_line_magic("rlm", "status")
        assert capsys.readouterr().out.strip() == "no %%rlm run in this session yet"
        sh.run_line_magic("rlm", "runs")
        assert run_id in capsys.readouterr().out
        sh.run_line_magic("rlm", f"tree {run_id}")
        out = capsys.readouterr().out
        assert "root [done, 1 it] FIX it" in out and "root.0 [done, 1 it]" in out
        sh.run_line_magic("rlm", f"ns root.0 --run {run_id}")
        assert "child_note" in capsys.readouterr().out
        sh.run_line_magic("rlm", f"result {run_id}")
        assert "**Fixed**" in capsys.readouterr().out
        with pytest.raises(UsageError, match=r"agents: root, root\.0"):
            sh.run_line_magic("rlm", f"ns root.7 --run {run_id}")
        with pytest.raises(UsageError, match="no run 'nope' in this session or in"):
            sh.run_line_magic("rlm", "tree nope")
        with pytest.raises(UsageError, match="no %%rlm run in this session yet"):
            sh.run_line_magic("rlm", "tree")
