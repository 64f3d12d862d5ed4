"""The RLM kernel over the Jupyter protocol: real kernel, real sandbox, jupyter_client only."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlm_kernel.sandbox.base import strip_ansi

from .harness import RLMKernelProcess, pid_alive

MODELS = Path(__file__).parents[1] / "models"
SECRET = "sk-test-never-in-a-sandbox"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RLMKernelProcess]:
    """One kernel for the module, with a scripted model and a secret in its environment."""
    k = RLMKernelProcess(
        tmp_path_factory.mktemp("rlm-kernel"),
        f"--RLMKernel.model=scripted/{MODELS / 'echo.py'}",
        env={"OPENAI_API_KEY": SECRET},
    )
    yield k
    k.shutdown()
    assert not list(k.sandbox_root.iterdir())


def test_variables_persist_across_cells(kernel: RLMKernelProcess) -> None:
    assert kernel.execute("persisted = [1, 2]").content["status"] == "ok"
    cell = kernel.execute("persisted.append(3)\nprint(persisted)")
    assert cell.stdout == "[1, 2, 3]\n"


def test_cells_run_in_the_sandbox_not_the_host(kernel: RLMKernelProcess) -> None:
    cell = kernel.execute("import os\nprint(os.getcwd())")
    assert "/rlm-kernel-" in cell.stdout and cell.stdout.strip().endswith("/root/work")
    assert kernel.sandbox_pid() != kernel.km.provisioner.process.pid


def test_the_notebook_folder_is_in_the_sandbox_environment(kernel: RLMKernelProcess) -> None:
    (kernel.workdir / "next-to-the-notebook.txt").write_text("found\n")
    code = (
        "import os\n"
        "print(open(os.path.join(os.environ['RLM_NOTEBOOK_DIR'], 'next-to-the-notebook.txt')).read())"
    )
    assert kernel.execute(code).stdout == "found\n\n"


def test_execution_count_advances_and_numbers_results(kernel: RLMKernelProcess) -> None:
    cells = [kernel.execute(code) for code in ("a_value = 20", "%rlm help", "a_value + 22")]
    counts = [c.content["execution_count"] for c in cells]
    assert counts[1] == counts[0] + 1 and counts[2] == counts[0] + 2
    assert [c.inputs[0]["execution_count"] for c in cells] == counts
    (result,) = cells[2].of_type("execute_result")
    assert result["data"]["text/plain"] == "42" and result["execution_count"] == counts[2]


def test_error_cell_replies_with_the_traceback(kernel: RLMKernelProcess) -> None:
    cell = kernel.execute("def f():\n    raise ValueError('boom')\nf()")
    reply = cell.content
    assert reply["status"] == "error"
    assert reply["ename"] == "ValueError" and reply["evalue"] == "boom"
    assert "raise ValueError" in strip_ansi("\n".join(reply["traceback"]))
    (shown,) = cell.of_type("error")
    assert (shown["ename"], shown["traceback"]) == (reply["ename"], reply["traceback"])


def test_matplotlib_figure_is_png(kernel: RLMKernelProcess) -> None:
    cell = kernel.execute("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
    assert cell.content["status"] == "ok"
    pngs = [d for d in cell.of_type("display_data") if "image/png" in d["data"]]
    assert len(pngs) == 1


def test_html_and_markdown_displays(kernel: RLMKernelProcess) -> None:
    cell = kernel.execute(
        "from IPython.display import HTML, Markdown, display\n"
        "display(HTML('<b>bold</b>'))\ndisplay(Markdown('*md*'))"
    )
    data = [d["data"] for d in cell.of_type("display_data")]
    assert data[0]["text/html"] == "<b>bold</b>" and data[1]["text/markdown"] == "*md*"


def wait_until_running(kernel: RLMKernelProcess, msg_id: str, timeout: float = 60) -> None:
    """Read the cell's output until it printed "running" (the cell runs in the sandbox now)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = kernel.kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        mine = msg["parent_header"].get("msg_id") == msg_id
        if mine and msg["msg_type"] == "stream" and "running" in msg["content"]["text"]:
            return


