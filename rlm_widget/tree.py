"""`AgentTree`: the anywidget that shows a run's agent tree, live or from a saved record."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import anywidget
import traitlets

from rlm_kernel.events import (
    AgentFinished,
    AgentStarted,
    BudgetHit,
    Event,
    EventSink,
    GateState,
    LLMQuery,
    LLMResponse,
    LLMText,
    RunFinished,
    RunStarted,
    Unsubscribe,
)
from rlm_kernel.records import TreeState, load_record

from .summary import agent_detail, agent_summary, jsonable, run_summary

__all__ = ["AgentTree"]

STATIC = Path(__file__).parent / "static"
LIVE_CHARS = 2000
"""The tail of a reply being written that a live update carries."""


def _diff(prev: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The fields of `new` that differ from `prev` (all of them for a new entry).

    A running clock is not a change by itself: elapsed_s rides along with real changes, and the
    browser advances it between messages.
    """
    if prev is None:
        return dict(new)
    patch = {k: v for k, v in new.items() if k != "elapsed_s" and prev.get(k) != v}
    if patch and "elapsed_s" in new:
        patch["elapsed_s"] = new["elapsed_s"]
    return patch


class RunLike(Protocol):
    """What the tree uses of a `rlm_kernel.runner.Run`: its id and task, its events, and its
    public controls."""

    run_id: str
    task: str

    def subscribe(self, sink: EventSink, *, replay: bool = True) -> Unsubscribe:
        """Deliver the events so far, then the live ones; returns the unsubscribe function."""

    def pause(self) -> None:
        """Hold every agent before its next code."""

    def step(self, code: str | None = None) -> None:
        """Let one iteration run."""

    def resume(self) -> None:
        """Run freely."""

    def cancel(self, agent_id: str | None = None) -> None:
        """Cancel the run or one agent."""


