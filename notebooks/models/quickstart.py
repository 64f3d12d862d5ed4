"""Scripted model of 01-quickstart: the bundled demo's agent (`rlm_kernel/demo/model.py`).

It writes the code a good agent would for the demo task on the bundled `textkit` repository:
the root lists the TODOs, fans out one child per module (`rlm_query_batched`), each child asks a
grandchild to rate its TODO (`rlm_query` → `llm_query`), then the root fixes the easiest TODO
with `edit_file`, adds a test, runs it, and answers with `FINAL`. The code runs for real.
"""

from rlm_kernel.demo.model import LATENCY_S, respond

__all__ = ["LATENCY_S", "respond"]
