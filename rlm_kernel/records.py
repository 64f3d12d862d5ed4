"""Run records: `results/{run_id}.detail.json` and `results/index.json`, built from events as the run goes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import redact_secrets
from .events import (
    AgentFinished,
    AgentStarted,
    CodeExecuted,
    Event,
    EventType,
    HistoryFolded,
    IterationFinished,
    LLMQuery,
    LLMResponse,
    LLMText,
    RunFinished,
    RunStarted,
    SandboxReady,
    StepMode,
    StepWaiting,
    UsageCounts,
)
from .llm.usage import USAGE_KEYS

__all__ = ["Recorder", "TreeState", "load_index", "load_record", "write_json_atomic"]

_INDEX_KEEP = 1000
_ONCE_MIN_CHARS = 65536
"""A root result (or patch) this long that equals the run's answer (patch) is stored once."""
_SAME_AS = "[stored once: the same as the record's {key!r} ({chars:,} characters)]"


def write_json_atomic(path: Path, data: Any, *, indent: int | None = 1) -> None:
    """Write JSON to a temporary name and rename it over `path` (readers never see half a file).

    Values of secret environment variables (API keys, tokens) are written as `***`, wherever
    they appear (a host tool's result, a task, an echoed error). `indent=None` writes compact
    JSON with the C encoder (several times faster on large records).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = redact_secrets(json.dumps(data, ensure_ascii=False, indent=indent, default=str))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _zero_usage() -> dict[str, int | float]:
    return {k: 0.0 if k == "cost_usd" else 0 for k in USAGE_KEYS}


def _child_key(node: dict[str, Any]) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.]", str(node["agent_id"]))]


class TreeState:
    """Folds events into the record's tree (the contract of DESIGN.md "Run record")."""

    def __init__(self) -> None:
        self.run: dict[str, Any] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.root_id: str | None = None

    def apply(self, ev: Event) -> None:
        """Update the tree with one event."""
        p = ev.payload
        if isinstance(p, RunStarted):
            self.run.update(
                run_id=ev.run_id,
                status="running",
                answer=None,
                patch="",
                finished_at=None,
                elapsed_s=None,
                usage=_zero_usage(),
                **p.fields(),
            )
            return
        if isinstance(p, RunFinished):
            self.run.update(p.fields())
            return
        if ev.agent_id is None:
            return
        if isinstance(p, AgentStarted):
            node: dict[str, Any] = {
                "agent_id": ev.agent_id,
                "parent_id": p.parent_id,
                "depth": p.depth,
                "task": p.task,
                "status": "running",
                "result": None,
                "error": None,
                "started_at": p.started_at,
                "finished_at": None,
                "usage": _zero_usage(),
                "sandbox": None,
                "iterations": [],
                "children": [],
                "llm_queries": [],
                "patch": "",
            }
            self.nodes[ev.agent_id] = node
            parent = self.nodes.get(str(p.parent_id))
            if parent is not None:
                parent["children"].append(node)
                parent["children"].sort(key=_child_key)
            elif self.root_id is None:
                self.root_id = ev.agent_id
            return
        found = self.nodes.get(ev.agent_id)
        if found is None:
            return
        node = found
        if isinstance(p, SandboxReady):
            node["sandbox"] = p.sandbox
        elif isinstance(p, HistoryFolded):
            node.setdefault("history_folds", []).append(p.fields())
        elif isinstance(p, LLMResponse):
            it = self._iteration(node, p.index)
            it["llm_response"] = p.text
            self._add_usage(node, p.usage)
        elif isinstance(p, StepWaiting):
            self._iteration(node, p.index)["pending_code"] = p.code
        elif isinstance(p, CodeExecuted):
            it = self._iteration(node, p.index)
            it.pop("pending_code", None)
            it["code_blocks"].append(
                {
                    "code": p.code,
                    "output": p.output,
                    "error": p.error,
                    "elapsed_s": p.elapsed_s,
                    "spawned": p.spawned,
                    "status": p.status,
                }
            )
        elif isinstance(p, IterationFinished):
            it = self._iteration(node, p.index)
            if p.namespace is not None:
                it["namespace"] = p.namespace
            it["finished"] = True
        elif isinstance(p, LLMQuery):
            node["llm_queries"].append(
                {"prompt": p.prompt, "response": p.response, "model": p.model, "error": p.error}
            )
            self._add_usage(node, p.usage)
        elif isinstance(p, AgentFinished):
            node["status"] = p.status
            node["result"] = p.result
            node["error"] = p.error
            node["finished_at"] = p.finished_at
            node["patch"] = p.patch

    @staticmethod
    def _iteration(node: dict[str, Any], index: int) -> dict[str, Any]:
        its = node["iterations"]
        while len(its) <= index:
            its.append({"index": len(its), "llm_response": "", "code_blocks": [], "namespace": []})
        return its[index]  # type: ignore[no-any-return]

    def _add_usage(self, node: dict[str, Any], usage: UsageCounts | None) -> None:
        if not usage:
            return
        for target in (node["usage"], self.run.setdefault("usage", {})):
            for k in USAGE_KEYS:
                target[k] = target.get(k, 0) + usage.get(k, 0)

    def to_dict(self) -> dict[str, Any]:
        """The whole record: run fields plus `root`."""
        out = dict(self.run)
        out["root"] = self.nodes.get(self.root_id) if self.root_id else None
        return out

    def to_record(self) -> dict[str, Any]:
        """`to_dict()` as written to disk: a long root result or patch that is also the run's
        answer or patch is stored once (`load_record` puts it back)."""
        out = self.to_dict()
        root = out.get("root")
        if not root:
            return out
        for node_key, run_key in (("result", "answer"), ("patch", "patch")):
            value = root.get(node_key)
            if value is None or value != out.get(run_key):
                continue
            chars = len(value) if isinstance(value, str) else len(json.dumps(value, default=str))
            if chars >= _ONCE_MIN_CHARS:
                root = out["root"] = {**root, node_key: _SAME_AS.format(key=run_key, chars=chars)}
        return out


