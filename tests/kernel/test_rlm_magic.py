"""`%%rlm` / `%rlm` through jupyter_client against real kernels (the `rlm` kernel, and a stock
`python3` kernel with `%load_ext rlm_kernel`), with the scripted model tests/models/notebook.py."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from .harness import Cell, RLMKernelProcess

MODEL = Path(__file__).parents[1] / "models" / "notebook.py"
FILES = Path(__file__).parents[1] / "files"
ANSWER = "**Fixed** `VALUE` in `pkg/mod.py`: 1 → 2 (the child read VALUE = 1)"


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def make_repo(where: Path) -> Path:
    """A one-module repository (`pkg/mod.py`: VALUE = 1)."""
    repo = where / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "mod.py").write_text("VALUE = 1\n")
    _git("init", "-q", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "init", cwd=repo)
    return repo


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[RLMKernelProcess]:
    """An `rlm` kernel in tmp_path (with `repo/`), the notebook model, records in results/."""
    make_repo(tmp_path)
    k = RLMKernelProcess(tmp_path, f"--RLMKernel.model=scripted/{MODEL}")
    ok(k.execute("%rlm config results_dir=results model.retries=0"))
    yield k
    k.shutdown()
    assert not list(k.sandbox_root.iterdir()), "sandboxes left behind"


def ok(cell: Cell) -> Cell:
    """Assert the cell succeeded."""
    assert cell.content["status"] == "ok", cell.content
    return cell


def displays(cell: Cell, mime: str) -> list[Any]:
    """The `mime` parts of a cell's display_data and execute_result outputs."""
    out = cell.of_type("display_data") + cell.of_type("execute_result")
    return [c["data"][mime] for c in out if mime in c["data"]]


