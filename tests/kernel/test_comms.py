"""The kernel's relay (rlm_kernel/comms.py) over the real protocol: widgets' comms between a
jupyter_client frontend and the sandbox kernel, payloads and user_expressions, and what a hostile
sandbox must not be able to do."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import Cell, RLMKernelProcess
from .test_rlm_magic import MODEL, make_repo, ok

WIDGET = "jupyter.widget"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RLMKernelProcess]:
    """One kernel for the module (with the notebook model and a repository, for `%%rlm` runs)."""
    where = tmp_path_factory.mktemp("rlm-comms")
    make_repo(where)
    k = RLMKernelProcess(where, f"--RLMKernel.model=scripted/{MODEL}")
    ok(k.execute("%rlm config results_dir=results model.retries=0"))
    yield k
    k.shutdown()
    assert not list(k.sandbox_root.iterdir())


class Frontend:
    """Every iopub message of a kernel, kept (the harness drops those of other requests)."""

    def __init__(self, kernel: RLMKernelProcess) -> None:
        self.kernel = kernel
        self.seen: list[dict[str, Any]] = []

    def pump(self, timeout: float = 0.05) -> None:
        while True:
            try:
                self.seen.append(self.kernel.kc.get_iopub_msg(timeout=timeout))
            except queue.Empty:
                return
            timeout = 0

    def run(self, code: str, timeout: float = 60, **content: Any) -> Cell:
        """Execute a cell; its messages are kept in `seen` too. Returns it as the harness does."""
        msg_id = self.kernel.kc.execute(code, **content)
        cell = Cell(msg_id)
        deadline = time.monotonic() + timeout
        while not any(
            m["parent_header"].get("msg_id") == msg_id
            and m["msg_type"] == "status"
            and m["content"]["execution_state"] == "idle"
            for m in self.seen
        ):
            assert time.monotonic() < deadline, f"no idle for {code!r}"
            self.pump()
        for m in self.seen:
            if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] not in (
                "status",
                "execute_input",
            ):
                cell.outputs.append(m)
        while True:
            reply = self.kernel.kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                cell.reply = reply
                return cell

    def send(self, msg_type: str, **content: Any) -> str:
        """Send a shell message as a frontend does (comm messages have no reply)."""
        msg = self.kernel.kc.session.msg(msg_type, content)
        self.kernel.kc.shell_channel.send(msg)
        return str(msg["header"]["msg_id"])

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for m in self.seen:
                if pred(m):
                    return m
            assert time.monotonic() < deadline, "timed out waiting for an iopub message"
            self.pump()

    def about(self, comm_id: str) -> list[dict[str, Any]]:
        """Every comm message seen for `comm_id`."""
        return [
            m
            for m in self.seen
            if m["msg_type"].startswith("comm_") and m["content"].get("comm_id") == comm_id
        ]


@pytest.fixture
def fe(kernel: RLMKernelProcess) -> Frontend:
    while True:  # replies of earlier tests' requests nobody waited for
        try:
            kernel.kc.get_shell_msg(timeout=0)
        except queue.Empty:
            return Frontend(kernel)


def slider(fe: Frontend, name: str, value: int = 3) -> str:
    """Display an IntSlider made in the sandbox; return its comm (model) id."""
    cell = ok(
        fe.run(f"import ipywidgets\n{name} = ipywidgets.IntSlider(value={value})\ndisplay({name})")
    )
    (view,) = [
        c["data"]["application/vnd.jupyter.widget-view+json"]
        for c in cell.of_type("display_data")
        if "application/vnd.jupyter.widget-view+json" in c["data"]
    ]
    comm_id = str(view["model_id"])
    kinds = [(m["msg_type"], m["content"].get("comm_id")) for m in cell.outputs]
    (opened,) = [
        m
        for m in cell.outputs
        if m["msg_type"] == "comm_open" and m["content"]["comm_id"] == comm_id
    ]
    assert opened["content"]["target_name"] == WIDGET
    assert opened["content"]["data"]["state"]["_model_name"] == "IntSliderModel"
    # the comm_open comes before the display that refers to it
    assert kinds.index(("comm_open", comm_id)) < kinds.index(("display_data", None))
    return comm_id


def move(fe: Frontend, comm_id: str, value: int) -> str:
    """What the frontend sends when the user moves the slider."""
    return fe.send(
        "comm_msg",
        comm_id=comm_id,
        data={"method": "update", "state": {"value": value}, "buffer_paths": []},
    )


def comm_info(kernel: RLMKernelProcess, target: str | None = WIDGET) -> dict[str, Any]:
    content = {} if target is None else {"target_name": target}
    return dict(kernel.request("comm_info_request", **content)["comms"])


# -- the frontend and the sandbox's widgets -----------------------------------------------------


def test_a_widget_round_trips_between_frontend_and_sandbox(
    kernel: RLMKernelProcess, fe: Frontend
) -> None:
    comm_id = slider(fe, "s")
    assert comm_info(kernel)[comm_id] == {"target_name": WIDGET}
    sent = move(fe, comm_id, 7)
    # ipywidgets echoes the update, in answer to the frontend's message
    echo = fe.wait(
        lambda m: m["msg_type"] == "comm_msg" and m["parent_header"].get("msg_id") == sent
    )
    assert echo["content"]["comm_id"] == comm_id
    assert echo["content"]["data"]["method"] == "echo_update"
    assert ok(fe.run("print(s.value)")).stdout == "7\n"
    # and the other way: the sandbox changes the value, the frontend hears of it
    cell = ok(fe.run("s.value = 11"))
    (update,) = [m for m in cell.outputs if m["msg_type"] == "comm_msg"]
    assert update["content"]["data"] == {
        "method": "update",
        "state": {"value": 11},
        "buffer_paths": [],
    }


def test_a_running_cell_hears_the_frontend(kernel: RLMKernelProcess, fe: Frontend) -> None:
    comm_id = slider(fe, "live", 0)
    msg_id = kernel.kc.execute(
        "import asyncio\n"
        "while live.value != 42:\n"
        "    await asyncio.sleep(0.02)\n"
        "print('moved to', live.value)"
    )
    time.sleep(0.5)  # the cell is running in the sandbox now
    move(fe, comm_id, 42)
    cell = kernel.collect(msg_id, timeout=20)
    assert cell.content["status"] == "ok" and cell.stdout == "moved to 42\n"


def test_widget_callbacks_print_in_answer_to_the_frontend(
    kernel: RLMKernelProcess, fe: Frontend
) -> None:
    comm_id = slider(fe, "cb")
    ok(fe.run("cb.observe(lambda change: print('now', change['new']), names='value')"))
    sent = move(fe, comm_id, 5)
    printed = fe.wait(
        lambda m: m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == sent
    )
    assert printed["content"]["text"] == "now 5\n"


def test_an_output_widget_captures_by_the_frontends_msg_id(
    kernel: RLMKernelProcess, fe: Frontend
) -> None:
    cell = ok(
        fe.run(
            "out = ipywidgets.Output()\ndisplay(out)\n"
            "with out:\n    print('inside')\n"
            "print('outside')"
        )
    )
    # the Output widget was told the msg_id of the frontend's request, which the print carries
    states = [
        m["content"]["data"]["state"]
        for m in cell.outputs
        if m["msg_type"] == "comm_msg" and "msg_id" in m["content"]["data"].get("state", {})
    ]
    assert states[0]["msg_id"] == cell.msg_id and states[-1]["msg_id"] == ""
    assert cell.stdout == "inside\noutside\n"


def test_comm_close_from_the_frontend(kernel: RLMKernelProcess, fe: Frontend) -> None:
    comm_id = slider(fe, "gone")
    fe.send("comm_close", comm_id=comm_id, data={})
    deadline = time.monotonic() + 10
    while comm_id in comm_info(kernel):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert ok(fe.run("print(gone.comm._closed)")).stdout == "True\n"


def test_frontend_comm_open_reaches_the_sandbox(kernel: RLMKernelProcess, fe: Frontend) -> None:
    ok(
        fe.run(
            "from comm import get_comm_manager\n"
            "opened = []\n"
            "def target(comm, msg):\n"
            "    opened.append(msg['content']['data'])\n"
            "    comm.on_msg(lambda m: comm.send({'echo': m['content']['data']}))\n"
            "get_comm_manager().register_target('probe', target)"
        )
    )
    fe.send("comm_open", comm_id="probe-1", target_name="probe", data={"hello": 1})
    sent = fe.send("comm_msg", comm_id="probe-1", data={"ping": 2})
    reply = fe.wait(
        lambda m: m["msg_type"] == "comm_msg" and m["parent_header"].get("msg_id") == sent
    )
    assert reply["content"] == {"comm_id": "probe-1", "data": {"echo": {"ping": 2}}}
    assert ok(fe.run("print(opened)")).stdout == "[{'hello': 1}]\n"
    assert comm_info(kernel, "probe") == {"probe-1": {"target_name": "probe"}}
    # an unknown target: the sandbox closes the comm, the frontend is told
    fe.send("comm_open", comm_id="nobody-1", target_name="no-such-target", data={})
    fe.wait(lambda m: m["msg_type"] == "comm_close" and m["content"]["comm_id"] == "nobody-1")


def test_the_control_comm_is_refused_when_sandbox_widgets_exist(
    kernel: RLMKernelProcess, fe: Frontend
) -> None:
    slider(fe, "ctl")
    # A reloaded page asks for every widget's state at once; widgets live in two kernels, so
    # it is told no and asks each widget instead (by comm_info and request_state).
    opened = fe.send("comm_open", comm_id="ctl-1", target_name="jupyter.widget.control", data={})
    closed = fe.wait(lambda m: m["msg_type"] == "comm_close" and m["content"]["comm_id"] == "ctl-1")
    assert closed["parent_header"]["msg_id"] == opened
    comm_id = next(iter(c for c in comm_info(kernel)))
    sent = fe.send("comm_msg", comm_id=comm_id, data={"method": "request_state"})
    state = fe.wait(
        lambda m: m["msg_type"] == "comm_msg" and m["parent_header"].get("msg_id") == sent
    )
    assert state["content"]["data"]["method"] == "update"


def test_tqdm_notebook_progress_bar(kernel: RLMKernelProcess, fe: Frontend) -> None:
    cell = ok(
        fe.run("from tqdm.notebook import tqdm\nfor i in tqdm(range(3), desc='steps'):\n    pass")
    )
    opened = {
        m["content"]["data"]["state"].get("_model_name"): m["content"]["comm_id"]
        for m in cell.outputs
        if m["msg_type"] == "comm_open"
    }
    assert {"HBoxModel", "FloatProgressModel", "HTMLModel"} <= set(opened)
    values = [
        m["content"]["data"]["state"]["value"]
        for m in fe.about(opened["FloatProgressModel"])
        if m["msg_type"] == "comm_msg" and "value" in m["content"]["data"].get("state", {})
    ]
    assert values and values[-1] == 3


def test_widgets_stay_with_their_sandbox_after_detach(
    kernel: RLMKernelProcess, fe: Frontend
) -> None:
    ok(fe.run("%%rlm --repo repo --keep --quiet\nFIX it", timeout=120))
    ok(fe.run("%rlm attach root.0"))
    comm_id = slider(fe, "kept_slider")
    ok(fe.run("%rlm detach"))
    assert fe.run("kept_slider").content["ename"] == "NameError"  # the root sandbox's namespace
    sent = move(fe, comm_id, 9)
    fe.wait(lambda m: m["msg_type"] == "comm_msg" and m["parent_header"].get("msg_id") == sent)
    assert comm_id in comm_info(kernel)
    ok(fe.run("%rlm attach root.0"))
    assert ok(fe.run("print(kept_slider.value)")).stdout == "9\n"
    ok(fe.run("%rlm detach"))
    # the kept sandbox goes away: the frontend is told its widgets are closed
    ok(fe.run("%rlm release"))
    fe.wait(lambda m: m["msg_type"] == "comm_close" and m["content"]["comm_id"] == comm_id)
    assert comm_id not in comm_info(kernel)


def test_the_sandbox_going_away_closes_its_comms(tmp_path: Path) -> None:
    k = RLMKernelProcess(tmp_path)
    try:
        fe = Frontend(k)
        comm_id = slider(fe, "doomed")
        cell = fe.run("import os\nos._exit(3)")
        assert cell.content["ename"] == "SandboxDied"
        fe.wait(lambda m: m["msg_type"] == "comm_close" and m["content"]["comm_id"] == comm_id)
        assert comm_info(k) == {}
        # the next cell gets a fresh sandbox, where widgets work again
        slider(fe, "again")
    finally:
        k.shutdown()


# -- payloads and user_expressions ---------------------------------------------------------------


def test_pager_payload_comes_back_from_the_sandbox(kernel: RLMKernelProcess) -> None:
    cell = ok(kernel.execute("zip?"))
    (page,) = cell.content["payload"]
    assert page["source"] == "page" and "zip" in page["data"]["text/plain"]
    assert cell.outputs == []  # not printed inline as well
    ok(kernel.execute("def documented():\n    'The docstring of documented.'"))
    (page,) = ok(kernel.execute("documented?")).content["payload"]
    assert "The docstring of documented." in page["data"]["text/plain"]


def test_set_next_input_payload(kernel: RLMKernelProcess) -> None:
    cell = ok(kernel.execute("get_ipython().set_next_input('x = 42')"))
    (payload,) = cell.content["payload"]
    assert payload["source"] == "set_next_input" and payload["text"] == "x = 42"


def test_user_expressions_are_evaluated_in_the_sandbox(kernel: RLMKernelProcess) -> None:
    ok(kernel.execute("in_sandbox = [1, 2, 3]"))
    msg_id = kernel.kc.execute(
        "pass",
        user_expressions={
            "n": "len(in_sandbox)",
            "bad": "undefined_name",
            "cwd": "__import__('os').getcwd()",
        },
    )
    cell = kernel.collect(msg_id)
    found = cell.content["user_expressions"]
    assert found["n"] == {"status": "ok", "data": {"text/plain": "3"}, "metadata": {}}
    assert found["bad"]["status"] == "error" and found["bad"]["ename"] == "NameError"
    assert "/root/work" in found["cwd"]["data"]["text/plain"]  # the sandbox's workspace


# -- a hostile sandbox ----------------------------------------------------------------------------


def _raw(
    kind: str, content: dict[str, Any], parent: str = "get_ipython().kernel.get_parent()"
) -> str:
    """Code that publishes a message on the sandbox kernel's own iopub, signed with its key."""
    return (
        "_k = get_ipython().kernel\n"
        f"_k.session.send(_k.iopub_socket, {kind!r}, {content!r}, parent={parent})\n"
    )


