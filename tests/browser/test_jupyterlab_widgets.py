"""Widgets of ordinary cells in real JupyterLab 4 + headless Chromium, on the `rlm` kernel: the
cells run in the notebook's sandbox kernel and the RLM kernel relays their comms both ways."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlm_kernel.cli import main as rlm_main

from .test_jupyterlab import Lab, _wait

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOTEBOOK_MODEL = Path(__file__).parents[1] / "models" / "notebook.py"

COUNTER = '''import anywidget, traitlets

class Counter(anywidget.AnyWidget):
    _esm = """
    function render({ model, el }) {
      const b = document.createElement("button");
      b.className = "rlm-test-counter";
      const show = () => { b.textContent = `count is ${model.get("value")}`; };
      b.addEventListener("click", () => {
        model.set("value", model.get("value") + 1);
        model.save_changes();
      });
      model.on("change:value", show);
      show();
      el.appendChild(b);
    }
    export default { render };
    """
    value = traitlets.Int(0).tag(sync=True)

counter = Counter()
counter'''


def make_repo(where: Path) -> None:
    """`repo/`: a one-module repository (pkg/mod.py: VALUE = 1), for the notebook model."""
    repo = where / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "mod.py").write_text("VALUE = 1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)


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


def _notebook(path: Path, cells: list[str]) -> None:
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": f"cell-{i}",
                "metadata": {},
                "outputs": [],
                "source": source,
            }
            for i, source in enumerate(cells)
        ],
        "metadata": {
            "kernelspec": {"name": "rlm", "display_name": "RLM (Python)", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb))


class Notebook:
    """The notebook page: run its cells in order and read their outputs."""

    def __init__(self, lab: Lab, page: Any, name: str, goto: bool = True) -> None:
        self.page = page
        if goto:
            page.goto(f"{lab.url}lab/tree/{name}?token={lab.token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=60_000)
        lab.wait_kernel_ready()
        self.cells = page.locator(".jp-Notebook .jp-Cell")

    def run(self, i: int, timeout: float = 60) -> Any:
        """Run cell `i` and wait until it has an execution count; return the cell."""
        cell = self.cells.nth(i)
        cell.locator(".cm-content").click()
        self.page.keyboard.press("Shift+Enter")
        prompt = cell.locator(".jp-InputArea-prompt")
        _wait(lambda: prompt.inner_text().strip() not in ("[ ]:", "[*]:", ""), timeout, f"cell {i}")
        return cell

    def text(self, i: int) -> str:
        return str(self.cells.nth(i).locator(".jp-OutputArea").inner_text())


def _drive(test: Any, lab: Lab, page: Any, tmp_path: Path) -> None:
    try:
        test()
    except Exception as exc:
        shot = tmp_path / "failure.png"
        page.screenshot(path=str(shot), full_page=True)
        raise AssertionError(
            f"{exc}\nscreenshot: {shot}\nJupyterLab log:\n{lab.log_text()}"
        ) from exc


def test_ipywidgets_and_tqdm_in_ordinary_cells(lab: Lab, page: Any, tmp_path: Path) -> None:
    _notebook(
        lab.root / "widgets.ipynb",
        [
            "import ipywidgets\nslider = ipywidgets.IntSlider(value=3, min=0, max=100)\nslider",
            "print('slider value', slider.value)",
            "from tqdm.notebook import tqdm\nfor _ in tqdm(range(40), desc='steps'):\n    pass",
        ],
    )

    def test() -> None:
        nb = Notebook(lab, page, "widgets.ipynb")
        cell = nb.run(0)
        handle = cell.locator(".widget-slider .noUi-handle")
        handle.wait_for(timeout=30_000)
        readout = cell.locator(".widget-readout")
        assert readout.inner_text().strip() == "3"
        track = cell.locator(".widget-slider .noUi-target").bounding_box()
        box = handle.bounding_box()
        assert track and box
        # drag the handle to about three quarters of the track
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(track["x"] + track["width"] * 0.75, box["y"] + box["height"] / 2, steps=8)
        page.mouse.up()
        _wait(lambda: readout.inner_text().strip() != "3", 10, "the slider to move")
        shown = int(readout.inner_text().strip())
        assert 50 < shown < 100
        nb.run(1)
        _wait(lambda: f"slider value {shown}" in nb.text(1), 30, "the next cell's print")

        # a reloaded page gets the widget back from the sandbox (the kernel turns down
        # ipywidgets' all-states request, so the page asks each widget for its state)
        page.keyboard.press("Control+s")
        _wait(lambda: not page.locator(".jp-mod-dirty").count(), 30, "the save")
        page.reload()
        nb = Notebook(lab, page, "widgets.ipynb", goto=False)
        readout = nb.cells.nth(0).locator(".widget-readout")
        readout.wait_for(timeout=30_000)
        _wait(lambda: readout.inner_text().strip() == str(shown), 30, "the restored slider")

        nb.run(2)
        bar = nb.cells.nth(2).locator(".widget-hprogress")
        bar.wait_for(timeout=30_000)
        _wait(lambda: "100%" in nb.text(2) and "40/40" in nb.text(2), 30, "a full progress bar")

    _drive(test, lab, page, tmp_path)


def test_anywidget_counter_after_attach(lab: Lab, page: Any, tmp_path: Path) -> None:
    make_repo(lab.root)
    results = tmp_path / "results"
    _notebook(
        lab.root / "attach.ipynb",
        [
            f"%%rlm --repo repo --keep --model scripted/{NOTEBOOK_MODEL} "
            f"--results-dir {results}\nFIX it",
            "%rlm attach root.0",
            COUNTER,
            "print('counter', counter.value, 'child_count', child_count)",
        ],
    )

    def test() -> None:
        nb = Notebook(lab, page, "attach.ipynb")
        nb.run(0, timeout=120)
        nb.run(1)
        assert "attached: cells now run in root.0's sandbox" in nb.text(1)
        nb.run(2)
        button = nb.cells.nth(2).locator("button.rlm-test-counter")
        button.wait_for(timeout=30_000)
        assert button.inner_text() == "count is 0"
        for n in (1, 2, 3):
            button.click()
            _wait(lambda n=n: button.inner_text() == f"count is {n}", 10, f"count {n}")
        nb.run(3)
        _wait(lambda: "counter 3 child_count 9" in nb.text(3), 30, "the next cell's print")

        # A reloaded page gets both back: the kernel's own widget (the AgentTree) and the
        # sandbox's counter. The kernel turns down ipywidgets' all-states request (it would
        # answer for the kernel's widgets only), so the page asks each widget for its state.
        page.keyboard.press("Control+s")
        _wait(lambda: not page.locator(".jp-mod-dirty").count(), 30, "the save")
        page.reload()
        nb = Notebook(lab, page, "attach.ipynb", goto=False)
        nb.cells.nth(0).locator(".rlm-agent-tree").wait_for(timeout=30_000)
        button = nb.cells.nth(2).locator("button.rlm-test-counter")
        button.wait_for(timeout=30_000)
        assert button.inner_text() == "count is 3"
        button.click()
        _wait(lambda: button.inner_text() == "count is 4", 10, "count 4")
        nb.run(3)
        _wait(lambda: "counter 4 child_count 9" in nb.text(3), 30, "the print after the reload")

    _drive(test, lab, page, tmp_path)