def record(results: Path) -> dict[str, Any]:
    """The (only) run record in `results`."""
    (path,) = results.glob("*.detail.json")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def wait_for(pred: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Poll until `pred()` is truthy (returns it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = pred()
        except (FileNotFoundError, ValueError, KeyError, IndexError, TypeError):
            got = None
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- (a) a run in the notebook's sandbox -----------------------------------------------------------


def test_rlm_cell_answer_patch_and_notebook_variables(
    kernel: RLMKernelProcess, tmp_path: Path
) -> None:
    ok(kernel.execute("fname = 'pkg/mod.py'"))
    cell = ok(kernel.execute("%%rlm --repo repo -o res\nFIX the TODO in {fname}", timeout=120))
    assert displays(cell, "text/markdown") == [ANSWER]
    (diff,) = displays(cell, "text/x-diff")
    assert "-VALUE = 1\n+VALUE = 2\n" in diff
    (html,) = displays(cell, "text/html")
    assert "var(--jp-success-color0" in html and "+VALUE = 2" in html
    first = cell.of_type("display_data")[0]["data"]
    assert "application/vnd.jupyter.widget-view+json" in first  # the live agent tree comes first
    summary = displays(cell, "text/plain")[-1]
    assert summary.startswith("✓ done — 2 agents, depth 1, 2 iterations, 2 LLM calls")
    assert "· patch " in summary and summary.endswith(".patch")

    patch = ok(kernel.execute("print(res.patch, end='')")).stdout
    assert patch == diff
    (tmp_path / "fix.patch").write_text(patch)
    _git("clone", "-q", str(tmp_path / "repo"), str(tmp_path / "fresh"), cwd=tmp_path)
    _git("apply", "--check", str(tmp_path / "fix.patch"), cwd=tmp_path / "fresh")
    # The root agent ran in the notebook's sandbox: its variables are the notebook's.
    assert ok(kernel.execute("print(found['now'], _rlm is not None)")).stdout == "2 True\n"
    got = ok(kernel.execute("print(res.status, res.run_id == _rlm.run_id, res.usage['llm_calls'])"))
    assert got.stdout == "done True 2\n"


def test_context_and_repo_in_the_kernel(kernel: RLMKernelProcess) -> None:
    ok(kernel.execute("data = {'rows': [1, 2, 3]}"))
    ok(kernel.execute("%%rlm --context data -o c --quiet\nCONTEXT please"))
    assert ok(kernel.execute("print(c.answer)")).stdout == "context={'rows': [1, 2, 3]}\n"
    err = kernel.execute("%%rlm --context missing\nCONTEXT please").content
    assert err["ename"] == "UsageError" and "no variable named missing" in err["evalue"]
    err = kernel.execute("%%rlm\nCONTEXT {missing} and {data}").content
    assert err["ename"] == "UsageError" and "no variable named missing" in err["evalue"]

    out = ok(kernel.execute("%rlm repo repo")).stdout
    assert out.startswith("the notebook's workspace is now repo at ")
    assert ok(kernel.execute("print(open('pkg/mod.py').read(), end='')")).stdout == "VALUE = 1\n"
    assert ok(kernel.execute("print(data['rows'])")).stdout == "[1, 2, 3]\n"  # namespace kept
    err = kernel.execute("%rlm repo nowhere").content
    assert err["ename"] == "UsageError" and "repository not found: nowhere" in err["evalue"]


# -- (b) background + step mode controlled from later cells ----------------------------------------


def _code_iterations(rec: dict[str, Any]) -> int:
    return sum(1 for it in rec["root"]["iterations"] if it["code_blocks"])


def _waiting_at(rec: dict[str, Any], index: int) -> bool:
    its = rec["root"]["iterations"]
    return len(its) > index and "pending_code" in its[index]


def test_background_step_code_and_continue(kernel: RLMKernelProcess, tmp_path: Path) -> None:
    results = tmp_path / "results"
    # Returns while the run waits at its step gate, where it would wait for ever (execute's
    # timeout, 60 s, is the hang guard).
    ok(kernel.execute("%%rlm --background --step -o s\nSTEPS please"))
    wait_for(lambda: _waiting_at(record(results), 0), what="iteration 0 at the gate")
    assert _code_iterations(record(results)) == 0
    status = ok(kernel.execute("%rlm status")).stdout + "".join(
        displays(kernel.execute("%rlm status"), "text/plain")
    )
    assert "root@0" in status and "step mode" in status
    assert "tokens" in status and "cost" in status and "$0." in status  # usage so far

    ok(kernel.execute("%rlm step"))
    wait_for(lambda: _waiting_at(record(results), 1), what="iteration 1 at the gate")
    time.sleep(0.5)  # nothing else may run while it waits
    rec = record(results)
    assert _code_iterations(rec) == 1
    assert rec["root"]["iterations"][0]["code_blocks"][0]["output"] == "step one\n"

    ok(kernel.execute("%rlm step --code print('from the user'); mine = 7"))
    wait_for(lambda: _waiting_at(record(results), 2), what="iteration 2 at the gate")
    block = record(results)["root"]["iterations"][1]["code_blocks"][0]
    assert block["code"] == "print('from the user'); mine = 7"
    assert block["output"] == "from the user\n"

    ok(kernel.execute("%rlm continue"))
    wait_for(lambda: record(results)["status"] == "done", what="the run to finish")
    answer = wait_for(lambda: kernel.execute("print(s.answer)").stdout, what="s bound")
    assert answer == "a=1 b=None mine=7\n"


# -- the Step/Continue buttons keep working while the cell awaits its run ---------------------------


class Comms:
    """Reads a running cell's iopub messages and keeps the widget models it opens."""

    def __init__(self, kernel: RLMKernelProcess, msg_id: str) -> None:
        self.kernel = kernel
        self.msg_id = msg_id
        self.models: dict[str, dict[str, Any]] = {}
        self.waiting: list[dict[str, Any]] = []
        self.texts: dict[str, str] = {}  # text/plain of the cell's outputs, by display id

    def pump(self, until: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for a widget update")
            try:
                msg = self.kernel.kc.get_iopub_msg(timeout=0.05)
            except queue.Empty:
                continue
            c = msg["content"]
            if msg["msg_type"] == "comm_open":
                self.models[c["comm_id"]] = dict(c["data"]["state"])
            elif msg["msg_type"] == "comm_msg" and c["data"].get("method") == "update":
                self.models.setdefault(c["comm_id"], {}).update(c["data"]["state"])
            elif msg["msg_type"] in ("display_data", "update_display_data"):
                display_id = c.get("transient", {}).get("display_id")
                if display_id and "text/plain" in c["data"]:
                    self.texts[display_id] = c["data"]["text/plain"]
            elif msg["msg_type"] == "comm_msg" and c["data"].get("method") == "custom":
                run = c["data"]["content"].get("run") or {}
                if "waiting" in run:  # the agent tree's deltas carry the step gate's queue
                    self.waiting = run["waiting"]

    def find(self, **attrs: str) -> str:
        hits = [k for k, st in self.models.items() if all(st.get(a) == v for a, v in attrs.items())]
        assert len(hits) == 1, (attrs, self.models)
        return hits[0]

    def code(self) -> str:
        return str(self.waiting[0].get("code", "")) if self.waiting else ""

    def send(self, comm_id: str, data: dict[str, Any]) -> None:
        msg = self.kernel.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.kernel.kc.shell_channel.send(msg)

    def control(self, action: str, code: str | None = None) -> None:
        """What the agent tree's buttons send (Step with edited code sends the code)."""
        self.send(
            self.find(_model_name="AnyModel"),
            {"method": "custom", "content": {"kind": "control", "action": action, "code": code}},
        )


def test_step_buttons_work_while_the_cell_awaits(kernel: RLMKernelProcess) -> None:
    msg_id = kernel.send("%%rlm --step -o w\nSTEPS please")
    comms = Comms(kernel, msg_id)
    comms.pump(lambda: comms.code().startswith("a = 1"))
    # The cell's text output says what the run waits for (for readers without widget state).
    gate = "‖ root, iteration 1, waits at the step gate to run this code (Step or Continue"

    def says(first: str, code: str) -> bool:
        lines = "".join(comms.texts.values()).splitlines()
        return bool(lines) and lines[0].startswith(first) and lines[1] == f"    {code}"

    comms.pump(lambda: says(gate, "a = 1"))
    comms.control("step")
    comms.pump(lambda: comms.code().startswith("b = 2"))
    comms.pump(lambda: says(gate.replace("iteration 1", "iteration 2"), "b = 2"))
    # Teaching mode: edit the proposal, then Step runs the edited code.
    comms.control("step", code="mine = 5")
    comms.pump(lambda: comms.code().startswith("FINAL("))
    comms.control("resume")
    comms.pump(lambda: list(comms.texts.values()) == [""])  # the run ended: nothing waits
    reply = kernel.collect(msg_id, timeout=30)
    ok(reply)
    assert ok(kernel.execute("print(w.answer)")).stdout == "a=1 b=None mine=5\n"


def test_pausing_a_free_run_says_so_in_the_cells_text(kernel: RLMKernelProcess) -> None:
    msg_id = kernel.send("%%rlm\nSLEEP now")
    comms = Comms(kernel, msg_id)
    comms.pump(lambda: any(st.get("_model_name") == "AnyModel" for st in comms.models.values()))
    assert not comms.texts  # running freely: no text line under the tree
    comms.control("pause")
    comms.pump(lambda: any(t.startswith("‖ paused (step mode)") for t in comms.texts.values()))
    comms.control("cancel")
    cell = ok(kernel.collect(msg_id, timeout=30))
    texts = {
        o["content"]["transient"]["display_id"]: o["content"]["data"]["text/plain"]
        for o in cell.outputs
        if o["msg_type"] == "update_display_data"
    }
    assert list(texts.values()) == [""]  # the run ended: the line is emptied
    assert "[partial answer: cancelled" in "".join(displays(cell, "text/plain"))


# -- (c) namespaces, attach and release --------------------------------------------------------------


def test_ns_attach_and_release_kept_sandboxes(kernel: RLMKernelProcess) -> None:
    ok(kernel.execute("%%rlm --repo repo --keep --quiet -o k\nFIX it", timeout=120))
    ns = ok(kernel.execute("%rlm ns root.0"))
    (table,) = displays(ns, "text/plain")
    assert "child_note   str   9     'VALUE = 1'" in table and "child_count  int" in table
    kept = json.loads(ok(kernel.execute("import json; print(json.dumps(k.kept))")).stdout)
    paths = [Path(info["path"]) for info in kept]
    assert len(paths) == 1 and paths[0].is_dir() and (paths[0] / "pkg" / "mod.py").is_file()

    live = ok(kernel.execute("%rlm ns root.0 --live"))
    assert "child_count" in displays(live, "text/plain")[0]
    ok(kernel.execute("%rlm attach root.0"))
    (result,) = ok(kernel.execute("child_count")).of_type("execute_result")
    assert result["data"]["text/plain"] == "9"
    ok(kernel.execute("%rlm detach"))
    assert "NameError" in str(kernel.execute("child_count").content.get("ename"))

    released = ok(kernel.execute("%rlm release"))
    assert released.stdout == "released 1 kept sandbox\n"
    assert not any(p.exists() for p in paths)
    err = kernel.execute("%rlm attach root.0").content
    assert err["ename"] == "UsageError" and "kept no sandbox" in err["evalue"]


def test_attach_needs_keep(kernel: RLMKernelProcess) -> None:
    ok(kernel.execute("%%rlm --repo repo --quiet\nFIX it", timeout=120))
    err = kernel.execute("%rlm attach root.0").content
    assert err["ename"] == "UsageError" and "start it with %%rlm --keep" in err["evalue"]


# -- interrupt -----------------------------------------------------------------------------------------


def _sleeping(sandbox_root: Path, before: set[str]) -> int:
    """How many children of the run started after `before` are in their 120 s cell (they leave
    a marker in their workspaces)."""
    runs = set(os.listdir(sandbox_root)) - before  # the run's, and maybe a spare (`spare-…`)
    return sum(len(list((sandbox_root / r).glob("*/work/sleeping"))) for r in runs)


def test_interrupt_cancels_the_tree_and_removes_its_sandboxes(kernel: RLMKernelProcess) -> None:
    ok(kernel.execute("1"))  # the notebook's own sandbox exists before the run
    before = set(os.listdir(kernel.sandbox_root))
    msg_id = kernel.send("%%rlm\nSLEEP now")
    wait_for(lambda: _sleeping(kernel.sandbox_root, before) == 2, 120, "both children to sleep")
    kernel.km.interrupt_kernel()
    # Cancelled, not ended by the children's 120 s sleep (the timeout is a hang guard only: the
    # cancel takes about a second, more on a loaded machine).
    cell = kernel.collect(msg_id, timeout=60)
    assert cell.content["status"] == "error" and cell.content["ename"] == "RunInterrupted"
    assert "cancelled; its sandboxes were removed" in cell.content["evalue"]
    # What the notebook shows: one line, not the frames of the cell transform (`await
    # __import__('rlm_kernel.magics')...`) and of magics.py; the partial answer above it.
    (error,) = cell.of_type("error")
    for traceback in (error["traceback"], cell.content["traceback"]):
        text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(traceback))
        assert re.fullmatch(
            r"KeyboardInterrupt: run \d{8}-\d{6}-[0-9a-f]{6} cancelled; its sandboxes were "
            r"removed \(the partial answer, if any, is above\)",
            text,
        ), text
    answer = displays(cell, "text/plain")[-2]
    assert answer.startswith("[partial answer: cancelled: interrupted (kernel interrupt)]"), answer
    assert set(os.listdir(kernel.sandbox_root)) == before
    assert "application/vnd.jupyter.widget-view+json" in cell.of_type("display_data")[0]["data"]
    assert ok(kernel.execute("print('still here')")).stdout == "still here\n"


def test_shutdown_cancels_runs_and_removes_kept_sandboxes(tmp_path: Path) -> None:
    make_repo(tmp_path)
    k = RLMKernelProcess(tmp_path, f"--RLMKernel.model=scripted/{MODEL}")
    try:
        ok(k.execute("%rlm config results_dir=results model.retries=0"))
        ok(k.execute("%%rlm --repo repo --keep --quiet\nFIX it", timeout=120))
        ok(k.execute("%%rlm --background --step\nSTEPS please"))
        wait_for(lambda: "root@0" in str(displays(k.execute("%rlm status"), "text/plain")))
        assert len(list(k.sandbox_root.iterdir())) == 2  # the notebook's, and the kept child's
    finally:
        t0 = time.monotonic()
        k.shutdown()  # the run waits at its step gate: only the shutdown can end it
    assert time.monotonic() - t0 < 60  # a hang guard (seconds on a loaded machine)
    assert not list(k.sandbox_root.iterdir())
    assert record_status(tmp_path / "results") == {"done", "cancelled"}


def record_status(results: Path) -> set[str]:
    """The statuses of the runs recorded in `results`."""
    return {json.loads(p.read_text())["status"] for p in results.glob("*.detail.json")}


# -- (d) a notebook executed by nbclient matches its golden copy -------------------------------------

_VOLATILE = [
    (r"\d{8}-\d{6}-[0-9a-f]{6}", "RUN_ID"),  # run ids
    (r"\d+\.\d s\b", "T s"),  # timings
]


def normalise(nb: Any, workdir: Path) -> dict[str, Any]:
    """The notebook without ids, counts, timings, run ids, temp paths or execution metadata."""
    import re

    def clean(text: str) -> str:
        text = text.replace(str(workdir), "WORKDIR").replace(str(MODEL.parent), "MODELS")
        for pattern, repl in _VOLATILE:
            text = re.sub(pattern, repl, text)
        return text

    cells = []
    for c in nb["cells"]:
        out: dict[str, Any] = {"cell_type": c["cell_type"], "source": c["source"]}
        if c["cell_type"] == "code":
            out["outputs"] = []
            for o in c.get("outputs", []):
                o = dict(o)
                o.pop("execution_count", None)
                o.pop("metadata", None)
                if "data" in o:
                    o["data"] = {
                        k: clean(v) if isinstance(v, str) else v for k, v in o["data"].items()
                    }
                    view = o["data"].get("application/vnd.jupyter.widget-view+json")
                    if view is not None:  # the live agent tree: its id and status are volatile
                        o["data"]["application/vnd.jupyter.widget-view+json"] = {
                            **view,
                            "model_id": "MODEL_ID",
                        }
                        o["data"]["text/plain"] = "AgentTree(…)"
                if "text" in o:
                    o["text"] = clean(o["text"])
                if "traceback" in o:
                    o["traceback"] = [clean(t) for t in o["traceback"]]
                out["outputs"].append(o)
        cells.append(out)
    return {"cells": cells}


def golden_copy(nb: Any, cleaned: dict[str, Any]) -> str:
    """The executed notebook as a valid .ipynb with the normalised outputs."""
    import nbformat

    out = nbformat.from_dict(json.loads(json.dumps(nb)))
    for cell, clean in zip(out.cells, cleaned["cells"], strict=True):
        cell.metadata = {}
        if cell.cell_type == "code":
            cell.execution_count = None
            cell.outputs = []
            for o in clean["outputs"]:
                if o["output_type"] in ("display_data", "execute_result"):
                    o = {**o, "metadata": {}}
                if o["output_type"] == "execute_result":
                    o["execution_count"] = None
                cell.outputs.append(nbformat.from_dict(o))
    out.metadata.get("language_info", {}).pop("version", None)
    out.metadata.pop("widgets", None)
    nbformat.validate(out)
    return json.dumps(out, indent=1, ensure_ascii=False) + "\n"


def test_notebook_outputs_match_the_golden_copy(tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    make_repo(tmp_path)
    (tmp_path / "notebook_model.py").write_text(MODEL.read_text())
    nb = nbformat.read(FILES / "rlm_magic.ipynb", as_version=4)
    km = KernelManager(kernel_name="rlm", transport="ipc", ip=str(tmp_path / "ipc"))
    client = NotebookClient(nb, km=km, timeout=120, resources={"metadata": {"path": str(tmp_path)}})
    sandboxes = tmp_path / "tmp"
    sandboxes.mkdir()
    try:
        client.execute(env={**os.environ, "TMPDIR": str(sandboxes)})
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=False)  # the client leaves a kernel it was given running
    got = normalise(nb, tmp_path)
    golden_path = FILES / "rlm_magic.golden.ipynb"
    if os.environ.get("RLM_UPDATE_GOLDEN"):
        golden_path.write_text(golden_copy(nb, got), encoding="utf-8")
    golden = normalise(json.loads(golden_path.read_text()), tmp_path)
    assert got == golden
    assert not [p for p in sandboxes.rglob("*") if p.is_dir() and p.parent.name.startswith("rlm-")]


# -- (e) a stock python3 kernel with %load_ext rlm_kernel ---------------------------------------------


class Python3Kernel(RLMKernelProcess):
    """The stock `python3` kernel (ipykernel), with the same harness."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tmpdir = workdir / "tmp"
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.km = KernelManager(kernel_name="python3", transport="ipc", ip=str(workdir / "ipc"))
        self.km.start_kernel(env={**os.environ, "TMPDIR": str(self.tmpdir)}, cwd=str(workdir))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)


def test_load_ext_in_a_stock_python_kernel(tmp_path: Path) -> None:
    make_repo(tmp_path)
    k = Python3Kernel(tmp_path)
    try:
        ok(k.execute("%load_ext rlm_kernel"))
        ok(k.execute(f"%rlm config model.name=scripted/{MODEL} results_dir=results retries=0"))
        ok(k.execute("fname = 'pkg/mod.py'"))
        cell = ok(k.execute("%%rlm --repo repo -o res\nFIX the TODO in {fname}", timeout=120))
        assert displays(cell, "text/markdown") == [ANSWER]
        assert "+VALUE = 2" in displays(cell, "text/x-diff")[0]
        got = ok(k.execute("print(type(res).__name__, res.answer == _rlm.answer, res.status)"))
        assert got.stdout == "RunOutcome True done\n"
        # The root agent had its own sandbox: its variables are not in this namespace.
        assert k.execute("found").content["ename"] == "NameError"
        ok(k.execute("data = {'rows': [1, 2, 3]}"))
        ok(k.execute("%%rlm --context data -o c --quiet\nCONTEXT please", timeout=60))
        assert ok(k.execute("print(c.answer)")).stdout == "context={'rows': [1, 2, 3]}\n"
        err = k.execute("%rlm attach root.0").content
        assert err["ename"] == "UsageError" and "needs the RLM kernel" in err["evalue"]

        # Without autoawait the registered cell magic runs, blocking; an interrupt still
        # cancels the whole tree.
        ok(k.execute("%autoawait off"))
        before = set(os.listdir(k.sandbox_root))
        msg_id = k.send("%%rlm\nSLEEP now")
        wait_for(lambda: _sleeping(k.sandbox_root, before) == 2, 120, "both children to sleep")
        k.km.interrupt_kernel()
        cell = k.collect(msg_id, timeout=60)  # a hang guard: the children sleep 120 s
        assert cell.content["ename"] == "RunInterrupted"
        assert len(cell.content["traceback"]) == 1  # one line, no frames

        # The run's sandboxes go (the root's closes just after the result: it may be the spare
        # adopted from the run before, in a spare-… directory); what may stay is the process's
        # one spare root sandbox for its next run (`sandbox.spare`).
        def left() -> tuple[set[str], list[str]]:
            now = set(os.listdir(k.sandbox_root))
            return {d for d in now - before if "spare-" not in d}, [
                d for d in now if d.startswith("spare-")
            ]

        wait_for(
            lambda: not left()[0] and len(left()[1]) <= 1, 30, "the run's sandboxes to be removed"
        )
    finally:
        k.shutdown()
    assert not list(k.sandbox_root.iterdir())


PAYLOAD = """
import os
class Payload:
    def __reduce__(self):
        return (os.system, ("echo reduce:$PPID >> {marker}",))
    def __str__(self):
        open({marker!r}, "a").write(f"str:{{os.getpid()}}\\n")
        return "payload"
    def __repr__(self):
        open({marker!r}, "a").write(f"repr:{{os.getpid()}}\\n")
        return "Payload()"
    def __len__(self):
        open({marker!r}, "a").write(f"len:{{os.getpid()}}\\n")
        return 3
x = Payload()
"""


def test_sandbox_objects_never_run_code_in_the_kernel_process(
    unconfined: None, kernel: RLMKernelProcess, tmp_path: Path
) -> None:
    # (unconfined: the marker is written outside the sandbox's workspace)
    # A cell's object whose pickle runs a command, read through `{x}`, `--context x` and
    # `%rlm step --code x`: only the sandbox may run its code; the kernel process (where the
    # keys live) never unpickles anything a sandbox made.
    marker = tmp_path / "marker.txt"
    ok(kernel.execute(PAYLOAD.format(marker=str(marker))))
    sandbox_pid = kernel.sandbox_pid()
    host_pid = kernel.km.provisioner.pid
    cell = kernel.execute("%rlm config model.sub_model=scripted/{x}")
    assert cell.content["status"] in ("ok", "error"), cell.content
    ok(kernel.execute("%%rlm --context x -o c --quiet\nCONTEXT please"))
    assert "context=" in ok(kernel.execute("print(c.answer)")).stdout
    lines = marker.read_text().splitlines() if marker.exists() else []
    pids = {line.split(":")[1] for line in lines}
    assert str(host_pid) not in pids, lines
    assert not any(line.startswith("reduce:") for line in lines), lines
    assert pids <= {str(sandbox_pid)}, (lines, sandbox_pid)
    # `{x}` used str(x), computed in the sandbox.
    assert f"str:{sandbox_pid}" in lines
