"""The engine's public API: events are the only way out of a run (subscribe, with the state so
far replayed atomically), the step gate is told by events, and the controls are the run's
methods. Includes the check that no module reaches into a `Run`, nor into the parts a run is made
of (its sandboxes, the services it gives its agents)."""

from __future__ import annotations

import ast
import itertools
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm_kernel.config import RLMConfig
from rlm_kernel.events import (
    Event,
    EventType,
    GateState,
    Notice,
    RunFinished,
    StepMode,
)
from rlm_kernel.runner import Run

Config = Callable[..., RLMConfig]
ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "rlm_kernel" / "runner.py"
PARTS = {
    RUNNER: "Run",
    ROOT / "rlm_kernel" / "run_sandboxes.py": "RunSandboxes",
    ROOT / "rlm_kernel" / "run_services.py": "AgentServices",
}
"""Each class whose private attributes only its own module may use: a run and its parts (the
run passes its parts what they need; none reaches into another)."""
FORBIDDEN = {"gate", "recorder", "sinks"}
"""The attributes a Run used to expose to consumers (now private: `_gate`, `_recorder`, `_sinks`)."""
_RUN_NAME = re.compile(r"^_*(\w+_)?run$")  # run, _run, self.run, h.run, probe_run …


# -- the boundary: nobody reaches into a Run ----------------------------------------------------------


