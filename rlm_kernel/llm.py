"""LLM client over litellm: retries, timeouts, cancellation, usage, cost; scripted and replay.

litellm is imported lazily (``import litellm`` costs seconds), once per process, with the local
cost map so nothing is fetched from the network. Two custom litellm providers are registered on
import: ``scripted/<path.py or registered name>`` (a Python ``respond(messages, info) -> str``)
and ``replay/<run>.detail.json`` (the LLM responses of a recorded run). Both go through the real
``litellm.completion`` path, so retries, usage and ``completion_cost`` run as for any provider.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import json
import math
import os
import random
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "Completion",
    "LLMCancelled",
    "LLMClient",
    "LLMError",
    "LLMTimeout",
    "MissingAPIKey",
    "Usage",
    "clear_caches",
    "prewarm",
    "register_scripted",
]

_CUSTOM_PROVIDERS = ("scripted", "replay")
_PREWARM_NAME = "__rlm_prewarm__"
_INFO_DEFAULTS: dict[str, Any] = {
    "agent_id": None,
    "parent_id": None,
    "depth": 0,
    "task": None,
    "iteration": 0,
    "kind": "agent",
}

# --------------------------------------------------------------------------------------------
# errors and value types


class LLMError(RuntimeError):
    """An LLM call failed; the message names the model and what to do about it."""


class LLMCancelled(LLMError):
    """The LLM call was cancelled by the caller."""


class LLMTimeout(LLMError):
    """The LLM call did not finish within its timeout."""


class MissingAPIKey(LLMError):
    """No API key is available for the model's provider."""


