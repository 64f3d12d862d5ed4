"""Tests for rlm_kernel.llm.pricing and the host without litellm: calls on the plain-HTTP path
are priced from litellm's cost map read as data, the same figures as litellm's own
`cost_per_token` (checked against litellm itself); a run whose calls all go that way never
imports litellm; an HTTP error still becomes litellm's exception (litellm imported then)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlm_kernel.llm import pricing
from rlm_kernel.llm.runtime import import_litellm

from .helpers import ROOT, TESTS, run_python

RLM = str(Path(sys.executable).parent / "rlm")

# Prompt / completion / cached tokens: small, cached, past OpenAI's 272k tier, on a threshold.
_TOKENS = [
    (1000, 200, 0),
    (1000, 200, 400),
    (0, 0, 0),
    (128_001, 5, 0),
    (200_001, 5, 100),
    (272_000, 1, 0),
    (272_001, 3, 7),
    (300_000, 50, 100_000),
]


def _litellm_price(litellm: object, model: str, p: int, c: int, cached: int) -> float:
    """What `calls._price` asks litellm (0 where litellm cannot price the model)."""
    try:
        a, b = litellm.cost_per_token(  # type: ignore[attr-defined]
            model=model, prompt_tokens=p, completion_tokens=c, cache_read_input_tokens=cached
        )
    except Exception:
        return 0.0
    return float(a) + float(b)


def _litellm_window(litellm: object, model: str) -> int | None:
    try:
        info = litellm.get_model_info(model)  # type: ignore[attr-defined]
    except Exception:
        return None
    window = info.get("max_input_tokens") or info.get("max_tokens")
    return window if isinstance(window, int) else None


def _models() -> list[str]:
    path = pricing.cost_map_path()
    assert path is not None and path.name.endswith(".json")
    data = json.loads(path.read_bytes())
    data.pop("fallback_generalizations", None)
    openai = sorted(
        k if k.startswith("openai/") else f"openai/{k}"
        for k, v in data.items()
        if isinstance(v, dict) and v.get("litellm_provider") == "openai"
    )
    assert len(openai) > 100
    # OpenRouter names of models the map lists under other providers, every 25th of them
    others = sorted(k for k in data if isinstance(data[k], dict))[::25]
    return (
        openai
        + [f"openrouter/{k}" for k in others]
        + [
            "openai/gpt-4o-2099-01-01",  # a dated snapshot: priced as its base model
            "openai/GPT-4O",  # names are matched ignoring case
            "openai/ft:gpt-4o-2024-08-06:org::id",  # a fine-tune: its base model's price
            "openai/my-local-model",  # a local server's: unknown, 0
            "openai/o9-mini",  # unknown, but the map's capability rules match it
            "openrouter/anthropic/claude-sonnet-9-9",  # a window from the rules, no price
            "openrouter/google/gemini-3-flash-preview",
            "openrouter/openai/gpt-4o",
        ]
    )


def test_the_price_and_the_window_are_litellms_for_every_model_of_the_map() -> None:
    litellm = import_litellm()
    checked = 0
    for model in _models():
        for p, c, cached in _TOKENS:
            ours = pricing.price(model, p, c, cached)
            if ours == pricing.NEEDS_LITELLM:
                continue  # none in the map today; `run_call` asks litellm for those
            theirs = _litellm_price(litellm, model, p, c, cached)
            assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15), (model, p, c, cached)
            checked += 1
        assert pricing.context_window(model) == _litellm_window(litellm, model), model
    assert checked > 2000
    assert pricing.price("openai/gpt-4o", 1000, 200, 0) > 0  # a priced model is priced


def test_unknown_and_odd_names_cost_nothing() -> None:
    for model in ("openai/", "openrouter/x/y/z", "openai/\u00e9t\u00e9", "openai/" + "x" * 5000):
        assert pricing.price(model, 10, 10, 0) == 0.0
        assert pricing.context_window(model) is None
    assert pricing.price("openai/gpt-4o", 10, 10, 50) > 0  # more cached than prompt: no error


def test_a_model_priced_in_a_way_only_litellm_follows_is_left_to_litellm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(
        pricing._ENTRIES,
        ("openai/tiered-test", True),
        {"input_cost_per_token": 1e-6, "tiered_pricing": [{"input_cost_per_token": 1e-7}]},
    )
    assert pricing.price("openai/tiered-test", 10, 10, 0) == pricing.NEEDS_LITELLM


def test_the_map_is_found_without_importing_litellm() -> None:
    code = (
        "import sys; from rlm_kernel.llm import pricing; "
        "print(pricing.cost_map_path() is not None, pricing.price('openai/gpt-4o', 10, 10, 0) > 0, "
        "'litellm' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["True", "True", "False"]


_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
from faults.openai_server import FaultServer, error, reply
srv = FaultServer().start()
srv.script(*[eval(b) for b in {script!r}])
import rlm_kernel.llm as m
from rlm_kernel.config import RLMConfig
cfg = RLMConfig().with_overrides({{"model.name": {model!r}, "model.api_base": srv.api_base}})
prewarmed = m.prewarm_for(cfg)
c = m.LLMClient.from_config(cfg)
c.retries = 1
c.retry.base_s = 0.01
out, error = [], None
for i in range({calls}):
    try:
        r = c.complete([{{"role": "user", "content": "hi " * 400}}], model={model!r},
                       on_text=lambda o, t: None)
        u = r.usage
        out.append([r.text, u.prompt_tokens, u.completion_tokens, u.cache_read_tokens,
                    u.cost_usd, r.attempts])
    except m.LLMError as exc:
        error = str(exc)
for r in c.complete_many([[{{"role": "user", "content": "hello"}}]] * {batch}, model={model!r}):
    u = r.usage
    out.append([r.text, u.prompt_tokens, u.completion_tokens, u.cache_read_tokens, u.cost_usd,
                r.attempts])
imported = "litellm" in sys.modules
window = __import__("rlm_kernel.history", fromlist=["x"]).history_budget({model!r}, None)
imported_after_budget = "litellm" in sys.modules
print(json.dumps({{"out": out, "error": error, "imported": imported, "prewarmed": prewarmed,
                  "after_budget": imported_after_budget, "window": window,
                  "kinds": srv.kinds(), "agents": [q.headers.get("User-Agent", "")
                                                    for q in srv.requests]}}))
srv.stop()
"""


