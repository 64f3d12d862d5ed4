"""The magics in an in-process IPython shell (`%load_ext rlm_kernel`): parsing, usage errors,
`{var}` interpolation, `%rlm config`, `%rlm help`, and short scripted runs. The parsers alone:
test_magic_args.py; the inspection subcommands: test_magic_views.py."""

from __future__ import annotations

import ast
import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from rlm_kernel.magics import session_for, transform_cell
from rlm_kernel.paths import tmp_root
from rlm_kernel.session import interpolate

MODEL = Path(__file__).parent / "models" / "notebook.py"


def ipython() -> Any:
    """The in-process shell; its history stays in memory (the session's IPYTHONDIR goes away)."""
    from traitlets.config import Config

    cfg = Config()
    cfg.HistoryManager.hist_file = ":memory:"
    return InteractiveShell.instance(config=cfg)


@contextlib.contextmanager
def loaded_shell(results: Path) -> Iterator[Any]:
    """A shell with the extension loaded, records in `results`, the notebook model as default."""
    sh = ipython()
    sh.run_line_magic("load_ext", "rlm_kernel")
    sh.run_line_magic("rlm", f"config model.name=scripted/{MODEL} results_dir={results} retries=0")
    try:
        yield sh
    finally:
        sh.run_line_magic("unload_ext", "rlm_kernel")
        for name in ("res", "_rlm", "fname", "data", "code"):
            sh.user_ns.pop(name, None)


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Any]:
    """`loaded_shell` with records in tmp_path/results."""
    with loaded_shell(tmp_path / "results") as sh:
        yield sh


def cell_error(sh: Any, code: str) -> BaseException | None:
    """Run a cell like a notebook does (transformers included); return the exception it raised."""
    res = sh.run_cell(code)
    return res.error_before_exec or res.error_in_exec  # type: ignore[no-any-return]


# -- parsing and usage errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--bogus", "unrecognized arguments: --bogus"),
        ("--max-depth", "argument --max-depth: expected one argument"),
        ("--max-depth two", "argument --max-depth: invalid int value: 'two'"),
        ("--sandbox cloud", "argument --sandbox: invalid choice: 'cloud'"),
        ("--repo 'unclosed", "cannot parse the options"),
        ("-o 1x", "-o/--out needs a variable name"),
    ],
)
def test_bad_cell_options_raise_usage_errors(shell: Any, line: str, message: str) -> None:
    with pytest.raises(UsageError) as exc:
        shell.run_cell_magic("rlm", line, "a task")
    assert message in str(exc.value)
    if "argument" in message:
        assert "usage: %%rlm [-h] [--repo URL_OR_PATH]" in str(exc.value)
    err = cell_error(shell, f"%%rlm {line}\na task")  # the awaited path reports the same
    assert type(err) is UsageError and message in str(err)


def test_bad_line_commands_raise_usage_errors(shell: Any) -> None:
    with pytest.raises(UsageError, match="invalid choice: 'frobnicate'"):
        shell.run_line_magic("rlm", "frobnicate")
    with pytest.raises(UsageError, match="the following arguments are required: AGENT"):
        shell.run_line_magic("rlm", "ns")
    with pytest.raises(UsageError, match="no %%rlm run in this session yet"):
        shell.run_line_magic("rlm", "step")
    with pytest.raises(UsageError, match="attach needs the RLM kernel"):
        shell.run_line_magic("rlm", "attach root.0")


def test_empty_task_is_a_usage_error(shell: Any) -> None:
    with pytest.raises(UsageError, match="the cell body is the task, and it is empty"):
        shell.run_cell_magic("rlm", "", "  \n")


def test_step_without_buttons_needs_background(shell: Any) -> None:
    with pytest.raises(UsageError, match="--step here needs --background"):
        shell.run_cell_magic("rlm", "--step", "STEPS")
    assert type(cell_error(shell, "%%rlm --step\nSTEPS")) is UsageError  # terminal: no buttons


