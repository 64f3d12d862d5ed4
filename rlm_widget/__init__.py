"""rlm_widget: the live agent-tree widget (anywidget) and the standalone run viewer.

The API the notebook outputs use (`rlm_kernel/display.py` shows the tree as the first output of
a `%%rlm` cell)::

    from IPython.display import display
    from rlm_widget import AgentTree

    tree = AgentTree.from_run(run)   # a Run, started or not: live tree + Pause/Step/Continue/Cancel
    display(tree)

Other ways in:

- `tree = AgentTree(); Run(..., on_event=tree.on_event)` — live tree without the controls
  (`tree.attach(run)` adds them);
- `AgentTree.from_record("results/<run>.detail.json")` — a saved run (a path or a loaded dict);
- `build_viewer(results_dir)` / `rlm view [RESULTS_DIR]` — one self-contained HTML page that
  lists the runs of `index.json` and renders any of them with the same front end.

The front end is `static/agent_tree.js` (plain ES module, no build step) and
`static/agent_tree.css` (JupyterLab theme variables with fallbacks). When a run ends, the whole
record becomes widget state, so a notebook saved with widget state shows the final tree offline.
"""

from __future__ import annotations

from .tree import AgentTree
from .viewer import build_viewer

__all__ = ["AgentTree", "build_viewer"]
