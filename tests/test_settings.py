"""The settings table (rlm_kernel/settings.py, the table in rlm_kernel/config.py): one declaration
per key generates the flags of `rlm run` and `%%rlm`, the kernel's traitlets, validation,
`%rlm config` parsing, config.yaml and README's rows; backend choices come from the registry."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
import yaml

from rlm_kernel.cli import _build_parser
from rlm_kernel.config import (
    CLI,
    KERNEL,
    MAGIC,
    SETTINGS,
    ConfigError,
    RLMConfig,
    load_config,
)
from rlm_kernel.magic_args import cell_parser
from rlm_kernel.sandbox import BACKENDS, Backend
from rlm_kernel.settings import SettingsTable, setting


def flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]  # type: ignore[no-any-return]


# -- the real table -------------------------------------------------------------------------------


def test_the_table_lists_every_key_of_the_config_in_order() -> None:
    assert list(SETTINGS) == list(RLMConfig().flat())
    assert SETTINGS.sections == ("model", "rlm", "sandbox")
    for s in SETTINGS.values():
        assert s.help and not s.help.endswith("."), s.key  # README cells and flag help
        assert s.check(s.default, "default") == s.default  # every default obeys its own rules
        if s.default is None:
            assert s.nullable and s.none, f"{s.key}: say what null means (none=...)"


def test_the_flags_of_rlm_run_and_the_cell_magic_are_the_tables() -> None:
    run, cell = flags(subparser(_build_parser(), "run")), flags(cell_parser())
    for surface, parser_flags in ((CLI, run), (MAGIC, cell)):
        for s in SETTINGS.on(surface):
            assert s.flag is not None
            action = parser_flags[s.flag]
            assert action.dest == s.dest and s.key in str(action.help), s.key
    # the flags the notebook and the terminal share are the same settings
    assert {s.flag for s in SETTINGS.on(CLI)} == {s.flag for s in SETTINGS.on(MAGIC)}
    assert {"--model", "--sandbox", "--timeout", "--keep", "--results-dir"} <= set(run)


def test_parsed_flags_become_dotted_overrides_and_unset_flags_are_absent() -> None:
    argv = ["run", "-p", "x", "--model", "m", "--timeout", "9.5", "--max-depth", "0", "--keep"]
    args = _build_parser().parse_args(argv)
    assert SETTINGS.overrides_from(args, CLI) == {
        "model.name": "m",
        "rlm.global_timeout": 9.5,
        "rlm.max_depth": 0,
        "sandbox.keep": True,
    }
    cell = cell_parser().parse_args(["--sub-model", "s", "--sandbox", "local"])
    assert SETTINGS.overrides_from(cell, MAGIC) == {
        "model.sub_model": "s",
        "sandbox.backend": "local",
    }
    assert SETTINGS.overrides_from(cell_parser().parse_args([]), MAGIC) == {}


def test_the_kernel_traitlets_are_the_tables_and_feed_rlm_config() -> None:
    from rlm_kernel.kernel import RLMKernel

    own = RLMKernel.class_own_traits(config=True)
    assert set(own) == {s.dest for s in SETTINGS.on(KERNEL)} | {"config_file"}
    assert "rlm.global_timeout" in str(own["timeout"].help)

    class Traits:  # what overrides_from reads from the kernel: attributes, None = not set
        model, timeout, max_depth, sandbox = "k", 12.0, None, "local"

    assert SETTINGS.overrides_from(Traits(), KERNEL) == {
        "model.name": "k",
        "rlm.global_timeout": 12.0,
        "sandbox.backend": "local",
    }


def test_a_registered_backend_is_a_valid_choice_everywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(BACKENDS, "elsewhere", Backend("nowhere:Sandbox"))
    assert load_config(overrides={"sandbox.backend": "elsewhere"}).sandbox.backend == "elsewhere"
    cli = _build_parser().parse_args(["run", "-p", "x", "--sandbox", "elsewhere"])
    assert cli.sandbox == "elsewhere"
    assert cell_parser().parse_args(["--sandbox", "elsewhere"]).sandbox == "elsewhere"
    cleanup = _build_parser().parse_args(["cleanup", "--sandbox", "elsewhere"])
    assert cleanup.sandbox == "elsewhere"
    assert "`elsewhere`" in SETTINGS["sandbox.backend"].text(markdown=True)
    with pytest.raises(ConfigError, match="must be one of local, daytona, elsewhere, got 'x'"):
        RLMConfig().with_overrides({"sandbox.backend": "x"})
    monkeypatch.delitem(BACKENDS, "elsewhere")
    with pytest.raises(ConfigError, match="must be one of local, daytona, got 'elsewhere'"):
        RLMConfig().with_overrides({"sandbox.backend": "elsewhere"})


@pytest.mark.parametrize(
    ("key", "text", "value"),
    [
        ("rlm.max_depth", " 3 ", 3),
        ("model.temperature", "0.5", 0.5),
        ("model.timeout", "30", 30.0),
        ("sandbox.keep", "yes", True),
        ("sandbox.keep", "Off", False),
        ("sandbox.pool_size", "4", 4),
        ("sandbox.pool_size", "auto", "auto"),
        ("rlm.max_cost_usd", "~", None),
        ("model.name", "'gpt-4o'", "gpt-4o"),
        ("model.name", " 123 ", "123"),  # a string key keeps digits as text
        ("rlm.max_depth", "ten", "ten"),  # left for check() to reject with the key's rules
    ],
)
def test_text_values_parse_for_the_keys_type(key: str, text: str, value: Any) -> None:
    parsed = SETTINGS[key].parse(text)
    assert parsed == value and type(parsed) is type(value)


def test_checked_values_come_back_as_given() -> None:
    # pydantic validates; the value is not converted (the int 600 of a float key stays an int)
    assert SETTINGS["model.timeout"].check(600, "x") == 600
    assert type(SETTINGS["model.timeout"].check(600, "x")) is int
    assert RLMConfig.from_dict({"model": {"timeout": 30}}).model.timeout.__class__ is int


# -- adding a key ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Limits:
    """A section of a toy config: what one new `setting(...)` line gives."""

    budget: int = setting(7, "calls per run", flag="--budget", metavar="N")
    ratio: float | None = setting(None, "a share of `budget`", none="unlimited", zero_ok=True)
    mode: Literal["auto"] | int = setting("auto", "how many, or `auto`", zero_ok=True)
    colour: str = setting("red", "one of {choices}", choices=("red", "blue"))
    fast: bool = setting(False, "hurry", flag="--fast", on=(CLI, KERNEL))


@dataclass(frozen=True)
class _Toy:
    limits: _Limits = field(default_factory=_Limits)
    out: str = setting("here", "where things go")


def test_one_setting_line_gives_flags_traitlets_validation_and_docs() -> None:
    table = SettingsTable(_Toy, yaml_header="# toy\n")
    assert list(table) == [
        "limits.budget",
        "limits.ratio",
        "limits.mode",
        "limits.colour",
        "limits.fast",
        "out",
    ]
    cli = argparse.ArgumentParser()
    table.add_flags(cli, CLI)
    args = cli.parse_args(["--budget", "3", "--fast"])
    assert table.overrides_from(args, CLI) == {"limits.budget": 3, "limits.fast": True}
    assert "calls per run [limits.budget, default: 7]" in cli.format_help()
    magic = argparse.ArgumentParser()
    table.add_flags(magic, MAGIC)
    assert set(flags(magic)) == {"-h", "--help", "--budget"}  # colour has no flag
    traits = table.kernel_traits()
    assert set(traits) == {"budget", "fast"} and "(limits.fast)" in traits["fast"].help
    # validation and its messages
    s = table["limits.budget"]
    assert s.check(1, "f.yaml") == 1
    with pytest.raises(ConfigError, match=r"^f.yaml: 'limits.budget' must be > 0, got 0$"):
        s.check(0, "f.yaml")
    with pytest.raises(
        ConfigError, match=r"must be an integer, got True \(bool\); the default is 7"
    ):
        s.check(True, "f.yaml")
    with pytest.raises(ConfigError, match=r"'limits.ratio' must be a number or null, got inf"):
        table["limits.ratio"].check(float("inf"), "f.yaml")
    assert table["limits.ratio"].check(0, "f.yaml") == 0
    with pytest.raises(ConfigError, match=r"'limits.mode' must be 'auto' or an integer >= 0"):
        table["limits.mode"].check(-1, "f.yaml")
    with pytest.raises(ConfigError, match=r"'limits.colour' must be one of red, blue, got 'x'"):
        table["limits.colour"].check("x", "f.yaml")
    with pytest.raises(ConfigError, match=r"'out' must be a non-empty string"):
        table["out"].check("  ", "f.yaml")
    # keys, docs
    assert table.resolve("ratio", "x") == "limits.ratio"
    with pytest.raises(ConfigError, match=r"unknown key 'limits.budgt' \(did you mean"):
        table.resolve("limits.budgt", "x")
    rendered = table.render_yaml()
    assert yaml.safe_load(rendered) == {
        "limits": {"budget": 7, "ratio": None, "mode": "auto", "colour": "red", "fast": False},
        "out": "here",
    }
    assert "  ratio: null  " in rendered and "# a share of budget; null = unlimited" in rendered
    assert table.markdown_rows()[1] == "| `limits.ratio` | unlimited | a share of `budget` |"
    assert table.markdown_rows()[3].endswith("| one of `red` or `blue` |")


def test_a_field_without_setting_is_refused() -> None:
    @dataclass(frozen=True)
    class Bad:
        plain: int = 3

    with pytest.raises(TypeError, match="'plain' is not declared with setting"):
        SettingsTable(Bad)
    with pytest.raises(ValueError, match="needs a flag"):
        setting(1, "x", on=(MAGIC,))


def test_settings_are_dataclass_fields_with_their_defaults() -> None:
    fields = {f.name: f for f in dataclasses.fields(_Limits)}
    assert fields["budget"].default == 7 and _Limits().mode == "auto"


# -- validation without pydantic ------------------------------------------------------------------

_SAMPLES: list[Any] = [
    None, True, False, 0, 1, -1, 7, 2**70, 10**400, 0.0, 0.5, -0.5, 1e308, float("inf"),
    float("-inf"), float("nan"), "", " ", "\t\n", "\x1c", "\u00a0", "x", " x ", "auto", "Auto",
    "local", "bwrap", "none", "daytona", "600", [], [1], {}, {"a": 1}, b"x", object(),
]  # fmt: skip


def test_plainly_valid_values_skip_pydantic_and_nothing_else_does() -> None:
    # What the host takes without pydantic is what pydantic's strict check takes too, for every
    # key and a spread of values (bad types, bounds, blanks, inf/nan, choices); the rest goes
    # to pydantic, so each value is accepted or refused exactly as before.
    from rlm_kernel.settings import _plainly_valid, _validator

    plain = 0
    for s in SETTINGS.values():
        for value in [*_SAMPLES, s.default]:
            try:
                _validator(s, strict=True).validate_python(value)
                valid = True
            except Exception:
                valid = False
            if _plainly_valid(s, value):
                plain += 1
                assert valid, (s.key, value)
            if valid:
                assert s.check(value, "test") is value
            else:
                with pytest.raises(ConfigError, match=s.key.replace(".", r"\.")):
                    s.check(value, "test")
        assert s.default is None or _plainly_valid(s, s.default), s.key  # defaults: no pydantic
    assert plain > 100


def test_building_configs_does_not_import_pydantic() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from rlm_kernel.config import RLMConfig, load_config; "
        "c = load_config(None).with_overrides({'model.name': 'openai/x', 'rlm.max_depth': 2, "
        "'sandbox.pool_size': 'auto', 'model.timeout': 30}); print('pydantic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