def test_a_sandbox_cannot_reach_the_kernels_own_widget(tmp_path: Path) -> None:
    make_repo(tmp_path)
    k = RLMKernelProcess(tmp_path, f"--RLMKernel.model=scripted/{MODEL}")
    try:
        fe = Frontend(k)
        ok(fe.run("%rlm config results_dir=results"))
        run = ok(fe.run("%%rlm --repo repo\nFIX it", timeout=120))
        (tree,) = [
            m["content"]
            for m in run.outputs
            if m["msg_type"] == "comm_open"
            and m["content"]["data"]["state"].get("_model_name") == "AnyModel"
        ]
        tree_id = tree["comm_id"]
        assert comm_info(k)[tree_id] == {"target_name": WIDGET}
        before = len(fe.about(tree_id))
        forged = {"method": "update", "state": {"_esm": "alert(1)"}, "buffer_paths": []}
        attack = ok(
            fe.run(
                # a comm of its own under the widget's id ...
                "import comm\n"
                f"c = comm.create_comm(target_name='jupyter.widget', comm_id={tree_id!r}, "
                "data={'state': {}})\n"
                "c.send({'method': 'update', 'state': {'x': 1}})\n"
                # ... and messages made by hand
                + _raw("comm_msg", {"comm_id": tree_id, "data": forged})
                + _raw("comm_close", {"comm_id": tree_id, "data": {}})
                + _raw("comm_open", {"comm_id": "stray", "target_name": WIDGET, "data": {}}, "{}")
            )
        )
        time.sleep(0.5)
        fe.pump()
        assert len(fe.about(tree_id)) == before, fe.about(tree_id)[before:]
        assert fe.about("stray") == []
        warned = "".join(
            m["content"]["text"]
            for m in attack.outputs
            if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"
        )
        assert f"a comm_open for the comm {tree_id}, which is not its own" in warned
        # the kernel still owns the widget and answers for it
        assert comm_info(k)[tree_id] == {"target_name": WIDGET}
        sent = fe.send("comm_msg", comm_id=tree_id, data={"method": "request_state"})
        state = fe.wait(
            lambda m: m["msg_type"] == "comm_msg" and m["parent_header"].get("msg_id") == sent
        )
        assert state["content"]["data"]["state"]["_model_name"] == "AnyModel"
        assert "alert(1)" not in json.dumps(state["content"])
    finally:
        k.shutdown()