def _run(script: list[str], *, model: str, calls: int = 1, batch: int = 0) -> dict[str, object]:
    code = textwrap.dedent(
        _SCRIPT.format(tests=str(TESTS), script=script, model=model, calls=calls, batch=batch)
    )
    return run_python(code)


def test_a_run_of_direct_calls_never_imports_litellm_and_prices_as_litellm() -> None:
    got = _run(
        ["reply('one ' * 30, chunk_s=0.01, chunk_chars=9)", "reply('two')"] + ["reply('b')"] * 3,
        model="openai/gpt-4o-mini",
        calls=2,
        batch=3,
    )
    assert got["kinds"] == ["reply"] * 5
    assert all("(direct)" in a for a in got["agents"])  # type: ignore[attr-defined]
    assert got["prewarmed"] is False and got["imported"] is False
    assert got["after_budget"] is False
    litellm = import_litellm()
    assert got["window"] == int(_litellm_window(litellm, "openai/gpt-4o-mini") * 0.75)  # type: ignore[operator]
    out = got["out"]
    assert out[1][3] > 0  # type: ignore[index]  # the second call's prompt was read from the cache
    for _text, p, c, cached, cost, attempts in out:  # type: ignore[attr-defined]
        assert attempts == 1 and cost > 0
        assert cost == pytest.approx(_litellm_price(litellm, "openai/gpt-4o-mini", p, c, cached))


def test_an_unknown_direct_model_costs_nothing_without_litellm() -> None:
    got = _run(["reply('x')"], model="openai/my-local-model", calls=1)
    assert got["imported"] is False and got["out"][0][4] == 0.0  # type: ignore[index]
    assert got["window"] == 64_000  # DEFAULT_BUDGET_TOKENS: the map has no window for it


def test_an_http_error_imports_litellm_once_and_is_its_exception_with_retries() -> None:
    got = _run(
        ["error(503, message='busy', retry_after=0.05)", "reply('second time')", "reply('next')"],
        model="openai/gpt-4o-mini",
        calls=2,
    )
    assert got["kinds"] == ["error", "reply", "reply"]  # retried after its Retry-After
    assert all("(direct)" in a for a in got["agents"])  # type: ignore[attr-defined]
    assert got["imported"] is True  # to map the error: litellm's retries, Retry-After, messages
    assert [o[5] for o in got["out"]] == [2, 1]  # type: ignore[attr-defined,index]
    assert all(o[4] > 0 for o in got["out"])  # type: ignore[attr-defined,index]
    over = _run(["error(429, message='slow down')"] * 3, model="openai/gpt-4o-mini")
    assert over["kinds"] == ["error", "error"]
    assert "RateLimitError" in str(over["error"]) and "retries" in str(over["error"])


