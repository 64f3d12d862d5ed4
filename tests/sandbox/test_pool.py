"""The run's pool of ready sandboxes: used by sub-agents, at the base commit, clean, same
environment as fresh sandboxes, within the sandbox budget, removed at the end of every run."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rlm_kernel import llm
from rlm_kernel.config import ConfigError, RLMConfig
from rlm_kernel.events import Event, EventType
from rlm_kernel.runner import Run
from rlm_kernel.sandbox.pool import AUTO_INITIAL, AUTO_MAX, pool_target

# What a child reports about its sandbox: where it is, whether the worktree is clean at which
# commit, and its environment (names and values) and working directory.
CHILD = """```python
import json, os, subprocess
def _git(*a):
    return subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()
FINAL(json.dumps({"head": _git("rev-parse", "HEAD"), "status": _git("status", "--porcelain"),
                  "cwd": os.getcwd(), "env": dict(os.environ), "names": sorted(
                  n for n in globals() if not n.startswith("_"))}))
```"""


def _wait_for(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the pool")
        time.sleep(0.02)


def _model(holder: dict[str, Run], wait_pool: int, tasks: int = 1) -> str:
    """Root: (wait until the pool holds `wait_pool` sandboxes) spawn `tasks` children, FINAL."""

    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        if info["depth"] >= 1:
            return CHILD
        if info["iteration"] == 0:
            pool = holder["run"]._sandboxes.pool
            if wait_pool:
                assert pool is not None
                _wait_for(lambda: pool.ready >= wait_pool)
            return f"```python\nimport json\nr = rlm_query_batched(['report'] * {tasks})\n```"
        return "```python\nFINAL(json.dumps([str(x) for x in r]))\n```"

    return llm.register_scripted(f"pool-{uuid.uuid4().hex[:8]}", respond)


def _run(
    config: Callable[..., RLMConfig], repo: Path | None, wait_pool: int, tasks: int = 1, **kw: Any
) -> tuple[Run, Any, list[Event]]:
    holder: dict[str, Run] = {}
    events: list[Event] = []
    cfg = config(_model(holder, wait_pool, tasks), **kw)
    run = Run("pool test", repo, config=cfg, on_event=events.append)
    holder["run"] = run
    res = run.execute()
    assert res.status == "done", res.error
    return run, res, events


def _children(res: Any) -> list[dict[str, Any]]:
    return [json.loads(x) for x in json.loads(res.answer)]


def _sandbox_ids(events: list[Event]) -> dict[str, str]:
    return {
        str(e.agent_id): e.data["sandbox"]["id"]
        for e in events
        if e.type is EventType.SANDBOX_READY
    }


def test_pool_target_sizes() -> None:
    assert pool_target("auto", 16, 5, 0) == 0  # nothing until the run delegates twice (runner)
    assert pool_target("auto", 16, 5, 1) == AUTO_INITIAL
    assert pool_target("auto", 16, 5, 5) == 5  # grows to the widest batch seen
    assert pool_target("auto", 16, 5, 100) == AUTO_MAX
    assert pool_target("auto", 3, 5, 100) == 3  # never above max_concurrency
    assert pool_target("auto", 16, 0, 0) == 0  # root-only runs start no sub-agent
    assert pool_target(0, 16, 5, 9) == 0
    assert pool_target(5, 16, 5, 0) == 5


def test_pool_size_config_accepts_auto_and_counts() -> None:
    assert RLMConfig().sandbox.pool_size == "auto"
    cfg = RLMConfig().with_overrides({"sandbox.pool_size": "3"}, parse_strings=True)
    assert cfg.sandbox.pool_size == 3
    for bad in (-1, "many", True, 1.5):
        with pytest.raises(ConfigError, match=r"'sandbox\.pool_size' must be 'auto' or an integer"):
            RLMConfig().with_overrides({"sandbox.pool_size": bad})


def test_child_gets_a_pooled_sandbox_at_the_base_commit_clean_with_the_same_env(
    config: Callable[..., RLMConfig], make_repo: Callable[..., Path]
) -> None:
    repo = make_repo()
    run, res, events = _run(config, repo, wait_pool=1, sandbox__pool_size=2)
    ids = _sandbox_ids(events)
    assert "/pool-" in ids["root.0"], ids  # served from the pool
    assert run._sandboxes.pool is not None and run._sandboxes.pool.taken == 1
    (pooled,) = _children(res)
    _, fresh_res, fresh_events = _run(config, repo, wait_pool=0, sandbox__pool_size=0)
    assert "/pool-" not in _sandbox_ids(fresh_events)["root.0"]
    (fresh,) = _children(fresh_res)
    head = run.target.commit
    assert pooled["head"] == fresh["head"] == head
    assert pooled["status"] == fresh["status"] == ""  # clean worktrees
    assert pooled["cwd"].endswith("/work")
    assert pooled["names"] == fresh["names"]  # same REPL functions
    # The same environment, except the paths that name the sandbox itself.
    own = {k for k, v in pooled["env"].items() if "pool-" in v}
    assert set(pooled["env"]) == set(fresh["env"])
    assert {k: v for k, v in pooled["env"].items() if k not in own} == {
        k: v for k, v in fresh["env"].items() if k not in own
    }


def test_pool_stays_within_the_sandbox_budget(
    config: Callable[..., RLMConfig], make_repo: Callable[..., Path]
) -> None:
    repo = make_repo()
    # Root + 1 child allowed: the pool may hold one sandbox, never two.
    run, res, _ = _run(
        config, repo, wait_pool=1, tasks=2, rlm__max_sandboxes=2, sandbox__pool_size=4
    )
    pool = run._sandboxes.pool
    assert pool is not None and pool.created == 1 and pool.taken == 1
    children = json.loads(res.answer)
    assert "sandbox budget exhausted" in children[1]
    # Root only: nothing is ever prepared.
    run, _, _ = _run(config, repo, wait_pool=0, tasks=1, rlm__max_sandboxes=1)
    assert run._sandboxes.pool is not None and run._sandboxes.pool.created == 0


def test_no_pool_for_root_only_runs(config: Callable[..., RLMConfig]) -> None:
    run, _, _ = _run(config, None, wait_pool=0, rlm__max_depth=0)
    assert run._sandboxes.pool is None


def test_auto_prepares_nothing_for_a_run_that_never_delegates(
    config: Callable[..., RLMConfig], make_repo: Callable[..., Path]
) -> None:
    repo = make_repo()
    model = llm.register_scripted(
        f"pool-{uuid.uuid4().hex[:8]}",
        lambda messages, info: "```python\nimport time; time.sleep(0.5)\nFINAL('alone')\n```",
    )
    run = Run("t", repo, config=config(model))
    assert run.execute().status == "done"
    assert run._sandboxes.pool is not None and run._sandboxes.pool.created == 0


def test_unused_pooled_sandboxes_are_removed_when_the_run_ends(
    config: Callable[..., RLMConfig], make_repo: Callable[..., Path]
) -> None:
    repo = make_repo()
    holder: dict[str, Run] = {}

    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        pool = holder["run"]._sandboxes.pool
        assert pool is not None
        _wait_for(lambda: pool.ready >= 2)
        return "```python\nFINAL('no children')\n```"

    cfg = config(
        llm.register_scripted(f"pool-{uuid.uuid4().hex[:8]}", respond), sandbox__pool_size=2
    )
    run = Run("t", repo, config=cfg)
    holder["run"] = run
    assert run.execute().status == "done"
    assert run._sandboxes.pool is not None and run._sandboxes.pool.closed
    # no_leftovers checks kernels, directories and worktrees


def test_cancel_while_the_pool_fills_leaves_nothing(
    config: Callable[..., RLMConfig], make_repo: Callable[..., Path]
) -> None:
    repo = make_repo()
    holder: dict[str, Run] = {}

    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        run = holder["run"]
        _wait_for(lambda: run._sandboxes.pool is not None and run._sandboxes.pool._creating > 0)
        run.cancel()
        return "```python\nx = 1\n```"

    cfg = config(
        llm.register_scripted(f"pool-{uuid.uuid4().hex[:8]}", respond), sandbox__pool_size=2
    )
    run = Run("t", repo, config=cfg)
    holder["run"] = run
    assert run.execute().status == "cancelled"


def test_auto_grows_to_a_batch_width_only_once_it_is_seen_twice(
    config: Callable[..., RLMConfig], make_repo: Callable[..., Path]
) -> None:
    """One wide batch is served by fresh sandboxes; the pool starts at the run's second
    delegation and prepares for a width only when the run repeats it (a pool made for a batch
    that never comes again only costs CPU and memory)."""
    holder: dict[str, Any] = {"targets": []}

    def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
        if info["depth"] >= 1:
            return "```python\nFINAL('ok')\n```"
        pool = holder["run"]._sandboxes.pool
        holder["targets"].append(pool._target() if pool is not None else None)
        if info["iteration"] < 2:
            return "```python\nr = rlm_query_batched(['report'] * 3)\n```"
        if info["iteration"] == 2:
            return "```python\nr = rlm_query('one more')\n```"
        return "```python\nFINAL('done')\n```"

    model = llm.register_scripted(f"pool-{uuid.uuid4().hex[:8]}", respond)
    run = Run("pool test", make_repo(), config=config(model, rlm__max_concurrency=8))
    holder["run"] = run
    res = run.execute()
    assert res.status == "done", res.error
    # before any rlm_query, after one batch of 3 (nothing: it may be the run's only one), after
    # the second, after a call of width 1 (the width seen twice stays)
    assert holder["targets"] == [0, 0, 3, 3]


class _SlowSandbox:
    """Stands in for a sandbox whose preparation takes until `go` is set."""

    def __init__(self, go: Any) -> None:
        self.go = go
        self.closed = False

    def prepare(self, cancel: Any = None) -> None:
        self.go.wait(30)

    def close(self) -> None:
        self.closed = True


def test_take_waits_only_for_a_sandbox_whose_making_began_before_the_agent_asked() -> None:
    """A sandbox the filler began after the agent asked (at low priority) would come later than
    the agent's own: take() says "make your own"; one begun earlier is waited for."""
    import threading

    from rlm_kernel.sandbox.pool import SandboxPool

    go = threading.Event()
    made: list[_SlowSandbox] = []

    def make(n: int) -> Any:
        made.append(_SlowSandbox(go))
        return made[-1]

    pool = SandboxPool(make, lambda: 1, lambda: 10)
    asked_before = time.monotonic()
    pool.start()
    _wait_for(lambda: pool._creating == 1)
    try:
        assert pool.take(asked_at=asked_before) is None  # began after it asked: not waited for
        got: list[Any] = []
        taker = threading.Thread(target=lambda: got.append(pool.take(asked_at=time.monotonic())))
        taker.start()
        _wait_for(lambda: pool._claims == 1)  # began before: claimed, waited for
        go.set()
        taker.join(30)
        assert got == [made[0]]
    finally:
        go.set()
        pool.close()
