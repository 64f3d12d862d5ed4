"""What the bridge calls of a notebook's ordinary cells get (`NotebookBridge`).

An ordinary cell runs outside any ``%%rlm`` run: ``llm_query``/``llm_query_batched`` work, through
the runs' sub-LLM service (`llm.service.SubLLM`) with the notebook's configuration and the run
limits applied to each request; ``rlm_query``, ``FINAL``, ``SUBMIT`` and tools need a run and are
refused with a message saying so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .config import ConfigError, RLMConfig, load_dotenv_file
from .sandbox.bridge import BridgeRefused

__all__ = ["NotebookBridge"]


class NotebookBridge:
    """The bridge handler of the notebook's sandboxes.

    `config` gives the notebook's configuration (read at each request: `%rlm config` applies at
    once); `cancel` the cancel event of the running cell, if any (the Stop button ends its
    requests).
    """

    def __init__(
        self, config: Callable[[], RLMConfig], cancel: Callable[[], threading.Event | None]
    ) -> None:
        self._config = config
        self._cancel = cancel

    def __call__(self, op: str, args: dict[str, Any]) -> Any:
        """Answer one bridge request: `llm_query` works, the rest needs a run."""
        if op == "llm_query":
            return self.llm_queries([str(p) for p in args.get("prompts") or []], args.get("model"))
        if op == "final" and args.get("via") == "answer":
            return True  # `answer["ready"] = True` in a plain cell: there is no run to finish
        name = {
            "rlm_query": "rlm_query",
            "final": str(args.get("via") or "FINAL"),
            "submit": "SUBMIT",
            "tool": f"the tool {args.get('name')!r}",
        }.get(op, op)
        raise BridgeRefused(f"{name} is available inside %%rlm runs; start one with %%rlm")

    def llm_queries(self, prompts: list[str], model: str | None) -> list[str]:
        """`llm_query(_batched)` from a plain cell: the run's service (`SubLLM`), with the
        notebook's configuration; the run limits apply to each request."""
        from .control import Budget
        from .llm import LLMClient
        from .llm.service import SubLLM

        try:
            cfg = self._config()
        except ConfigError as exc:
            raise BridgeRefused(f"llm_query: {exc}") from exc
        load_dotenv_file()
        budget = Budget(cfg.rlm, time.monotonic())
        service = SubLLM(
            LLMClient.from_config(cfg),
            cfg.sub_model_name,
            budget=lambda: budget,
            width=4 * cfg.rlm.max_concurrency,
        )
        info = {"agent_id": "root", "parent_id": None, "depth": 0, "kind": "llm_query"}
        return service.query(prompts, model, info=info, cancel=self._cancel(), agent_id="root")
