"""The machinery of the settings table: `setting(...)` declares a configuration key as a field of
a config dataclass, `SettingsTable` collects them and generates the rest: strict validation
(pydantic), `%rlm config` parsing, the flags of `rlm run` and `%%rlm`, the kernel's traitlets,
the packaged config.yaml and README's table. The table itself is `rlm_kernel.config.SETTINGS`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import textwrap
import types
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    TypeVar,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
)

import yaml

if TYPE_CHECKING:
    import argparse

__all__ = [
    "CLI",
    "EVERYWHERE",
    "KERNEL",
    "MAGIC",
    "ConfigError",
    "Setting",
    "SettingsTable",
    "setting",
]

CLI, MAGIC, KERNEL = "rlm run", "%%rlm", "RLMKernel"
"""Where a setting can be set besides config files and `%rlm config`: an option of `rlm run`, an
option of `%%rlm`, a traitlet of the kernel."""
EVERYWHERE = (CLI, MAGIC, KERNEL)

_T = TypeVar("_T")


class ConfigError(ValueError):
    """A configuration problem; the message names the source and key and says what to do."""


@dataclass(frozen=True, eq=False)  # by identity: a row is one object, cached per row
class Setting:
    """One row of the settings table: a configuration key and everything said about it."""

    key: str  # dotted: "rlm.max_depth"
    type: Any  # the field's annotation
    default: Any
    help: str  # Markdown; `{choices}` lists the valid values
    none: str | None = None  # what null means ("unlimited"), for keys whose default is null
    flag: str | None = None  # "--max-depth": the option of `rlm run`/`%%rlm`, and the traitlet
    metavar: str | None = None
    on: tuple[str, ...] = ()  # CLI, MAGIC, KERNEL: where the flag (or traitlet) exists
    zero_ok: bool = False  # numbers must be > 0 unless 0 means something (then >= 0)
    choices: Collection[str] | None = None  # live (a registry's keys), read at validation

    @property
    def negated(self) -> bool:
        """A true-by-default switch whose flag turns it off (`--no-network`)."""
        return bool(self.flag and self.flag.startswith("--no-")) and self.type is bool

    @property
    def dest(self) -> str:
        """The flag's argparse destination and traitlet name: `--sub-model` → `sub_model`
        (`--no-network` → `network`)."""
        name = (self.flag or self.key).lstrip("-").replace("-", "_")
        return name.removeprefix("no_") if self.negated else name

    @property
    def members(self) -> tuple[Any, ...]:
        """The types a value may have, None left out (`Literal['auto'] | int`: both)."""
        union = get_origin(self.type) in (Union, types.UnionType)
        args = get_args(self.type) if union else (self.type,)
        return tuple(a for a in args if a is not type(None))

    @property
    def nullable(self) -> bool:
        """Whether null is a valid value."""
        union = get_origin(self.type) in (Union, types.UnionType)
        return union and type(None) in get_args(self.type)

    @property
    def base(self) -> type:
        """The one value type of a key with a flag or a traitlet (str, int, float or bool)."""
        (one,) = self.members
        return cast(type, one)

    def text(self, markdown: bool = False) -> str:
        """The help text, in Markdown or plain (for flags, traitlets and config.yaml)."""
        names = [f"`{c}`" if markdown else c for c in self.choices or ()]
        listed = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        text = self.help.replace("{choices}", listed)
        return text if markdown else text.replace("`", "")

    def default_text(self, markdown: bool = False) -> str:
        """The default as the docs write it: a YAML literal, or what null means."""
        if self.default is None:
            text = self.none or "null"
            return text if markdown else text.replace("`", "")
        literal = _yaml_scalar(self.default)
        number = isinstance(self.default, (int, float)) and not isinstance(self.default, bool)
        return f"`{literal}`" if markdown and not number else literal

    def want(self) -> str:
        """What a valid value is, in words: `an integer or null`."""
        words: list[str] = []
        for member in self.members:
            if get_origin(member) is Literal:
                words += [repr(a) for a in get_args(member)]
                continue
            word = _TYPE_WORDS[member]
            if len(self.members) > 1 and member in (int, float):
                word += " >= 0" if self.zero_ok else " > 0"
            words.append(word)
        return " or ".join(words + ["null"] * self.nullable)

    def check(self, value: Any, source: str) -> Any:
        """`value` if valid (pydantic, strict), else ConfigError saying what the key takes.

        A value plainly valid (`_plainly_valid`: the type itself, in bounds) is taken without
        pydantic, so a run or a kernel that only builds configs never imports it (~15 MB and
        ~0.1 s of CPU in the host for its import and the table's validators); any other value
        is pydantic's to judge, as before."""
        if _plainly_valid(self, value):
            return value
        from pydantic import ValidationError

        try:
            _validator(self, strict=True).validate_python(value)
        except ValidationError as exc:
            kinds = {e["type"] for e in exc.errors()}
            if "choice" in kinds:
                valid = ", ".join(self.choices or ())
                raise ConfigError(
                    f"{source}: {self.key!r} must be one of {valid}, got {value!r}"
                ) from None
            if len(self.members) == 1 and kinds <= {"greater_than", "greater_than_equal"}:
                bound = ">= 0" if self.zero_ok else "> 0"
                raise ConfigError(
                    f"{source}: {self.key!r} must be {bound}, got {value!r}"
                ) from None
            raise ConfigError(
                f"{source}: {self.key!r} must be {self.want()}, got {_show(value)}; "
                f"the default is {self.default!r}"
            ) from None
        return value  # as given: pydantic would turn the int 600 of a float key into 600.0

    def parse(self, text: str) -> Any:
        """A value from text (`%rlm config key=value`); unparsable text is left for `check`."""
        from pydantic import ValidationError

        raw = text.strip()
        if raw.lower() in ("null", "none", "~"):
            return None
        if self.members == (str,):
            quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""
            return raw[1:-1] if quoted else raw
        try:
            return _validator(self, strict=False).validate_python(raw)
        except ValidationError:
            return text


def setting(
    default: _T,
    help: str,
    *,
    none: str | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    on: tuple[str, ...] | None = None,
    zero_ok: bool = False,
    choices: Collection[str] | None = None,
) -> _T:
    """Declare a setting as a field of a config dataclass (`on`: EVERYWHERE when it has a flag)."""
    if on and not flag:
        raise ValueError(f"a setting on {', '.join(on)} needs a flag (its option, traitlet name)")
    spec = {
        "help": help,
        "none": none,
        "flag": flag,
        "metavar": metavar,
        "on": (EVERYWHERE if flag else ()) if on is None else on,
        "zero_ok": zero_ok,
        "choices": choices,
    }
    return field(default=default, metadata={"setting": spec})


_TYPE_WORDS: dict[Any, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a non-empty string",
}


def _show(value: Any) -> str:
    """Render a bad value for an error message: `'ten' (str)`."""
    return f"{value!r} ({type(value).__name__})"


def _plainly_valid(s: Setting, value: Any) -> bool:
    """Whether `value` is valid for `s` by a check stricter than pydantic's strict mode (what
    passes here passes there; what does not is left to pydantic): None where null is valid; an
    exact bool, int or float (an int for a float, as pydantic takes it) in bounds and finite; a
    str with a non-blank character; one of a Literal's values; one of the `choices`."""
    if value is None:
        return s.nullable
    if not any(_plainly_member(s, member, value) for member in s.members):
        return False
    return s.choices is None or value in s.choices  # (a scalar by now: hashable)


def _plainly_member(s: Setting, member: Any, value: Any) -> bool:
    kind = type(value)
    if get_origin(member) is Literal:
        return any(kind is type(a) and value == a for a in get_args(member))
    if member is bool or kind is bool:
        return member is bool and kind is bool
    if member is str:
        return kind is str and not value.isspace() and value != ""
    if (member is int and kind is int) or (member is float and kind in (int, float)):
        try:
            number = float(value)
        except OverflowError:
            return False
        return math.isfinite(number) and (value >= 0 if s.zero_ok else value > 0)
    return False


@functools.cache
def _validator(s: Setting, strict: bool) -> Any:
    """A pydantic TypeAdapter for one key: strict with every rule, or lax to parse text."""
    from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter
    from pydantic_core import PydanticCustomError

    members: list[Any] = []
    for member in s.members:
        if strict and member in (int, float):  # > 0, or >= 0 where 0 means something
            member = Annotated[member, Field(ge=0) if s.zero_ok else Field(gt=0)]
        elif strict and member is str:
            member = Annotated[str, Field(pattern=r"\S")]  # not empty, not only blanks
        members.append(member)
    tp: Any = Union[tuple(members)] if len(members) > 1 else members[0]  # noqa: UP007
    if s.nullable:
        tp = tp | None
    choices = s.choices
    if strict and choices is not None:

        def choose(value: Any) -> Any:
            if value is not None and value not in choices:
                raise PydanticCustomError("choice", "not one of the choices")
            return value

        tp = Annotated[tp, AfterValidator(choose)]
    return TypeAdapter(tp, config=ConfigDict(strict=strict, allow_inf_nan=False))


def _yaml_scalar(value: Any) -> str:
    """A value as a YAML literal: `null`, `false`, `600`, `local`."""
    text: str = yaml.safe_dump(value, default_flow_style=True, width=1000)
    return text.strip().removesuffix("...").strip()


class SettingsTable(dict[str, Setting]):
    """Every setting by dotted key, in declaration order, and what is generated from them."""

    def __init__(self, root: type, yaml_header: str = "") -> None:
        super().__init__()
        self.sections: tuple[str, ...] = ()
        self.yaml_header = yaml_header
        self._collect(root, "")

    def _collect(self, cls: type, prefix: str) -> None:
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp, key = hints[f.name], prefix + f.name
            if dataclasses.is_dataclass(tp):
                self.sections += (key,)
                self._collect(cast(type, tp), f"{key}.")
                continue
            spec = f.metadata.get("setting")
            if spec is None:
                raise TypeError(f"config key {key!r} is not declared with setting(...)")
            self[key] = Setting(key, tp, f.default, **spec)

    # -- keys ---------------------------------------------------------------------------------
    def suggest(self, key: str) -> str:
        """Say what to do about an unknown key: a close match, or the list of valid keys."""
        close = difflib.get_close_matches(key, [*self, *self.sections], n=1)
        if not close:  # e.g. 'max_dept' → compare leaf names only
            leaves = {k.rpartition(".")[2]: k for k in self}
            leaf = key.rpartition(".")[2]
            close = [leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n=1)]
        if close:
            return f"did you mean {close[0]!r}?"
        return "valid keys: " + ", ".join(self)

    def resolve(self, key: str, source: str) -> str:
        """The dotted key for a dotted or bare (unambiguous leaf) name; `-` reads as `_`."""
        norm = str(key).strip().replace("-", "_")
        if norm in self:
            return norm
        matches = [k for k in self if k.rpartition(".")[2] == norm]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ConfigError(
                f"{source}: key {key!r} is ambiguous; write one of {', '.join(matches)}"
            )
        raise ConfigError(f"{source}: unknown key {key!r} ({self.suggest(norm)})")

    # -- flags and traitlets ------------------------------------------------------------------
    def on(self, surface: str) -> list[Setting]:
        """The settings with a flag (or traitlet) on `surface`: CLI, MAGIC or KERNEL."""
        return [s for s in self.values() if surface in s.on]

    def add_flags(self, parser: argparse.ArgumentParser, surface: str) -> None:
        """Add an option per setting on `surface` (CLI or MAGIC); one not given parses as None."""
        for s in self.on(surface):
            text = f"{s.text()} [{s.key}, default: {s.default_text()}]".replace("%", "%%")
            if s.base is bool:
                action = "store_false" if s.negated else "store_true"
                parser.add_argument(
                    s.flag or "", dest=s.dest, action=action, default=None, help=text
                )
            else:
                parser.add_argument(
                    s.flag or "",
                    dest=s.dest,
                    type=s.base,
                    metavar=s.metavar,
                    choices=s.choices,
                    help=text,
                )

    def overrides_from(self, obj: Any, surface: str) -> dict[str, Any]:
        """What `obj` (parsed flags, or the kernel) sets on `surface`: dotted key → value."""
        values = {s.key: getattr(obj, s.dest, None) for s in self.on(surface)}
        return {k: v for k, v in values.items() if v is not None}

    def kernel_traits(self) -> dict[str, Any]:
        """The kernel's configurable traitlets, one per setting on KERNEL (None: not set)."""
        from traitlets import Bool, Float, Integer, Unicode

        kinds: dict[type, Any] = {str: Unicode, int: Integer, float: Float, bool: Bool}
        return {
            s.dest: kinds[s.base](None, allow_none=True, help=f"{s.text()} ({s.key}).").tag(
                config=True
            )
            for s in self.on(KERNEL)
        }

    # -- documentation --------------------------------------------------------------------------
    def render_yaml(self, width: int = 100) -> str:
        """The packaged config.yaml: every key at its default, with its help as a comment."""
        sections: dict[str, list[Setting]] = {}
        for s in self.values():
            sections.setdefault(s.key.rpartition(".")[0], []).append(s)
        out = [self.yaml_header]
        for section, items in sections.items():
            indent = "  " if section else ""
            if section:
                out.append(f"{section}:")
            cells = [
                f"{indent}{s.key.rpartition('.')[2]}: {_yaml_scalar(s.default)}" for s in items
            ]
            column = max([len(c) for c in cells if len(c) <= 36] or [0]) + 2
            for cell, s in zip(cells, items, strict=True):
                comment = s.text() + (f"; null = {s.default_text()}" if s.default is None else "")
                start = max(column, len(cell) + 2)
                lines = textwrap.wrap(comment, width - start - 2)
                out.append(f"{cell:<{start}}# {lines[0]}")
                out += [f"{'':<{start}}# {line}" for line in lines[1:]]
            out.append("")
        return "\n".join(out)

    def markdown_rows(self) -> list[str]:
        """README's configuration table, row by row: key, default, meaning."""
        return [
            f"| `{s.key}` | {s.default_text(markdown=True)} | "
            + s.text(markdown=True).replace("|", "\\|")
            + " |"
            for s in self.values()
        ]
