"""Prices and context windows of plain-HTTP models from litellm's cost map, read as data.

A call on the plain-HTTP path (`direct`: `openai/…`, `openrouter/…`) is priced here, so the host
never imports litellm for it (~215 MB and ~4 CPU-s with the encodings it loads). The figures are
litellm's own: the cost map is the JSON file bundled inside the installed litellm package (the
one litellm itself loads with ``LITELLM_LOCAL_MODEL_COST_MAP``), found with
`importlib.util.find_spec`, which does not import the package; it is never fetched. The entry
of a model is looked up as `litellm.cost_per_token` looks it up (the provider's name, the bare
name, a dated snapshot's base name, case-insensitively, the entry's provider matching; then the
map's capability rules for a model it does not list), and priced as `generic_cost_per_token`
prices prompt, cached prompt and completion tokens (tokens above a threshold such as
`input_cost_per_token_above_272k_tokens` at that tier's rates; cached tokens at the input rate
where the map has no cache price). `tests/llm/test_pricing.py` checks both against litellm for
every model of the two providers in the map.

A model priced in a way this does not follow (a `tiered_pricing` table, `off_peak_pricing`) is
`NEEDS_LITELLM`: its caller prices it with litellm. An unknown model costs 0, as with litellm.
The map is read once per model (~75 ms of CPU) and not kept: only the entries asked for are.
"""

from __future__ import annotations

import importlib.util
import json
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

__all__ = [
    "NEEDS_LITELLM",
    "PRICED_PROVIDERS",
    "context_window",
    "cost_map_path",
    "looked_up",
    "price",
]

PRICED_PROVIDERS: Final = ("openai", "openrouter")
"""The providers of the plain-HTTP path, priced here."""

NEEDS_LITELLM: Final = -1.0
"""What `price` returns for a model only litellm's own calculator prices right."""

_MAP_FILE: Final = "model_prices_and_context_window_backup.json"
_RULES_KEY: Final = "fallback_generalizations"
_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")
_THRESHOLD_PREFIXES: Final = (
    "input_cost_per_token_above_",
    "output_cost_per_token_above_",
    "cache_read_input_token_cost_above_",
    "cache_creation_input_token_cost_above_",
)
# keys of another service tier or of batches: not a plain request's thresholds
_OTHER_TIER_SUFFIXES: Final = ("_ultrafast", "_priority", "_balanced", "_flex", "_fast", "_batches")
_UNFOLLOWED: Final = ("tiered_pricing", "off_peak_pricing")
_BACKFILL_MODES: Final = ("chat", "responses")


class _Unknown:
    """The entry of a model the map does not know."""


_UNKNOWN: Final = _Unknown()
_ENTRIES: dict[tuple[str, bool], dict[str, Any] | _Unknown] = {}
_LOCK = threading.Lock()


def cost_map_path() -> Path | None:
    """The cost map bundled with the installed litellm (None: no litellm, or no map in it)."""
    try:
        spec = importlib.util.find_spec("litellm")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / _MAP_FILE
        if path.is_file():
            return path
    return None


def looked_up(model: str) -> bool:
    """Whether `model`'s entry was looked up already (pricing it again reads no file)."""
    return (model, True) in _ENTRIES


