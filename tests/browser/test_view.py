"""`rlm view` in headless Chromium: a results directory with three runs, from a file URL and
served over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from widget.synth import write_results

from rlm_kernel.cli import main as rlm_main

pytestmark = pytest.mark.browser

RUNS = [
    {
        "run_id": "20260101-090000-aaaaaa",
        "task": "oldest: count the TODOs",
        "children": 2,
        "grandchildren": 0,
        "started_at": "2026-01-01T09:00:00",
    },
    {
        "run_id": "20260101-100000-bbbbbb",
        "task": "middle: fix </script><script>window.pwned = 1</script> in the docs",
        "children": 3,
        "grandchildren": (2, 0, 1),
        "statuses": {"root.1": "error"},
        "started_at": "2026-01-01T10:00:00",
    },
    {
        "run_id": "20260101-110000-cccccc",
        "task": "newest: survey the project",
        "children": 4,
        "grandchildren": (1, 1, 0, 0),
        "started_at": "2026-01-01T11:00:00",
    },
]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A results directory with three runs (records and index.json written by the Recorder)."""
    d = tmp_path / "results"
    write_results(d, RUNS)
    return d


def _check_viewer(page: Any) -> None:
    page.wait_for_selector("body[data-ready='1']")
    rows = page.locator("tr.rlm-v-run")
    assert rows.count() == 3
    # newest first, and the newest is shown
    assert [rows.nth(i).get_attribute("data-run") for i in range(3)] == [
        r["run_id"] for r in reversed(RUNS)
    ]
    tree = page.locator("#rlm-v-tree")
    assert tree.get_attribute("data-run") == RUNS[2]["run_id"]
    assert tree.locator(".rlm-row").count() == 7
    # a guard against a render that hangs or loops; the speed target is bench/bench_widget.py's
    assert float(tree.get_attribute("data-render-ms") or 1e9) < 10_000
    # choose the middle run: its tree (1 + 3 + 3 agents) with its statuses
    rows.nth(1).click()
    page.wait_for_function(
        f"document.querySelector('#rlm-v-tree').dataset.run === '{RUNS[1]['run_id']}'"
    )
    assert tree.locator(".rlm-row").count() == 7
    assert tree.locator('.rlm-row[data-id="root.1"]').get_attribute("data-status") == "error"
    assert tree.locator('li[data-id="root.0"] > ul > li').count() == 2
    assert "window.pwned" in tree.locator(".rlm-runtask").inner_text()
    assert page.evaluate("window.pwned") is None  # the task is text, never markup
    # and its details
    tree.locator('.rlm-row[data-id="root.2.0"]').click()
    assert "print(" in tree.locator(".rlm-detail .rlm-code").first.inner_text()
    assert page.evaluate("location.hash") == f"#run={RUNS[1]['run_id']}"


def test_rlm_view_file_url_embeds_everything(
    page: Any, results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "elsewhere" / "runs.html"
    assert rlm_main(["view", str(results), "--out", str(out), "--no-open"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    page.goto(out.as_uri())
    _check_viewer(page)
    # a deep link opens that run
    page.goto(out.as_uri() + f"#run={RUNS[0]['run_id']}")
    page.wait_for_function(
        f"document.querySelector('#rlm-v-tree').dataset.run === '{RUNS[0]['run_id']}'"
    )
    assert page.locator("#rlm-v-tree .rlm-row").count() == 3


def test_rlm_view_served_fetches_the_records(page: Any, results: Path, serve: Any) -> None:
    assert rlm_main(["view", str(results), "--no-embed", "--no-open"]) == 0
    html = (results / "viewer.html").read_text()
    data = json.loads(html.split('id="rlm-data">')[1].split("</script>")[0])
    assert data["records"] == {} and data["embedded"] is False and data["base"] == ""
    url = serve(results)
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(url + "viewer.html")
    _check_viewer(page)
    assert url + "index.json" in requested
    assert url + f"{RUNS[1]['run_id']}.detail.json" in requested
