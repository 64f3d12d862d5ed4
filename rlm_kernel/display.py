"""Notebook outputs of the magics: live progress, step controls, the answer, the patch, tables.

Everything here turns engine data (events, records, results) into Jupyter mime bundles: a
`RunView` subscribes to a run's events and folds them; nothing calls into the engine except
through a run's public controls (pause, step, resume, cancel).
"""

from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .answer import answer_bundle
from .console import ICONS, render_tree, summary_line
from .events import Event, GateState, GateWaiter
from .records import TreeState

if TYPE_CHECKING:
    from .runner import Run

__all__ = [
    "RunView",
    "StepControls",
    "answer_bundle",
    "diff_bundle",
    "gate_text",
    "result_bundles",
    "show",
    "summary_text",
    "table_bundle",
]

Bundle = dict[str, Any]
REFRESH_S = 0.25  # at most 4 progress updates per second
_GATE_CODE_LINES = 30  # lines of a waiting agent's proposed code in the cell's text output


def show(bundle: Bundle, *, display_id: bool = False) -> Any:
    """Display a mime bundle in the current cell; returns the DisplayHandle when asked for one."""
    from IPython.display import display

    return display(bundle, raw=True, display_id=display_id or None)  # type: ignore[no-untyped-call]


# -- the answer, the patch, the summary ------------------------------------------------------------


def _diff_stats(patch: str) -> tuple[int, int, int]:
    files = plus = minus = 0
    for ln in patch.splitlines():
        if ln.startswith("diff --git "):
            files += 1
        elif ln.startswith("+") and not ln.startswith("+++"):
            plus += 1
        elif ln.startswith("-") and not ln.startswith("---"):
            minus += 1
    return files, plus, minus


_DIFF_STYLES = {
    "+": "color: var(--jp-success-color0, #1a7f37); background: var(--jp-success-color3, #e6ffec)",
    "-": "color: var(--jp-error-color0, #cf222e); background: var(--jp-error-color3, #ffebe9)",
    "@": "color: var(--jp-info-color0, #0969da)",
    "h": "color: var(--jp-ui-font-color1, #1f2328); font-weight: bold",
}


def _diff_line_style(ln: str) -> str | None:
    if ln.startswith(("diff --git", "+++", "---", "index ", "new file", "deleted file")):
        return _DIFF_STYLES["h"]
    if ln.startswith("@@"):
        return _DIFF_STYLES["@"]
    return _DIFF_STYLES.get(ln[:1]) if ln[:1] in "+-" else None


def diff_bundle(patch: str, path: str | None = None) -> Bundle:
    """A git patch as `text/x-diff`, coloured `text/html` (JupyterLab theme colours) and text."""
    files, plus, minus = _diff_stats(patch)
    head = f"patch: {files} file{'s' * (files != 1)} changed, +{plus} −{minus}"
    if path:
        head += f" · saved to {path}"
    rows = []
    for ln in patch.splitlines():
        style = _diff_line_style(ln)
        esc = html.escape(ln) or " "
        rows.append(f'<span style="{style}">{esc}</span>' if style else esc)
    body = "\n".join(rows)
    html_text = (
        '<div class="rlm-diff">'
        f'<div style="color: var(--jp-ui-font-color2, #59636e); '
        f'font-size: var(--jp-ui-font-size1, 13px); margin-bottom: 2px">{html.escape(head)}</div>'
        '<pre style="margin: 0; padding: 4px 6px; overflow-x: auto; '
        "color: var(--jp-content-font-color1, #1f2328); "
        "background: var(--jp-cell-editor-background, #f6f8fa); "
        "border: 1px solid var(--jp-border-color2, #d1d9e0); "
        "font-family: var(--jp-code-font-family, monospace); "
        f'font-size: var(--jp-code-font-size, 13px)">{body}</pre></div>'
    )
    return {"text/x-diff": patch, "text/html": html_text, "text/plain": patch}


def summary_text(record: dict[str, Any], patch_path: str | None = None) -> str:
    """One line: status, the console summary (agents … time), the run id and the patch file."""
    status = str(record.get("status") or "running")
    line = (
        f"{ICONS.get(status, '?')} {status} — {summary_line(record)} · run {record.get('run_id')}"
    )
    return line + (f" · patch {patch_path}" if patch_path else "")