@dataclass
class Usage:
    """LLM usage counters: calls, tokens and cost in USD."""

    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        """Return the sum of two usages."""
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            llm_calls=self.llm_calls + other.llm_calls,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
        )

    def add(self, other: Usage) -> None:
        """Add another usage to this one in place."""
        self.llm_calls += other.llm_calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_usd += other.cost_usd

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int | float]:
        """Return the counters as a JSON-ready dict (the run record's ``usage``)."""
        return {
            "llm_calls": self.llm_calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        """Build a usage from a dict as written by ``to_dict`` (missing keys count as 0)."""
        return cls(
            llm_calls=int(data.get("llm_calls", 0) or 0),
            prompt_tokens=int(data.get("prompt_tokens", 0) or 0),
            completion_tokens=int(data.get("completion_tokens", 0) or 0),
            cost_usd=float(data.get("cost_usd", 0.0) or 0.0),
        )


@dataclass
class Completion:
    """The result of one successful LLM call (possibly after retries)."""

    text: str
    usage: Usage = field(default_factory=lambda: Usage(llm_calls=1))
    model: str = ""
    elapsed_s: float = 0.0
    attempts: int = 1


# --------------------------------------------------------------------------------------------
# lazy litellm import

_LITELLM_LOCK = threading.Lock()
_LITELLM: Any = None


def _litellm() -> Any:
    """Import and configure litellm once (thread-safe); return the module."""
    global _LITELLM
    if _LITELLM is not None:
        return _LITELLM
    with _LITELLM_LOCK:
        if _LITELLM is None:
            # Use the cost map bundled with litellm: never fetch one from the internet.
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            import litellm

            litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners
            litellm.telemetry = False  # older versions only; there are no callbacks to remove
            _register_providers(litellm)
            _LITELLM = litellm  # before the warm-up: its provider handler calls _litellm() too
            _warm_first_call(litellm)
    return _LITELLM


def _warm_first_call(litellm: Any) -> None:
    """Make litellm's first call now (it builds pydantic models, ~0.35 s) instead of in an agent.

    pydantic warns about one of litellm's TypedDicts while it builds them; that warning is
    litellm's, not the user's, and under warnings-as-errors it would fail whichever call came
    first — so it is silenced here, once, while the import lock is held.
    """
    _REGISTERED[_PREWARM_NAME] = _Script(label="prewarm", respond=lambda _m, _i: "ok")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Item 'summary' on TypedDict class")
        with contextlib.suppress(Exception):
            litellm.completion(
                model=f"scripted/{_PREWARM_NAME}", messages=[{"role": "user", "content": "ok"}]
            )


_PREWARM_STARTED = threading.Event()


def prewarm() -> None:
    """Start importing litellm on a daemon thread so the import overlaps other work."""
    if _LITELLM is not None or _PREWARM_STARTED.is_set():
        return
    _PREWARM_STARTED.set()
    threading.Thread(target=_prewarm_quietly, name="rlm-litellm-import", daemon=True).start()


def _prewarm_quietly() -> None:
    with contextlib.suppress(Exception):  # the next real call raises it where someone sees it
        _litellm()


def _register_providers(litellm: Any) -> None:
    """Add the ``scripted`` and ``replay`` custom providers to litellm."""
    handler_cls = type(
        "RLMCustomProvider",
        (litellm.CustomLLM,),
        {"completion": _handler_completion, "__module__": __name__},
    )
    present = {item.get("provider") for item in litellm.custom_provider_map}
    for provider in _CUSTOM_PROVIDERS:
        if provider not in present:
            litellm.custom_provider_map.append(
                {"provider": provider, "custom_handler": handler_cls()}
            )
    setup = getattr(litellm.utils, "custom_llm_setup", None)
    if setup is not None:
        setup()
    else:  # pragma: no cover - older litellm
        for provider in _CUSTOM_PROVIDERS:
            if provider not in litellm.provider_list:
                litellm.provider_list.append(provider)
            if provider not in litellm._custom_providers:
                litellm._custom_providers.append(provider)


# --------------------------------------------------------------------------------------------
# per-call side channel between LLMClient and the custom providers


@dataclass
class _CallState:
    """What a custom provider needs beyond litellm's arguments, for one attempt."""

    abort: threading.Event = field(default_factory=threading.Event)
    error: LLMError | None = None


_CALLS: dict[str, _CallState] = {}
_CALLS_LOCK = threading.Lock()


def _is_litellm_exception(exc: BaseException) -> bool:
    """True for litellm's (and openai's) exception classes, which litellm maps itself."""
    return any(cls.__module__.split(".")[0] in ("litellm", "openai") for cls in type(exc).__mro__)


def _handler_completion(
    self: Any, model: str, messages: list[Any], *args: Any, **kwargs: Any
) -> Any:
    """``CustomLLM.completion`` of the scripted and replay providers."""
    model_response = kwargs["model_response"]
    litellm_params = kwargs.get("litellm_params") or {}
    provider = str(litellm_params.get("custom_llm_provider") or "scripted")
    metadata = litellm_params.get("metadata") or {}
    info = metadata.get("rlm_info")
    if not isinstance(info, dict):
        info = dict(_INFO_DEFAULTS)
    state = _CALLS.get(str(metadata.get("rlm_call")))
    abort = state.abort if state is not None else None
    try:
        if provider == "replay":
            text = _replay_respond(model, messages, info)
            cost: tuple[float, float] = (0.0, 0.0)
        else:
            script = _resolve_script(model)
            latency = script.latency_s()
            if latency > 0:
                if abort is not None:
                    if abort.wait(latency):
                        raise LLMCancelled(f"scripted model {script.label}: call abandoned")
                else:
                    time.sleep(latency)
            text = script.call(messages, info)
            cost = script.cost_per_token()
    except Exception as exc:
        if _is_litellm_exception(exc):
            raise  # litellm maps it; the client decides whether to retry
        # litellm would turn any other exception into a (retried) APIConnectionError, so the
        # real error travels to the client beside it.
        error = (
            exc
            if isinstance(exc, LLMError)
            else LLMError(f"{provider} model {model}: {type(exc).__name__}: {exc}")
        )
        if state is not None:
            state.error = error
        if error is exc:
            raise
        raise error from exc
    _ensure_cost(f"{provider}/{model}", cost)
    prompt_tokens = max(1, math.ceil(sum(_content_chars(m) for m in messages) / 4))
    completion_tokens = max(1, math.ceil(len(text) / 4))
    model_response.choices[0].message.content = text
    model_response.model = model
    model_response.usage = _litellm().Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
    return model_response


def _content_chars(message: Any) -> int:
    """Characters of a message's content (text parts of a multi-part content are summed)."""
    content = message.get("content") if isinstance(message, Mapping) else None
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                total += len(part["text"])
            elif isinstance(part, str):
                total += len(part)
        return total
    return len(str(content))


_COSTS: dict[str, tuple[float, float]] = {}
_COSTS_LOCK = threading.Lock()


def _ensure_cost(model: str, cost: tuple[float, float]) -> None:
    """Register the price of a custom model with litellm so ``completion_cost`` can see it."""
    if _COSTS.get(model) == cost:
        return
    with _COSTS_LOCK:
        if _COSTS.get(model) == cost:
            return
        provider = model.split("/", 1)[0]
        _litellm().register_model(
            {
                model: {
                    "input_cost_per_token": float(cost[0]),
                    "output_cost_per_token": float(cost[1]),
                    # given explicitly so litellm does not warn that cache pricing defaults to 0
                    "cache_creation_input_token_cost": 0.0,
                    "cache_read_input_token_cost": 0.0,
                    "litellm_provider": provider,
                    "mode": "chat",
                }
            }
        )
        _COSTS[model] = cost


# --------------------------------------------------------------------------------------------
# scripted models


@dataclass
class _Script:
    """A scripted model: a loaded script file or an in-process registration."""

    label: str
    respond: Callable[[list[dict[str, Any]], dict[str, Any]], Any]
    module: ModuleType | None = None
    latency: float = 0.0
    cost: tuple[float, float] = (0.0, 0.0)

    def latency_s(self) -> float:
        """Seconds each call takes (``LATENCY_S`` is read at call time)."""
        if self.module is None:
            return self.latency
        try:
            return max(0.0, float(getattr(self.module, "LATENCY_S", 0.0) or 0.0))
        except (TypeError, ValueError) as exc:
            raise LLMError(f"scripted model {self.label}: LATENCY_S must be a number") from exc

    def cost_per_token(self) -> tuple[float, float]:
        """USD per prompt and per completion token (``COST_PER_TOKEN``)."""
        if self.module is None:
            return self.cost
        raw = getattr(self.module, "COST_PER_TOKEN", (0.0, 0.0))
        try:
            prompt_usd, completion_usd = raw
            return (float(prompt_usd), float(completion_usd))
        except (TypeError, ValueError) as exc:
            raise LLMError(
                f"scripted model {self.label}: COST_PER_TOKEN must be a pair "
                "(prompt_usd, completion_usd)"
            ) from exc

    def call(self, messages: list[Any], info: dict[str, Any]) -> str:
        """Run ``respond``; script exceptions become LLMError, litellm ones pass through."""
        try:
            reply = self.respond(messages, info)
        except Exception as exc:
            if _is_litellm_exception(exc):
                raise  # simulated provider errors: litellm maps them, the client retries
            raise LLMError(
                f"scripted model {self.label}: respond() raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(reply, str):
            raise LLMError(
                f"scripted model {self.label}: respond() must return a str, "
                f"got {type(reply).__name__}"
            )
        return reply


_REGISTERED: dict[str, _Script] = {}
_SCRIPTS: dict[str, tuple[int, _Script]] = {}
_SCRIPTS_LOCK = threading.RLock()  # re-entrant: a script may call register_scripted


def register_scripted(
    name: str,
    respond: Callable[[list[dict[str, Any]], dict[str, Any]], str],
    *,
    latency_s: float = 0.0,
    cost_per_token: tuple[float, float] = (0.0, 0.0),
) -> str:
    """Register an in-process scripted model; return its model name ``scripted/<name>``."""
    if not name or not callable(respond):
        raise ValueError("register_scripted needs a non-empty name and a callable respond")
    with _SCRIPTS_LOCK:
        _REGISTERED[name] = _Script(
            label=f"'{name}' (registered)",
            respond=respond,
            latency=max(0.0, float(latency_s)),
            cost=(float(cost_per_token[0]), float(cost_per_token[1])),
        )
    return f"scripted/{name}"


def _resolve_script(name: str) -> _Script:
    """Find the scripted model ``name``: a registration, else a script file (cached by mtime)."""
    registered = _REGISTERED.get(name)
    if registered is not None:
        return registered
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    key = str(path)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise LLMError(
            f"scripted model: script {key} not found; use 'scripted/<path.py>' with an "
            "absolute path or one relative to the working directory"
        ) from exc
    cached = _SCRIPTS.get(key)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    with _SCRIPTS_LOCK:
        cached = _SCRIPTS.get(key)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        script = _load_script(path)
        if cached is not None and cached[1].module is not None:  # the file changed: drop old
            sys.modules.pop(cached[1].module.__name__, None)
        _SCRIPTS[key] = (mtime, script)
        return script


def _load_script(path: Path) -> _Script:
    """Import a script file as a fresh module and check that it defines ``respond``."""
    module_name = f"_rlm_scripted_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise LLMError(f"scripted model {path}: cannot load it as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(module_name, None)
        raise LLMError(
            f"scripted model {path}: syntax error at line {exc.lineno}: {exc.msg}"
        ) from exc
    except FileNotFoundError as exc:
        sys.modules.pop(module_name, None)
        raise LLMError(f"scripted model: script {path} not found") from exc
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise LLMError(
            f"scripted model {path}: importing it raised {type(exc).__name__}: {exc}"
        ) from exc
    respond = getattr(module, "respond", None)
    if not callable(respond):
        sys.modules.pop(module_name, None)
        raise LLMError(
            f"scripted model {path}: the script must define respond(messages, info) -> str"
        )
    return _Script(label=str(path), respond=respond, module=module)


# --------------------------------------------------------------------------------------------
# replay models


@dataclass
class _Replay:
    """A parsed run record: agent responses by iteration and recorded sub-LLM calls."""

    path: str
    responses: dict[tuple[str, int], str]
    # per agent, in order: (prompt, response, error) - a failed recorded call has no response
    queries: dict[str, list[tuple[str | None, str | None, str | None]]]
    # indices of the llm_queries already replayed, per (run_id, agent_id)
    used: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def agent(self, run_id: str, agent_id: str, iteration: int) -> str:
        """The recorded response of an agent's turn."""
        if iteration == 0:  # a replayed agent starts over: its llm_queries are fresh again
            with self.lock:
                self.used.pop((run_id, agent_id), None)
        try:
            return self.responses[(agent_id, iteration)]
        except KeyError:
            raise LLMError(
                f"replay {self.path}: no recorded response for agent {agent_id} "
                f"iteration {iteration}"
            ) from None

    def query(self, run_id: str, agent_id: str, prompt: str | None) -> str:
        """The next unused recorded llm_query response of an agent, preferring the same prompt."""
        recorded = self.queries.get(agent_id, [])
        with self.lock:
            used = self.used.setdefault((run_id, agent_id), set())
            free = [i for i in range(len(recorded)) if i not in used]
            same = [i for i in free if recorded[i][0] == prompt]
            chosen = same[0] if same else (free[0] if free else None)
            if chosen is None:
                raise LLMError(
                    f"replay {self.path}: no recorded llm_query response for agent {agent_id} "
                    f"(prompt {_short(prompt)}; {len(recorded)} recorded, all used)"
                )
            used.add(chosen)
        _, response, error = recorded[chosen]
        if response is None:  # the recorded call failed: fail the same way
            raise LLMError(f"replay {self.path}: recorded llm_query failed: {error}")
        return response


_REPLAYS: dict[str, tuple[int, _Replay]] = {}
_REPLAYS_LOCK = threading.Lock()


def _short(text: str | None, limit: int = 60) -> str:
    if text is None:
        return "None"
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _replay_respond(name: str, messages: list[Any], info: Mapping[str, Any]) -> str:
    """Answer a call from the recorded run at ``name``."""
    replay = _load_replay(name)
    run_id = str(info.get("run_id"))
    agent_id = str(info.get("agent_id"))
    if info.get("kind") == "llm_query":
        prompt: str | None = None
        for message in reversed(messages):
            if isinstance(message, Mapping) and message.get("role") == "user":
                content = message.get("content")
                prompt = content if isinstance(content, str) else None
                break
        return replay.query(run_id, agent_id, prompt)
    try:
        iteration = int(info.get("iteration") or 0)
    except (TypeError, ValueError):
        iteration = -1
    return replay.agent(run_id, agent_id, iteration)


def _load_replay(name: str) -> _Replay:
    """Parse a run record once per (path, mtime)."""
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    key = str(path)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise LLMError(
            f"replay {key}: run record not found; use 'replay/<path to run>.detail.json'"
        ) from exc
    cached = _REPLAYS.get(key)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    with _REPLAYS_LOCK:
        cached = _REPLAYS.get(key)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LLMError(f"replay {key}: cannot read the run record: {exc}") from exc
        root = record.get("root") if isinstance(record, dict) else None
        if not isinstance(root, dict):
            raise LLMError(f"replay {key}: the run record has no 'root' agent node")
        replay = _Replay(path=key, responses={}, queries={})
        _index_node(replay, root)
        _REPLAYS[key] = (mtime, replay)
        return replay


def _index_node(replay: _Replay, node: Mapping[str, Any]) -> None:
    """Collect a node's iteration responses and llm_queries, then its children's."""
    agent_id = str(node.get("agent_id"))
    queries = replay.queries.setdefault(agent_id, [])
    iterations = node.get("iterations") or []
    for position, iteration in enumerate(iterations):
        if not isinstance(iteration, Mapping):
            continue
        index = iteration.get("index", position)
        response = iteration.get("llm_response")
        if isinstance(response, str) and isinstance(index, int):
            replay.responses[(agent_id, index)] = response
    node_queries = node.get("llm_queries")
    if not isinstance(node_queries, list):  # tolerate records that keep them per iteration
        node_queries = [
            q
            for it in iterations
            if isinstance(it, Mapping) and isinstance(it.get("llm_queries"), list)
            for q in it["llm_queries"]
        ]
    for query in node_queries:
        if not isinstance(query, Mapping):
            continue
        prompt, response, error = query.get("prompt"), query.get("response"), query.get("error")
        if not isinstance(response, str) and not error:
            continue
        queries.append(
            (
                prompt if isinstance(prompt, str) else None,
                response if isinstance(response, str) else None,
                None if error is None else str(error),
            )
        )
    for child in node.get("children") or []:
        if isinstance(child, Mapping):
            _index_node(replay, child)


def clear_caches() -> None:
    """Forget loaded scripts, parsed replays and in-process registrations."""
    with _SCRIPTS_LOCK:
        _SCRIPTS.clear()
        _REGISTERED.clear()
    with _REPLAYS_LOCK:
        _REPLAYS.clear()


# --------------------------------------------------------------------------------------------
# the client


def _transient_types(litellm: Any) -> tuple[type[BaseException], ...]:
    names = (
        "RateLimitError",
        "APIConnectionError",
        "Timeout",
        "InternalServerError",
        "ServiceUnavailableError",
        "BadGatewayError",
    )
    return tuple(getattr(litellm, n) for n in names if isinstance(getattr(litellm, n, None), type))


def _provider_of(model: str) -> str:
    return model.split("/", 1)[0] if "/" in model else ""


class _Outcome:
    """Result slot of one attempt running on a worker thread."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.response: Any = None
        self.error: BaseException | None = None


class LLMClient:
    """Calls LLMs through litellm with retries, a wall-time cap, cancellation and usage/cost."""

    backoff_base_s: float = 1.0
    backoff_factor: float = 2.0
    backoff_cap_s: float = 30.0
    poll_s: float = 0.05

    def __init__(
        self,
        *,
        timeout: float = 600,
        retries: int = 3,
        temperature: float | None = None,
        max_tokens: int | None = None,
        api_key: str | None = None,
        api_base: str | None = None,
    ) -> None:
        """Configure defaults for every call made with this client."""
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.api_key = api_key or None
        self.api_base = api_base or None

    # -- readiness ---------------------------------------------------------------------------

    def check_ready(self, model: str) -> None:
        """Raise MissingAPIKey (or LLMError for an unknown provider) before a run starts."""
        if _provider_of(model) in _CUSTOM_PROVIDERS or self.api_key:
            return
        litellm = _litellm()
        self._provider(litellm, model)
        missing = self._missing_keys(litellm, model)
        if missing:
            raise MissingAPIKey(_no_key_message(model, missing))

    @staticmethod
    def _provider(litellm: Any, model: str) -> str:
        try:
            return str(litellm.get_llm_provider(model)[1])
        except Exception as exc:
            raise LLMError(
                f"Unknown LLM provider for model '{model}': name models in litellm's "
                "'provider/model' format, e.g. 'openai/gpt-4o-mini' or "
                "'openrouter/google/gemini-3-flash-preview'"
            ) from exc

    @staticmethod
    def _missing_keys(litellm: Any, model: str) -> list[str]:
        """Credentials litellm misses for ``model`` (API base URLs with defaults don't count)."""
        try:
            env = litellm.validate_environment(model=model)
        except Exception:
            return []
        if env.get("keys_in_environment"):
            return []
        return [k for k in env.get("missing_keys") or [] if not str(k).endswith("_API_BASE")]

    # -- calls -------------------------------------------------------------------------------

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        model: str,
        info: Mapping[str, Any] | None = None,
        cancel: threading.Event | None = None,
        timeout: float | None = None,
    ) -> Completion:
        """Call ``model`` with ``messages``; retry transient errors; honour timeout and cancel."""
        if cancel is not None and cancel.is_set():
            raise LLMCancelled(f"LLM call to model '{model}' was cancelled")
        litellm = _litellm()  # the one-time import does not count against the timeout
        start = time.monotonic()
        limit = self.timeout if timeout is None else float(timeout)
        deadline = start + limit
        custom = _provider_of(model) in _CUSTOM_PROVIDERS
        kwargs: dict[str, Any] = {"model": model, "messages": messages}
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        if custom:
            kwargs["metadata"] = {"rlm_info": {**_INFO_DEFAULTS, **(info or {})}}
        else:
            kwargs["max_retries"] = 0  # retries are ours; no hidden retries in the provider SDK
            if self.api_base:
                kwargs["api_base"] = self.api_base
            if self.api_key and self._missing_keys(litellm, model):
                kwargs["api_key"] = self.api_key
        transient = _transient_types(litellm)
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timed_out(model, limit, attempt - 1, None)
            try:
                response = self._attempt(litellm, kwargs, custom, cancel, deadline, remaining)
            except LLMTimeout:
                raise self._timed_out(model, limit, attempt, None) from None
            except LLMError:
                raise
            except Exception as exc:
                if not self._is_transient(exc, transient) or self._lacks_key(litellm, model, exc):
                    raise self._fatal(litellm, model, exc) from exc
                if attempt > self.retries:
                    raise LLMError(
                        f"LLM call to model '{model}' failed after {attempt} attempts: "
                        f"{_describe(exc)}; the provider is overloaded or unreachable - try "
                        "again later, or raise `retries`"
                    ) from exc
                delay = _retry_after(exc, self.backoff_cap_s)
                if delay is None:
                    delay = self._backoff(attempt)
                remaining = deadline - time.monotonic()
                if delay >= remaining:
                    self._sleep(remaining, cancel, model)
                    raise self._timed_out(model, limit, attempt, exc) from exc
                self._sleep(delay, cancel, model)
                continue
            return self._completion(litellm, response, model, start, attempt)

    def _attempt(
        self,
        litellm: Any,
        kwargs: dict[str, Any],
        custom: bool,
        cancel: threading.Event | None,
        deadline: float,
        remaining: float,
    ) -> Any:
        """Run one litellm call on a worker thread; wait for it, polling cancel and deadline."""
        call_kwargs = dict(kwargs)
        call_kwargs["timeout"] = remaining
        token = uuid.uuid4().hex
        state = _CallState()
        if custom:
            call_kwargs["metadata"] = {**kwargs["metadata"], "rlm_call": token}
            with _CALLS_LOCK:
                _CALLS[token] = state
        outcome = _Outcome()

        def work() -> None:
            try:
                outcome.response = litellm.completion(**call_kwargs)
            except BaseException as exc:
                outcome.error = exc
            finally:
                outcome.done.set()

        ctx = contextvars.copy_context()
        worker = threading.Thread(target=ctx.run, args=(work,), name="rlm-llm-call", daemon=True)
        try:
            worker.start()
            while not outcome.done.wait(max(0.0, min(self.poll_s, deadline - time.monotonic()))):
                if cancel is not None and cancel.is_set():
                    raise LLMCancelled(f"LLM call to model '{kwargs['model']}' was cancelled")
                if time.monotonic() >= deadline:
                    raise LLMTimeout("deadline")
        except BaseException:
            state.abort.set()  # the abandoned call finishes in the background; result dropped
            raise
        finally:
            if custom:
                with _CALLS_LOCK:
                    _CALLS.pop(token, None)
        if outcome.error is not None:
            if state.error is not None:
                raise state.error from None
            raise outcome.error
        return outcome.response

    @staticmethod
    def _is_transient(exc: BaseException, transient: tuple[type[BaseException], ...]) -> bool:
        if isinstance(exc, transient):
            return True
        # Unclassified provider failures with a 5xx status are worth another try.
        status = getattr(exc, "status_code", None)
        return type(exc).__name__ == "APIError" and isinstance(status, int) and status >= 500

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter for the retry after ``attempt``."""
        delay = min(self.backoff_cap_s, self.backoff_base_s * self.backoff_factor ** (attempt - 1))
        return delay / 2 + random.uniform(0.0, delay / 2)

    def _sleep(self, seconds: float, cancel: threading.Event | None, model: str) -> None:
        """Sleep, polling ``cancel.is_set()`` (subclasses may override it, so no bare wait)."""
        if cancel is None:
            if seconds > 0:
                time.sleep(seconds)
            return
        end = time.monotonic() + seconds
        while True:
            if cancel.is_set():
                raise LLMCancelled(f"LLM call to model '{model}' was cancelled")
            left = end - time.monotonic()
            if left <= 0:
                return
            cancel.wait(min(self.poll_s, left))

    @staticmethod
    def _timed_out(
        model: str, limit: float, attempts: int, last: BaseException | None
    ) -> LLMTimeout:
        tail = f" (last error: {_describe(last)})" if last is not None else ""
        return LLMTimeout(
            f"LLM call to model '{model}' timed out after {limit:g} s "
            f"({attempts} attempt{'s' if attempts != 1 else ''}){tail}; raise the timeout or "
            "check the provider's status"
        )

    def _lacks_key(self, litellm: Any, model: str, exc: BaseException) -> bool:
        """True when the error is about credentials that are indeed missing (never transient)."""
        if self.api_key or _provider_of(model) in _CUSTOM_PROVIDERS:
            return False
        text = str(exc).lower()
        if not any(w in text for w in ("credential", "api_key", "api key", "auth")):
            return False
        return bool(self._missing_keys(litellm, model))

    def _fatal(self, litellm: Any, model: str, exc: BaseException) -> LLMError:
        """Turn a non-transient litellm error into an LLMError that says what to do."""
        name = type(exc).__name__
        text = _describe(exc)
        if name == "AuthenticationError" or self._lacks_key(litellm, model, exc):
            keys = [] if self.api_key else self._missing_keys(litellm, model)
            if keys:
                return MissingAPIKey(_no_key_message(model, keys))
            provider = _provider_of(model) or "<PROVIDER>"
            return LLMError(
                f"Authentication failed for model '{model}': {text}. Set LLM_API_KEY or "
                f"{provider.upper()}_API_KEY (in the environment or a .env file) to a valid key"
            )
        if name == "LiteLLMUnknownProvider" or "LLM Provider NOT provided" in str(exc):
            return LLMError(
                f"Unknown LLM provider for model '{model}': name models in litellm's "
                "'provider/model' format, e.g. 'openai/gpt-4o-mini' or "
                "'openrouter/google/gemini-3-flash-preview'"
            )
        if name == "NotFoundError":
            return LLMError(
                f"Model '{model}' was not found: {text}. Check the model name (litellm format "
                "'provider/model') and that your key has access to it"
            )
        if name == "PermissionDeniedError":
            return LLMError(
                f"Access denied for model '{model}': {text}. Check the key's permissions"
            )
        if name == "ContextWindowExceededError":
            return LLMError(
                f"The prompt is too long for model '{model}': {text}. Shorten the context or "
                "use a model with a larger context window"
            )
        if name in ("PaymentRequiredError", "BudgetExceededError"):
            return LLMError(
                f"The provider refused model '{model}' for billing reasons: {text}. "
                "Check the account's credits"
            )
        if name == "ContentPolicyViolationError":
            return LLMError(
                f"Model '{model}' refused the request (content policy): {text}. Rephrase the task"
            )
        if name in ("BadRequestError", "UnsupportedParamsError", "UnprocessableEntityError"):
            return LLMError(
                f"Model '{model}' rejected the request: {text}. Check the model name and the "
                "call parameters (temperature, max_tokens)"
            )
        return LLMError(f"LLM call to model '{model}' failed: {name}: {text}")

    def _completion(
        self, litellm: Any, response: Any, model: str, start: float, attempts: int
    ) -> Completion:
        """Extract text, usage and cost from a litellm response."""
        try:
            text = response.choices[0].message.content
        except (AttributeError, IndexError, KeyError, TypeError) as exc:
            raise LLMError(
                f"Model '{model}' returned a response without choices (no completion); "
                "try again, or check the provider's status"
            ) from exc
        usage = Usage(llm_calls=1)
        raw = getattr(response, "usage", None)
        if raw is not None:
            usage.prompt_tokens = int(getattr(raw, "prompt_tokens", 0) or 0)
            usage.completion_tokens = int(getattr(raw, "completion_tokens", 0) or 0)
        try:
            usage.cost_usd = float(litellm.completion_cost(completion_response=response) or 0.0)
        except Exception:  # litellm cannot price every model; never fail on pricing
            usage.cost_usd = 0.0
        return Completion(
            text=text if isinstance(text, str) else "",
            usage=usage,
            model=model,
            elapsed_s=time.monotonic() - start,
            attempts=attempts,
        )


def _retry_after(exc: BaseException, cap: float) -> float | None:
    """Seconds the provider asked to wait (a Retry-After header of a 429/503), capped; else None."""
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    try:
        value = None if headers is None else headers.get("retry-after", headers.get("Retry-After"))
    except Exception:
        return None
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        try:  # an HTTP date
            from email.utils import parsedate_to_datetime

            seconds = parsedate_to_datetime(str(value)).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(cap, max(0.0, seconds))


def _no_key_message(model: str, missing: list[str]) -> str:
    return (
        f"No API key for model '{model}': set LLM_API_KEY or {' and '.join(missing)} "
        "in the environment or in a .env file"
    )


def _describe(exc: BaseException | None) -> str:
    """A one-line description of an exception, without litellm's prefixes and tracebacks."""
    if exc is None:
        return ""
    message = str(getattr(exc, "message", None) or exc) or type(exc).__name__
    message = message.split("Traceback (most recent call last)", 1)[0]
    message = _redact_secrets(message.split("\nTraceback", 1)[0].strip())
    first = message.splitlines()[0].rstrip(". ") if message else type(exc).__name__
    return first if len(first) <= 300 else first[:299] + "…"


def _redact_secrets(text: str) -> str:
    """Mask the values of secret environment variables (API keys) that a provider echoed back.

    Error messages travel to records, to the notebook and (as ``llm_query``'s "Error: ..."
    strings) into sandboxes, which must never see a key.
    """
    from .config import redact_secrets

    return redact_secrets(text)