class Recorder:
    """An event consumer that keeps `{run_id}.detail.json` current (throttled) and updates index.json."""

    def __init__(self, results_dir: str | os.PathLike[str], min_interval_s: float = 0.5) -> None:
        self.dir = Path(results_dir)
        self.state = TreeState()
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None  # the write of events the throttle held back
        self.path: Path | None = None

    def __call__(self, ev: Event) -> None:
        """Apply an event; write now for milestones (the run's start and end, the root's end, a
        paused step), otherwise at most every `min_interval_s`
        (and `min_interval_s` after a held-back event at the latest, so a host killed while its
        agents are quiet leaves a record with everything up to then). Streamed text and the
        gate's state are not recorded (the whole reply comes with `llm_response`, where an agent
        waits with `step_waiting`)."""
        if isinstance(ev.payload, (LLMText, StepMode)):
            return
        stopped: threading.Timer | None = None
        with self._lock:
            self.state.apply(ev)
            if self.path is None:
                self.path = self.dir / f"{ev.run_id}.detail.json"
            now = time.monotonic()
            # A sub-agent's end is throttled like its other events (ten children of one batch
            # ending together were ten whole-record writes); the root's end is a milestone.
            milestone = ev.type in (
                EventType.RUN_STARTED,
                EventType.STEP_WAITING,  # a paused run's record must show where it stopped
                EventType.RUN_FINISHED,
            ) or (ev.type is EventType.AGENT_FINISHED and ev.agent_id == self.state.root_id)
            if milestone or now - self._last >= self.min_interval_s:
                self._last = now
                # Records written while the run goes are compact (fast, off the agents' critical
                # path); the final one is indented for people reading it.
                final = ev.type is EventType.RUN_FINISHED
                write_json_atomic(self.path, self.state.to_record(), indent=1 if final else None)
            elif self._timer is None:
                self._timer = threading.Timer(self._last + self.min_interval_s - now, self._flush)
                self._timer.daemon = True
                self._timer.name = "rlm-record-flush"
                self._timer.start()
            if ev.type in (EventType.RUN_STARTED, EventType.RUN_FINISHED):
                self._update_index()
            if ev.type is EventType.RUN_FINISHED and self._timer is not None:
                stopped, self._timer = self._timer, None
                stopped.cancel()
        if stopped is not None:
            stopped.join()  # no thread outlives the run

    def _flush(self) -> None:
        with self._lock:
            if self._timer is not threading.current_thread() or self.path is None:
                return  # the run finished meanwhile
            self._timer = None
            self._last = time.monotonic()
            write_json_atomic(self.path, self.state.to_record(), indent=None)

    def _update_index(self) -> None:
        rec = self.state.to_dict()
        root = rec.get("root") or {}
        entry = {
            "run_id": rec.get("run_id"),
            "task": str(rec.get("task", ""))[:300],
            "repo": rec.get("repo"),
            "model": rec.get("model"),
            "status": rec.get("status"),
            "started_at": rec.get("started_at"),
            "finished_at": rec.get("finished_at"),
            "elapsed_s": rec.get("elapsed_s"),
            "agents": len(self.state.nodes),
            "usage": rec.get("usage"),
            "answer": str(rec.get("answer") or "")[:300],
            "file": f"{rec.get('run_id')}.detail.json",
            "root_status": root.get("status"),
        }
        index_path = self.dir / "index.json"
        with _dir_lock(self.dir):
            runs = [r for r in load_index(self.dir) if r.get("run_id") != entry["run_id"]]
            runs.insert(0, entry)
            runs.sort(key=lambda r: r.get("started_at") or "", reverse=True)
            write_json_atomic(index_path, {"runs": runs[:_INDEX_KEEP]})


@contextlib.contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock on the results directory itself (flock on its descriptor), so runs in
    several processes update index.json in turn and no lock file is left in the results."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locking (one writer at a time)
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def load_index(results_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The runs listed in `index.json`, newest first ([] when there is none)."""
    try:
        with open(Path(results_dir) / "index.json", encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return []
    runs = data.get("runs", []) if isinstance(data, dict) else data
    return [r for r in runs if isinstance(r, dict)]


def load_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a `detail.json` record (a root result or patch stored once is filled in again)."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a run record")
    root = data.get("root")
    if isinstance(root, dict):
        for node_key, run_key in (("result", "answer"), ("patch", "patch")):
            value = root.get(node_key)
            if isinstance(value, str) and value.startswith(_SAME_AS[:32]) and run_key in data:
                root[node_key] = data[run_key]
    return data