def gate_text(gate: GateState) -> str:
    """What a paused or stepping run waits for, in words ("" while it runs freely or has ended):
    who waits at the step gate, and the code it proposes to run.

    Shown as the cell's text output under the tree, so a notebook read without widget state
    (GitHub, nbviewer, an editor without the widget) still says why the run stands still.
    """
    if not gate.paused:
        return ""
    how = "Step or Continue in the tree above, or %rlm step / %rlm continue"
    waiting = gate.waiting
    if not waiting:
        return f"‖ paused (step mode): each agent stops before running its next code ({how})"
    head, rest = waiting[0], waiting[1:]
    more = ""
    if rest:  # agent ids, in the order they will be let through
        names = ", ".join(str(w["agent_id"]) for w in rest[:5]) + (", …" if len(rest) > 5 else "")
        more = f" ({len(rest)} more wait{'s' * (len(rest) == 1)}: {names})"
    code = str(head.get("code", "")).rstrip().splitlines()
    shown = [f"    {ln}" for ln in code[:_GATE_CODE_LINES]]
    if len(code) > _GATE_CODE_LINES:
        shown.append(f"    … ({len(code) - _GATE_CODE_LINES} more lines)")
    # iterations counted from 1, as the tree's own label says it
    return "\n".join(
        [
            f"‖ {head['agent_id']}, iteration {int(str(head['index'])) + 1}, waits at the step "
            f"gate to run this code{more} ({how}):",
            *shown,
        ]
    )


