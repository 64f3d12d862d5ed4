"""Tests for rlm_kernel.config: defaults, strict loading, overrides and environment helpers."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlm_kernel.config import (
    DEFAULT_CONFIG_FILE,
    ConfigError,
    ModelConfig,
    RLMConfig,
    RLMSettings,
    SandboxConfig,
    is_secret_env,
    load_config,
    load_dotenv_file,
    sandbox_env,
)


def test_defaults() -> None:
    c = RLMConfig()
    assert c.model.name == "openrouter/google/gemini-3-flash-preview"
    assert c.model.sub_model is None and c.model.temperature is None
    assert (c.model.max_tokens, c.model.timeout, c.model.retries) == (None, 600, 3)
    r = c.rlm
    assert (r.max_sandboxes, r.max_iterations, r.global_timeout) == (50, 50, 3600)
    assert (r.result_truncation_limit, r.max_depth, r.output_truncation_limit) == (10000, 5, 20000)
    assert (r.exec_timeout, r.max_llm_calls, r.max_tokens, r.max_cost_usd) == (
        300,
        None,
        None,
        None,
    )
    assert r.max_concurrency == 16
    assert c.sandbox == SandboxConfig(backend="local", keep=False)
    assert c.results_dir == "results"
    assert c.sub_model_name == c.model.name


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RLMConfig().rlm.max_depth = 1  # type: ignore[misc]


def test_packaged_yaml_equals_defaults() -> None:
    assert DEFAULT_CONFIG_FILE.is_file()
    assert RLMConfig.from_yaml(DEFAULT_CONFIG_FILE) == RLMConfig()
    # every key is written out, so the file documents all of them
    flat_keys = set(RLMConfig().flat())
    data = yaml.safe_load(DEFAULT_CONFIG_FILE.read_text())
    written = {f"{s}.{k}" for s, v in data.items() if isinstance(v, dict) for k in v}
    written |= {k for k, v in data.items() if not isinstance(v, dict)}
    assert written == flat_keys


def test_to_dict_round_trip_and_flat() -> None:
    c = RLMConfig(
        model=ModelConfig(name="m", sub_model="s", temperature=0.0, max_tokens=100),
        rlm=RLMSettings(max_depth=2, max_cost_usd=1.5),
        sandbox=SandboxConfig(backend="daytona", keep=True),
        results_dir="out",
    )
    d = c.to_dict()
    assert d["model"]["sub_model"] == "s" and d["rlm"]["max_depth"] == 2
    assert RLMConfig.from_dict(d) == c
    assert RLMConfig.from_dict(yaml.safe_load(yaml.safe_dump(d))) == c
    flat = c.flat()
    assert flat["rlm.max_depth"] == 2 and flat["results_dir"] == "out"
    assert flat["sandbox.backend"] == "daytona" and len(flat) == 21
    assert c.sub_model_name == "s"


def test_from_dict_partial_and_empty_sections() -> None:
    c = RLMConfig.from_dict({"rlm": {"max_depth": 2}, "model": None, "results_dir": "r"})
    assert c.rlm.max_depth == 2 and c.rlm.max_iterations == 50
    assert c.model == ModelConfig() and c.results_dir == "r"
    assert RLMConfig.from_dict({}) == RLMConfig()


def test_from_dict_number_rules() -> None:
    c = RLMConfig.from_dict({"model": {"timeout": 30, "temperature": 0}, "rlm": {"max_depth": 0}})
    assert c.model.timeout == 30 and c.model.temperature == 0 and c.rlm.max_depth == 0
    assert RLMConfig.from_dict({"rlm": {"max_cost_usd": 2}}).rlm.max_cost_usd == 2
    assert RLMConfig.from_dict({"model": {"retries": 0}}).model.retries == 0


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        ({"rlm": {"max_sandbox": 3}}, ["unknown key 'rlm.max_sandbox'", "'rlm.max_sandboxes'"]),
        ({"max_depth": 3}, ["unknown key 'max_depth'", "did you mean 'rlm.max_depth'"]),
        ({"zzz": 1}, ["unknown key 'zzz'", "valid keys:"]),
        (
            {"rlm": {"max_iterations": "ten"}},
            ["'rlm.max_iterations' must be an integer, got 'ten'"],
        ),
        ({"rlm": {"max_iterations": 2.5}}, ["'rlm.max_iterations' must be an integer"]),
        ({"rlm": {"max_iterations": True}}, ["'rlm.max_iterations' must be an integer, got True"]),
        ({"model": {"timeout": False}}, ["'model.timeout' must be a number"]),
        ({"model": {"timeout": float("inf")}}, ["'model.timeout' must be a number"]),
        ({"model": {"name": None}}, ["'model.name' must be a non-empty string"]),
        ({"model": {"name": ""}}, ["'model.name' must be a non-empty string"]),
        ({"rlm": {"max_depth": None}}, ["'rlm.max_depth' must be an integer, got None"]),
        ({"rlm": {"max_llm_calls": "x"}}, ["'rlm.max_llm_calls' must be an integer or null"]),
        ({"sandbox": {"backend": "docker"}}, ["'sandbox.backend' must be one of local, daytona"]),
        ({"sandbox": {"keep": "yes"}}, ["'sandbox.keep' must be true or false"]),
        ({"rlm": {"max_sandboxes": 0}}, ["'rlm.max_sandboxes' must be > 0, got 0"]),
        ({"rlm": {"result_truncation_limit": -5}}, ["'rlm.result_truncation_limit' must be > 0"]),
        ({"rlm": {"output_truncation_limit": 0}}, ["'rlm.output_truncation_limit' must be > 0"]),
        ({"rlm": {"max_cost_usd": 0.0}}, ["'rlm.max_cost_usd' must be > 0"]),
        ({"model": {"temperature": -0.1}}, ["'model.temperature' must be >= 0"]),
        ({"rlm": {"max_depth": -1}}, ["'rlm.max_depth' must be >= 0"]),
        ({"rlm": 5}, ["'rlm' must be a section"]),
    ],
)
def test_from_dict_errors_name_the_key(data: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        RLMConfig.from_dict(data, source="config.yaml")
    msg = str(info.value)
    assert msg.startswith("config.yaml: ")
    for fragment in fragments:
        assert fragment in msg


def test_from_dict_top_level_not_mapping() -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        RLMConfig.from_dict([1, 2], source="x.yaml")  # type: ignore[arg-type]


def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_from_yaml(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("rlm:\n  max_depth: 1\nsandbox:\n  keep: true\n")
    c = RLMConfig.from_yaml(p)
    assert c.rlm.max_depth == 1 and c.sandbox.keep is True
    assert RLMConfig.from_yaml(str(p)) == c


def test_from_yaml_empty_file_gives_defaults(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("# nothing here\n")
    assert RLMConfig.from_yaml(p) == RLMConfig()


def test_from_yaml_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        RLMConfig.from_yaml(p)
    assert str(p) in str(info.value)


def test_from_yaml_syntax_error(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("rlm:\n  max_depth: 1\n  bad: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        RLMConfig.from_yaml(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}:") and "invalid YAML" in msg
    line = int(msg[len(str(p)) + 1 :].split(":")[0])
    assert line >= 3


def test_from_yaml_errors_use_path_as_source(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("rlm:\n  max_sandbox: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'rlm.max_sandbox'") as info:
        RLMConfig.from_yaml(p)
    assert str(info.value).startswith(f"{p}: ")
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        RLMConfig.from_yaml(p)


def test_load_config_uses_cwd_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config() == RLMConfig()
    (tmp_path / "config.yaml").write_text("rlm:\n  max_depth: 2\n")
    assert load_config().rlm.max_depth == 2
    c = load_config(overrides={"rlm.max_depth": 3, "model.name": "x"})
    assert c.rlm.max_depth == 3 and c.model.name == "x"
    other = tmp_path / "other.yaml"
    other.write_text("rlm:\n  max_iterations: 7\n")
    assert load_config(other).rlm.max_depth == 5 and load_config(other).rlm.max_iterations == 7


def test_with_overrides_dotted_and_bare() -> None:
    base = RLMConfig()
    c = base.with_overrides({"rlm.max_depth": 2, "model.name": "gpt-x", "results_dir": "out"})
    assert (c.rlm.max_depth, c.model.name, c.results_dir) == (2, "gpt-x", "out")
    assert base == RLMConfig()  # unchanged
    c = base.with_overrides({"max_depth": 1, "backend": "daytona", "keep": True, "sub_model": "s"})
    assert c.rlm.max_depth == 1 and c.sandbox.backend == "daytona" and c.sandbox.keep
    assert c.sub_model_name == "s"
    assert base.with_overrides({"max-depth": 4}).rlm.max_depth == 4
    assert base.with_overrides({"rlm": {"max_depth": 3}}).rlm.max_depth == 3


def test_with_overrides_ambiguous_key() -> None:
    with pytest.raises(ConfigError) as info:
        RLMConfig().with_overrides({"max_tokens": 10})
    msg = str(info.value)
    assert "'max_tokens' is ambiguous" in msg
    assert "model.max_tokens" in msg and "rlm.max_tokens" in msg
    assert RLMConfig().with_overrides({"rlm.max_tokens": 10}).rlm.max_tokens == 10


def test_with_overrides_errors_use_source() -> None:
    with pytest.raises(ConfigError) as info:
        RLMConfig().with_overrides({"max_depth": "deep"}, source="--max-depth")
    assert str(info.value).startswith("--max-depth: 'rlm.max_depth' must be an integer")
    with pytest.raises(ConfigError, match=r"^overrides: unknown key 'max_dept'.*'rlm.max_depth'"):
        RLMConfig().with_overrides({"max_dept": 1})
    with pytest.raises(ConfigError, match=r"unknown key 'model\.nme'"):
        RLMConfig().with_overrides({"model": {"nme": "x"}})
    with pytest.raises(ConfigError, match=r"'sandbox\.backend' must be one of"):
        RLMConfig().with_overrides({"backend": "docker"})


def test_with_overrides_parse_strings() -> None:
    c = RLMConfig().with_overrides(
        {
            "max_depth": "3",
            "temperature": "0.5",
            "timeout": "30",
            "keep": "true",
            "max_cost_usd": "null",
            "sub_model": "None",
            "model.name": '"gpt-4o"',
        },
        parse_strings=True,
    )
    assert c.rlm.max_depth == 3 and c.model.temperature == 0.5 and c.model.timeout == 30
    assert c.sandbox.keep is True and c.rlm.max_cost_usd is None
    assert c.model.sub_model is None and c.model.name == "gpt-4o"
    assert RLMConfig().with_overrides({"keep": "false"}, parse_strings=True).sandbox.keep is False
    with pytest.raises(ConfigError, match=r"'rlm\.max_depth' must be an integer, got 'ten'"):
        RLMConfig().with_overrides({"max_depth": "ten"}, parse_strings=True)
    with pytest.raises(ConfigError, match=r"'rlm\.max_depth' must be an integer, got None"):
        RLMConfig().with_overrides({"max_depth": "null"}, parse_strings=True)
    # without parse_strings, strings are not converted
    with pytest.raises(ConfigError, match=r"'rlm\.max_depth' must be an integer, got '3'"):
        RLMConfig().with_overrides({"max_depth": "3"})


def test_load_dotenv_file_does_not_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_dotenv_file() == {}
    monkeypatch.setenv("RLMTEST_EXISTING", "keep-me")
    monkeypatch.delenv("RLMTEST_NEW", raising=False)
    (tmp_path / ".env").write_text("RLMTEST_EXISTING=replaced\nRLMTEST_NEW=fresh\n")
    try:
        assert load_dotenv_file() == {"RLMTEST_NEW": "fresh"}
        assert os.environ["RLMTEST_EXISTING"] == "keep-me"
        assert os.environ["RLMTEST_NEW"] == "fresh"
    finally:
        os.environ.pop("RLMTEST_NEW", None)
    assert load_dotenv_file(tmp_path / "missing.env") == {}


def test_load_dotenv_file_explicit_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLMTEST_OTHER", raising=False)
    p = tmp_path / "keys.env"
    p.write_text("RLMTEST_OTHER=1\n")
    monkeypatch.setattr(os, "environ", dict(os.environ))  # keep the real environment clean
    assert load_dotenv_file(p) == {"RLMTEST_OTHER": "1"}
    assert os.environ["RLMTEST_OTHER"] == "1"


@pytest.mark.parametrize(
    "name",
    [
        "OPENAI_API_KEY",
        "openrouter_api_key",
        "LLM_API_KEY",
        "DAYTONA_API_KEY",
        "STRIPE_SECRET_KEY",
        "HF_TOKEN",
        "FOO_TOKEN",
        "GITHUB_TOKEN",
        "DB_PASSWORD",
        "MY_SECRET",
        "GCP_CREDENTIALS_FILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "AZURE_OPENAI_KEY",
        "AZURE_KEY_VAULT",
    ],
)
def test_is_secret_env_true(name: str) -> None:
    assert is_secret_env(name)


@pytest.mark.parametrize(
    "name", ["PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "KEYBOARD_LAYOUT", "MONKEY", "TERM"]
)
def test_is_secret_env_false(name: str) -> None:
    assert not is_secret_env(name)


def test_sandbox_env_allowlist() -> None:
    base = {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": "/tmp/x",
        "XDG_CACHE_HOME": "/c",
        "OPENAI_API_KEY": "sk-1",
        "LLM_API_KEY": "k",
        "FOO_TOKEN": "t",
        "LC_SECRET": "s",  # allowlisted by LC_* but secret-looking: dropped
        "RANDOM_VAR": "r",
        "PYTHONUNBUFFERED": "0",
    }
    env = sandbox_env(base)
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": "/tmp/x",
        "XDG_CACHE_HOME": "/c",
        "PYTHONUNBUFFERED": "1",
    }
    assert "OPENAI_API_KEY" in base  # base is not modified


def test_sandbox_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("PATH", "/bin")
    env = sandbox_env()
    assert env["PATH"] == "/bin" and env["PYTHONUNBUFFERED"] == "1"
    assert "OPENAI_API_KEY" not in env
    assert not any(is_secret_env(k) for k in env)
