"""Configuration: `RLMConfig` (defaults, strict YAML loading, overrides) and environment helpers."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, get_args, get_type_hints

import yaml
from dotenv import dotenv_values

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "SANDBOX_ENV_ALLOWLIST",
    "SECRET_ENV_PATTERNS",
    "ConfigError",
    "ModelConfig",
    "RLMConfig",
    "RLMSettings",
    "SandboxConfig",
    "is_secret_env",
    "load_config",
    "load_dotenv_file",
    "redact_secrets",
    "sandbox_env",
]

DEFAULT_CONFIG_FILE: Path = Path(__file__).with_name("config.yaml")
"""The packaged `config.yaml`: every key at its default, with a comment per key."""


class ConfigError(ValueError):
    """A configuration problem; the message names the source and key and says what to do."""


@dataclass(frozen=True)
class ModelConfig:
    """The `model` section: which LLM to call and how."""

    name: str = "openrouter/google/gemini-3-flash-preview"
    sub_model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float = 600
    retries: int = 3
    api_base: str | None = None


@dataclass(frozen=True)
class RLMSettings:
    """The `rlm` section: limits and budgets of a run."""

    max_sandboxes: int = 50
    max_iterations: int = 50
    global_timeout: float = 3600
    result_truncation_limit: int = 10000
    max_depth: int = 5
    output_truncation_limit: int = 20000
    exec_timeout: float = 300
    max_llm_calls: int | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    max_concurrency: int = 16


@dataclass(frozen=True)
class SandboxConfig:
    """The `sandbox` section: where agents' code runs."""

    backend: str = "local"
    keep: bool = False
    snapshot: str | None = None  # Daytona: the snapshot sandboxes are created from
    # Ready sandboxes (workspace + kernel) a run keeps for its next sub-agents: "auto" or N >= 0.
    pool_size: int | str = "auto"
    # Local sandboxes: "bwrap" (bubblewrap namespaces), "none", or "auto" (bwrap where it works).
    isolation: str = "auto"
    network: bool = True  # false: bwrap-confined sandboxes get no network (loopback only)


_CHOICES: dict[str, tuple[str, ...]] = {
    "sandbox.backend": ("local", "daytona"),
    "sandbox.isolation": ("auto", "bwrap", "none"),
}
# Keys where 0 is meaningful (no retries, root-only runs, greedy sampling); all others must be > 0.
_ZERO_OK = frozenset({"model.temperature", "model.retries", "rlm.max_depth"})


