"""One agent's iteration loop on the host: LLM turn → code blocks → sandbox → output → next turn."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from .control import BudgetExceeded, Cancelled, Scope
from .events import (
    AgentFinished,
    AgentStarted,
    BudgetHit,
    CodeExecuted,
    HistoryFolded,
    IterationFinished,
    IterationStarted,
    LLMResponse,
    LLMText,
    Notice,
    Payload,
)
from .history import Fold, History, history_budget
from .llm import Completion, ContextWindowExceeded, LLMCancelled, LLMError, Usage
from .prompts import (
    AgentPromptInfo,
    extract_code_blocks,
    format_cell_outputs,
    no_code_prompt,
    system_prompt,
    task_prompt,
    truncate_middle,
)
from .sandbox.base import NO_CONTEXT, CellResult, Sandbox, SandboxError
from .sandbox.bridge import BridgeRefused

if TYPE_CHECKING:
    from .runner import Run

__all__ = ["Agent", "AgentOutcome"]

CHILDREN_GRACE_S = 30.0
"""How long an ending agent waits for its cancelled children to finish (and be recorded) first."""
_MAX_EMPTY_REPLIES = 3  # consecutive empty LLM replies that end an agent


class AgentOutcome:
    """How an agent ended: its answer (always set), status, patch and error."""

    def __init__(
        self,
        agent_id: str,
        text: str,
        status: str,
        patch: str = "",
        error: str | None = None,
        value: Any = None,
    ) -> None:
        self.agent_id = agent_id
        self.text = text
        self.status = status
        self.patch = patch
        self.error = error
        self.value = value if value is not None else text

    def to_reply(self, limit: int) -> dict[str, Any]:
        """What `rlm_query` returns to the parent's REPL."""
        return {
            "text": truncate_middle(self.text, limit),
            "agent_id": self.agent_id,
            "patch": self.patch,
            "status": self.status,
        }


