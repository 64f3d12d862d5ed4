"""Opt-in: a two-level scripted run on real Daytona (needs DAYTONA_API_KEY; costs a little)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import rlm_kernel
from rlm_kernel.config import RLMConfig

_url = os.environ.get("DAYTONA_API_URL", "")
pytestmark = pytest.mark.skipif(
    not os.environ.get("DAYTONA_API_KEY") or "localhost" in _url or "127.0.0.1" in _url,
    reason="live Daytona test: set DAYTONA_API_KEY (and not a local DAYTONA_API_URL)",
)

MODEL = Path(__file__).parent.parent / "models" / "limits.py"


def test_two_level_run_on_real_daytona(tmp_path: Path, make_repo: object) -> None:
    from rlm_kernel.sandbox.daytona import cleanup_daytona

    cfg = RLMConfig().with_overrides(
        {
            "model.name": f"scripted/{MODEL}",
            "model.retries": 0,
            "sandbox.backend": "daytona",
            "results_dir": str(tmp_path / "results"),
            "rlm.global_timeout": 600,
        }
    )
    res = rlm_kernel.run("sandboxes", config=cfg)
    try:
        assert res.status == "done", res.error
        assert [c["status"] for c in res.tree["children"]] == ["done"] * 3
        assert os.environ["DAYTONA_API_KEY"] not in Path(str(res.record_path)).read_text()
    finally:
        assert cleanup_daytona(res.run_id) == []  # nothing was left behind