@dataclass(frozen=True)
class RLMConfig:
    """The whole configuration, nested like `config.yaml`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    rlm: RLMSettings = field(default_factory=RLMSettings)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    results_dir: str = "results"

    @property
    def sub_model_name(self) -> str:
        """The model for `llm_query`/`llm_query_batched`: `model.sub_model` or `model.name`."""
        return self.model.sub_model or self.model.name

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> RLMConfig:
        """Build a config from a nested mapping, strictly; missing keys take defaults."""
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{source}: the top level must be a mapping of sections (model, rlm, sandbox, "
                f"results_dir), got {_show(data)}"
            )
        config: RLMConfig = _build(cls, data, "", source)
        return config

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> RLMConfig:
        """Load a YAML config file; an empty file gives the defaults."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                f"{os.fspath(path)}: config file not found; create it (the packaged "
                f"{DEFAULT_CONFIG_FILE.name} lists every key) or pass an existing path"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{os.fspath(path)}: cannot read config file: {exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
            why = ", ".join(str(p) for p in (exc.context, exc.problem) if p) or str(exc)
            raise ConfigError(f"{os.fspath(path)}{where}: invalid YAML: {why}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{os.fspath(path)}: invalid YAML: {exc}") from None
        return cls() if data is None else cls.from_dict(data, source=os.fspath(path))

    def with_overrides(
        self,
        overrides: Mapping[str, Any],
        *,
        source: str = "overrides",
        parse_strings: bool = False,
    ) -> RLMConfig:
        """A new config with dotted (or unambiguous bare) keys set, validated like from_dict."""
        data = self.to_dict()
        for key, value in overrides.items():
            if key in _SECTIONS:  # a whole section: merge a mapping, let from_dict reject others
                data[key] = {**data[key], **value} if isinstance(value, Mapping) else value
                continue
            dotted = _resolve_key(key, source)
            if parse_strings and isinstance(value, str):
                value = _parse_string(dotted, value)
            section, _, leaf = dotted.rpartition(".")
            (data[section] if section else data)[leaf] = value
        return RLMConfig.from_dict(data, source=source)

    def to_dict(self) -> dict[str, Any]:
        """The config as a nested, YAML-shaped dict (round-trips through from_dict)."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """The config as dotted keys (`rlm.max_depth`) mapped to values."""
        out: dict[str, Any] = {}
        for key in _FIELDS:
            obj: Any = self
            for part in key.split("."):
                obj = getattr(obj, part)
            out[key] = obj
        return out


def _collect(cls: type, prefix: str = "") -> dict[str, Any]:
    """Map every dotted leaf key of a config dataclass to its type annotation."""
    out: dict[str, Any] = {}
    for name, tp in get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            out.update(_collect(tp, f"{prefix}{name}."))  # type: ignore[arg-type]
        else:
            out[prefix + name] = tp
    return out


_FIELDS: dict[str, Any] = _collect(RLMConfig)
_SECTIONS = tuple(n for n, tp in get_type_hints(RLMConfig).items() if dataclasses.is_dataclass(tp))
_DEFAULTS: dict[str, Any] = RLMConfig().flat()
_TYPE_WORDS = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a non-empty string",
}


def _show(value: Any) -> str:
    """Render a bad value for an error message: `'ten' (str)`."""
    return f"{value!r} ({type(value).__name__})"


def _kind(tp: Any) -> tuple[type, bool]:
    """Split an annotation into (base type, whether None is allowed)."""
    args = get_args(tp)
    if not args:
        return tp, False
    return next(a for a in args if a is not type(None)), type(None) in args


def _suggest(key: str) -> str:
    """Say what to do about an unknown key: a close match, or the list of valid keys."""
    names = [*_FIELDS, *_SECTIONS]
    close = difflib.get_close_matches(key, names, n=1)
    if not close:  # e.g. 'max_dept' → compare leaf names only
        leaf = key.rpartition(".")[2]
        leaves = {k.rpartition(".")[2]: k for k in _FIELDS}
        close = [leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n=1)]
    if close:
        return f"did you mean {close[0]!r}?"
    return "valid keys: " + ", ".join(_FIELDS)


def _build(cls: Any, data: Mapping[str, Any], prefix: str, source: str) -> Any:
    """Construct dataclass `cls` from `data`, validating every key and value."""
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(f"{source}: unknown key {dotted!r} ({_suggest(dotted)})")
        tp = hints[key]
        if not dataclasses.is_dataclass(tp):
            kwargs[key] = _check(dotted, value, source)
        elif value is None:  # a YAML section whose keys are all commented out
            continue
        elif not isinstance(value, Mapping):
            raise ConfigError(
                f"{source}: {dotted!r} must be a section (a mapping of keys such as "
                f"'{next(iter(get_type_hints(tp)))}: ...'), got {_show(value)}"
            )
        else:
            kwargs[key] = _build(tp, value, f"{dotted}.", source)
    return cls(**kwargs)


def _check(key: str, value: Any, source: str) -> Any:
    """Validate one leaf value for dotted `key` and return it."""
    if key == "sandbox.pool_size":
        if value == "auto" or (
            isinstance(value, int) and not isinstance(value, bool) and value >= 0
        ):
            return value
        raise ConfigError(
            f"{source}: 'sandbox.pool_size' must be 'auto' or an integer >= 0 (0 turns the "
            f"pool off), got {_show(value)}"
        )
    base, optional = _kind(_FIELDS[key])
    if value is None and optional:
        return None
    want = _TYPE_WORDS[base] + (" or null" if optional else "")
    ok = isinstance(value, base) and not (base is not bool and isinstance(value, bool))
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if ok and base is float:
        ok = math.isfinite(value)
    if ok and base is str:
        ok = bool(value.strip())
    if not ok:
        raise ConfigError(
            f"{source}: {key!r} must be {want}, got {_show(value)}; "
            f"the default is {_DEFAULTS[key]!r}"
        )
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(
            f"{source}: {key!r} must be one of {', '.join(_CHOICES[key])}, got {value!r}"
        )
    if base in (int, float):
        low_ok = value >= 0 if key in _ZERO_OK else value > 0
        if not low_ok:
            bound = ">= 0" if key in _ZERO_OK else "> 0"
            raise ConfigError(f"{source}: {key!r} must be {bound}, got {value!r}")
    return value


def _resolve_key(key: str, source: str) -> str:
    """Map an override key (dotted, or a bare leaf name when unambiguous) to its dotted key."""
    norm = str(key).strip().replace("-", "_")
    if norm in _FIELDS:
        return norm
    matches = [k for k in _FIELDS if k.rpartition(".")[2] == norm]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(f"{source}: key {key!r} is ambiguous; write one of {', '.join(matches)}")
    raise ConfigError(f"{source}: unknown key {key!r} ({_suggest(norm)})")


def _parse_string(key: str, text: str) -> Any:
    """Parse a `key=value` string for the field's type; unparsable text is left for _check."""
    base, _ = _kind(_FIELDS[key])
    raw = text.strip()
    if raw.lower() in ("null", "none", "~"):
        return None
    if base is bool:
        words = {"true": True, "yes": True, "on": True, "1": True}
        words.update({"false": False, "no": False, "off": False, "0": False})
        return words.get(raw.lower(), text)
    if base in (int, float):
        try:
            return base(raw)
        except ValueError:
            return text
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return raw


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None
) -> RLMConfig:
    """Load `path` (default: ./config.yaml if present, else defaults), then apply overrides."""
    if path is None and Path("config.yaml").is_file():
        path = "config.yaml"
    config = RLMConfig() if path is None else RLMConfig.from_yaml(path)
    return config.with_overrides(overrides) if overrides else config


def load_dotenv_file(path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Set variables from a `.env` file (default ./.env) that are not already set; return them."""
    env_path = Path(".env" if path is None else path)
    if not env_path.is_file():
        return {}
    added: dict[str, str] = {}
    for name, value in dotenv_values(env_path).items():
        if value is not None and name not in os.environ:
            os.environ[name] = added[name] = value
    return added


SECRET_ENV_PATTERNS: tuple[str, ...] = (
    "*_API_KEY", "*API_KEY*", "*APIKEY*", "*_SECRET_KEY", "*_ACCESS_KEY*", "*_PRIVATE_KEY*",
    "*TOKEN*", "*SECRET*", "*PASSWORD*", "*PASSWD*", "*_CREDENTIALS*", "AZURE_*KEY*",
    "LLM_API_KEY", "DAYTONA_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS",
)  # fmt: skip
"""Glob patterns (matched case-insensitively) of environment variables that hold secrets."""


def is_secret_env(name: str) -> bool:
    """True if an environment variable name looks like it holds a secret."""
    upper = name.upper()
    return any(fnmatchcase(upper, pattern) for pattern in SECRET_ENV_PATTERNS)


def redact_secrets(text: str) -> str:
    """`text` with the values of secret environment variables (API keys, tokens) as `***`."""
    secrets = {v for k, v in os.environ.items() if len(v) >= 8 and is_secret_env(k)}
    for value in sorted(secrets, key=len, reverse=True):  # a key inside a longer one: longest first
        if value in text:
            text = text.replace(value, "***")
    return text


SANDBOX_ENV_ALLOWLIST: tuple[str, ...] = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TERM", "TZ", "TMPDIR",
    "SHELL", "VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH", "PYTHONHASHSEED", "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME", "XDG_DATA_HOME", "MPLBACKEND", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL",
    "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL",
)  # fmt: skip
"""Environment variables (glob patterns) a sandbox process may inherit from the host."""


def sandbox_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a sandbox process: allowlisted, non-secret variables of `base`."""
    source = os.environ if base is None else base
    env = {
        name: value
        for name, value in source.items()
        if any(fnmatchcase(name, p) for p in SANDBOX_ENV_ALLOWLIST) and not is_secret_env(name)
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env