class Agent:
    """An agent: a task, a sandbox, and the loop that drives the model."""

    def __init__(
        self, run: Run, agent_id: str, parent: Agent | None, task: str, context: Any = NO_CONTEXT
    ) -> None:
        self.run = run
        self.agent_id = agent_id
        self.parent = parent
        self.depth: int = 0 if parent is None else parent.depth + 1
        self.task = task
        self.context = context
        self.scope = Scope(parent.cell_scope if parent else run.scope)
        self.cell_scope: Scope = Scope(self.scope)
        self.usage = Usage()
        self.final: Any = None
        self.has_final = False
        self.iteration = 0
        self.sandbox: Sandbox | None = None
        self._child_count = 0
        self._lock = threading.Lock()
        self._spawned: list[str] = []
        self.child_threads: list[threading.Thread] = []  # the loops of its rlm_query children
        # Its fresh sandbox waits for these (run_sandboxes.SANDBOX_HEAD_START_S).
        self.first_call = threading.Event()  # it reached its first LLM call (or ended)
        self.first_reply = threading.Event()  # that call returned (or the agent ended)

    # -- ids and events ---------------------------------------------------------------------------
    def next_child_id(self) -> str:
        """`<my id>.<n>`, n counting from 0 in spawn order."""
        with self._lock:
            n = self._child_count
            self._child_count += 1
        return f"{self.agent_id}.{n}"

    def emit(self, payload: Payload) -> None:
        """Emit an event about this agent."""
        self.run.emit(payload, self.agent_id)

    def llm_info(self, kind: str) -> dict[str, Any]:
        """The `info` a scripted model receives."""
        return {
            "run_id": self.run.run_id,
            "agent_id": self.agent_id,
            "parent_id": self.parent.agent_id if self.parent else None,
            "depth": self.depth,
            "task": self.task,
            "iteration": self.iteration,
            "kind": kind,
        }

    # -- bridge requests from this agent's sandbox ---------------------------------------------------
    def handle(self, op: str, args: dict[str, Any]) -> Any:
        """Answer one bridge request of this agent's REPL."""
        if op == "final":
            self.final, self.has_final = args.get("value", ""), True
            return True
        if op == "submit":
            fields = args.get("fields") or {}
            sig = self.run.signature if self.depth == 0 else None
            if sig is not None:
                problems = sig.validate(fields)
                if problems:
                    raise BridgeRefused("SUBMIT: " + "; ".join(problems))
            self.final, self.has_final = fields, True
            return True
        if op == "llm_query":
            return self.run.llm_queries(
                self, [str(p) for p in args.get("prompts", [])], args.get("model")
            )
        if op == "rlm_query":
            tasks = [str(t) for t in args.get("tasks", [])]
            contexts = args.get("contexts") or [None] * len(tasks)
            replies = self.run.spawn_children(self, tasks, contexts)
            self._spawned.extend(r["agent_id"] for r in replies if r.get("agent_id"))
            return replies
        if op == "tool":
            return self.run.call_tool(
                str(args.get("name")), list(args.get("args") or []), dict(args.get("kwargs") or {})
            )
        raise BridgeRefused(f"unknown request {op!r}")

    # -- the loop ----------------------------------------------------------------------------------
    def run_loop(self) -> AgentOutcome:
        """Run until FINAL, a limit, an error or cancellation; always returns an answer."""
        run = self.run
        cfg = run.config.rlm
        self.emit(
            AgentStarted(
                parent_id=self.parent.agent_id if self.parent else None,
                depth=self.depth,
                task=self.task,
                started_at=time.time(),
            )
        )
        sandbox_future: Future[Sandbox] = run.start_sandbox(self)
        info = AgentPromptInfo(
            depth=self.depth,
            max_depth=cfg.max_depth,
            max_iterations=cfg.max_iterations,
            has_repo=run.target.is_repo,
            has_context=(self.context is not NO_CONTEXT and self.context is not None)
            or (self.parent is None and bool(run.context_desc)),
            context_desc=(
                run.context_desc
                if self.parent is None and run.context_desc
                else _describe(self.context)
            ),
            signature=run.signature if self.depth == 0 else None,
            tools=run.tool_specs,
            budget_note=run.budget.note(),
        )
        model = run.config.model.name
        history = History(
            system_prompt(info),
            task_prompt(self.task, info),
            lambda: history_budget(model, cfg.max_history_tokens),
        )
        status, error, last_text = "running", None, ""
        empty_replies = 0  # in a row: a provider that answers nothing should not burn every turn
        try:
            for index in range(cfg.max_iterations):
                self.iteration = index
                why = self._stop_reason()
                if why:
                    status, error = why
                    break
                self.emit(IterationStarted(index))
                self.first_call.set()
                try:
                    completion = self._turn(index, history)
                finally:
                    self.first_reply.set()
                text = completion.text
                last_text = text
                self.emit(LLMResponse(index, text, completion.usage.to_dict()))
                blocks = extract_code_blocks(text)
                empty_replies = 0 if text.strip() else empty_replies + 1
                if empty_replies >= _MAX_EMPTY_REPLIES:
                    self.emit(IterationFinished(index, None, no_code=True))
                    status, error = (
                        "error",
                        (
                            f"the model returned {empty_replies} empty replies in a row; check the "
                            "model name, model.max_tokens and the provider's status"
                        ),
                    )
                    break
                if not blocks:
                    history.add(text, no_code_prompt(text))
                    self.emit(IterationFinished(index, None, no_code=True))
                    continue
                replacement = run.at_step_gate(self, index, "\n\n".join(blocks))
                if replacement is not None:
                    blocks = [replacement]
                sandbox = self._sandbox(sandbox_future)
                results: list[tuple[str, str]] = []
                notes: list[str] = []
                died = False
                for bi, code in enumerate(blocks):
                    cell = self._execute(sandbox, code)
                    self.emit(
                        CodeExecuted(
                            index=index,
                            block=bi,
                            code=code,
                            output=cell.output,
                            error=cell.error,
                            elapsed_s=round(cell.elapsed_s, 4),
                            status=cell.status,
                            spawned=list(self._spawned),
                        )
                    )
                    results.append((code, cell.output))
                    if cell.status == "timeout":
                        notes.append(
                            f"[code block {bi + 1} was interrupted after exec_timeout="
                            f"{cfg.exec_timeout:g} s; variables it set before that are kept]"
                        )
                    if cell.status == "restarted":
                        notes.append(
                            "[the REPL did not stop when interrupted and was restarted: "
                            "ALL variables and imports are lost; files on disk are kept]"
                        )
                    if cell.status == "died":
                        died, error = True, cell.error or "the sandbox process died"
                        break
                    if self.has_final or cell.status in ("cancelled", "restarted"):
                        break
                if died:
                    status = "error"
                    break
                if self.scope.is_set() and not self.has_final:
                    status, error = self._cancel_status()
                    break
                namespace = sandbox.namespace_after_cell()
                self.emit(IterationFinished(index, namespace))
                if self.has_final:
                    status = "done"
                    break
                history.add(text, format_cell_outputs(results, cfg.output_truncation_limit, notes))
            else:
                status, error = "budget", f"max_iterations ({cfg.max_iterations}) reached"
                self.emit(BudgetHit("max_iterations", error))
        except (Cancelled, LLMCancelled):
            status, error = self._cancel_status()
        except BudgetExceeded as stop:
            status, error = "budget", str(stop)
            self.emit(BudgetHit(stop.limit, str(stop)))
        except (LLMError, SandboxError) as exc:
            # A cancel can surface as the failure it caused (a sandbox refused while starting).
            status, error = self._cancel_status() if self.scope.is_set() else ("error", str(exc))
        except Exception as exc:  # a bug in the engine must still give the agent an ending
            status, error = "error", f"internal error: {exc!r}"
            run.log_exception(self.agent_id)
        return self._finish(status, error, last_text, sandbox_future)

    def _turn(self, index: int, history: History) -> Completion:
        """The model's reply for turn `index`, streamed as `llm_text` events; the history is
        folded first when it outgrew its budget, and once more if the provider still finds the
        prompt too long."""
        fold = history.fit()
        if fold is not None:
            self.emit(_folded(index, fold, retry=False))

        def on_text(offset: int, text: str) -> None:
            self.emit(LLMText(index, offset, text))

        retried = False
        while True:
            messages = history.messages()
            try:
                completion = self.run.complete(self, messages, kind="agent", on_text=on_text)
            except ContextWindowExceeded as exc:
                fold = None if retried else history.shrink(exc.limit_tokens)
                if fold is None:
                    raise
                retried = True
                self.emit(_folded(index, fold, retry=True))
                continue
            history.observe(completion.usage.prompt_tokens, messages)
            return completion

    def _stop_reason(self) -> tuple[str, str] | None:
        if self.scope.is_set():
            return self._cancel_status()
        refusal = self.run.budget.llm_refusal()
        if refusal:
            raise BudgetExceeded(refusal)
        return None

    def _cancel_status(self) -> tuple[str, str]:
        why = self.scope.why() or "cancelled"
        return ("timeout" if "timeout" in why else "cancelled"), why

    def _sandbox(self, future: Future[Sandbox]) -> Sandbox:
        while True:
            if self.scope.is_set():
                raise Cancelled()
            try:
                sb = future.result(timeout=0.05)
            except TimeoutError:
                continue
            self.sandbox = sb
            return sb

    def _execute(self, sandbox: Sandbox, code: str) -> CellResult:
        run = self.run
        self.cell_scope = Scope(self.scope)
        self._spawned = []
        timeout = min(run.config.rlm.exec_timeout, max(0.1, run.budget.remaining_s()))
        with run.slot():
            cell = sandbox.execute(code, timeout=timeout, cancel=self.scope)
        if cell.status != "ok":
            self.cell_scope.cancel("the calling cell ended")  # stop children it left running
        return cell

    def _finish(
        self, status: str, error: str | None, last_text: str, future: Future[Sandbox]
    ) -> AgentOutcome:
        run = self.run
        self.first_call.set()
        self.first_reply.set()  # a sandbox still waiting for them is made (and then released)
        sandbox = self.sandbox
        if sandbox is None and future.done() and future.exception() is None:
            sandbox = future.result()
        elif sandbox is None:
            future.cancel()
        self.cell_scope.cancel("the agent ended")
        # Children end before their parent, so a cancelled tree is recorded whole (a child still
        # running when the run's record is finished would stay "running" in it for ever).
        deadline = time.monotonic() + CHILDREN_GRACE_S
        for t in list(self.child_threads):
            t.join(max(0.0, deadline - time.monotonic()))
        answered = status == "done"  # a final answer stays the answer, whatever happens next
        patch = ""
        if sandbox is not None:
            try:
                patch = sandbox.diff()
            except Exception as exc:
                where = sandbox.path
                if self.depth == 0 and run.target.is_repo:
                    # The run's product is the root's patch: never end "done" without it.
                    kept = os.path.isdir(where)
                    sandbox.spec.keep = kept  # its files stay for the user to recover
                    status = "error"
                    error = f"could not compute the root's patch: {exc}" + (
                        f"; its workspace is kept at {where}" if kept else ""
                    )
                level = "warning" if self.depth else "error"
                self.emit(Notice(level, f"could not compute the patch: {exc}"))
        if answered:
            value = self.final
            text = (
                value
                if isinstance(value, str)
                else json.dumps(value, ensure_ascii=False, default=str)
            )
        else:
            draft = (sandbox.answer_draft if sandbox else "") or _prose(last_text)
            reason = error or status
            text = f"[partial answer: {status}: {reason}]" + (f"\n{draft}" if draft else "")
            value = text
        run.release_sandbox(self, sandbox, future)
        outcome = AgentOutcome(self.agent_id, text, status, patch, error, value)
        self.emit(
            AgentFinished(
                status=status,
                result=value,
                error=error,
                usage=self.usage.to_dict(),
                finished_at=time.time(),
                patch=patch,
            )
        )
        return outcome


def _folded(index: int, fold: Fold, *, retry: bool) -> HistoryFolded:
    return HistoryFolded(
        index, fold.outputs, fold.turns, fold.tokens_before, fold.tokens_after, fold.budget, retry
    )


def _prose(text: str) -> str:
    """A reply without its code blocks, for partial answers."""
    out, inside = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            out.append(line)
    return "\n".join(out).strip()[:2000]


def _describe(value: Any) -> str:
    if value is NO_CONTEXT or value is None:
        return ""
    try:
        size = len(value)
    except TypeError:
        return type(value).__name__
    unit = "characters" if isinstance(value, str) else "items"
    return f"a {type(value).__name__} of {size:,} {unit}"