def _private_names(path: Path, name: str) -> set[str]:
    """The private attributes and methods of class `name` (its module's own code may use them)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    names = set()
    for node in ast.walk(cls):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            names.add(node.attr)
        elif (
            isinstance(node, ast.FunctionDef)
            and node.name.startswith("_")
            and not node.name.startswith("__")
        ):
            names.add(node.name)
    return names


def _run_private_names() -> set[str]:
    return _private_names(RUNNER, "Run")


def _last_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in ("self", "cls")


def reaches_into_a_run(source: str, private: set[str], *, run: bool = True) -> list[str]:
    """The places in `source` that touch a Run's private state: `<run>._x`, `<run>.gate`
    (`.recorder`, `.sinks`), `getattr(<run>, "_x")`, or any `<obj>._x` where `_x` is one of
    Run's private names and `<obj>` is not `self`. Each as `line: code`. With `run=False`,
    only the last rule, for the private names of one of a run's parts."""
    tree = ast.parse(source)
    hits: list[str] = []
    lines = source.splitlines()

    def check(base: ast.expr, attr: str, node: ast.AST) -> None:
        private_attr = attr.startswith("_") and not attr.startswith("__")
        runlike = run and bool(_RUN_NAME.match(_last_name(base)))
        if (runlike and (attr in FORBIDDEN or private_attr)) or (
            attr in private and not _is_self(base)
        ):
            line = getattr(node, "lineno", 0)
            hits.append(f"{line}: {lines[line - 1].strip()}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            check(node.value, node.attr, node)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            check(node.args[0], node.args[1].value, node)
    return hits


def _modules() -> Iterator[Path]:
    for folder in ("rlm_kernel", "rlm_widget", "bench", "scripts", "notebooks"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_no_module_outside_the_runner_reaches_into_a_run() -> None:
    private = _run_private_names()
    assert {"_emit_lock", "_gate", "_recorder", "_sinks", "_log", "_agents"} <= private
    assert {"_sandboxes", "_services"} <= private  # its parts are its own too
    found = {
        str(p.relative_to(ROOT)): hits
        for p in _modules()
        if p != RUNNER and (hits := reaches_into_a_run(p.read_text(encoding="utf-8"), private))
    }
    assert not found, (
        "use events (Run.subscribe) and the run's public controls instead of its internals: "
        f"{found}"
    )


def test_no_module_reaches_into_a_part_of_a_run() -> None:
    """The runner included: it gives its parts what they need and calls their public methods."""
    parts = {path: _private_names(path, name) for path, name in PARTS.items() if path != RUNNER}
    assert {"_kept", "_made", "_root_source", "_fresh_starting"} <= parts[
        ROOT / "rlm_kernel" / "run_sandboxes.py"
    ]
    assert {"_slots", "_parked", "_new_child"} <= parts[ROOT / "rlm_kernel" / "run_services.py"]
    found = {
        f"{p.relative_to(ROOT)} -> {PARTS[owner]}": hits
        for p in _modules()
        for owner, private in parts.items()
        if p != owner
        and (hits := reaches_into_a_run(p.read_text(encoding="utf-8"), private, run=False))
    }
    assert not found, f"pass a run's part what it needs instead of reaching into it: {found}"


@pytest.mark.parametrize(
    "code",
    [
        "run.gate.waiting",
        "h.run.sinks.append(view)",
        "self._run.recorder.state",
        "lock = getattr(run, '_emit_lock', None)",
        "with run._emit_lock: pass",
        "handle.run._kept.clear()",
        "x = obj._agents",
    ],
)
def test_the_boundary_check_finds_each_way_in(code: str) -> None:
    assert reaches_into_a_run(code, _run_private_names()), code


@pytest.mark.parametrize(
    ("code", "part"),
    [
        ("self._sandboxes._kept.clear()", "RunSandboxes"),
        ("n = sandboxes._fresh_starting", "RunSandboxes"),
        ("getattr(self._sandboxes, '_made')", "RunSandboxes"),
        ("self._services._slots.release()", "AgentServices"),
        ("with services._parked_lock: pass", "AgentServices"),
    ],
)
def test_the_boundary_check_finds_each_way_into_a_part(code: str, part: str) -> None:
    path = next(p for p, name in PARTS.items() if name == part)
    assert reaches_into_a_run(code, _private_names(path, part), run=False), code


@pytest.mark.parametrize(
    "code",
    [
        "self._sandboxes.kept_of('root.0'); self._sandboxes.note_batch(3)",
        "with self._services.slot(): pass",
        "self._kept = []",
        "run.release()",
    ],
)
def test_the_boundary_check_lets_a_parts_public_api_through(code: str) -> None:
    for path, name in PARTS.items():
        if path != RUNNER:
            assert not reaches_into_a_run(code, _private_names(path, name), run=False), code


@pytest.mark.parametrize(
    "code",
    [
        "run.pause(); run.subscribe(sink)",
        "a.gate and runs.gate",  # an argparse flag, a dict of runs: not a Run
        "self._agents = {}",
        "self._run = run",
    ],
)
def test_the_boundary_check_lets_the_public_api_through(code: str) -> None:
    assert not reaches_into_a_run(code, _run_private_names()), code


# -- subscribe: the state so far, then live events, none lost or repeated ---------------------------


def _idle_run(tmp_path: Path) -> tuple[Run, list[Event]]:
    """A run that is never started: its `emit` is what agents call (any thread)."""
    everything: list[Event] = []
    cfg = RLMConfig().with_overrides({"results_dir": str(tmp_path / "results")})
    return Run("t", config=cfg, on_event=everything.append), everything


def test_subscribe_replays_then_delivers_live_and_unsubscribes(tmp_path: Path) -> None:
    run, everything = _idle_run(tmp_path)
    run.emit(Notice("info", "one"), "root")
    run.emit(Notice("info", "two"), "root")
    late: list[Event] = []
    unsubscribe = run.subscribe(late.append)
    assert [e.payload for e in late] == [Notice("info", "one"), Notice("info", "two")]
    run.emit(Notice("info", "three"))
    assert late == everything and late[0] is everything[0]  # the same objects, not copies
    unsubscribe()
    unsubscribe()  # twice is harmless
    run.emit(Notice("info", "four"))
    assert len(late) == 3 and len(everything) == 4
    fresh: list[Event] = []
    run.subscribe(fresh.append, replay=False)
    run.emit(Notice("info", "five"))
    assert [e.payload for e in fresh] == [Notice("info", "five")]


def test_a_failing_subscriber_does_not_stop_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run, everything = _idle_run(tmp_path)

    def broken(ev: Event) -> None:
        raise RuntimeError("consumer bug")

    run.subscribe(broken)
    after: list[Event] = []
    run.subscribe(after.append)
    run.emit(Notice("info", "x"))
    assert len(after) == 1 and len(everything) == 1
    assert "event consumer" in caplog.text and "consumer bug" in caplog.text


def test_subscribing_while_many_threads_emit_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """16 threads emit 400 events each while subscribers join (and one leaves) at random times:
    every subscriber gets the run's events in the same order, each once."""
    run, everything = _idle_run(tmp_path)
    go = threading.Event()

    def agent(n: int) -> None:
        go.wait()
        for i in range(400):
            run.emit(Notice("info", f"{n}:{i}"), f"root.{n}")

    emitters = [threading.Thread(target=agent, args=(n,)) for n in range(16)]
    for t in emitters:
        t.start()
    late: list[list[Event]] = []
    leaver: list[Event] = []
    stop_leaver = run.subscribe(leaver.append)
    go.set()
    rng = random.Random(16)
    for k in range(24):
        got: list[Event] = []
        late.append(got)
        run.subscribe(got.append, replay=True)
        if k == 12:
            stop_leaver()
        time.sleep(rng.random() * 0.004)
    for t in emitters:
        t.join()
    assert len(everything) == 16 * 400
    assert len({id(e) for e in everything}) == len(everything)
    for got in late:
        assert got == everything
    # the one that left has a prefix of the stream
    assert leaver == everything[: len(leaver)]
    for n in range(16):  # each agent's own events keep their order
        mine = [e.payload.message for e in everything if e.agent_id == f"root.{n}"]  # type: ignore[union-attr]
        assert mine == [f"{n}:{i}" for i in range(400)]


@pytest.mark.slow
def test_late_subscribers_of_a_real_fan_out_see_the_whole_run(config: Config) -> None:
    """A real run: 12 children at once, each making 8 llm_query calls at once (events from
    ~100 threads); subscribers join while it goes and after it ended."""
    everything: list[Event] = []
    run = Run("fan 12 8", config=config("fanout_events.py"), on_event=everything.append)
    late: list[list[Event]] = []
    run.start()
    while not run.done:
        got: list[Event] = []
        run.subscribe(got.append)
        late.append(got)
        time.sleep(0.03)
    res = run.wait(60)
    assert res.status == "done", res.error
    got = []
    run.subscribe(got.append)  # after the end: the whole run, ending with RUN_FINISHED
    late.append(got)
    assert len(late) > 3
    kinds = [e.type for e in everything]
    assert kinds[0] is EventType.RUN_STARTED and kinds[-1] is EventType.RUN_FINISHED
    assert kinds.count(EventType.AGENT_STARTED) == 13 and kinds.count(EventType.LLM_QUERY) == 96
    for got in late:
        assert got == everything


# -- the step gate, told by events ------------------------------------------------------------------


def _gate_of(events: list[Event]) -> GateState:
    state = GateState()
    for ev in list(events):
        state = state.after(ev)
    return state


def _until(cond: Callable[[], Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.mark.slow
def test_step_mode_events_tell_who_waits_and_how_many_steps_are_pending(config: Config) -> None:
    seen: list[Event] = []
    run = Run("fan 2 1", config=config("fanout_events.py"), on_event=seen.append, step=True)
    run.start()
    try:
        _until(lambda: _gate_of(seen).waiting)
        gate = _gate_of(seen)
        assert gate.paused and [w["agent_id"] for w in gate.waiting] == ["root"]
        assert "rlm_query_batched" in gate.waiting[0]["code"] and gate.pending_steps == 0
        run.step()
        # the two children come to the gate, one after the other
        _until(lambda: len(_gate_of(seen).waiting) == 2)
        run.step("r = []\nprint('replaced')")  # the oldest waiter runs this instead
        _until(lambda: len(_gate_of(seen).waiting) == 2 and _gate_of(seen).pending_steps == 0)
        run.resume()
        res = run.wait(60)
    finally:
        run.cancel()
        run.wait(60)
    assert res.status == "done", res.error
    modes = [e.payload for e in seen if isinstance(e.payload, StepMode)]
    assert all(a != b for a, b in itertools.pairwise(modes))  # only changes are told
    assert any(m.pending_steps == 1 for m in modes)  # a step granted, not taken yet
    assert modes[-1] == StepMode(False)
    replaced = [e for e in seen if e.type is EventType.STEP_RESUMED and e.data["replaced"]]
    assert len(replaced) == 1
    assert isinstance(seen[-1].payload, RunFinished)
    n = len(seen)
    run.pause()  # nothing follows RUN_FINISHED
    assert len(seen) == n


def test_a_pause_before_the_run_starts_is_an_event_and_holds_the_root(config: Config) -> None:
    seen: list[Event] = []
    run = Run("fan 1 1", config=config("fanout_events.py"), on_event=seen.append)
    run.pause()
    assert [e.payload for e in seen] == [StepMode(True)]
    run.start()
    try:
        _until(lambda: _gate_of(seen).waiting)
        assert next(e for e in seen if e.type is EventType.RUN_STARTED).data["step"] is True
        run.resume()
        assert run.wait(60).status == "done"
    finally:
        run.cancel()
        run.wait(60)


# -- release: kept sandboxes ------------------------------------------------------------------------


@pytest.mark.slow
def test_release_removes_the_kept_sandboxes(make_repo: Callable[..., Path], config: Config) -> None:
    repo = make_repo()
    run = Run("fan 2 1", repo, config=config("fanout_events.py", sandbox__keep=True))
    res = run.execute()
    assert res.status == "done", res.error
    paths = [Path(k["path"]) for k in res.kept]
    assert len(paths) == 3 and all(p.is_dir() for p in paths)
    kept = run.sandbox_of("root.1", kept_only=True)
    assert kept is not None and not kept.closed
    assert run.release() == 3
    assert kept.closed and not any(p.exists() for p in paths)
    assert run.sandbox_of("root.1", kept_only=True) is None
    assert run.release() == 0  # nothing left
