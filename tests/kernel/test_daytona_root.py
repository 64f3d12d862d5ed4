"""The `rlm` kernel with `sandbox.backend: daytona`: ordinary cells run in a Daytona sandbox.

Against the local emulator of Daytona's API (tests/daytona/emulator.py) with the real SDK: rich
display comes back through the bridge (a context returns only stdout, stderr and errors), Tab
completion and Shift-Tab inspection see the sandbox's variables, a context that Daytona restarted
empty is reported, `%%rlm` runs its agents there, and shutting the kernel down deletes every
sandbox.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Cell, RLMKernelProcess
from .test_rlm_magic import ANSWER, MODEL, displays, make_repo, ok

sys.path.insert(0, str(Path(__file__).parents[1] / "daytona"))
from emulator import DaytonaEmulator


@pytest.fixture(scope="module")
def emulator() -> Iterator[DaytonaEmulator]:
    emu = DaytonaEmulator(timeout_grace_s=0.5).start()
    yield emu
    emu.stop()


@pytest.fixture
def kernel(tmp_path: Path, emulator: DaytonaEmulator) -> Iterator[RLMKernelProcess]:
    make_repo(tmp_path)
    env = {
        "DAYTONA_API_KEY": emulator.api_key,
        "DAYTONA_API_URL": emulator.api_url,
        "DAYTONA_TARGET": "emu",
    }
    k = RLMKernelProcess(
        tmp_path, f"--RLMKernel.model=scripted/{MODEL}", "--RLMKernel.sandbox=daytona", env=env
    )
    try:
        ok(k.execute("%rlm config results_dir=results model.retries=0"))
        yield k
    finally:
        k.shutdown()
    assert not emulator.sandboxes, f"sandboxes left in the emulator: {list(emulator.sandboxes)}"
    assert not list(k.sandbox_root.glob("*")), "local sandboxes were made"


def error(cell: Cell) -> dict[str, str]:
    assert cell.content["status"] == "error", cell.content
    return {k: cell.content[k] for k in ("ename", "evalue")}


def test_ordinary_cells_rich_display_and_errors(
    kernel: RLMKernelProcess, emulator: DaytonaEmulator
) -> None:
    ok(kernel.execute("x = 41\nprint('in', __import__('os').getcwd().count('rlm-'))"))
    assert len(emulator.sandboxes) == 1  # the notebook's root sandbox
    (sb,) = emulator.sandboxes.values()
    assert sb.labels.get("rlm-agent") == "root"
    cell = ok(kernel.execute("x + 1"))
    assert [c["data"]["text/plain"] for c in cell.of_type("execute_result")] == ["42"]
    assert cell.of_type("execute_result")[0]["execution_count"] == cell.content["execution_count"]

    html = "class H:\n    def _repr_html_(self):\n        return '<b>bold</b>'\ndisplay(H())"
    assert displays(ok(kernel.execute(html)), "text/html") == ["<b>bold</b>"]
    plot = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"
    (png,) = displays(ok(kernel.execute(plot, timeout=120)), "image/png")
    assert len(png) > 1000

    cell = kernel.execute("def f():\n    raise ValueError('boom')\nf()")
    assert error(cell) == {"ename": "ValueError", "evalue": "boom"}
    (err,) = cell.of_type("error")
    assert any("boom" in line for line in err["traceback"])

    cell = kernel.execute("input('name? ')")
    assert error(cell)["ename"] == "RuntimeError"
    assert "--sandbox local" in cell.content["evalue"]
    assert ok(kernel.execute("print(x)")).stdout == "41\n"  # nothing lost on the way


def test_widgets_say_they_cannot_show_on_daytona(kernel: RLMKernelProcess) -> None:
    cell = ok(kernel.execute("import ipywidgets\nslider = ipywidgets.IntSlider(value=4)\nslider"))
    (text,) = displays(cell, "text/plain")
    assert "IntSlider is a widget: widgets cannot show from a Daytona sandbox" in text
    assert "the local sandbox backend shows them" in text
    assert not [m for m in cell.outputs if m["msg_type"].startswith("comm_")]
    assert ok(kernel.execute("print(slider.value)")).stdout == "4\n"  # the value still works


def test_tab_completion_and_inspection_see_the_sandbox(kernel: RLMKernelProcess) -> None:
    ok(
        kernel.execute(
            "import json\nsandbox_value = {'a': 1}\ndef helper(n: int) -> int:\n    '''Doubles n.'''\n    return 2 * n"
        )
    )
    reply = kernel.request("complete_request", code="sandbox_v", cursor_pos=9)
    assert reply["matches"] == ["sandbox_value"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (0, 9)
    reply = kernel.request("complete_request", code="x = json.du", cursor_pos=11)
    assert {"json.dump", "json.dumps"} <= set(reply["matches"])
    assert reply["cursor_start"] == 4
    reply = kernel.request("inspect_request", code="helper(3)", cursor_pos=3)
    assert reply["found"]
    text = reply["data"]["text/plain"]
    assert "helper(n: int) -> int" in text and "Doubles n." in text
    reply = kernel.request("complete_request", code="%rl", cursor_pos=3)
    assert "%rlm" in reply["matches"]  # magics come from the host shell


def test_a_restarted_context_is_reported_and_the_next_cell_works(
    kernel: RLMKernelProcess, emulator: DaytonaEmulator
) -> None:
    ok(kernel.execute("kept = 1"))
    (sb_id,) = emulator.sandboxes
    assert emulator.restart_contexts(sb_id) == 1
    cell = kernel.execute("print(kept)")
    assert error(cell)["ename"] == "SandboxRestarted"
    assert "variables are lost" in cell.content["evalue"]
    assert ok(kernel.execute("print('kept' in globals())")).stdout == "False\n"


def test_rlm_cell_runs_its_agents_on_daytona(
    kernel: RLMKernelProcess, emulator: DaytonaEmulator, tmp_path: Path
) -> None:
    created = emulator.created
    cell = ok(kernel.execute("%%rlm --repo repo -o res\nFIX the TODO in pkg/mod.py", timeout=180))
    assert displays(cell, "text/markdown") == [ANSWER]
    (diff,) = displays(cell, "text/x-diff")
    assert "-VALUE = 1\n+VALUE = 2\n" in diff
    # The root agent ran in the notebook's (new, repo) sandbox; its child had one of its own.
    assert emulator.created - created >= 2
    got = ok(kernel.execute("print(found['now'], res.status)")).stdout
    assert got == "2 done\n"
    assert len(emulator.sandboxes) == 1  # only the notebook's sandbox is left until shutdown


def test_rlm_config_picks_daytona_and_a_wrong_key_is_a_clear_error(
    tmp_path: Path, emulator: DaytonaEmulator
) -> None:
    env = {"DAYTONA_API_KEY": "wrong-key", "DAYTONA_API_URL": emulator.api_url}
    k = RLMKernelProcess(tmp_path, env=env)
    try:
        ok(k.execute("%rlm config sandbox.backend=daytona"))
        requests = emulator.create_requests
        cell = k.execute("x = 1")
        assert error(cell)["ename"] == "SandboxError"
        assert "rejected the API key (DAYTONA_API_KEY)" in cell.content["evalue"]
        assert "wrong-key" not in cell.content["evalue"]
        assert emulator.create_requests == requests  # nothing was created
        ok(k.execute("%rlm config sandbox.backend=local"))
        assert ok(k.execute("x = 1\nprint(x)")).stdout == "1\n"  # the notebook goes on locally
    finally:
        k.shutdown()
    assert not emulator.sandboxes