class AgentTree(anywidget.AnyWidget):
    """A run's agent tree: live (bound to a `Run`'s events, with step controls) or from a record.

    Live updates are small deltas sent at most every `min_interval_s`; an agent's iterations and
    namespace are sent when the browser selects it. When the run ends the whole record becomes
    widget state, so a notebook saved with widget state renders the final tree offline.
    """

    _esm = STATIC / "agent_tree.js"
    _css = STATIC / "agent_tree.css"

    summary = traitlets.Dict().tag(sync=True)
    """The run's header fields plus live, controls, stepping and waiting."""
    record = traitlets.Dict().tag(sync=True)
    """The complete run record, once the run has ended (or when opened from a file)."""
    selected = traitlets.Unicode("").tag(sync=True)
    """The agent shown in the detail pane ("" shows the root)."""
    min_interval_s = traitlets.Float(0.2)
    """Least time between two live updates (0.2 s: at most 5 messages a second)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lock = threading.RLock()
        self._state = TreeState()
        self._run: RunLike | None = None
        self._unsubscribe: Unsubscribe | None = None
        self._started: float | None = None
        self._gate = GateState()
        self._dirty: set[str] = set()
        self._live: dict[str, tuple[int, str]] = {}  # agent -> (turn, its reply so far)
        self._live_dirty: set[str] = set()  # agents whose reply grew (their detail is unchanged)
        self._run_dirty = False
        self._sent: dict[str, dict[str, Any]] = {}
        self._sent_run: dict[str, Any] | None = None
        self._seq = 0
        self._last_send = 0.0
        self._timer: threading.Timer | None = None
        self._final = False
        self.on_msg(self._on_msg)

    # -- constructors ------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run: RunLike, **kwargs: Any) -> AgentTree:
        """A tree bound to a `Run` (started or not): live updates and the run's controls."""
        tree = cls(**kwargs)
        tree.attach(run)
        return tree

    @classmethod
    def from_record(
        cls, record: str | os.PathLike[str] | dict[str, Any], **kwargs: Any
    ) -> AgentTree:
        """A tree of a saved run: a `detail.json` path or an already loaded record."""
        rec = record if isinstance(record, dict) else load_record(record)
        tree = cls(**kwargs)
        tree._final = True
        root = rec.get("root") or {}
        with tree.hold_sync():
            tree.record = jsonable(rec)
            tree.summary = tree._final_summary(rec, root.get("agent_id"))
        return tree

    # -- binding to a run --------------------------------------------------------------------------
    def attach(self, run: RunLike) -> AgentTree:
        """Follow `run`: its events so far (replayed), then the live ones; enable the controls."""
        with self._lock:
            self._run = run
        # The replay and the live events come one at a time, in order, none missed or repeated
        # (Run.subscribe); a finished run's replay ends with RUN_FINISHED, which finalizes.
        unsubscribe = run.subscribe(self.on_event, replay=True)
        with self._lock:
            if self._final:
                unsubscribe()
                return self
            self._unsubscribe = unsubscribe
            self._dirty.update(self._state.nodes)
            self._run_dirty = True
            self.summary = self._live_summary(time.time())
        self._schedule()
        return self

    def detach(self) -> None:
        """Stop following the run (the tree keeps what it has)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._run = None
        self._stop_events()

    def _stop_events(self) -> None:
        with self._lock:
            unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()  # not under our lock: the run's emit lock is taken before ours

    def close(self) -> None:
        """Detach from the run and close the widget."""
        self.detach()
        super().close()

    def on_event(self, ev: Event) -> None:
        """The event consumer: `run.subscribe(tree.on_event)` or `Run(..., on_event=tree.on_event)`
        (any thread)."""
        with self._lock:
            if self._final:
                return
            p = ev.payload
            if isinstance(p, LLMText) and ev.agent_id is not None:
                self._grow(ev.agent_id, p)
                return
            self._state.apply(ev)
            ends_reply = isinstance(p, (LLMResponse, AgentFinished))
            if ends_reply and ev.agent_id and self._live.pop(ev.agent_id, None) is not None:
                self._live_dirty.add(ev.agent_id)
            gate = self._gate.after(ev)
            if gate != self._gate:
                self._gate = gate
                self._run_dirty = True
            if isinstance(p, RunStarted):
                self._started = ev.ts
                self._run_dirty = True
            elif isinstance(p, (LLMResponse, LLMQuery, BudgetHit)):
                self._run_dirty = True
            if ev.agent_id is not None:
                self._dirty.add(ev.agent_id)
                if isinstance(p, AgentStarted) and p.parent_id is not None:
                    self._dirty.add(p.parent_id)
            final = isinstance(p, RunFinished)
        if final:
            self._finalize()
            self._stop_events()  # RUN_FINISHED is the last event
        else:
            self._schedule()

    def _grow(self, agent_id: str, p: LLMText) -> None:
        """A streamed reply grew (`llm_text`): keep its text; the next update carries its tail."""
        turn, text = self._live.get(agent_id, (p.index, ""))
        if turn != p.index:
            text = ""
        offset = min(p.offset, len(text))
        self._live[agent_id] = (p.index, text[:offset] + p.text)
        self._live_dirty.add(agent_id)
        self._schedule()

    def _with_live(self, aid: str, summary: dict[str, Any]) -> dict[str, Any]:
        live = self._live.get(aid)
        summary["live"] = (
            None if live is None else {"index": live[0], "text": live[1][-LIVE_CHARS:]}
        )
        return summary

    # -- sending -----------------------------------------------------------------------------------
    def _schedule(self) -> None:
        with self._lock:
            if self._timer is not None or self._final:
                return
            delay = max(0.0, self._last_send + self.min_interval_s - time.monotonic())
            self._timer = threading.Timer(delay, self._flush)
            self._timer.daemon = True
            self._timer.start()

    def _flush(self) -> None:
        """Send what changed since the last message (one message, or none)."""
        with self._lock:
            self._timer = None
            if self._final:
                return
            now = time.time()
            nodes: dict[str, Any] = {}
            touched = sorted(self._dirty)  # agents whose record changed (a shown detail is stale)
            for aid in sorted(self._dirty | self._live_dirty):
                node = self._state.nodes.get(aid)
                if node is None:
                    continue
                new = self._with_live(aid, agent_summary(node, now))
                patch = _diff(self._sent.get(aid), new)
                if patch:
                    nodes[aid] = patch
                    self._sent[aid] = new
            self._dirty.clear()
            self._live_dirty.clear()
            run_patch: dict[str, Any] = {}
            if self._run_dirty or nodes:
                new_run = self._live_summary(now)
                run_patch = _diff(self._sent_run, new_run)
                if run_patch or nodes:
                    run_patch["elapsed_s"] = new_run["elapsed_s"]
                self._sent_run = new_run
                self._run_dirty = False
            if not nodes and not touched and not run_patch:
                return
            self._seq += 1
            self._last_send = time.monotonic()
            msg = {
                "kind": "delta",
                "seq": self._seq,
                "nodes": nodes,
                "touched": touched,
                "run": run_patch,
            }
            self.send(msg)

    def _snapshot(self) -> None:
        """Send everything (a new view asked to catch up)."""
        with self._lock:
            if self._final:
                return
            now = time.time()
            nodes = {
                aid: self._with_live(aid, agent_summary(n, now))
                for aid, n in self._state.nodes.items()
            }
            self._sent = dict(nodes)
            self._sent_run = self._live_summary(now)
            self._dirty.clear()
            self._live_dirty.clear()
            self._run_dirty = False
            self._last_send = time.monotonic()
            self.send({"kind": "snapshot", "seq": self._seq, "nodes": nodes, "run": self._sent_run})

    def _finalize(self) -> None:
        """The run ended: the complete record becomes widget state; live updates stop."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._final:
                return
            self._final = True
            rec = jsonable(self._state.to_dict())
            with self.hold_sync():
                self.record = rec
                self.summary = self._final_summary(rec, self._state.root_id)

    def _live_summary(self, now: float) -> dict[str, Any]:
        run = self._run
        out = run_summary(self._state.run, self._state.root_id, self._started or now)
        if not self._state.run and run is not None:
            out.update(run_id=run.run_id, task=run.task)
        out.update(
            live=True,
            controls=run is not None,
            stepping=self._gate.stepping,
            waiting=jsonable([dict(w) for w in self._gate.waiting]),
        )
        return out

    @staticmethod
    def _final_summary(rec: dict[str, Any], root_id: str | None) -> dict[str, Any]:
        out = run_summary(rec, root_id, None)
        out.update(live=False, controls=False, stepping=False, waiting=[])
        return out

    # -- messages from the browser -----------------------------------------------------------------
    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("kind")
        if kind == "sync":
            self._snapshot()
        elif kind == "detail":
            with self._lock:
                node = self._state.nodes.get(str(content.get("agent_id")))
                if node is not None:
                    detail = agent_detail(node)
                    self.send({"kind": "detail", "agent_id": node["agent_id"], "node": detail})
        elif kind == "control":
            self.control(str(content.get("action")), content.get("agent_id"), content.get("code"))

    def control(self, action: str, agent_id: str | None = None, code: str | None = None) -> None:
        """What the buttons do: pause, step (optionally with new code), resume, cancel (a run or an agent)."""
        run = self._run
        if run is None or self._final:
            return
        if action == "pause":
            run.pause()
        elif action == "step":
            run.step(code if isinstance(code, str) else None)
        elif action == "resume":
            run.resume()
        elif action == "cancel":
            run.cancel(str(agent_id) if agent_id else None)
        else:
            return
        with self._lock:
            self._run_dirty = True
        self._schedule()

    def __repr__(self) -> str:
        s = self.summary or {}
        return f"AgentTree(run={s.get('run_id')!r}, status={s.get('status')!r})"