def test_a_model_off_the_direct_path_still_prewarms_and_works(tmp_path: Path) -> None:
    from rlm_kernel.config import RLMConfig
    from rlm_kernel.llm import LLMClient, prewarm_for

    model = "scripted/" + str(tmp_path / "m.py")
    (tmp_path / "m.py").write_text("def respond(messages, info):\n    return 'scripted'\n")
    cfg = RLMConfig().with_overrides({"model.name": model})
    assert LLMClient.from_config(cfg).needs_litellm(model)
    assert prewarm_for(cfg) is True
    assert LLMClient().complete([{"role": "user", "content": "x"}], model=model).text == "scripted"
    direct_off = RLMConfig().with_overrides({"model.direct": False, "model.name": "openai/x"})
    assert LLMClient.from_config(direct_off).needs_litellm("openai/x")
    mixed = RLMConfig().with_overrides(
        {"model.name": "openai/gpt-4o-mini", "model.sub_model": "anthropic/claude-sonnet-4-5"}
    )
    client = LLMClient.from_config(mixed)
    assert client.needs_litellm("anthropic/claude-sonnet-4-5")


def test_rlm_run_without_a_key_says_what_to_set_without_importing_litellm(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["TMPDIR"] = os.environ.get("TMPDIR", "/tmp")
    code = (
        "import sys\nfrom rlm_kernel.cli import main\n"
        f"rc = main(['run', '-p', 'x', '--model', 'openrouter/google/gemini-3-flash-preview', "
        f"'--results-dir', {str(tmp_path / 'r')!r}])\n"
        "print('imported', 'litellm' in sys.modules, rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert "OPENROUTER_API_KEY" in proc.stderr and "LLM_API_KEY" in proc.stderr
    assert proc.stdout.split()[:2] == ["imported", "False"]
    assert not (tmp_path / "r").exists()  # nothing started


_RUN = """
import json, os, sys
sys.path.insert(0, {tests!r})
from faults.openai_server import FaultServer, reply
srv = FaultServer().start()
srv.script(reply("```python\\nx = llm_query('hi')\\nprint(x)\\n```"), reply("sub"),
           reply("```python\\nFINAL('ok ' + x)\\n```"))
from rlm_kernel.config import RLMConfig
from rlm_kernel.runner import Run
cfg = RLMConfig().with_overrides({{"model.name": "openai/gpt-4o-mini", "model.api_base":
                                  srv.api_base, "results_dir": {results!r}}})
res = Run("task", None, config=cfg).execute()
print(json.dumps({{"answer": res.answer, "imported": "litellm" in sys.modules,
                  "cost": res.usage.cost_usd, "kinds": srv.kinds()}}))
srv.stop()
"""


def test_a_whole_run_on_the_plain_http_path_never_imports_litellm(tmp_path: Path) -> None:
    code = _RUN.format(tests=str(TESTS), results=str(tmp_path / "results"))
    env = {**os.environ, "OPENAI_API_KEY": "sk-direct-test", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["answer"] == "ok sub" and got["kinds"] == ["reply"] * 3
    assert got["imported"] is False and got["cost"] > 0


_MAGICS = """
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
from rlm_kernel.llm import runtime
sh = InteractiveShell.instance()
sh.run_line_magic("load_ext", "rlm_kernel")
time.sleep(0.2)
print(json.dumps({"prewarm": runtime._PREWARM_STARTED.is_set()}))
"""


@pytest.mark.parametrize(
    ("config", "prewarmed"),
    [
        ("model:\n  name: openai/gpt-4o-mini\n", False),
        ("model:\n  name: openai/gpt-4o-mini\n  direct: false\n", True),
        ("model:\n  name: openai/gpt-4o-mini\n  sub_model: anthropic/claude-x\n", True),
        ("model:\n  name: [not, a, name]\n", True),  # a bad file: said at the first %%rlm
    ],
)
def test_the_magics_start_litellms_import_only_where_a_call_may_need_it(
    tmp_path: Path, config: str, prewarmed: bool
) -> None:
    (tmp_path / "config.yaml").write_text(config)
    proc = subprocess.run(
        [sys.executable, "-c", _MAGICS], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["prewarm"] is prewarmed
