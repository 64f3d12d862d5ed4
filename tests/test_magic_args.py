"""The command lines of `%%rlm` and `%rlm` alone: parsers, help, splitting and `{var}` expansion
(the magics that use them: test_magics.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from IPython.core.error import UsageError
from test_magics import ipython

from rlm_kernel.config import MAGIC, SETTINGS
from rlm_kernel.magic_args import (
    SUBCOMMANDS,
    HelpShown,
    cell_parser,
    expand,
    help_text,
    line_parser,
    split_line,
)
from rlm_kernel.session import RLMSession


@pytest.fixture
def session() -> Iterator[RLMSession]:
    """A session on the in-process shell, without a kernel (names come from its user_ns)."""
    sh = ipython()
    try:
        yield RLMSession(sh)
    finally:
        for name in ("x", "opts"):
            sh.user_ns.pop(name, None)


def test_cell_options_include_every_magic_setting_of_the_table() -> None:
    args = cell_parser().parse_args(["--repo", "r", "-b", "dev", "-o", "res", "--step"])
    assert (args.repo, args.branch, args.out, args.step, args.background) == (
        "r",
        "dev",
        "res",
        True,
        False,
    )
    help_ = cell_parser().format_help()
    for s in SETTINGS.on(MAGIC):
        assert s.flag is not None and s.flag in help_, s.key


def test_parse_errors_are_usage_errors_with_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError, match=r"(?s)unrecognized arguments: --bogus.*usage: %%rlm"):
        cell_parser().parse_args(["--bogus"])
    with pytest.raises(UsageError, match="invalid choice: 'frobnicate'"):
        line_parser().parse_args(["frobnicate"])
    with pytest.raises(HelpShown):  # -h prints the help and stops, never exits the process
        cell_parser().parse_args(["-h"])
    assert "usage: %%rlm" in capsys.readouterr().out


def test_every_subcommand_parses_and_is_in_the_help() -> None:
    parser, text = line_parser(), help_text()
    minimal = {"ns": ["root.0"], "attach": ["root.0"]}
    for spec in SUBCOMMANDS:
        name = spec.split()[0]
        assert parser.parse_args([name, *minimal.get(name, [])]).cmd == name
        assert f"%rlm {spec}" in text
    wait = parser.parse_args(["wait"])
    assert (wait.gate, wait.timeout, wait.run) == (False, 600.0, None)
    assert parser.parse_args(["ns", "a", "--live", "--run", "r1"]).run == "r1"
    with pytest.raises(UsageError, match="the following arguments are required: AGENT"):
        parser.parse_args(["ns"])
    with pytest.raises(UsageError, match="unrecognized arguments: --run"):
        parser.parse_args(["status", "--run", "r1"])  # status is of every run


def test_split_line_reports_an_unclosed_quote() -> None:
    assert split_line("--repo 'a b' -o r") == ["--repo", "a b", "-o", "r"]
    with pytest.raises(UsageError, match="cannot parse the options"):
        split_line("--repo 'unclosed")


def test_expansion_is_per_token_and_values_stay_data(session: RLMSession) -> None:
    session.shell.user_ns["x"] = "a b"
    session.shell.user_ns["opts"] = "--keep --background"
    assert expand(session, ["--repo", "{x}", "plain", "{{x}}"]) == ["--repo", "a b", "plain", "{x}"]
    # a variable's value is one argument: it never adds options of its own
    args = cell_parser().parse_args(expand(session, split_line("--repo {opts}")))
    assert args.repo == "--keep --background" and not args.background
