"""The command lines of `%%rlm` (options) and `%rlm` (subcommands): parsers, help, `{var}`.

The run options that are settings (``--model``, ``--sandbox``, ``--max-depth``, …) come from the
settings table (`config.SETTINGS`, the entries on MAGIC); the rest are the cell's own. Parsers
raise `UsageError` with the usage instead of exiting the process, and `HelpShown` after ``-h``.
"""

from __future__ import annotations

import argparse
import shlex
from typing import TYPE_CHECKING, NoReturn

from IPython.core.error import UsageError

from .config import MAGIC, SETTINGS

if TYPE_CHECKING:
    from .session import RLMSession

__all__ = [
    "SUBCOMMANDS",
    "HelpShown",
    "cell_parser",
    "expand",
    "help_text",
    "line_parser",
    "split_line",
]


class HelpShown(Exception):
    """`-h` printed the help; nothing else to do."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (with the usage) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}\n{self.format_usage().strip()}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            raise UsageError(message.strip())
        raise HelpShown()


def cell_parser() -> argparse.ArgumentParser:
    """The options of `%%rlm` (the cell body is the task)."""
    p = _Parser(
        prog="%%rlm",
        description="Run a Recursive Language Model on the cell's task ({var} is replaced by a "
        "variable's value; {{ and }} are literal braces).",
        allow_abbrev=False,
    )
    p.add_argument("--repo", metavar="URL_OR_PATH", help="git repository the agents work on")
    p.add_argument("-b", "--branch", help="branch of --repo (default: its HEAD)")
    p.add_argument("--commit", metavar="SHA", help="commit of --repo (overrides --branch)")
    p.add_argument("--context", metavar="VAR", help="give this variable's value as `context`")
    p.add_argument("--signature", metavar="SIG", help="typed SUBMIT, e.g. 'q: str -> a: int'")
    p.add_argument("-o", "--out", metavar="VAR", help="bind the result object to VAR (and _rlm)")
    p.add_argument("--step", action="store_true", help="stop before every code block")
    p.add_argument("--background", action="store_true", help="return at once; control later")
    SETTINGS.add_flags(p, MAGIC)  # --model, --sandbox, --max-depth, …: the settings table
    p.add_argument("--quiet", action="store_true", help="show only the answer and the patch")
    p.add_argument("--config", metavar="FILE", help="YAML config file (default ./config.yaml)")
    return p


SUBCOMMANDS: dict[str, str] = {
    "help": "this help",
    "config [KEY=VALUE …] [--reset [KEY …]]": "show the effective config, or set session defaults",
    "repo [URL_OR_PATH] [-b BRANCH] [--commit SHA]": "the workspace of later runs",
    "status": "running and finished runs of this session",
    "runs": "runs of this session and of results/index.json",
    "tree [RUN]": "the agent tree of a live or recorded run",
    "result [RUN]": "show a run's answer, patch and summary again",
    "step [--run RUN] [--code FILE_VAR_OR_CODE]": "let one iteration run (optionally your code)",
    "wait [--gate] [--timeout S] [--run RUN]": "block until the run ends (--gate: or an agent "
    "waits at the step gate, shown with its proposed code)",
    "continue [--run RUN]": "leave step mode: run freely",
    "pause [--run RUN]": "hold every agent before its next code",
    "cancel [AGENT] [--run RUN]": "cancel the run, or one agent and its sub-tree",
    "ns AGENT [--live] [--run RUN]": "an agent's variables (recorded snapshot, or live)",
    "attach AGENT [--run RUN]": "run the next cells in a kept agent's sandbox (RLM kernel)",
    "detach": "back to the notebook's own sandbox",
    "release": "remove the kept sandboxes of this session's runs",
}


def line_parser() -> argparse.ArgumentParser:
    """The subcommands of `%rlm`."""
    p = _Parser(prog="%rlm", add_help=False, allow_abbrev=False)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for spec, text in SUBCOMMANDS.items():
        name = spec.split()[0]
        sp = sub.add_parser(name, help=text, description=text, allow_abbrev=False)
        if name == "config":
            sp.add_argument("pairs", nargs="*", metavar="KEY=VALUE")
            sp.add_argument("--reset", nargs="*", metavar="KEY", help="drop session defaults")
        elif name == "repo":
            sp.add_argument("repo", nargs="?", metavar="URL_OR_PATH")
            sp.add_argument("-b", "--branch")
            sp.add_argument("--commit", metavar="SHA")
        elif name in ("tree", "result"):
            sp.add_argument("ref", nargs="?", metavar="RUN")
        elif name in ("ns", "attach"):
            sp.add_argument("agent", metavar="AGENT")
        elif name == "cancel":
            sp.add_argument("agent", nargs="?", metavar="AGENT")
        if name == "ns":
            sp.add_argument("--live", action="store_true", help="read the live namespace")
        if name == "wait":
            sp.add_argument("--gate", action="store_true", help="also return at the step gate")
            sp.add_argument("--timeout", type=float, default=600.0, metavar="S")
        if name in ("step", "wait", "continue", "pause", "cancel", "ns", "attach"):
            sp.add_argument("--run", metavar="RUN", help="a run id (default: the latest)")
    return p


def help_text() -> str:
    """`%rlm help`: the cell options and the subcommands."""
    width = max(len(s) for s in SUBCOMMANDS)
    rows = "\n".join(f"  %rlm {s:<{width}}  {t}" for s, t in SUBCOMMANDS.items())
    return (
        f"{cell_parser().format_help().rstrip()}\n\n%rlm subcommands:\n{rows}\n\n"
        "Commands that act on a run default to the most recent run of this session."
    )


def split_line(line: str) -> list[str]:
    """The line's words as a shell splits them (a UsageError for an unclosed quote)."""
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot parse the options: {exc}") from None


def expand(session: RLMSession, tokens: list[str]) -> list[str]:
    """`{var}` in an option or argument → `str(var)` from the namespace (`{{`/`}}`: braces).

    Token by token, after splitting, so a value with spaces stays one argument. Tokens without
    a brace are left alone (and never start the notebook's sandbox).
    """
    return [session.interpolate(t) if "{" in t or "}" in t else t for t in tokens]
