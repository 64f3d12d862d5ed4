"""`%%rlm` cells live in JupyterLab 4 on the `rlm` kernel, in headless Chromium: a `--step` run
driven through the agent tree's buttons (root, 4 children, 2 grandchildren), and how answers and
an interrupted run look (a plain answer of several lines, a SUBMIT dict, the Stop button).

Screenshots go to a temporary directory, or to $RLM_SCREENSHOTS when it is set (kept there):
`agent-tree.png` (the README's picture; scripts/refresh-readme-image copies it into docs/),
`step-gate.png`, `answer-lines.png`, `answer-fields.png`, `answer-fields-open.png`,
`interrupted.png`.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm_kernel.cli import main as rlm_main

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MODEL = Path(__file__).parents[1] / "widget" / "models" / "tree7.py"
ANSWERS = Path(__file__).parents[1] / "models" / "answers.py"
LATENCY = "0.3"  # per LLM call: slow enough that Pause lands while agents are between gates


def _shots(tmp_path: Path) -> Path:
    """Where screenshots go: $RLM_SCREENSHOTS (kept), else the test's temporary directory."""
    where = Path(os.environ.get("RLM_SCREENSHOTS") or tmp_path / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


def _display_shows_the_tree() -> bool:
    """Whether the `%%rlm` outputs include the widget yet (rlm_kernel/display.py or magics.py)."""
    from rlm_kernel import display, magics

    return any("AgentTree" in inspect.getsource(m) for m in (display, magics))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Lab:
    """A JupyterLab server started for the test (private Jupyter dirs, token, fixed port)."""

    def __init__(self, root: Path, base: Path) -> None:
        self.root = root
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        settings = base / "lab-settings"
        notif = settings / "@jupyterlab" / "apputils-extension"
        notif.mkdir(parents=True)
        # no news or update toasts over the notebook
        (notif / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False})
        )
        env = dict(os.environ)
        env.update(
            JUPYTER_PATH=str(base / "prefix" / "share" / "jupyter"),
            JUPYTER_DATA_DIR=str(base / "data"),
            JUPYTER_CONFIG_DIR=str(base / "config"),
            JUPYTER_RUNTIME_DIR=str(base / "runtime"),
            IPYTHONDIR=str(base / "ipython"),
            RLM_TREE7_LATENCY=LATENCY,
        )
        self.log = open(base / "jupyterlab.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter",
                "lab",
                "--allow-root",
                "--no-browser",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={self.port}",
                "--ServerApp.port_retries=0",
                f"--ServerApp.token={self.token}",
                f"--ServerApp.root_dir={root}",
                f"--LabApp.user_settings_dir={settings}",
                f"--LabApp.workspaces_dir={base / 'workspaces'}",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_up()

    def api(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(
            f"{self.url}api/{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def wait_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited: {self.log_text()}")
            try:
                self.api("status")
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"JupyterLab did not start: {self.log_text()}")

    def wait_kernel_ready(self, timeout: float = 60) -> None:
        """Cold-kernel trap: the page can look idle before the kernel is connected."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ks = self.api("kernels")
            except urllib.error.HTTPError as exc:
                # jupyter_server answers 500 while a kernel it is starting has no
                # `last_activity` yet (KeyError in kernel_model): ask again.
                if exc.code != 500:
                    raise
                time.sleep(0.2)
                continue
            if any(k["execution_state"] == "idle" and k["connections"] >= 1 for k in ks):
                return
            time.sleep(0.2)
        raise AssertionError(f"no idle, connected kernel: {self.api('kernels')}")

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-4000:]

    def stop(self) -> None:
        try:
            for k in self.api("kernels"):
                self.api(f"kernels/{k['id']}", method="DELETE")  # kernels remove their sandboxes
        except OSError:
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab with the `rlm` kernelspec installed into a private prefix."""
    base = tmp_path / "jupyter"
    assert rlm_main(["kernel", "install", "--prefix", str(base / "prefix")]) == 0
    root = tmp_path / "root"
    root.mkdir()
    server = Lab(root, base)
    try:
        yield server
    finally:
        server.stop()


def _notebook(path: Path, *sources: str) -> None:
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": f"rlm-{i}",
                "metadata": {},
                "outputs": [],
                "source": source,
            }
            for i, source in enumerate(sources)
        ],
        "metadata": {
            "kernelspec": {"name": "rlm", "display_name": "RLM (Python)", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb))


