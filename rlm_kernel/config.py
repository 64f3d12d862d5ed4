"""Configuration: the settings table, `RLMConfig` (strict YAML loading, overrides) and
environment helpers.

**The settings table.** Every key is declared once, as a field of a section below
(`ModelConfig`, `RLMSettings`, `SandboxConfig`, then `RLMConfig.results_dir`) made with
`setting(default, help, ...)`: the annotation is its type; `setting` gives its default, its help
(Markdown; README's table, config.yaml's comments, the flags' and traitlets' help), what null
means, its flag on `rlm run` and `%%rlm` (`on`, and the `RLMKernel` traitlet of the same name),
and its rules (`zero_ok`, `choices`). `SETTINGS` collects them in order and generates the rest
(`rlm_kernel.settings`): strict validation with pydantic, `%rlm config` parsing, the flags
(`SETTINGS.add_flags`), the kernel's traitlets (`SETTINGS.kernel_traits`), the packaged
config.yaml and README's table (`python scripts/settings_docs.py` rewrites both). Adding a key
is one `setting(...)` field here.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml
from dotenv import dotenv_values

from .sandbox import BACKENDS
from .settings import CLI, KERNEL, MAGIC, ConfigError, SettingsTable, setting

__all__ = [
    "CLI",
    "DEFAULT_CONFIG_FILE",
    "KERNEL",
    "MAGIC",
    "SANDBOX_ENV_ALLOWLIST",
    "SECRET_ENV_PATTERNS",
    "SETTINGS",
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


# -- the settings table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """The `model` section: which LLM to call and how."""

    name: str = setting(
        "openrouter/google/gemini-3-flash-preview",
        "agents' LLM, in litellm form; `scripted/<file.py>` and `replay/<run>.detail.json` work "
        "offline",
        flag="--model",
        metavar="NAME",
    )
    sub_model: str | None = setting(
        None,
        "LLM of `llm_query` and `llm_query_batched`",
        none="same as `model.name`",
        flag="--sub-model",
        metavar="NAME",
    )
    temperature: float | None = setting(
        None, "sampling temperature", none="provider default", zero_ok=True
    )
    max_tokens: int | None = setting(None, "completion tokens per call", none="provider default")
    timeout: float = setting(600, "seconds per LLM request (its retries included)")
    retries: int = setting(
        3,
        "retries of transient LLM errors (exponential backoff, or the provider's `Retry-After`; "
        "0 = none)",
        zero_ok=True,
    )
    api_base: str | None = setting(
        None,
        "base URL of the provider's API, e.g. a local OpenAI-compatible server "
        "`http://127.0.0.1:8000/v1` with `model.name: openai/<model>`",
        none="provider default",
    )
    stream: bool = setting(
        True,
        "stream agents' replies, so the widget and the console show them as they are written "
        "(`llm_query` calls are never streamed)",
    )
    direct: bool = setting(
        True,
        "send calls to OpenAI, OpenRouter and OpenAI-compatible servers (`openai/<model>` with "
        "`model.api_base`) as plain HTTP requests, at a fraction of litellm's CPU per call "
        "(errors and retries as litellm's; a reply that is not whole is asked again through "
        "litellm); `false` = every call through litellm",
    )


@dataclass(frozen=True)
class RLMSettings:
    """The `rlm` section: limits and budgets of a run."""

    max_sandboxes: int = setting(
        50, "sandboxes over the whole run, root included", flag="--max-sandboxes", metavar="N"
    )
    max_iterations: int = setting(
        50, "iterations (LLM turns) per agent", flag="--max-iterations", metavar="N"
    )
    global_timeout: float = setting(
        3600, "the run's global timeout, in seconds", flag="--timeout", metavar="SECONDS"
    )
    result_truncation_limit: int = setting(
        10000, "characters of a child's answer returned to its parent"
    )
    max_depth: int = setting(
        5,
        "deepest agent depth (root = 0; 0 = no sub-agents)",
        flag="--max-depth",
        metavar="N",
        zero_ok=True,
    )
    output_truncation_limit: int = setting(
        20000,
        "characters of cell output shown to the model (head and tail kept; records keep up to "
        "1 000 000 per cell)",
    )
    exec_timeout: float = setting(
        300,
        "seconds per cell; then it is interrupted (and the kernel restarted if it will not stop)",
    )
    max_llm_calls: int | None = setting(
        None, "LLM calls over the run (agent turns and `llm_query`)", none="unlimited"
    )
    max_tokens: int | None = setting(
        None, "tokens over the run (prompt and completion)", none="unlimited"
    )
    max_cost_usd: float | None = setting(
        None, "cost over the run, in USD", none="unlimited", flag="--max-cost-usd", metavar="USD"
    )
    max_concurrency: int = setting(
        16,
        "agents doing work at once (`llm_query_batched` runs up to 4× this many calls at once)",
    )
    max_history_tokens: int | None = setting(
        None,
        "tokens of an agent's prompt (system prompt, task and turns so far); beyond it the oldest "
        "turns' outputs, then their code, are folded into a short note (the REPL keeps their "
        "variables; the record keeps everything)",
        none="¾ of the model's context window per litellm, or 64 000 when it is unknown",
    )


ISOLATIONS = ("auto", "bwrap", "none")
"""The values of `sandbox.isolation` (see `rlm_kernel.sandbox.isolation`)."""


@dataclass(frozen=True)
class SandboxConfig:
    """The `sandbox` section: where agents' code runs."""

    backend: str = setting(
        "local", "where agents' code runs: {choices}", flag="--sandbox", choices=BACKENDS
    )
    keep: bool = setting(
        False,
        "keep every agent's sandbox after it ends, and say where (notebooks: for `%rlm attach` "
        "and `%rlm ns --live`)",
        flag="--keep",
        on=(CLI, MAGIC),
    )
    snapshot: str | None = setting(
        None,
        "Daytona only: the prepared snapshot sandboxes are created from",
        none="Daytona's default",
    )
    pool_size: Literal["auto"] | int = setting(
        "auto",
        "ready sandboxes (workspace + kernel) the run keeps for its next sub-agents, made in the "
        "background while agents think, so `rlm_query` skips the checkout and the kernel "
        "start; `auto` = none until the run's second `rlm_query` (a run that delegates once is "
        "served by fresh sandboxes), then 2, growing to the widest `rlm_query_batched` seen twice (at most 8 and `max_concurrency`); never more than the sandbox "
        "budget left; unused ones are removed when the run ends; `0` = off (local backend only)",
        zero_ok=True,
    )
    spare: bool = setting(
        True,
        "local backend: once a run's root agent has its sandbox, start ONE spare root sandbox "
        "(workspace + kernel, ~20 MB) in the background for the next run of this process, so "
        "its root does not wait for a kernel start; a run with other sandbox settings closes it "
        "and starts its own; closed when the process exits; `false` = off",
    )
    isolation: str = setting(
        "auto",
        "how local sandboxes are confined: {choices}; `bwrap` = bubblewrap namespaces (see "
        "Sandboxes below), `none` = plain processes of your user, `auto` = `bwrap` where it "
        "works here, else `none` (`$RLM_SANDBOX_ISOLATION` replaces `auto`)",
        flag="--isolation",
        choices=ISOLATIONS,
    )
    network: bool = setting(
        True,
        "network for sandboxes; `false` (`--no-network`) gives `bwrap` sandboxes loopback only",
        flag="--no-network",
    )


