"""README.md's reference tables stay true: the configuration table is the one generated from the
settings table, the `%%rlm`/`%rlm` tables match the magics' parsers, the CLI synopses `rlm`'s
argparse, the kernel traitlets are listed, the notebook list matches notebooks/, and the event
table lists every event kind with its payload's fields."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

from rlm_kernel.cli import _build_parser
from rlm_kernel.config import DEFAULT_CONFIG_FILE, SETTINGS, RLMConfig
from rlm_kernel.magic_args import SUBCOMMANDS, cell_parser

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
REGENERATE = "out of date: run `.venv/bin/python scripts/settings_docs.py`"


def section(title: str) -> str:
    """The text of the README section `## title` (up to the next `## `)."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert m, f"README has no section '## {title}'"
    return m.group(1)


def table(text: str, header: str) -> list[list[str]]:
    """The rows (cells stripped) of the Markdown table whose header row starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header}"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
        rows.append([c.strip() for c in cells])
    return rows


def options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of a parser (`--repo`, `-o`, …), help left out."""
    return {s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")}


def check_synopsis(documented: set[str], parser: argparse.ArgumentParser, what: str) -> None:
    """Every option of `parser` is documented (in one of its spellings), and nothing else is."""
    unknown = documented - options(parser)
    assert not unknown, f"{what} documents options that do not exist: {sorted(unknown)}"
    for action in parser._actions:
        spellings = set(action.option_strings) - {"-h", "--help"}
        if spellings:
            assert spellings & documented, f"{what} does not document {'/'.join(spellings)}"


def subparser(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_the_configuration_table_is_generated_from_the_settings_table() -> None:
    text = section("Configuration")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows == SETTINGS.markdown_rows(), f"README's configuration table is {REGENERATE}"
    documented = {re.sub(r"^`|`$", "", key): default for key, default, _ in table(text, "key")}
    assert list(documented) == list(RLMConfig().flat()), "the table lists the keys in order"


def test_the_packaged_config_yaml_is_generated_and_equals_the_defaults() -> None:
    text = DEFAULT_CONFIG_FILE.read_text(encoding="utf-8")
    assert text == SETTINGS.render_yaml(), f"rlm_kernel/config.yaml is {REGENERATE}"
    assert RLMConfig.from_dict(yaml.safe_load(text)) == RLMConfig()


def test_the_cell_option_table_matches_the_magic_parser() -> None:
    rows = table(section("Notebook magics"), "`%%rlm` option")
    documented = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", " ".join(r[0] for r in rows)))
    check_synopsis(documented, cell_parser(), "README's `%%rlm` option table")


def test_the_command_table_matches_the_line_magic() -> None:
    rows = table(section("Notebook magics"), "`%rlm` command")
    documented = {w for r in rows for w in re.findall(r"`(\w+)", r[0])}
    assert documented == {spec.split()[0] for spec in SUBCOMMANDS}


def test_the_cli_synopses_match_argparse() -> None:
    parser = _build_parser()
    run_usage = re.search(r"```\nrlm run (.*?)```", README, re.S)
    assert run_usage, "README has no `rlm run` synopsis block"
    documented = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", run_usage.group(1)))
    check_synopsis(documented, subparser(parser, "run"), "README's `rlm run` synopsis")
    for name in ("demo", "cleanup", "view"):
        # the fullest synopsis of the command: `rlm NAME [OPTION …] …`
        synopsis = max(re.findall(rf"rlm {name}((?:\s\[[^\]]*\])*)", README), key=len, default="")
        documented = set(re.findall(r"--?[a-z][\w-]*", synopsis))
        check_synopsis(documented, subparser(parser, name), f"README's `rlm {name}` synopsis")
    install = re.search(r"rlm kernel install\s+#([^\n]*)", README)
    assert install, "README does not show `rlm kernel install  # OPTIONS`"
    documented = set(re.findall(r"--[a-z][\w-]*", install.group(1)))
    check_synopsis(documented, subparser(parser, "kernel", "install"), "`rlm kernel install`")


def test_the_kernel_traitlets_are_listed() -> None:
    from rlm_kernel.kernel import RLMKernel

    own = {n for n in RLMKernel.class_own_traits(config=True)}
    text = section("Notebook kernel")
    listed = set(re.findall(r"`(\w+)`", text.split("Kernel-level defaults are traitlets", 1)[1]))
    assert own <= listed, own - listed


def test_every_notebook_is_described() -> None:
    text = section("Notebooks")
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert f"`{nb.name}`" in text, f"README's Notebooks section does not describe {nb.name}"


def test_the_event_table_lists_every_kind_with_its_fields() -> None:
    from rlm_kernel.events import PAYLOAD_TYPES, EventType

    rows = table(README, "event (`type`)")
    documented: dict[str, tuple[str, list[str]]] = {}
    for kind, payload, fields in rows:
        names = re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", fields))  # not what () explain
        documented[kind.strip("`")] = (payload.strip("`"), names)
    assert set(documented) == {t.value for t in EventType}, "README's event table is out of date"
    for t, cls in PAYLOAD_TYPES.items():
        payload, names = documented[t.value]
        assert payload == cls.__name__, t
        assert names == list(cls.__match_args__), f"README: the fields of {t.value}"