def test_help_lists_options_and_subcommands(shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    shell.run_line_magic("rlm", "help")
    out = capsys.readouterr().out
    for word in ("--repo URL_OR_PATH", "--signature SIG", "--background", "--keep", "--quiet"):
        assert word in out
    for cmd in ("config", "repo", "status", "runs", "tree", "result", "step", "continue"):
        assert f"%rlm {cmd}" in out
    for cmd in ("pause", "cancel", "ns AGENT [--live]", "attach", "detach", "release"):
        assert f"%rlm {cmd}" in out
    shell.run_line_magic("rlm", "")
    assert capsys.readouterr().out == out


def test_transformer_turns_a_cell_into_an_await() -> None:
    sh = ipython()
    sh.run_line_magic("load_ext", "rlm_kernel")
    try:
        body = "fix {x}\n'''quotes''' \\n \"\n"
        code = sh.transform_cell(f"%%rlm --quiet -o r\n{body}")
        assert code.startswith("await __import__('rlm_kernel.magics').magics.run_cell_async(")
        call = ast.parse(code).body[0].value.value  # type: ignore[attr-defined]
        assert [ast.literal_eval(a) for a in call.args] == ["--quiet -o r", body]
        assert transform_cell(["%%rlmx\n"]) == ["%%rlmx\n"]
        assert transform_cell(["x = 1\n", "%%rlm\n"]) == ["x = 1\n", "%%rlm\n"]
        sh.autoawait = False  # then the registered (blocking) cell magic runs it
        assert "run_cell_magic('rlm'" in sh.transform_cell("%%rlm\ntask\n")
    finally:
        sh.autoawait = True
        sh.run_line_magic("unload_ext", "rlm_kernel")


# -- interpolation ------------------------------------------------------------------------------


def test_interpolation_replaces_names_and_keeps_escapes() -> None:
    ns = {"name": "world", "n": 3, "items": [1, 2]}
    got = interpolate("hi {name} x{n} {items} {{literal}} {x[0]} {a.b} {}", ns.__getitem__)
    assert got == "hi world x3 [1, 2] {literal} {x[0]} {a.b} {}"
    assert interpolate('json {{"a": {{"b": 1}}}}', ns.__getitem__) == 'json {"a": {"b": 1}}'


def test_unknown_names_are_a_usage_error_naming_them(shell: Any) -> None:
    shell.user_ns["fname"] = "pkg/mod.py"
    with pytest.raises(UsageError) as exc:
        shell.run_cell_magic("rlm", "", "fix {fname} with {helper} and {other} {helper}")
    assert "no variable named helper, other" in str(exc.value)
    assert not (Path(session_for(shell).config().results_dir)).exists()  # nothing started


def test_options_and_line_commands_interpolate_variables(shell: Any) -> None:
    shell.user_ns["MODEL"] = "scripted/some model.py"
    shell.user_ns["depth"] = 2
    shell.run_line_magic("rlm", "config model.name={MODEL} max_depth={depth}")
    cfg = session_for(shell).config()
    assert (cfg.model.name, cfg.rlm.max_depth) == ("scripted/some model.py", 2)
    with pytest.raises(UsageError, match="no variable named nope"):
        shell.run_line_magic("rlm", "config model.name={nope}")
    with pytest.raises(UsageError, match="no variable named nope"):
        shell.run_cell_magic("rlm", "--repo {nope}", "a task")


# -- configuration --------------------------------------------------------------------------------


def test_config_set_show_and_bad_key(shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    shell.run_line_magic("rlm", "config max_depth=2 sandbox.keep=yes rlm.max_cost_usd=0.5")
    cfg = session_for(shell).config()
    assert (cfg.rlm.max_depth, cfg.sandbox.keep, cfg.rlm.max_cost_usd) == (2, True, 0.5)
    capsys.readouterr()
    shell.run_line_magic("rlm", "config")
    rows = {ln.split()[0]: ln.split()[1:] for ln in capsys.readouterr().out.splitlines()[2:]}
    assert rows["rlm.max_depth"] == ["2", "%rlm", "config"]
    assert rows["rlm.max_iterations"] == ["50", "default"]
    with pytest.raises(
        UsageError, match=r"unknown key 'max_dept' \(did you mean 'rlm.max_depth'\?\)"
    ):
        shell.run_line_magic("rlm", "config max_dept=3")
    with pytest.raises(UsageError, match=r"'rlm\.max_depth' must be an integer, got 'deep'"):
        shell.run_line_magic("rlm", "config max_depth=deep")
    with pytest.raises(UsageError, match="expected KEY=VALUE, got 'max_depth'"):
        shell.run_line_magic("rlm", "config max_depth")
    assert session_for(shell).config().rlm.max_depth == 2  # a failed command changes nothing
    shell.run_line_magic("rlm", "config --reset max_depth")
    assert session_for(shell).config().rlm.max_depth == 5


def test_cell_options_beat_session_config_and_config_file(shell: Any, tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("rlm:\n  max_depth: 1\n  max_iterations: 7\n")
    shell.run_line_magic("rlm", "config max_iterations=9")
    s = session_for(shell)
    cfg = s.config({"rlm.max_depth": 3}, str(cfg_file))
    assert (cfg.rlm.max_depth, cfg.rlm.max_iterations) == (3, 9)
    assert s.config(None, str(cfg_file)).rlm.max_depth == 1


def test_errors_before_a_run_create_nothing(
    shell: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = set(os.listdir(tmp_root()))
    with pytest.raises(UsageError, match="repository not found"):
        shell.run_cell_magic("rlm", f"--repo {tmp_path / 'missing'}", "task")
    for var in [v for v in os.environ if v.endswith("_API_KEY")]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)  # no .env here
    with pytest.raises(UsageError, match="API key"):
        shell.run_cell_magic("rlm", "--model openai/gpt-4o-mini", "task")
    with pytest.raises(UsageError, match="config file not found"):
        shell.run_cell_magic("rlm", "--config nope.yaml", "task")
    with pytest.raises(UsageError, match="signature"):
        shell.run_cell_magic("rlm", "--signature 'no arrow here'", "task")
    assert set(os.listdir(tmp_root())) == before
    assert not (tmp_path / "results").exists()
    assert not session_for(shell).runs


# -- short scripted runs ------------------------------------------------------------------------


def test_blocking_cell_magic_binds_the_result(
    shell: Any, make_repo: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_repo()
    shell.user_ns["fname"] = "pkg/mod.py"
    shell.run_cell_magic("rlm", f"--repo {repo} -o res", "FIX the TODO in {fname}")
    res = shell.user_ns["res"]
    assert res is shell.user_ns["_rlm"]
    assert res.status == "done" and res.answer.startswith("**Fixed** `VALUE` in `pkg/mod.py`")
    assert "+VALUE = 2" in res.patch and Path(res.patch_path).read_text() == res.patch
    assert res.tree["children"][0]["agent_id"] == "root.0"
    assert repr(res).startswith(f"<RunOutcome {res.run_id} done: answer=") and "+1/-1" in repr(res)
    out = capsys.readouterr().out
    assert "**Fixed**" in out and "+VALUE = 2" in out


def test_awaited_cell_with_context_and_signature(shell: Any) -> None:
    shell.user_ns["data"] = {"k": [1, 2]}
    assert cell_error(shell, "%%rlm --context data -o res --quiet\nCONTEXT please") is None
    assert shell.user_ns["res"].answer == "context={'k': [1, 2]}"
    sig = "--signature 'question: str -> answer: str, confidence: float' -o res"
    assert cell_error(shell, f"%%rlm {sig}\nSUBMIT it") is None
    assert shell.user_ns["res"].answer == {"answer": "42", "confidence": 0.5}
    with pytest.raises(UsageError, match="--context: no variable named nothing"):
        shell.run_cell_magic("rlm", "--context nothing", "CONTEXT")


def test_background_step_in_plain_ipython(shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    shell.user_ns["code"] = "mine = 3"
    shell.run_cell_magic("rlm", "--background --step -o res", "STEPS please")
    handle = session_for(shell).latest()
    assert not handle.run.done

    def wait_gate(index: int) -> None:
        deadline = time.monotonic() + 30
        while [w["index"] for w in handle.view.gate.waiting] != [index]:
            assert time.monotonic() < deadline, f"iteration {index} never reached the gate"
            time.sleep(0.02)

    wait_gate(0)
    shell.run_line_magic("rlm", "status")
    assert "root@0" in capsys.readouterr().out
    shell.run_line_magic("rlm", "step")
    wait_gate(1)
    shell.run_line_magic("rlm", "step --code code")  # a variable holding code
    wait_gate(2)
    shell.run_line_magic("rlm", f"continue --run {handle.run_id}")
    deadline = time.monotonic() + 30
    while "res" not in shell.user_ns:
        assert time.monotonic() < deadline, "the background run never bound its result"
        time.sleep(0.02)
    assert shell.user_ns["res"].answer == "a=1 b=None mine=3"


def test_an_interrupted_run_shows_one_line(shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from rlm_kernel.magics import RunInterrupted

    shell.user_ns["RunInterrupted"] = RunInterrupted
    try:
        err = cell_error(
            shell, "def inner():\n    raise RunInterrupted('run r1 cancelled')\ninner()"
        )
    finally:
        shell.user_ns.pop("RunInterrupted")
    assert isinstance(err, KeyboardInterrupt)
    shown = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out).strip()
    assert shown == "KeyboardInterrupt: run r1 cancelled"  # no frames, no cell source