def test_a_sandbox_cannot_send_replies_status_or_requests(
    kernel: RLMKernelProcess, fe: Frontend
) -> None:
    parent = "get_ipython().kernel.get_parent()"
    cell = ok(
        fe.run(
            _raw("execute_reply", {"status": "ok", "execution_count": 999})
            + _raw("status", {"execution_state": "idle"})
            + _raw("input_request", {"prompt": "password: ", "password": True})
            + _raw("shutdown_reply", {"status": "ok", "restart": False})
            + _raw("execute_input", {"code": "forged", "execution_count": 999})
            + _raw("stream", {"name": "stdout", "text": "allowed\n"}, parent)
        )
    )
    kinds = [m["msg_type"] for m in fe.seen if m["parent_header"].get("msg_id") == cell.msg_id]
    assert kinds.count("status") == 2  # the kernel's own busy and idle
    assert {"execute_reply", "input_request", "shutdown_reply"}.isdisjoint(kinds)
    assert [m["content"]["code"] for m in fe.seen if m["msg_type"] == "execute_input"][-1] != (
        "forged"
    )
    assert cell.stdout == "allowed\n"


def test_malformed_messages_from_a_sandbox_are_dropped(
    kernel: RLMKernelProcess, fe: Frontend
) -> None:
    cell = ok(
        fe.run(
            "_k = get_ipython().kernel\n"
            "_s = _k.session\n"
            "def _send(parts):\n"
            "    _k.iopub_socket.send_multipart([b'x', b'<IDS|MSG>', _s.sign(parts), *parts])\n"
            "_send([b'not json', b'{}', b'{}', b'{}'])\n"
            "_send([_s.pack(_s.msg_header('stream')), b'[', b'{}', b'{}'])\n"
            "_send([_s.pack(_s.msg_header('comm_msg')), _s.pack(_k.get_parent()['header']), "
            "b'{}', b'{\"comm_id\": 5}'])\n"
            "_k.iopub_socket.send_multipart([b'x', b'<IDS|MSG>', b'bad signature', "
            "_s.pack(_s.msg_header('stream')), _s.pack(_k.get_parent()['header']), b'{}', "
            'b\'{"name": "stdout", "text": "forged"}\'])\n'
            "print('still fine')"
        )
    )
    assert cell.stdout == "still fine\n"
    assert ok(fe.run("print('next')")).stdout == "next\n"