def price(model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> float:
    """What a call of `model` costs per litellm's cost map, in USD: `prompt_tokens` (of which
    `cached_tokens` were read from the provider's cache) and `completion_tokens`. 0 for a model
    the map does not price; `NEEDS_LITELLM` for one whose pricing only litellm follows."""
    provider = model.partition("/")[0]
    entry = _entry(model)
    if entry is None:
        return 0.0
    if any(entry.get(k) is not None for k in _UNFOLLOWED):
        return NEEDS_LITELLM
    if provider != "openai" and not _prices_tokens(entry):
        return 0.0  # litellm's other providers: per-token pricing only (else per second: 0)
    if provider == "openai" and not _prices_tokens(entry) and _per_second(entry):
        return 0.0  # priced per second of response time, which litellm is given as 0 here
    rate_in, rate_out, rate_cached = _rates(entry, prompt_tokens)
    cached = max(0, cached_tokens)
    text = max(prompt_tokens - cached, 0)
    prompt_cost = float(text) * rate_in
    prompt_cost += float(cached) * rate_cached
    prompt_cost += 0.0 * rate_cached  # (litellm adds cached audio tokens: none here)
    completion_cost = float(completion_tokens) * rate_out
    return float(prompt_cost) + float(completion_cost)


def context_window(model: str) -> int | None:
    """The model's input window per the cost map (`max_input_tokens`, else its `max_tokens`),
    as `litellm.get_model_info` gives it; None when the map does not say."""
    entry = _entry(model, priced=False)
    if entry is None:
        return None
    window = entry.get("max_input_tokens") or entry.get("max_output_tokens")
    return window if isinstance(window, int) and not isinstance(window, bool) else None


# -- the entry of a model ---------------------------------------------------------------------


def _entry(model: str, *, priced: bool = True) -> dict[str, Any] | None:
    """The cost-map entry litellm would use for `model` (a `provider/name` of PRICED_PROVIDERS)
    to price a call (`priced`; `cost_per_token`) or to describe it (`get_model_info`); None when
    there is none (or no map). One read of the map looks up both."""
    found = _ENTRIES.get((model, priced))
    if found is None:
        with _LOCK:
            found = _ENTRIES.get((model, priced))
            if found is None:
                catalog = _load()
                for kind in (True, False):
                    _ENTRIES[(model, kind)] = _look_up(model, kind, catalog)
                found = _ENTRIES[(model, priced)]
    return None if isinstance(found, _Unknown) else found


class _Catalog:
    """The map as read: its entries, their keys by lower case, its rules."""

    def __init__(self, data: dict[str, Any]) -> None:
        rules = data.pop(_RULES_KEY, None)
        self.data = data
        self.lower = {k.lower(): k for k in data}
        self.rules = _capability_rules(rules)

    def key_of(self, candidate: str) -> str | None:
        """The map's key for a name (exact, else ignoring case), or None."""
        return candidate if candidate in self.data else self.lower.get(candidate.lower())


def _load() -> _Catalog | None:
    path = cost_map_path()
    if path is None:
        return None
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return _Catalog(data) if isinstance(data, dict) else None


def _look_up(model: str, priced: bool, catalog: _Catalog | None) -> dict[str, Any] | _Unknown:
    if catalog is None:
        return _UNKNOWN
    provider, _, name = model.partition("/")
    data = catalog.data
    if priced:  # cost_per_token prices `provider/name`, else `name` where the map has it
        candidates = _candidates(
            model if model in data else name if name in data else model, provider
        )
    else:  # get_model_info(model): the provider is not given, so no `provider/` is added
        candidates = list(dict.fromkeys([model, name, _strip(model)]))
    for candidate in candidates:
        key = catalog.key_of(candidate)
        if key is None:
            continue
        entry = data[key]
        if isinstance(entry, dict) and entry.get("litellm_provider") in (None, provider):
            return {**_fill_missing(key, entry, catalog.rules), **entry}
    if any(catalog.key_of(c) is not None for c in candidates):
        return _UNKNOWN  # known under another provider: litellm does not price it either
    for candidate in candidates:
        info = _capabilities(candidate, catalog.rules)
        if info is not None:
            return {**info, "litellm_provider": provider}
    return _UNKNOWN


def _candidates(model: str, provider: str) -> list[str]:
    """The names litellm's `get_model_info(model, provider)` tries, in its order."""
    if model.startswith(provider + "/"):
        split = model.split("/", 1)[1]
        stripped = _strip(split)
        names = [model, model, model, split, f"{provider}/{stripped}", stripped]
        names.append(f"{provider}/{model}")
    else:
        stripped = _strip(model)
        combined = f"{provider}/{model}"
        names = [combined, model, combined, model, f"{provider}/{stripped}", stripped, combined]
    return list(dict.fromkeys(names))


def _strip(name: str) -> str:
    if "ft:" in name:
        parts = name.split(":")
        return ":".join(parts[:2]) if len(parts) > 2 else name
    return _DATED.sub("", name)


_Rule = tuple[re.Pattern[str], dict[str, Any], list[str]]


def _capability_rules(rules: Any) -> list[_Rule]:
    """The map's capability rules (`fallback_generalizations`; routing rules left out)."""
    found = rules.get("rules") if isinstance(rules, dict) else None
    out = []
    for rule in [r for r in found or [] if isinstance(r, dict)]:
        pattern, info = rule.get("pattern"), rule.get("model_info")
        if not isinstance(pattern, str) or not isinstance(info, dict) or "extends" in rule:
            continue
        if "litellm_provider" in info:
            continue  # a routing rule (or an old-format one litellm skips)
        fill = rule.get("fill_missing_for_providers", [])
        if not isinstance(fill, list):
            continue
        try:
            out.append((re.compile(pattern, re.IGNORECASE), info, [str(p) for p in fill]))
        except re.error:
            continue
    return out


def _capabilities(model: str, rules: list[_Rule]) -> dict[str, Any] | None:
    """The union of the capability rules matching `model` (later ones win), or None."""
    info: dict[str, Any] | None = None
    for pattern, rule_info, _fill in rules:
        if pattern.search(model):
            info = {**(info or {}), **rule_info}
    return info


def _fill_missing(key: str, entry: Mapping[str, Any], rules: list[_Rule]) -> dict[str, Any]:
    """What the map's flagged rules add to an exact entry of a chat model (its own keys win)."""
    mode, provider = entry.get("mode", "chat"), entry.get("litellm_provider", "")
    if mode not in _BACKFILL_MODES or not isinstance(provider, str):
        return {}
    out: dict[str, Any] = {}
    for pattern, rule_info, fill in rules:
        if provider in fill and pattern.search(key):
            out.update(rule_info)
    return out


# -- rates ------------------------------------------------------------------------------------


def _rate(entry: Mapping[str, Any], key: str) -> float | None:
    value = entry.get(key)
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _prices_tokens(entry: Mapping[str, Any]) -> bool:
    return (_rate(entry, "input_cost_per_token") or 0.0) > 0 or (
        _rate(entry, "output_cost_per_token") or 0.0
    ) > 0


def _per_second(entry: Mapping[str, Any]) -> bool:
    mode = entry.get("mode")
    billed_by_clock = mode is None or mode in ("audio_transcription", "chat", "completion")
    billed_by_clock = billed_by_clock or mode in ("embedding", "responses")
    keys = ("cost_per_second", "input_cost_per_second", "output_cost_per_second")
    return billed_by_clock and any(entry.get(k) is not None for k in keys)


def _threshold(key: str) -> float:
    text = key.rsplit("_above_", 1)[1].split("_tokens")[0]
    return float(text.replace("k", "")) * (1000 if "k" in text else 1)


def _rates(entry: Mapping[str, Any], prompt_tokens: int) -> tuple[float, float, float]:
    """(input, output, cached input) per token for a prompt of `prompt_tokens`."""
    rate_in = _rate(entry, "input_cost_per_token") or 0.0
    rate_out = _rate(entry, "output_cost_per_token") or 0.0
    if rate_out == 0.0:
        image = _rate(entry, "output_cost_per_image_token")
        if image is not None:
            rate_out = image
    rate_cached = _rate(entry, "cache_read_input_token_cost")
    keys = [
        k
        for k in entry
        if k.startswith(_THRESHOLD_PREFIXES)
        and "_tokens" in k
        and not k.endswith(_OTHER_TIER_SUFFIXES)
    ]
    for key in sorted(keys, key=_safe_threshold):
        if entry.get(key) is None:
            continue
        try:
            threshold = _threshold(key)
            above = key.rsplit("_above_", 1)[1].split("_tokens")[0]
        except (IndexError, ValueError):
            continue
        if prompt_tokens > threshold:
            rate_in = _or(_rate(entry, f"input_cost_per_token_above_{above}_tokens"), rate_in)
            rate_out = _or(_rate(entry, f"output_cost_per_token_above_{above}_tokens"), rate_out)
            cached_above = _rate(entry, f"cache_read_input_token_cost_above_{above}_tokens")
            rate_cached = cached_above if cached_above is not None else rate_cached
    return rate_in, rate_out, rate_in if rate_cached is None else rate_cached


def _safe_threshold(key: str) -> float:
    try:
        return _threshold(key)
    except (IndexError, ValueError):
        return 0.0


def _or(value: float | None, default: float) -> float:
    return default if value is None else value
