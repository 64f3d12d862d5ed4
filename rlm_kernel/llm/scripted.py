"""Scripted models: `scripted/<path.py>` files and in-process registrations (`register_scripted`).

A script defines ``respond(messages, info) -> str``. Optional module-level knobs, read at call
time: ``LATENCY_S`` (seconds before the reply starts), ``STREAM_CHUNK_S`` (a streamed reply comes
in pieces of about ``STREAM_CHUNK_CHARS`` characters, default 16, this many seconds apart; 0, the
default: in one piece) and ``COST_PER_TOKEN = (prompt_usd, completion_usd)``.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import LLMError, is_litellm_exception
from .filecache import FileCache

__all__ = ["Script", "clear_scripts", "loaded_script", "register_scripted", "resolve_script"]

Respond = Callable[[list[dict[str, Any]], dict[str, Any]], Any]


@dataclass
class Script:
    """A scripted model: a loaded script file or an in-process registration."""

    label: str
    respond: Respond
    module: ModuleType | None = None
    latency: float = 0.0
    cost: tuple[float, float] = (0.0, 0.0)
    chunk_s: float = 0.0
    chunk_chars: int = 16

    def _number(self, name: str, default: float) -> float:
        try:
            return max(0.0, float(getattr(self.module, name, default) or 0.0))
        except (TypeError, ValueError) as exc:
            raise LLMError(f"scripted model {self.label}: {name} must be a number") from exc

    def latency_s(self) -> float:
        """Seconds before each reply starts (``LATENCY_S``)."""
        return self.latency if self.module is None else self._number("LATENCY_S", 0.0)

    def stream_chunks(self) -> tuple[float, int]:
        """Seconds between the pieces of a streamed reply and their size in characters
        (``STREAM_CHUNK_S``, ``STREAM_CHUNK_CHARS``)."""
        if self.module is None:
            return self.chunk_s, self.chunk_chars
        chars = int(self._number("STREAM_CHUNK_CHARS", 16)) or 1
        return self._number("STREAM_CHUNK_S", 0.0), chars

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
            if is_litellm_exception(exc):
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


_REGISTERED: dict[str, Script] = {}
_LOCK = threading.RLock()  # re-entrant: a script may call register_scripted


def register_scripted(
    name: str,
    respond: Respond,
    *,
    latency_s: float = 0.0,
    cost_per_token: tuple[float, float] = (0.0, 0.0),
    stream_chunk_s: float = 0.0,
    stream_chunk_chars: int = 16,
) -> str:
    """Register an in-process scripted model; return its model name ``scripted/<name>``."""
    if not name or not callable(respond):
        raise ValueError("register_scripted needs a non-empty name and a callable respond")
    with _LOCK:
        _REGISTERED[name] = Script(
            label=f"'{name}' (registered)",
            respond=respond,
            latency=max(0.0, float(latency_s)),
            cost=(float(cost_per_token[0]), float(cost_per_token[1])),
            chunk_s=max(0.0, float(stream_chunk_s)),
            chunk_chars=max(1, int(stream_chunk_chars)),
        )
    return f"scripted/{name}"


def resolve_script(name: str) -> Script:
    """Find the scripted model ``name``: a registration, else a script file (cached by mtime)."""
    registered = _REGISTERED.get(name)
    if registered is not None:
        return registered
    return _SCRIPTS.get(name)


def loaded_script(path: str) -> Script | None:
    """The script loaded from the file `path`, if it was loaded (tests look at its module)."""
    return _SCRIPTS.loaded(path)


def _load_script(path: Path) -> Script:
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
    return Script(label=str(path), respond=respond, module=module)


def clear_scripts() -> None:
    """Forget loaded scripts and in-process registrations."""
    with _LOCK:
        _SCRIPTS.clear()
        _REGISTERED.clear()


def _forget_module(old: Script) -> None:
    """A changed script file replaces its old module."""
    if old.module is not None:
        sys.modules.pop(old.module.__name__, None)


_SCRIPTS: FileCache[Script] = FileCache(
    _load_script,
    lambda key: (
        f"scripted model: script {key} not found; use 'scripted/<path.py>' with an "
        "absolute path or one relative to the working directory"
    ),
    _forget_module,
)