def table_bundle(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> Bundle:
    """A small table as HTML with an aligned-text fallback."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    plain = "\n".join(
        fmt.format(*r).rstrip() for r in [list(headers), ["-" * w for w in widths], *cells]
    )
    th = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in headers)
    trs = "".join(
        "<tr>"
        + "".join(f"<td style='text-align:left'><code>{html.escape(c)}</code></td>" for c in r)
        + "</tr>"
        for r in cells
    )
    return {"text/html": f"<table><tr>{th}</tr>{trs}</table>", "text/plain": plain}


# -- live progress ----------------------------------------------------------------------------------


class StepControls:
    """Pause / Step / Continue / Cancel buttons and the pending code (editable) for `--step` runs."""

    def __init__(self, run: Run) -> None:
        import ipywidgets as w  # type: ignore[import-untyped]

        self.run = run
        self.proposal: str | None = None  # the model's code shown in the editor
        self.label = w.HTML("")
        self.code = w.Textarea(
            placeholder="the code the model proposes appears here; edit it, then Step",
            layout=w.Layout(width="100%", height="10em"),
        )
        buttons = [
            ("Pause", "pause", self._pause),
            ("Step", "step-forward", self._step),
            ("Continue", "play", self._continue),
            ("Cancel", "stop", self._cancel),
        ]
        self.buttons = []
        for text, icon, handler in buttons:
            b = w.Button(description=text, icon=icon, layout=w.Layout(width="auto"))
            b.on_click(handler)
            self.buttons.append(b)
        self.widget = w.VBox([w.HBox([*self.buttons, self.label]), self.code])

    def _pause(self, _: Any) -> None:
        self.run.pause()

    def _step(self, _: Any) -> None:
        edited = self.code.value
        self.run.step(edited if self.proposal is not None and edited != self.proposal else None)
        self.proposal = None

    def _continue(self, _: Any) -> None:
        self.run.resume()

    def _cancel(self, _: Any) -> None:
        self.run.cancel()

    def update(self, gate: GateState) -> None:
        """Show the oldest waiting agent's proposal (unless the user is editing it)."""
        waiting: Sequence[GateWaiter] = gate.waiting
        if gate.ended:
            for b in self.buttons:
                b.disabled = True
            self.code.disabled = True
            self.label.value = "run finished"
            return
        if not waiting:
            paused = gate.stepping
            self.label.value = "step mode: waiting for a proposal…" if paused else "running…"
            return
        head = waiting[0]
        code = str(head.get("code", ""))
        self.label.value = html.escape(
            f"{head.get('agent_id')} iteration {head.get('index')} is waiting"
            + (f" (+{len(waiting) - 1} more)" if len(waiting) > 1 else "")
        )
        if self.proposal != code and (self.proposal is None or self.code.value == self.proposal):
            self.proposal = code
            self.code.value = code


class RunView:
    """Consumes a run's events and shows the tree plus a summary line, updated in place (throttled).

    `__call__` (the event sink: `run.subscribe(view)`) runs on engine threads and only folds
    state (the tree and the step gate); `refresh()` renders what changed, and is called from the
    thread that owns the output (the cell's loop or a watcher).
    """

    def __init__(self, run: Run, *, quiet: bool = False, notebook: bool = True) -> None:
        self.run = run
        self.quiet = quiet
        self.notebook = notebook
        self.state = TreeState()
        self._gate_state = GateState()
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._version = 0
        self._shown = -1
        self._last = 0.0
        self._handle: Any = None
        self._console: Callable[[Event], None] | None = None
        self.controls: StepControls | None = None
        self.widget: Any = None
        self._gate: Any = None  # the text line saying what a paused run waits for
        self._gate_text = ""
        self._cell = _cell_id()  # the cell that started the run (outputs may be added there)
        if not notebook and not quiet:
            from .console import ConsoleProgress

            self._console = ConsoleProgress()

    def __call__(self, ev: Event) -> None:
        """Fold one event (engine thread)."""
        with self._lock:
            self.state.apply(ev)
            self._gate_state = self._gate_state.after(ev)
            self._version += 1
        if self._console is not None:
            self._console(ev)

    @property
    def gate(self) -> GateState:
        """The step gate as the events so far tell it."""
        with self._lock:
            return self._gate_state

    def record(self) -> dict[str, Any]:
        """A copy of the record so far (elapsed time filled in while running)."""
        with self._lock:
            rec: dict[str, Any] = json.loads(json.dumps(self.state.to_dict(), default=str))
        rec.setdefault("run_id", self.run.run_id)
        if rec.get("elapsed_s") is None:
            rec["elapsed_s"] = time.monotonic() - self.started
        return rec

    def text(self) -> str:
        """The progress text: tree, agents waiting at the step gate, summary line."""
        with self._lock:  # render while no engine thread changes the tree
            rec = self.state.to_dict()
            rec.setdefault("run_id", self.run.run_id)
            if rec.get("elapsed_s") is None:
                rec["elapsed_s"] = time.monotonic() - self.started
            lines = render_tree(rec.get("root")) or ["(starting…)"]
            summary = summary_text(rec)
            gate = self._gate_state
        if not gate.ended:
            for w in gate.waiting:
                lines.append(f"⏸ {w['agent_id']} iteration {w['index']} waits at the step gate")
        return "\n".join([*lines, summary])

    def start(self, step_controls: bool) -> None:
        """Show the live agent tree (its own controls included) as the cell's first output.

        Without anywidget, fall back to a text tree updated in place plus ipywidgets buttons.
        """
        if self.quiet or not self.notebook:
            return
        try:
            from IPython.display import display

            from rlm_widget import AgentTree

            self.widget = AgentTree.from_run(self.run)
            display(self.widget)  # type: ignore[no-untyped-call]
            if step_controls:
                self._show_gate(gate_text(self.gate) or " ")
            return
        except ImportError:
            self.widget = None
        self._handle = show({"text/plain": self.text()}, display_id=True)
        self._shown = self._version
        self._last = time.monotonic()
        if step_controls:
            from IPython.display import display

            self.controls = StepControls(self.run)
            display(self.controls.widget)  # type: ignore[no-untyped-call]

    def _show_gate(self, text: str) -> None:
        self._gate_text = text
        if self._gate is None:
            self._gate = show({"text/plain": text}, display_id=True)
        else:
            self._gate.update({"text/plain": text}, raw=True)

    def refresh(self, force: bool = False) -> None:
        """Re-render if something changed and the last update is ≥ REFRESH_S old (or `force`)."""
        gate = self.gate
        if self.controls is not None:
            self.controls.update(gate)
        if self.widget is not None and not self.quiet:
            text = gate_text(gate)
            # A line first appears in the run's own cell (not in the cell of a later %rlm wait).
            if text != self._gate_text and (self._gate is not None or _cell_id() == self._cell):
                self._show_gate(text)
        if self._handle is None:
            return
        now = time.monotonic()
        if not force and (self._version == self._shown or now - self._last < REFRESH_S):
            return
        self._shown = self._version
        self._last = now
        self._handle.update({"text/plain": self.text()}, raw=True)


def _cell_id() -> str | None:
    """The id of the request (cell) being executed in this context, in a Jupyter kernel."""
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        return None if kernel is None else str(kernel.get_parent()["header"]["msg_id"])
    except Exception:  # no kernel, or no request: nothing to compare
        return None


def result_bundles(
    record: dict[str, Any],
    answer: Any,
    patch: str,
    patch_path: str | None,
    error: str | None,
    quiet: bool,
) -> list[Bundle]:
    """The outputs at the end of a run: the answer, the patch (if any), the summary line."""
    out = [answer_bundle(answer, str(record.get("status")), error)]
    if patch:
        out.append(diff_bundle(patch, patch_path))
    if not quiet:
        out.append({"text/plain": summary_text(record, patch_path)})
    return out
