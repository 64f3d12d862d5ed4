"""Typed outputs for `SUBMIT(**fields)`: DSPy-style signatures such as `question: str -> answer: str`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Field", "Signature", "SignatureError"]

_SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
    "any": (object,),
}


class SignatureError(ValueError):
    """A signature that cannot be parsed, or SUBMIT fields that do not match it."""


@dataclass(frozen=True)
class Field:
    """One named, typed field of a signature."""

    name: str
    type: str = "Any"

    def check(self, value: Any) -> str | None:
        """Return why `value` does not fit this field's type, or None when it does."""
        return _check(self.type.strip(), value, self.name)


@dataclass(frozen=True)
class Signature:
    """Inputs and outputs of a typed task; SUBMIT must provide exactly the outputs."""

    inputs: tuple[Field, ...]
    outputs: tuple[Field, ...]

    @classmethod
    def parse(cls, text: str) -> Signature:
        """Parse `a: str, b: list[int] -> c: float` (types optional, default Any)."""
        if "->" not in text:
            raise SignatureError(
                f"signature {text!r} has no '->': write it as 'inputs -> outputs', "
                "e.g. 'question: str -> answer: str, confidence: float'"
            )
        if text.count("->") > 1:
            raise SignatureError(
                f"signature {text!r} has more than one '->': write it as 'inputs -> outputs'"
            )
        if text.count("[") != text.count("]"):
            raise SignatureError(f"signature {text!r} has unbalanced brackets: close every '['")
        left, right = text.split("->", 1)
        outputs = _fields(right, text)
        if not outputs:
            raise SignatureError(f"signature {text!r} names no output field after '->'")
        return cls(inputs=_fields(left, text), outputs=outputs)

    def describe(self) -> str:
        """`answer: str, confidence: float` for prompts."""
        return ", ".join(f"{f.name}: {f.type}" for f in self.outputs)

    def validate(self, values: dict[str, Any]) -> list[str]:
        """Every problem with a SUBMIT call, each a sentence the model can act on."""
        problems: list[str] = []
        names = [f.name for f in self.outputs]
        for key in values:
            if key not in names:
                problems.append(
                    f"unexpected field {key!r}; SUBMIT takes exactly: {', '.join(names)}"
                )
        for f in self.outputs:
            if f.name not in values:
                problems.append(f"missing field {f.name!r} ({f.type})")
                continue
            why = f.check(values[f.name])
            if why:
                problems.append(why)
        return problems


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _fields(text: str, whole: str) -> tuple[Field, ...]:
    out: list[Field] = []
    for part in _split_top(text):
        name, _, typ = part.partition(":")
        name = name.strip()
        if not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise SignatureError(f"signature {whole!r}: {name!r} is not a valid field name")
        if any(f.name == name for f in out):
            raise SignatureError(f"signature {whole!r}: field {name!r} appears twice; rename one")
        out.append(Field(name, typ.strip() or "Any"))
    return tuple(out)


def _check(typ: str, value: Any, where: str) -> str | None:
    m = re.fullmatch(r"(\w+)(?:\[(.*)\])?", typ.replace(" ", ""))
    if not m:
        return None  # an annotation we do not understand is not enforced
    base, args = m.group(1).lower(), m.group(2)
    if base.startswith("optional"):
        return None if value is None else _check(args or "Any", value, where)
    allowed = _SCALARS.get(base)
    if allowed is None:
        return None
    if base != "bool" and isinstance(value, bool) and base in ("int", "float"):
        return f"field {where!r} must be {typ}, got bool {value!r}"
    if not isinstance(value, allowed):
        return f"field {where!r} must be {typ}, got {type(value).__name__} {_short(value)}"
    if args and base == "list" and isinstance(value, list):
        for i, item in enumerate(value):
            why = _check(args, item, f"{where}[{i}]")
            if why:
                return why
    if args and base == "dict" and isinstance(value, dict):
        kv = _split_top(args)
        if len(kv) == 2:
            for k, v in value.items():
                why = _check(kv[0], k, f"{where} key") or _check(kv[1], v, f"{where}[{k!r}]")
                if why:
                    return why
    return None


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."
