"""An agent's conversation with its model, kept within a token budget by folding old turns.

The messages are the system prompt, the task, then one turn per iteration: the model's reply
and what the host answered (the code's output, or a corrective prompt). Beyond the budget, the
oldest turns' outputs are replaced by a one-line note, then the oldest turns disappear into one
note after the task that says what was elided and that the REPL still holds everything they
made. The system prompt, the task and the last `KEEP_LAST` turns stay whole; the run record
keeps every turn (it is built from events, not from these messages).

Folding goes down to `REFILL` of the budget at once, so it happens rarely: between two folds the
messages only grow at the end, and the prefix a provider caches stays byte-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_BUDGET_TOKENS", "Fold", "History", "history_budget"]

DEFAULT_BUDGET_TOKENS = 64_000
"""The budget when neither `rlm.max_history_tokens` nor litellm knows the model's window."""
WINDOW_SHARE = 0.75
"""Share of the model's context window the prompt may fill (the rest: the reply, and slack for
the estimate)."""
KEEP_LAST = 2
"""Turns that always stay whole."""
REFILL = 0.6
"""A fold goes down to this share of the budget."""
_MESSAGE_OVERHEAD = 4  # tokens a provider adds per message (role, separators)


@dataclass(frozen=True)
class Fold:
    """What one fold did: turns whose output, and turns that as a whole, are now elided."""

    outputs: int
    turns: int
    tokens_before: int
    tokens_after: int
    budget: int

    def to_event(self) -> dict[str, int]:
        """The data of a `history_folded` event."""
        return {
            "outputs": self.outputs,
            "turns": self.turns,
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "budget": self.budget,
        }


def history_budget(model: str, configured: int | None) -> int:
    """The token budget of an agent's prompt: `rlm.max_history_tokens`, else ¾ of the model's
    context window per litellm, else `DEFAULT_BUDGET_TOKENS`."""
    if configured:
        return int(configured)
    from .llm import pricing

    window: Any
    if model.partition("/")[0] in pricing.PRICED_PROVIDERS:
        window = pricing.context_window(model)  # litellm's figure, without importing it
    else:
        from .llm.runtime import import_litellm

        try:
            info = import_litellm().get_model_info(model)
        except Exception:  # not in litellm's map (scripted models, local servers)
            return DEFAULT_BUDGET_TOKENS
        window = info.get("max_input_tokens") or info.get("max_tokens")
    if not isinstance(window, int) or window <= 0:
        return DEFAULT_BUDGET_TOKENS
    return int(window * WINDOW_SHARE)


class History:
    """The messages of one agent, folded to stay within `budget` tokens (an estimate from
    characters, calibrated by the prompt tokens the provider reports)."""

    def __init__(self, system: str, task: str, budget: int | Callable[[], int]) -> None:
        self.system = system
        self.task = task
        self._budget = budget  # a callable is asked once, when the first turn is added
        self.turns: list[tuple[str, str]] = []  # (the model's reply, the host's answer)
        self.folded_outputs = 0  # turns [0, folded_outputs) show a note instead of their output
        self.folded_turns = 0  # turns [0, folded_turns) are gone into the note after the task
        self.chars_per_token = 3.0  # cautious until the provider has counted a prompt

    @property
    def budget(self) -> int:
        """The token budget of the messages."""
        if callable(self._budget):
            self._budget = self._budget()
        return max(1, int(self._budget))

    @budget.setter
    def budget(self, value: int) -> None:
        self._budget = value

    def add(self, reply: str, answer: str) -> None:
        """One finished turn: the model's reply and the host's answer to it."""
        self.turns.append((reply, answer))

    def messages(self) -> list[dict[str, Any]]:
        """The messages to send: system prompt, task, fold note, then the turns."""
        out: list[dict[str, Any]] = [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.task},
        ]
        if self.folded_turns:
            out.append({"role": "user", "content": self._turns_note()})
        for i in range(self.folded_turns, len(self.turns)):
            reply, answer = self.turns[i]
            shown = _output_note(i, answer) if i < self.folded_outputs else answer
            out += [{"role": "assistant", "content": reply}, {"role": "user", "content": shown}]
        return out

    def tokens(self) -> int:
        """Estimated prompt tokens of `messages()`."""
        messages = self.messages()
        chars = sum(len(m["content"]) for m in messages)
        return int(chars / self.chars_per_token) + _MESSAGE_OVERHEAD * len(messages)

    def observe(self, prompt_tokens: int, messages: list[dict[str, Any]]) -> None:
        """Calibrate the estimate with the prompt tokens the provider counted for `messages`."""
        chars = sum(len(str(m.get("content") or "")) for m in messages)
        counted = prompt_tokens - _MESSAGE_OVERHEAD * len(messages)
        if chars >= 2000 and counted > 0:
            self.chars_per_token = min(6.0, max(1.5, chars / counted))

    def fit(self) -> Fold | None:
        """Fold when the messages exceed the budget; what was folded, or None."""
        if not self.turns:
            return None  # nothing to fold (and no need to learn the budget yet)
        before = self.tokens()
        if before <= self.budget:
            return None
        target = self.budget * REFILL
        outputs, turns = self.folded_outputs, self.folded_turns
        last = len(self.turns) - KEEP_LAST
        while self.folded_outputs < last and self.tokens() > target:
            self.folded_outputs += 1
        while self.folded_turns < self.folded_outputs and self.tokens() > target:
            self.folded_turns += 1
        if (outputs, turns) == (self.folded_outputs, self.folded_turns):
            return None  # nothing left to fold: the whole turns are too long
        return Fold(self.folded_outputs, self.folded_turns, before, self.tokens(), self.budget)

    def shrink(self, limit_tokens: int | None) -> Fold | None:
        """After the provider refused the prompt as too long: lower the budget (to the share of
        the window it named, or to half of this prompt) and fold; None if nothing could fold."""
        now = self.tokens()
        lower = int(limit_tokens * WINDOW_SHARE) if limit_tokens else now // 2
        self.budget = max(1, min(self.budget, lower, now - 1))
        return self.fit()

    def _turns_note(self) -> str:
        chars = sum(len(r) + len(a) for r, a in self.turns[: self.folded_turns])
        span = "Turn 1 is" if self.folded_turns == 1 else f"Turns 1-{self.folded_turns} are"
        return (
            f"[{span} elided to fit the context window: your code and its output "
            f"({chars:,} characters). Everything that code made - variables, functions, imports, "
            "files - is still in the REPL: inspect it with code (SHOW_VARS() lists the "
            "variables).]"
        )


def _output_note(index: int, answer: str) -> str:
    return (
        f"[The output of turn {index + 1} is elided to fit the context window "
        f"({len(answer):,} characters); the REPL still holds every variable that code set.]"
    )
