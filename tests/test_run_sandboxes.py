"""A run's sandboxes (`RunSandboxes`): an agent's made in the background, a sub-agent's taken
from the pool, the notebook's lent to the root and given back, kept ones found and released, and
none left when the run ends. Real local sandboxes; the run's callbacks are the test's."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rlm_kernel.agent import Agent
from rlm_kernel.config import RLMConfig
from rlm_kernel.control import Budget, Scope
from rlm_kernel.events import Event, EventType, Notice, Payload, SandboxReady
from rlm_kernel.llm import register_scripted
from rlm_kernel.run_sandboxes import RunSandboxes
from rlm_kernel.runner import Run
from rlm_kernel.sandbox.base import Sandbox, SandboxError, SandboxSpec
from rlm_kernel.sandbox.kernels import live_kernel_pids
from rlm_kernel.sandbox.local import LocalSandbox
from rlm_kernel.sandbox.pool import AUTO_INITIAL
from rlm_kernel.sandbox.workspace import Target, resolve_target

Config = Callable[..., RLMConfig]
NO_TARGET = Target(None, None, None)


def _until(cond: Callable[[], Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@dataclass
class Parts:
    """A `RunSandboxes` with the test as its run: events, budget, scope and step gate."""

    sandboxes: RunSandboxes
    run: Run  # never started: its agents are made by the test
    budget: Budget
    scope: Scope
    paused: list[bool]
    events: list[tuple[str | None, Payload]] = field(default_factory=list)

    def agent(self, agent_id: str, parent: Agent | None = None) -> Agent:
        return Agent(self.run, agent_id, parent, f"task of {agent_id}")

    def ready(self) -> dict[str | None, str]:
        return {a: p.sandbox["path"] for a, p in self.events if isinstance(p, SandboxReady)}


@pytest.fixture
def parts(config: Config) -> Iterator[Callable[..., Parts]]:
    """Make `Parts` (`root=`: the notebook's REPL; `repo=`: the target; config overrides);
    closes them all at the end, as a run does."""
    made: list[Parts] = []

    def make(*, root: Any = None, repo: Path | None = None, **overrides: Any) -> Parts:
        cfg = config("finals.py", **{"sandbox__pool_size": 0, "sandbox__spare": False, **overrides})
        run = Run("t", config=cfg)
        budget, scope, paused = Budget(cfg.rlm, time.monotonic()), Scope(), [False]
        p: Parts

        def emit(payload: Payload, agent_id: str | None) -> None:
            p.events.append((agent_id, payload))

        sandboxes = RunSandboxes(
            run.run_id,
            cfg,
            tool_specs=[],
            emit=emit,
            budget=lambda: budget,
            scope=scope,
            paused=lambda: paused[0],
            root=root,
        )
        p = Parts(sandboxes, run, budget, scope, paused)
        sandboxes.prepare(resolve_target(str(repo)) if repo else NO_TARGET)
        made.append(p)
        return p

    yield make
    for p in made:
        p.scope.cancel("the test ended")
        p.sandboxes.close()


def _notebook(op: str, args: dict[str, Any]) -> Any:
    return "notebook handler"


# -- an agent's sandbox: made, then removed -----------------------------------------------------------


def test_a_finished_childs_sandbox_is_removed_and_the_rest_at_the_end(
    parts: Callable[..., Parts],
) -> None:
    p = parts()
    root = p.agent("root")
    child = p.agent("root.0", root)
    root_future, child_future = p.sandboxes.start(root), p.sandboxes.start(child)
    root_sb, child_sb = root_future.result(60), child_future.result(60)
    assert root.sandbox is root_sb and child.sandbox is child_sb  # reachable before code runs
    assert p.ready() == {"root": root_sb.path, "root.0": child_sb.path}
    assert root_sb.spec.handler == root.handle and child_sb.spec.runtime_cfg["depth"] == 1
    p.sandboxes.release(child, child_sb, child_future)
    # Removed at once, on a thread of its own (the child's answer does not wait for it).
    _until(lambda: child_sb.closed and not os.path.exists(child_sb.path))
    assert not root_sb.closed and p.sandboxes.kept() == []
    p.scope.cancel("the run ended")
    p.sandboxes.close()  # what the run left open
    assert root_sb.closed and not os.path.exists(root_sb.path)


def test_an_agent_that_ended_before_its_sandbox_was_made_has_it_removed_once_made(
    parts: Callable[..., Parts],
) -> None:
    p = parts()
    child = p.agent("root.0", p.agent("root"))
    future = p.sandboxes.start(child)
    p.sandboxes.release(child, None, future)  # the agent ended (cancelled) first
    sb = future.result(60)
    _until(lambda: sb.closed and not os.path.exists(sb.path))  # closed by the maker's thread


def test_a_cancelled_agent_gets_no_sandbox(parts: Callable[..., Parts]) -> None:
    p = parts()
    child = p.agent("root.0", p.agent("root"))
    child.scope.cancel("cancelled by the user")
    with pytest.raises(SandboxError, match="cancelled before the sandbox started"):
        p.sandboxes.start(child).result(60)
    assert child.sandbox is None and p.ready() == {}


# -- kept sandboxes -----------------------------------------------------------------------------------


def test_kept_sandboxes_are_found_by_agent_outlive_the_run_and_are_released(
    parts: Callable[..., Parts],
) -> None:
    p = parts(sandbox__keep=True)
    root = p.agent("root")
    children = [p.agent(f"root.{i}", root) for i in range(2)]
    futures = [p.sandboxes.start(a) for a in children]
    made = [f.result(60) for f in futures]
    assert p.sandboxes.kept_of("root.0") is None  # still its agent's
    for agent, sb, future in zip(children, made, futures, strict=True):
        p.sandboxes.release(agent, sb, future)
    assert p.sandboxes.kept() == made and not any(sb.closed for sb in made)
    assert [e for e in p.events if isinstance(e[1], Notice)] == [
        (a.agent_id, Notice("info", f"sandbox kept at {sb.path}"))
        for a, sb in zip(children, made, strict=True)
    ]
    assert p.sandboxes.kept_of("root.1") is made[1] and p.sandboxes.kept_of("root") is None
    p.scope.cancel("the run ended")
    p.sandboxes.close()
    assert not any(sb.closed for sb in made)  # kept past the run's end
    made[0].close()  # closed elsewhere (its files stay): no longer listed
    assert p.sandboxes.kept_of("root.0") is None
    assert p.sandboxes.release_kept(remove=False) == 1  # the one still open
    assert made[1].closed and os.path.isdir(made[1].path)  # its files stay
    assert p.sandboxes.kept() == [] and p.sandboxes.release_kept() == 0
    shutil.rmtree(Path(made[1].path).parent.parent, ignore_errors=True)  # the run's directory


def test_released_kept_sandboxes_are_removed(parts: Callable[..., Parts]) -> None:
    p = parts(sandbox__keep=True)
    root = p.agent("root")
    future = p.sandboxes.start(root)
    sb = future.result(60)
    p.sandboxes.release(root, sb, future)
    assert p.sandboxes.kept_of("root") is sb
    assert p.sandboxes.release_kept() == 1
    assert sb.closed and not os.path.exists(sb.path)


# -- the notebook's REPL, lent to the root ------------------------------------------------------------


def test_the_notebooks_repl_is_lent_to_the_root_given_back_and_never_closed(
    parts: Callable[..., Parts],
) -> None:
    nb = LocalSandbox(SandboxSpec("nb-lent", "root", NO_TARGET, _notebook))
    nb.start()
    try:
        p = parts(root=nb)
        root = p.agent("root")
        future = p.sandboxes.start(root)
        assert future.done() and future.result() is nb and p.sandboxes.root is nb
        assert nb.spec.handler == root.handle and p.ready() == {"root": nb.path}
        child = p.agent("root.0", root)
        child_sb = p.sandboxes.start(child).result(60)  # a sub-agent gets a sandbox of its own
        assert child_sb is not nb
        p.sandboxes.release(root, nb, future)
        assert nb.spec.handler is _notebook
        p.scope.cancel("the run ended")
        p.sandboxes.close()
        assert child_sb.closed and not nb.closed
        assert nb.execute("print(6 * 7)", timeout=30).output == "42\n"
    finally:
        nb.close()


def test_a_root_that_ends_while_the_notebooks_repl_starts_gives_it_back_once_there(
    parts: Callable[..., Parts],
) -> None:
    go = threading.Event()
    made: list[Sandbox] = []

    def start() -> Sandbox:
        assert go.wait(60)
        sb = LocalSandbox(SandboxSpec("nb-late", "root", NO_TARGET, _notebook))
        made.append(sb)
        sb.start()
        return sb

    p = parts(root=start)
    root = p.agent("root")
    future = p.sandboxes.start(root)
    assert not future.done() and p.sandboxes.root is None
    p.sandboxes.release(root, None, future)  # e.g. cancelled during its first LLM call
    go.set()
    try:
        sb = future.result(60)
        _until(lambda: sb.spec.handler is _notebook)
        p.scope.cancel("the run ended")
        p.sandboxes.close()
        assert not sb.closed and p.sandboxes.root is sb
    finally:
        for sb in made:
            sb.close()


def test_a_notebooks_repl_that_cannot_start_says_so(parts: Callable[..., Parts]) -> None:
    def start() -> Sandbox:
        raise RuntimeError("no room for a kernel")

    p = parts(root=start)
    with pytest.raises(SandboxError, match="could not start the notebook's sandbox: no room"):
        p.sandboxes.start(p.agent("root")).result(60)


# -- the pool ---------------------------------------------------------------------------------------


def test_a_child_takes_a_pooled_sandbox_and_a_broken_one_is_replaced(
    parts: Callable[..., Parts], make_repo: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    p = parts(repo=make_repo(), sandbox__pool_size=1)
    root = p.agent("root")
    root_sb = p.sandboxes.start(root).result(60)
    pool = p.sandboxes.pool
    assert pool is not None
    _until(lambda: pool.ready == 1)  # filled once the root's own sandbox was made
    first = p.agent("root.0", root)
    taken = p.sandboxes.start(first).result(60)
    assert "/pool-" in taken.path and taken.spec.agent_id == "root.0" and pool.taken == 1
    assert taken.spec.handler == first.handle and first.sandbox is taken
    assert taken.execute("print(__rlm__ is not None)", timeout=30).output == "True\n"
    _until(lambda: pool.ready == 1)  # refilled
    # The next pooled sandbox's kernel dies while it waits: the child gets a fresh one.
    mine = {root_sb.kernel.pid, taken.kernel.pid}  # LocalSandbox's kernels
    (pooled_pid,) = set(live_kernel_pids()) - mine
    os.kill(pooled_pid, signal.SIGKILL)
    _until(lambda: pooled_pid not in live_kernel_pids())
    second = p.agent("root.1", root)
    fresh = p.sandboxes.start(second).result(60)
    assert "/pool-" not in fresh.path and pool.taken == 2
    assert "could not use a pooled sandbox for root.1" in caplog.text
    assert fresh.execute("print(1 + 1)", timeout=30).output == "2\n"
    p.scope.cancel("the run ended")
    p.sandboxes.close()
    assert pool.closed and all(sb.closed for sb in (root_sb, taken, fresh))


def test_the_pool_aims_at_batches_seen_twice_and_not_while_paused_or_ending(
    parts: Callable[..., Parts],
) -> None:
    p = parts(sandbox__pool_size="auto", rlm__max_concurrency=8, rlm__max_sandboxes=1)
    assert p.budget.take_sandbox() is None  # the root's: no room left, so the pool makes none
    p.sandboxes.start(p.agent("root")).result(60)
    pool = p.sandboxes.pool
    assert pool is not None
    target = pool._target
    assert target() == 0  # nothing before the first rlm_query
    p.sandboxes.note_batch(3)
    assert target() == 0  # one batch, perhaps the run's only delegation: fresh sandboxes serve it
    p.sandboxes.note_batch(1)
    assert target() == AUTO_INITIAL  # a second delegation: the pool starts
    p.sandboxes.note_batch(3)
    assert target() == 3  # a width seen twice
    p.paused[0] = True
    assert target() == 0
    p.paused[0] = False
    assert target() == 3
    p.scope.cancel("the run ended")
    assert target() == 0
    assert pool.created == 0


@pytest.mark.parametrize("overrides", [{"sandbox__pool_size": 0}, {"rlm__max_depth": 0}])
def test_no_pool_when_it_is_off_or_nobody_could_use_it(
    parts: Callable[..., Parts], overrides: dict[str, Any]
) -> None:
    p = parts(**{"sandbox__pool_size": 2, **overrides})
    p.sandboxes.start(p.agent("root")).result(60)
    assert p.sandboxes.pool is None


# -- prepare ----------------------------------------------------------------------------------------


def test_prepare_resolves_the_isolation_tier_and_the_run_shows_it(config: Config) -> None:
    run = Run("t", config=config("finals.py"))
    assert run.isolation is None and run.root_sandbox is None
    run.prepare()
    assert run.isolation is not None and run.isolation.tier in ("bwrap", "none")


# -- end to end: the notebook's REPL and kept sandboxes in real runs ----------------------------------


def test_keep_keeps_worktrees_and_says_where(
    make_repo: Callable[..., Path], config: Config
) -> None:
    import subprocess

    repo = make_repo()
    seen: list[Event] = []
    r = Run(
        "isolate", repo, config=config("isolation.py", sandbox__keep=True), on_event=seen.append
    )
    res = r.execute()
    assert r.release(remove=False) == 3  # their REPLs stop, their files stay
    paths = [k["path"] for k in res.kept]
    assert len(paths) == 3 and all(
        Path(p, "shared.txt").exists() or p.endswith("root/work") for p in paths
    )
    notices = [e.data["message"] for e in seen if e.type is EventType.NOTICE]
    assert sorted(notices) == sorted(f"sandbox kept at {p}" for p in paths)
    for p in paths:  # the test cleans up what it asked to keep
        shutil.rmtree(Path(p).parent.parent, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=repo, check=True)


def test_root_agent_can_run_in_an_existing_repl(config: Config) -> None:
    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        return "```python\ny = x * 2\nFINAL(f'{y} {context}')\n```"

    model = register_scripted("existing-repl", respond)
    sb = LocalSandbox(SandboxSpec("nb-session", "root", NO_TARGET, _notebook))
    sb.start()
    try:
        sb.push("x", 21)
        sb.execute("context = 'ctx'", timeout=10)
        for _ in range(2):  # a second run in the same REPL starts clean
            run = Run("double x", config=config(model), root_sandbox=sb, context_desc="a str")
            res = run.execute()
            assert (res.status, res.answer) == ("done", "42 ctx")
            assert run.root_sandbox is sb
        assert sb.execute("print(y)", timeout=10).output == "42\n"
        assert sb.spec.handler is _notebook and not sb.closed
    finally:
        sb.close()


def test_a_root_repl_given_as_a_function_starts_during_the_first_llm_call(config: Config) -> None:
    """The notebook's first `%%rlm`: the root's first LLM call goes out while its sandbox is
    still starting (the starter waits for that call), and the sandbox, the notebook's, stays
    open with its handler back."""
    asked = threading.Event()

    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        asked.set()
        return "```python\nFINAL(str(6 * 7))\n```"

    made: list[LocalSandbox] = []

    def start() -> LocalSandbox:
        assert asked.wait(30), "the sandbox was asked for before the first LLM call went out"
        sb = LocalSandbox(SandboxSpec("nb-lazy", "root", NO_TARGET, _notebook))
        made.append(sb)
        sb.start()
        return sb

    try:
        res = Run(
            "answer", config=config(register_scripted("lazy-root", respond)), root_sandbox=start
        ).execute()
        assert (res.status, res.answer) == ("done", "42"), res.error
        (sb,) = made
        assert sb.spec.handler is _notebook and not sb.closed
    finally:
        for sb in made:
            sb.close()


def test_a_root_repl_that_cannot_start_ends_the_run_with_a_clear_error(config: Config) -> None:
    def start() -> Any:
        raise RuntimeError("no room for a kernel")

    model = register_scripted("no-root", lambda _m, _i: "```python\nFINAL('x')\n```")
    res = Run("answer", config=config(model), root_sandbox=start).execute()
    assert res.status == "error"
    assert "could not start the notebook's sandbox: no room for a kernel" in (res.error or "")


def test_a_childs_sandbox_is_made_once_its_first_llm_request_is_on_its_way(config: Config) -> None:
    """Twelve sandboxes made at once compete with the children's first LLM requests for the
    host: each child's own sandbox is started after its first LLM call (which it still gets long
    before a reply of seconds), and every child ends with one, removed when it ends."""
    events: list[Event] = []
    res = Run("rlm fan-out", None, config=config("speed.py"), on_event=events.append).execute()
    assert res.status == "done", res.error
    children = {str(e.agent_id) for e in events if e.agent_id and e.agent_id != "root"}
    assert len(children) == 12
    for child in children:
        kinds = [e.type for e in events if e.agent_id == child]
        assert kinds.index(EventType.ITERATION_STARTED) < kinds.index(EventType.SANDBOX_READY)
