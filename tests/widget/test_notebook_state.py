"""A notebook executed with widget state saved (nbclient) and converted to HTML (nbconvert) holds
the final agent tree: a live run's tree and a tree opened from a record."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter

from .synth import synth_record

MODEL = Path(__file__).parent / "models" / "tree7.py"
STATE_MIME = "application/vnd.jupyter.widget-state+json"


def _agents(node: dict[str, Any]) -> list[str]:
    return [node["agent_id"], *(a for c in node.get("children", []) for a in _agents(c))]


@pytest.mark.slow
def test_saved_notebook_html_holds_the_final_trees(tmp_path: Path) -> None:
    record = tmp_path / "saved.detail.json"
    record.write_text(json.dumps(synth_record(run_id="saved-run")))
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from IPython.display import display\n"
            "from rlm_kernel.config import RLMConfig\n"
            "from rlm_kernel.runner import Run\n"
            "from rlm_widget import AgentTree\n"
            "live = AgentTree()\n"
            "display(live)"
        ),
        nbformat.v4.new_code_cell(
            "cfg = RLMConfig().with_overrides({"
            f"'model.name': 'scripted/{MODEL}', 'results_dir': {str(tmp_path / 'results')!r}, "
            "'model.retries': 0})\n"
            "res = Run('survey the project', config=cfg, on_event=live.on_event).execute()\n"
            "print(res.status)"
        ),
        nbformat.v4.new_code_cell(f"AgentTree.from_record({str(record)!r})"),
    ]
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=120,
        store_widget_state=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    assert nb.cells[1].outputs[0]["text"].strip() == "done"
    state = nb.metadata["widgets"][STATE_MIME]["state"]
    trees = [
        m["state"]
        for m in state.values()
        if m["model_name"] == "AnyModel" and "record" in m["state"]
    ]
    assert len(trees) == 2
    html, _ = HTMLExporter().from_notebook_node(nb)
    m = re.search(rf'<script type="{re.escape(STATE_MIME)}">\s*(.*?)\s*</script>', html, re.S)
    assert m, "no widget state in the HTML"
    saved = json.loads(m.group(1))["state"]
    records = {
        s["state"]["record"]["run_id"]: s["state"]["record"]
        for s in saved.values()
        if s["state"].get("record")
    }
    assert len(records) == 2 and "saved-run" in records
    live = next(r for k, r in records.items() if k != "saved-run")
    assert live["status"] == "done"
    assert sorted(_agents(live["root"])) == [
        "root",
        "root.0",
        "root.0.0",
        "root.1",
        "root.1.0",
        "root.2",
        "root.3",
    ]
    assert live["root"]["children"][2]["iterations"][0]["code_blocks"][0]["output"].startswith(
        "working on count lines in c"
    )
    assert len(_agents(records["saved-run"]["root"])) == 7
    # the front end travels with the state: no CDN is needed to load the widget's own code
    esm = next(s["state"]["_esm"] for s in saved.values() if s["state"].get("record"))
    assert "function highlightPython" in esm