@dataclass(frozen=True)
class RLMConfig:
    """The whole configuration, nested like `config.yaml`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    rlm: RLMSettings = field(default_factory=RLMSettings)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    results_dir: str = setting(
        "results",
        "where run records go (`<results_dir>/<run_id>.detail.json`)",
        flag="--results-dir",
        metavar="DIR",
        on=(CLI, MAGIC),
    )

    @property
    def sub_model_name(self) -> str:
        """The model for `llm_query`/`llm_query_batched`: `model.sub_model` or `model.name`."""
        return self.model.sub_model or self.model.name

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> RLMConfig:
        """Build a config from a nested mapping, strictly; missing keys take defaults."""
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{source}: the top level must be a mapping of sections "
                f"({', '.join(k for k in [*SETTINGS.sections, *SETTINGS] if '.' not in k)}), "
                f"got {_show(data)}"
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
            if key in SETTINGS.sections:  # a whole section: merge a mapping; from_dict checks it
                data[key] = {**data[key], **value} if isinstance(value, Mapping) else value
                continue
            dotted = SETTINGS.resolve(key, source)
            if parse_strings and isinstance(value, str):
                value = SETTINGS[dotted].parse(value)
            section, _, leaf = dotted.rpartition(".")
            (data[section] if section else data)[leaf] = value
        return RLMConfig.from_dict(data, source=source)

    def to_dict(self) -> dict[str, Any]:
        """The config as a nested, YAML-shaped dict (round-trips through from_dict)."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """The config as dotted keys (`rlm.max_depth`) mapped to values."""
        out: dict[str, Any] = {}
        for key in SETTINGS:
            obj: Any = self
            for part in key.split("."):
                obj = getattr(obj, part)
            out[key] = obj
        return out


SETTINGS = SettingsTable(
    RLMConfig,
    yaml_header="""\
