"""Tests for rlm_kernel.history: an agent's messages folded to a token budget."""

from __future__ import annotations

from typing import Any

import pytest

from rlm_kernel.history import DEFAULT_BUDGET_TOKENS, KEEP_LAST, History, history_budget
from rlm_kernel.llm import register_scripted


def _history(budget: int, turns: int, output_chars: int = 4000) -> History:
    h = History("system prompt", "Task:\nsum things", budget)
    h.chars_per_token = 4.0
    for i in range(turns):
        h.add(f"```python\nv{i} = {i}\nprint(v{i})\n```", f"Output:\n{'x' * output_chars}")
    return h


def _contents(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages]


def test_within_the_budget_nothing_changes() -> None:
    h = _history(100_000, 5)
    before = h.messages()
    assert h.fit() is None
    assert h.messages() == before
    assert [m["role"] for m in before] == ["system", "user"] + ["assistant", "user"] * 5


def test_outputs_fold_first_oldest_first_and_the_last_turns_stay_whole() -> None:
    h = _history(6000, 10)  # ~10,000 tokens of outputs
    fold = h.fit()
    assert fold is not None and fold.turns == 0 and fold.outputs >= 1
    assert fold.tokens_before > 6000 >= 0.6 * 6000 >= fold.tokens_after
    msgs = h.messages()
    assert _contents(msgs)[:2] == ["system prompt", "Task:\nsum things"]
    # every turn's code is still there; the oldest outputs are notes
    assert [m["content"] for m in msgs[2::2]] == [
        f"```python\nv{i} = {i}\nprint(v{i})\n```" for i in range(10)
    ]
    notes = [m["content"] for m in msgs[3::2][: fold.outputs]]
    assert notes[0] == (
        "[The output of turn 1 is elided to fit the context window (4,008 characters); the REPL "
        "still holds every variable that code set.]"
    )
    whole = [m["content"] for m in msgs[3::2][fold.outputs :]]
    assert len(whole) >= KEEP_LAST and all(len(c) == 4008 for c in whole)


def test_whole_turns_fold_into_one_note_after_the_task() -> None:
    h = History("system prompt", "Task:\nsum things", 300)
    h.chars_per_token = 4.0
    for i in range(40):
        h.add(f"```python\nv{i} = {i}  # {'c' * 100}\n```", f"Output:\n{i}")
    fold = h.fit()
    assert fold is not None and fold.turns > 0 and fold.outputs >= fold.turns
    msgs = h.messages()
    assert msgs[2]["role"] == "user"
    assert msgs[2]["content"].startswith(f"[Turns 1-{fold.turns} are elided to fit the context")
    assert "still in the REPL" in msgs[2]["content"] and "SHOW_VARS()" in msgs[2]["content"]
    assert msgs[3]["content"].startswith(f"```python\nv{fold.turns} = {fold.turns}")
    assert len(msgs) - 3 >= 2 * KEEP_LAST
    assert msgs[-1]["content"] == "Output:\n39"


def test_folding_is_rare_so_the_prefix_stays_the_same_between_folds() -> None:
    h = _history(8000, 0)
    folds = 0
    stable = 0
    previous: list[dict[str, Any]] = []
    for i in range(40):
        h.add(f"```python\nprint({i})\n```", "y" * 2000)
        fold = h.fit()
        folds += fold is not None
        msgs = h.messages()
        if fold is None and previous:
            assert msgs[: len(previous)] == previous  # only grew at the end
            stable += 1
        previous = msgs
    assert folds <= 10 and stable >= 25


def test_a_context_error_lowers_the_budget_to_the_window_it_names() -> None:
    h = _history(1_000_000, 12)
    assert h.fit() is None
    fold = h.shrink(8000)
    assert fold is not None and h.budget == 6000
    assert h.tokens() <= 6000
    h2 = _history(1_000_000, 12)
    assert h2.shrink(None) is not None  # no number named: half of what was sent
    # nothing left to fold: None (the caller reports the provider's error)
    tiny = History("s", "t" * 10_000, 10)
    assert tiny.shrink(100) is None


def test_the_estimate_learns_from_the_providers_count() -> None:
    h = _history(10_000, 3)
    messages = h.messages()
    chars = sum(len(m["content"]) for m in messages)
    h.observe(chars // 2 + 4 * len(messages), messages)  # a provider counting 2 chars a token
    assert h.chars_per_token == pytest.approx(2.0, rel=0.01)
    h.observe(1, [{"role": "user", "content": "tiny"}])  # too small to learn from
    assert h.chars_per_token == pytest.approx(2.0, rel=0.01)


def test_the_budget_comes_from_config_or_the_models_window() -> None:
    assert history_budget("anything/at-all", 12_345) == 12_345
    assert history_budget("openai/gpt-4o-mini", None) == int(128_000 * 0.75)
    unknown = register_scripted("history-budget", lambda _m, _i: "ok")
    assert history_budget(unknown, None) == DEFAULT_BUDGET_TOKENS
    asked: list[int] = []

    def budget() -> int:
        asked.append(1)
        return 50

    lazy = History("s", "t", budget)
    assert lazy.fit() is None and not asked  # no turn yet: the budget is not needed
    lazy.add("a" * 400, "b" * 400)
    lazy.fit()
    lazy.fit()
    assert asked == [1]  # asked once
