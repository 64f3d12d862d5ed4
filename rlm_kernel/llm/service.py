"""`SubLLM`: the one `llm_query`/`llm_query_batched` service, for runs and for notebook cells.

Every prompt is one plain LLM call (a single user message). The calls of a batch run at once on
the LLM loop (at most `width` in flight). A run's budget is drawn from before each call and
charged after it; a failed or refused prompt gives ``"Error: ..."`` in its slot (the code that
asked goes on), and every prompt gives one `llm_query` event (prompt, response, model, usage,
error).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..events import LLMQuery
from .client import LLMClient
from .errors import LLMCancelled, LLMError
from .usage import Completion, Usage

__all__ = ["BudgetLike", "QueryEmitter", "SubLLM"]


class BudgetLike(Protocol):
    """What the service needs of a budget (`control.Budget`)."""

    def reserve_llm_call(self) -> str | None: ...
    def charge(self, used: Usage) -> None: ...
    def remaining_s(self) -> float: ...


QueryEmitter = Callable[[str | None, LLMQuery], None]
"""Called as `emit(agent_id, LLMQuery(prompt, response, model, error, usage))` once per prompt."""


class SubLLM:
    """Answers `llm_query(_batched)`: the client, the default model, a budget and an emitter."""

    def __init__(
        self,
        client: LLMClient,
        default_model: str,
        *,
        budget: Callable[[], BudgetLike | None] | None = None,
        emit: QueryEmitter | None = None,
        width: int = 64,
    ) -> None:
        """`budget` returns the budget of the moment (a run replaces its own when it starts);
        None: unlimited."""
        self.client = client
        self.default_model = default_model
        self._budget = budget
        self.emit = emit
        self.width = max(1, width)

    @property
    def budget(self) -> BudgetLike | None:
        """The budget calls are drawn from (None: unlimited)."""
        return self._budget() if self._budget is not None else None

    def query(
        self,
        prompts: list[str],
        model: str | None = None,
        *,
        info: Mapping[str, Any] | None = None,
        cancel: threading.Event | None = None,
        agent_id: str | None = None,
        usage: Usage | None = None,
    ) -> list[str]:
        """One answer per prompt, in order: the reply's text or ``"Error: ..."``. `usage` (an
        agent's) is charged too."""
        name = model or self.default_model
        budget = self.budget
        answers: list[str | None] = [None] * len(prompts)
        asked: list[int] = []
        for i, prompt in enumerate(prompts):
            refusal = budget.reserve_llm_call() if budget is not None else None
            if refusal:
                answers[i] = self._failed(agent_id, prompt, name, refusal)
            else:
                asked.append(i)
        limit = self.client.timeout
        if budget is not None:
            limit = max(0.1, min(limit, budget.remaining_s()))
        outcomes: list[Completion | LLMError]
        try:
            outcomes = self.client.complete_many(
                [[{"role": "user", "content": prompts[i]}] for i in asked],
                model=name,
                info=info,
                cancel=cancel,
                timeout=limit,
                limit=self.width,
            )
        except LLMCancelled as exc:
            outcomes = [exc] * len(asked)
        for i, outcome in zip(asked, outcomes, strict=True):
            if isinstance(outcome, LLMError):
                if budget is not None:
                    budget.charge(Usage())
                answers[i] = self._failed(agent_id, prompts[i], name, str(outcome))
                continue
            if budget is not None:
                budget.charge(outcome.usage)
            if usage is not None:
                usage.add(outcome.usage)
            if self.emit is not None:
                self.emit(
                    agent_id,
                    LLMQuery(
                        prompts[i], outcome.text, outcome.model, None, outcome.usage.to_dict()
                    ),
                )
            answers[i] = outcome.text
        return [a if a is not None else "Error: no answer" for a in answers]

    def _failed(self, agent_id: str | None, prompt: str, model: str, error: str) -> str:
        if self.emit is not None:
            self.emit(agent_id, LLMQuery(prompt, None, model, error))
        return f"Error: {error}"