# The cells below never end by themselves: the reply's timeout (30 s, where the interrupt takes
# milliseconds) is a hang guard, not a speed limit a loaded machine could break.


def test_interrupt_stops_a_busy_cell(kernel: RLMKernelProcess) -> None:
    msg_id = kernel.send("print('running', flush=True)\nwhile True:\n    pass")
    wait_until_running(kernel, msg_id)
    kernel.km.interrupt_kernel()
    cell = kernel.collect(msg_id, timeout=30)
    assert cell.content["status"] == "error" and cell.content["ename"] == "KeyboardInterrupt"
    assert cell.of_type("error")[0]["ename"] == "KeyboardInterrupt"
    assert kernel.execute("print('still here')").stdout == "still here\n"


def test_sigint_to_the_kernel_stops_a_busy_cell(kernel: RLMKernelProcess) -> None:
    msg_id = kernel.send(
        "import time\nprint('running', flush=True)\nwhile True:\n    time.sleep(0.01)"
    )
    wait_until_running(kernel, msg_id)
    kernel.km.signal_kernel(signal.SIGINT)  # what interrupt_mode "signal" frontends do
    cell = kernel.collect(msg_id, timeout=30)
    assert cell.content["ename"] == "KeyboardInterrupt"
    assert kernel.execute("print('alive')").stdout == "alive\n"


def test_input_round_trips_through_the_frontend(kernel: RLMKernelProcess) -> None:
    msg_id = kernel.send(
        "print('before')\nname = input('who? ')\nprint('hi', name)", allow_stdin=True
    )
    request = kernel.kc.get_stdin_msg(timeout=10)
    assert request["msg_type"] == "input_request"
    assert request["content"] == {"prompt": "who? ", "password": False}
    assert request["parent_header"]["msg_id"] == msg_id
    kernel.kc.input("ada")
    cell = kernel.collect(msg_id)
    assert cell.content["status"] == "ok"
    assert cell.stdout == "before\nhi ada\n"


def test_interrupt_while_waiting_for_input(kernel: RLMKernelProcess) -> None:
    msg_id = kernel.send("x = input('never answered: ')", allow_stdin=True)
    kernel.kc.get_stdin_msg(timeout=60)
    kernel.km.interrupt_kernel()
    cell = kernel.collect(msg_id, timeout=30)
    assert cell.content["ename"] == "KeyboardInterrupt"
    msg_id = kernel.send("y = input('again: ')\nprint(y)", allow_stdin=True)
    assert kernel.kc.get_stdin_msg(timeout=10)["content"]["prompt"] == "again: "
    kernel.kc.input("yes")
    assert kernel.collect(msg_id).stdout == "yes\n"


def test_input_without_stdin_raises(kernel: RLMKernelProcess) -> None:
    cell = kernel.execute("input('no frontend stdin: ')")
    assert cell.content["ename"] == "StdinNotImplementedError"


