"""Replay models: `replay/<run>.detail.json` answers from the LLM responses of a recorded run.

An agent's turn gets the recorded response of the same agent and iteration; an ``llm_query``
gets the next unused recorded response of the same agent, preferring one with the same prompt.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LLMError
from .filecache import FileCache

__all__ = ["clear_replays", "replay_respond"]


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


def _short(text: str | None, limit: int = 60) -> str:
    if text is None:
        return "None"
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def replay_respond(name: str, messages: list[Any], info: Mapping[str, Any]) -> str:
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
    return _REPLAYS.get(name)


def _parse_replay(path: Path) -> _Replay:
    key = str(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LLMError(f"replay {key}: cannot read the run record: {exc}") from exc
    root = record.get("root") if isinstance(record, dict) else None
    if not isinstance(root, dict):
        raise LLMError(f"replay {key}: the run record has no 'root' agent node")
    replay = _Replay(path=key, responses={}, queries={})
    _index_node(replay, root)
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


def clear_replays() -> None:
    """Forget parsed run records."""
    _REPLAYS.clear()


_REPLAYS: FileCache[_Replay] = FileCache(
    _parse_replay,
    lambda key: f"replay {key}: run record not found; use 'replay/<path to run>.detail.json'",
)