def _wait(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _settle(read: Callable[[], Any], quiet: float, timeout: float) -> Any:
    """The value of `read()` once it has not changed for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    value, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        new = read()
        if new != value:
            value, since = new, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return value
    raise AssertionError(f"still changing after {timeout} s: {value}")


def test_step_pause_continue_in_jupyterlab(lab: Lab, page: Any, tmp_path: Path) -> None:
    if not _display_shows_the_tree():
        pytest.skip(
            "the %%rlm outputs do not show rlm_widget.AgentTree yet (rlm_kernel/display.py)"
        )
    try:
        _drive(lab, page, tmp_path)
    except Exception as exc:
        shot = _shots(tmp_path) / "failure.png"
        page.screenshot(path=str(shot))
        raise AssertionError(
            f"{exc}\nscreenshot: {shot}\nJupyterLab log:\n{lab.log_text()}"
        ) from exc


def _drive(lab: Lab, page: Any, tmp_path: Path) -> None:
    # Paths relative to the notebook (the kernel's working directory), so the README's picture
    # shows no temporary path of the machine that took it.
    shutil.copy(MODEL, lab.root / "tree7.py")
    _notebook(
        lab.root / "tree.ipynb",
        "%%rlm --step --model scripted/tree7.py --results-dir results --max-sandboxes 20\n"
        "survey the project",
    )
    page.goto(f"{lab.url}lab/tree/tree.ipynb?token={lab.token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=60_000)
    lab.wait_kernel_ready()
    page.locator(".jp-Cell .cm-content").first.click()
    page.keyboard.press("Shift+Enter")

    tree = page.locator(".rlm-agent-tree")
    tree.wait_for(timeout=60_000)

    def rows() -> dict[str, dict[str, str | None]]:
        return dict(
            page.evaluate(
                """() => Object.fromEntries([...document.querySelectorAll('.rlm-row')].map(r =>
                    [r.dataset.id, {status: r.dataset.status, executed: r.dataset.executed,
                                    waiting: r.dataset.waiting ?? null}]))"""
            )
        )

    def waiting() -> set[tuple[str, str]]:
        return {(a, str(r["waiting"])) for a, r in rows().items() if r["waiting"] is not None}

    def totals() -> tuple[str, str]:
        return (
            tree.locator('.rlm-total[data-k="iterations"] b').inner_text(),
            tree.locator('.rlm-total[data-k="calls"] b').inner_text(),
        )

    def click(action: str) -> None:
        tree.locator(f'.rlm-controls .rlm-btn[data-action="{action}"]').click()

    # step mode: the root waits with its proposed code in the editor
    _wait(lambda: ("root", "0") in waiting(), 60, "the root at the step gate")
    assert "rlm_query_batched" in tree.locator(".rlm-step-code").input_value()
    click("step")  # the root's code runs and starts four children, which stop at the gate
    _wait(lambda: len(waiting()) == 4, 60, "four children at the gate")
    assert page.locator('li[data-id="root"] > ul > li').count() == 4
    # the cell's text output says it too (for a notebook read without widget state)
    gate_line = page.locator(".jp-OutputArea-output pre", has_text="waits at the step gate")
    _wait(lambda: "(3 more wait: root." in gate_line.inner_text(), 10, "the gate in text")
    gate_line.screenshot(path=str(_shots(tmp_path) / "step-gate.png"))

    # Pause: after Continue has let agents go, nothing new happens for 2 s
    click("resume")
    time.sleep(0.1)
    click("pause")
    # LLM calls, sandbox starts and code already running when Pause was pressed end at the gate
    before = _settle(lambda: (rows(), totals(), waiting()), quiet=1.0, timeout=30)
    assert before[2], "nothing is waiting at the gate after Pause"
    time.sleep(2.0)
    assert (rows(), totals(), waiting()) == before
    assert tree.locator(".rlm-badge").first.get_attribute("data-status") == "running"

    # Step: exactly one waiting iteration (the one shown in the editor) goes
    label = tree.locator(".rlm-gate-label").inner_text()
    m = re.search(r"‖ (\S+), iteration (\d+), waits", label)
    assert m, label
    head = (m.group(1), str(int(m.group(2)) - 1))
    assert head in before[2]
    click("step")
    _wait(lambda: head not in waiting(), 10, f"{head} to pass the gate")
    time.sleep(1.5)
    # every other waiting iteration still waits (agents may join the queue: the stepped one's
    # next iteration, or its sub-agents)
    assert before[2] - {head} <= waiting(), "another agent passed the gate"

    # Continue: the run finishes
    click("resume")
    _wait(
        lambda: tree.locator(".rlm-badge").first.get_attribute("data-status") == "done",
        90,
        "the run to finish",
    )
    final = rows()
    assert sorted(final) == [
        "root",
        "root.0",
        "root.0.0",
        "root.1",
        "root.1.0",
        "root.2",
        "root.3",
    ]
    assert {r["status"] for r in final.values()} == {"done"}
    for parent, kids in {
        "root": ["root.0", "root.1", "root.2", "root.3"],
        "root.0": ["root.0.0"],
        "root.1": ["root.1.0"],
        "root.2": [],
    }.items():
        got = page.evaluate(
            "p => [...document.querySelectorAll(`li[data-id='${p}'] > ul > li`)]"
            ".map(li => li.dataset.id)",
            parent,
        )
        assert got == kids, (parent, got)
    assert tree.locator(".rlm-controls").is_hidden()
    assert gate_line.count() == 0  # nothing waits any more

    # a child's code and output
    tree.locator('.rlm-row[data-id="root.2"]').click()
    detail = tree.locator(".rlm-detail")
    _wait(lambda: detail.locator(".rlm-output").count() > 0, 10, "root.2's output")
    assert "found = 16" in detail.locator(".rlm-code").first.inner_text()
    assert "working on count lines in c: 16" in detail.locator(".rlm-output").first.inner_text()

    # the picture for the README: the cell and its tree, the root selected
    tree.locator('.rlm-row[data-id="root"]').click()
    cell = page.locator(".jp-Cell").first
    cell.scroll_into_view_if_needed()
    page.mouse.move(0, 0)  # no hover highlight in the picture
    top = cell.bounding_box()
    box = tree.bounding_box()
    assert top and box
    page.screenshot(
        path=str(_shots(tmp_path) / "agent-tree.png"),
        clip={
            "x": top["x"],
            "y": top["y"],
            "width": top["width"],
            "height": box["y"] + box["height"] - top["y"] + 2,
        },
    )


# -- answers and the Stop button ----------------------------------------------------------------


def test_answers_and_an_interrupted_run_in_jupyterlab(lab: Lab, page: Any, tmp_path: Path) -> None:
    try:
        _answers(lab, page, tmp_path)
    except Exception as exc:
        shot = _shots(tmp_path) / "failure.png"
        page.screenshot(path=str(shot), full_page=True)
        raise AssertionError(
            f"{exc}\nscreenshot: {shot}\nJupyterLab log:\n{lab.log_text()}"
        ) from exc


TEXT = '.jp-OutputArea-output[data-mime-type="text/plain"]'  # a text output (not the widget's)


def _run_cell(page: Any, index: int) -> Any:
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.locator(".cm-content").click()
    page.keyboard.press("Control+Enter")
    return cell


def _answers(lab: Lab, page: Any, tmp_path: Path) -> None:
    shutil.copy(ANSWERS, lab.root / "answers.py")
    opts = "--model scripted/answers.py --results-dir results"
    _notebook(
        lab.root / "answers.ipynb",
        f"%%rlm {opts}\nLINES: what are the TODOs?",
        f"%%rlm {opts}\nFIELDS: who is in each chapter?",
        f"%%rlm {opts}\nSLEEP until stopped",
    )
    page.goto(f"{lab.url}lab/tree/answers.ipynb?token={lab.token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=60_000)
    lab.wait_kernel_ready()
    shots = _shots(tmp_path)

    # a plain answer of several lines keeps its lines
    cell = _run_cell(page, 0)
    cell.locator(TEXT, has_text="✓ done — ").wait_for(timeout=60_000)
    answer = cell.locator(TEXT, has_text="Found TODOs in")
    lines = [ln for ln in answer.inner_text().splitlines() if ln.strip()]
    assert lines[0] == "Found TODOs in textkit/lines.py, textkit/report.py, textkit/words.py."
    assert lines[1].startswith("textkit/lines.py:6: # TODO: do not count the empty string")
    assert lines[2] == "difficulty: easy: one call to str.splitlines() fixes it"
    assert len(lines) == 7
    cell.screenshot(path=str(shots / "answer-lines.png"))

    # a SUBMIT dict is a field table; long values are folded, and open as a table
    cell = _run_cell(page, 1)
    cell.locator(TEXT, has_text="✓ done — ").wait_for(timeout=60_000)
    table = cell.locator("table.rlm-fields")
    fields = table.locator(":scope > tbody > tr > td:first-child").all_inner_texts()
    assert fields == ["summary", "chapters", "appearances", "notes"]
    folds = table.locator("details")
    assert folds.count() == 2  # chapters and appearances; the short notes stay open
    assert all(not d.get_attribute("open") for d in folds.all())
    assert "6 items: [{" in folds.nth(0).locator("summary").inner_text()
    cell.screenshot(path=str(shots / "answer-fields.png"))
    folds.nth(0).locator("summary").click()
    inner = folds.nth(0).locator("table")
    inner.wait_for(timeout=5_000)
    assert inner.locator("th").all_inner_texts() == ["chapter", "title", "characters", "quote"]
    assert inner.locator("tbody tr").count() == 6
    table.scroll_into_view_if_needed()
    table.screenshot(path=str(shots / "answer-fields-open.png"))

    # Stop during a run: one line, not the cell transform's traceback; the partial answer above
    cell = _run_cell(page, 2)
    rows = cell.locator(".rlm-row")
    _wait(lambda: rows.count() == 3, 60, "the root and its two sleeping children")
    time.sleep(0.5)
    page.locator('.jp-NotebookPanel-toolbar [data-command="notebook:interrupt-kernel"]').click()
    error = cell.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    error.wait_for(timeout=30_000)
    text = error.inner_text().strip()
    assert re.fullmatch(
        r"KeyboardInterrupt: run \S+ cancelled; its sandboxes were removed "
        r"\(the partial answer, if any, is above\)",
        text,
    ), text
    partial = cell.locator(TEXT, has_text="[partial answer: cancelled")
    assert partial.count() == 1
    cell.scroll_into_view_if_needed()
    page.mouse.move(0, 0)
    cell.screenshot(path=str(shots / "interrupted.png"))