def test_complete_and_inspect_see_sandbox_variables(kernel: RLMKernelProcess) -> None:
    kernel.execute("my_sandbox_var = 1")
    reply = kernel.request("complete_request", code="my_sand", cursor_pos=7)
    assert reply["status"] == "ok" and "my_sandbox_var" in reply["matches"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (0, 7)
    info = kernel.request("inspect_request", code="my_sandbox_var", cursor_pos=14, detail_level=0)
    assert info["found"] and "int" in info["data"]["text/plain"]


def test_complete_while_a_cell_runs(kernel: RLMKernelProcess) -> None:
    kernel.execute("busy_var = 7")
    msg_id = kernel.send("import time\nprint('running', flush=True)\ntime.sleep(120)")
    wait_until_running(kernel, msg_id)
    # Answered while the cell sleeps (after it, the request would time out first).
    reply = kernel.request("complete_request", code="busy_v", cursor_pos=6, timeout=60)
    assert reply["matches"] == ["busy_var"]
    kernel.km.interrupt_kernel()
    assert kernel.collect(msg_id, timeout=30).content["ename"] == "KeyboardInterrupt"


def test_rlm_magics_complete_from_the_host(kernel: RLMKernelProcess) -> None:
    reply = kernel.request("complete_request", code="%rl", cursor_pos=3)
    assert "%rlm" in reply["matches"]


def test_llm_query_in_a_plain_cell_uses_the_configured_model(kernel: RLMKernelProcess) -> None:
    cell = kernel.execute("print(llm_query('ping'))")
    assert cell.content["status"] == "ok", cell.content
    reply = json.loads(cell.stdout)
    assert reply["kind"] == "llm_query" and reply["last"] == "ping"


def test_rlm_query_needs_a_run(kernel: RLMKernelProcess) -> None:
    cell = kernel.execute("rlm_query('sub-task')")
    assert cell.content["status"] == "error"
    assert "start one with %%rlm" in cell.content["evalue"]


def test_the_sandbox_never_sees_api_keys(kernel: RLMKernelProcess) -> None:
    cell = kernel.execute(
        "import os\n"
        "print(os.environ.get('OPENAI_API_KEY'))\n"
        f"print({SECRET!r} in open('/proc/self/environ', 'rb').read().decode(errors='replace'))"
    )
    assert cell.stdout == "None\nFalse\n"


def test_kernel_info_and_history(kernel: RLMKernelProcess) -> None:
    info = kernel.request("kernel_info_request")
    assert info["implementation"] == "rlm" and info["language_info"]["name"] == "python"
    kernel.execute("history_marker = 'hm'")
    hist = kernel.request("history_request", hist_access_type="tail", n=1, output=False, raw=True)
    assert hist["history"][-1][2] == "history_marker = 'hm'"


def test_a_cell_that_ignores_interrupts_gets_a_fresh_sandbox(kernel: RLMKernelProcess) -> None:
    kernel.execute("doomed = 1")
    msg_id = kernel.send(
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
    )
    time.sleep(0.3)
    kernel.km.interrupt_kernel()
    cell = kernel.collect(msg_id, timeout=20)
    assert cell.content["ename"] == "KeyboardInterrupt"
    assert "variables are gone" in cell.content["evalue"]
    assert kernel.execute("print('doomed' in dir())").stdout == "False\n"


def test_a_dead_sandbox_is_replaced_by_the_next_cell(kernel: RLMKernelProcess) -> None:
    pid = kernel.sandbox_pid()
    cell = kernel.execute("import os\nos._exit(3)")
    assert cell.content["ename"] == "SandboxDied"
    assert [o["msg_type"] for o in cell.outputs] == ["error"]
    assert kernel.sandbox_pid() != pid


def test_shutdown_leaves_nothing_behind(tmp_path: Path) -> None:
    k = RLMKernelProcess(tmp_path)
    cells = [k.execute(code) for code in ("a = 1", "%rlm help", "a + 1")]
    assert [c.content["execution_count"] for c in cells] == [1, 2, 3]
    pid = k.sandbox_pid()
    assert pid_alive(pid) and list(k.sandbox_root.iterdir())
    k.shutdown()
    assert not pid_alive(pid)
    assert not list(k.sandbox_root.iterdir())


def test_sigterm_during_a_cell_leaves_nothing_behind(tmp_path: Path) -> None:
    k = RLMKernelProcess(tmp_path)
    pid = k.sandbox_pid()
    k.send("while True:\n    pass")
    time.sleep(0.3)
    process = k.km.provisioner.process
    process.terminate()  # a manager whose shutdown_request timed out does this
    assert process.wait(timeout=10) == 128 + signal.SIGTERM
    assert not pid_alive(pid)
    assert not list(k.sandbox_root.iterdir())
    k.shutdown()


def test_restart_leaves_nothing_behind(tmp_path: Path) -> None:
    k = RLMKernelProcess(tmp_path)
    try:
        pid = k.sandbox_pid()
        k.km.restart_kernel(now=False)
        k.kc.wait_for_ready(timeout=60)
        assert not pid_alive(pid)
        assert not list(k.sandbox_root.iterdir())
        cell = k.execute("print('fresh', 'a' in dir())")
        assert cell.stdout == "fresh False\n" and cell.content["execution_count"] == 1
    finally:
        k.shutdown()
    assert not list(k.sandbox_root.iterdir())