# rlm_kernel configuration: every key at its default.
#
# Copy this file to ./config.yaml (or pass it with `rlm run -c FILE`) and change what you need;
# keys you leave out keep their defaults, unknown keys are errors. `null` means "no limit" or
# "provider default" where a key allows it. API keys do not belong here: put them in the
# environment or in a .env file (e.g. OPENROUTER_API_KEY=...).
#
# Generated from the settings table in rlm_kernel/config.py: python scripts/settings_docs.py
""",
)
"""The settings table: every key (dotted, in config.yaml's order) and its declaration."""


def _show(value: Any) -> str:
    """Render a bad value for an error message: `[1, 2] (list)`."""
    return f"{value!r} ({type(value).__name__})"


def _build(cls: Any, data: Mapping[str, Any], prefix: str, source: str) -> Any:
    """Construct dataclass `cls` from `data`, checking every key and value against SETTINGS."""
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(f"{source}: unknown key {dotted!r} ({SETTINGS.suggest(dotted)})")
        tp = hints[key]
        if not dataclasses.is_dataclass(tp):
            kwargs[key] = SETTINGS[dotted].check(value, source)
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


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    source: str = "overrides",
) -> RLMConfig:
    """Load `path` (default: ./config.yaml if present, else defaults), then apply overrides
    (errors in them name `source`: the flags, the traitlets)."""
    if path is None and Path("config.yaml").is_file():
        path = "config.yaml"
    config = RLMConfig() if path is None else RLMConfig.from_yaml(path)
    return config.with_overrides(overrides, source=source) if overrides else config


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


def _any_of(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One compiled regular expression matching what any of the glob `patterns` matches."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns))


_SECRET_ENV_RE = _any_of(SECRET_ENV_PATTERNS)


def is_secret_env(name: str) -> bool:
    """True if an environment variable name looks like it holds a secret."""
    return _SECRET_ENV_RE.match(name.upper()) is not None


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
_SANDBOX_ENV_RE = _any_of(SANDBOX_ENV_ALLOWLIST)


def sandbox_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a sandbox process: allowlisted, non-secret variables of `base`."""
    source = os.environ if base is None else base
    env = {
        name: value
        for name, value in source.items()
        if _SANDBOX_ENV_RE.match(name) is not None and not is_secret_env(name)
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env
