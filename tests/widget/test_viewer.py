"""rlm_widget.viewer and `rlm view`: the standalone page's content (the browser tests render it)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from rlm_kernel.cli import main as rlm_main
from rlm_widget import build_viewer
from rlm_widget.viewer import collect_runs, viewer_html

from .synth import synth_record, write_results

RUNS = [
    {"run_id": "20260101-090000-aaaaaa", "task": "first", "started_at": "2026-01-01T09:00:00"},
    {
        "run_id": "20260101-100000-bbbbbb",
        "task": "second </script><!-- x",
        "started_at": "2026-01-01T10:00:00",
    },
]


def _data(html: str) -> dict[str, Any]:
    return json.loads(html.split('id="rlm-data">')[1].split("</script>")[0])  # type: ignore[no-any-return]


def test_embeds_index_and_records_safely(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_results(results, RUNS)
    out = build_viewer(results)
    assert out == results / "viewer.html"
    html = out.read_text()
    data = _data(html)
    assert [r["run_id"] for r in data["index"]] == [RUNS[1]["run_id"], RUNS[0]["run_id"]]
    assert set(data["records"]) == {r["run_id"] for r in RUNS}
    assert data["records"][RUNS[1]["run_id"]]["task"] == RUNS[1]["task"]
    assert data["embedded"] is True
    # one inline module: the widget's own ESM followed by the page script; no external loads
    assert html.count("<script") == 2 and "src=" not in html and "https://" not in html
    assert "function highlightPython" in html and "function recordModel" in html


def test_fetch_mode_points_at_the_results_dir(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_results(results, RUNS[:1])
    out = build_viewer(results, tmp_path / "site" / "runs.html", embed=False)
    data = _data(out.read_text())
    assert data["embedded"] is False and data["records"] == {}
    assert data["base"] == "../results/"
    assert len(data["index"]) == 1


def test_collect_runs_without_an_index(tmp_path: Path) -> None:
    (tmp_path / "a.detail.json").write_text(json.dumps(synth_record(run_id="a")))
    (tmp_path / "broken.detail.json").write_text("{")
    runs = collect_runs(tmp_path)
    assert [(r["run_id"], r["file"]) for r in runs] == [("a", "a.detail.json")]
    assert viewer_html([], {}).count('id="rlm-data"') == 1


def test_rlm_view_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "results"
    write_results(results, RUNS)
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    assert rlm_main(["view", str(results), "--no-open"]) == 0
    assert capsys.readouterr().out.strip() == str(results / "viewer.html") and not opened
    assert rlm_main(["view", str(results), "--out", str(tmp_path / "v.html")]) == 0
    assert opened == [(tmp_path / "v.html").resolve().as_uri()]
    # default RESULTS_DIR: results_dir of ./config.yaml, else ./results
    monkeypatch.chdir(tmp_path)
    assert rlm_main(["view", "--no-open"]) == 0
    assert capsys.readouterr().out.strip().endswith(os.path.join("results", "viewer.html"))
    assert rlm_main(["view", str(tmp_path / "missing"), "--no-open"]) == 2
    assert "no results directory" in capsys.readouterr().err
