"""Security: keys stay on the host, records hold no secrets, forged frames do nothing, limits hold
against agent code, sandbox kernels are private, workspace helpers stay in the workspace.

Proved elsewhere (see docs/reliability.md): bridge verification unit by unit (forged, tampered,
replayed, late frames) in tests/sandbox/test_bridge.py; forged frames from agent code and a scan
for the key with a scripted model in tests/test_runner.py; the notebook kernel's sandbox has no
key in tests/kernel/test_kernel_protocol.py; the environment allowlist in tests/test_config.py.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import rlm_kernel
from rlm_kernel.config import RLMConfig
from rlm_kernel.events import Event
from rlm_kernel.llm import register_scripted
from rlm_kernel.sandbox.kernels import start_kernel

from .conftest import FAKE_KEY
from .openai_server import FaultServer, error, reply

Config = Callable[..., RLMConfig]
OTHER_KEY = "llm-key-9876543210-also-secret"

_SCAN = r"""
import json, os, pathlib
KEYS = (os.environ.get("RLM_FAULTS_PROBE_A"), os.environ.get("RLM_FAULTS_PROBE_B"))
needles = ("sk-faults-0123456789", "llm-key-9876543210")
run_dir = pathlib.Path(__rlm__.bridge_dir).parents[1]
hits = []
for p in [*run_dir.rglob("*"), *pathlib.Path(".").rglob("*")]:
    try:
        if p.is_file() and any(n in p.read_text(errors="ignore") for n in needles):
            hits.append(str(p))
    except OSError:
        pass
environ = open("/proc/self/environ", "rb").read().decode(errors="ignore")
env = [k for k, v in os.environ.items() if any(n in v for n in needles) or k.endswith("_API_KEY")]
sub = llm_query("echo my key")
scan = {"files": hits, "env": env, "proc": any(n in environ for n in needles),
        "sub_has_key": any(n in sub for n in needles), "sub": sub[:200],
        "scanned": sum(1 for _ in run_dir.rglob("*")), "keys": KEYS}
"""


def test_no_key_reaches_any_sandbox_or_record_through_a_real_provider(
    llm_server: FaultServer, fault_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_API_KEY", OTHER_KEY)

    def respond(body: dict[str, Any]) -> Any:
        messages = body["messages"]
        if len(messages) == 1:  # llm_query: the provider echoes the key in its error
            return error(500, message=f"upstream rejected key {FAKE_KEY} / {OTHER_KEY}")
        task = messages[1]["content"]
        if "scan child" in task:
            return reply(f"```python{_SCAN}FINAL(json.dumps(scan))\n```")
        return reply(
            f"```python{_SCAN}child = json.loads(str(rlm_query('scan child')))\n"
            "FINAL(json.dumps([scan, child]))\n```"
        )

    llm_server.default = respond
    events: list[Event] = []
    res = rlm_kernel.run("scan root", config=fault_config(model__retries=0), on_event=events.append)
    assert res.status == "done", res.error
    for scan in json.loads(res.answer):  # the root's sandbox, then its child's
        assert scan["files"] == [] and scan["env"] == [] and scan["proc"] is False
        assert scan["sub"].startswith("Error: ") and "***" in scan["sub"]
        assert scan["sub_has_key"] is False and scan["keys"] == [None, None]
        assert scan["scanned"] > 5  # it did look at the run's sandbox files
    # The key was used (the provider saw it) ...
    assert all(r.headers.get("Authorization") == f"Bearer {FAKE_KEY}" for r in llm_server.requests)
    # ... and it is nowhere in the record, the index or the events.
    results = Path(res.record_path or "").parent
    for path in results.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="ignore")
            assert FAKE_KEY not in text and OTHER_KEY not in text, path
    dump = json.dumps([e.data for e in events], default=str)
    assert FAKE_KEY not in dump and OTHER_KEY not in dump


def test_a_key_that_a_host_tool_leaks_is_masked_in_the_record(
    llm_server: FaultServer, fault_config: Config
) -> None:
    def host_config() -> str:
        """A careless host tool that returns the provider's key."""
        return f"key={os.environ['OPENAI_API_KEY']}"

    llm_server.script(
        reply("```python\nleak = host_config()\nprint(leak)\n```"),
        reply("```python\nFINAL(leak)\n```"),
    )
    res = rlm_kernel.run("leak", config=fault_config(), tools=[host_config])
    assert res.status == "done", res.error
    assert res.answer == f"key={FAKE_KEY}"  # the caller gets what the tool returned ...
    record = Path(res.record_path or "").read_text()
    assert FAKE_KEY not in record and "key=***" in record  # ... the record never holds it
    index = (Path(res.record_path or "").parent / "index.json").read_text()
    assert FAKE_KEY not in index


def test_forged_frames_printed_by_agent_code_do_nothing(
    llm_server: FaultServer, fault_config: Config
) -> None:
    # A frame with a non-ASCII "signature" used to raise TypeError in hmac.compare_digest and
    # end the agent with an internal error; any printed bytes can look like that.
    forged = [
        r"\x02RLM1:e30=:\u00e9\x03",  # non-ASCII signature
        r"\x02RLM1:e30=:" + "0" * 64 + r"\x03",  # wrong signature
        r"\x02RLM1:not base64!:abc\x03",
        r"\x02RLM1:\x03",
        r"\x02RLM1:" + "A" * 5000,  # never terminated
    ]
    code = "".join(f'print("{f}")\n' for f in forged) + 'print("still here")\n'
    llm_server.script(reply(f"```python\n{code}```"), reply("```python\nFINAL('real')\n```"))
    res = rlm_kernel.run("forge", config=fault_config())
    assert (res.status, res.answer) == ("done", "real"), res.error
    block = res.tree["iterations"][0]["code_blocks"][0]
    assert block["status"] == "ok" and "still here" in block["output"]


def test_model_code_cannot_raise_a_limit(config: Config) -> None:
    """Agent code rewrites its runtime's objects, environment variables and config files."""
    cfg = config("security.py", rlm__max_depth=1, rlm__max_sandboxes=2)
    res = rlm_kernel.run("escalate", config=cfg)
    assert res.status == "done", res.error
    (child_status, child_text), (extra_status, extra_text) = json.loads(res.answer)
    assert child_status == "done"
    assert "rlm_query is not available at depth 1 (max_depth=1)" in child_text
    assert extra_status == "budget" and "max_sandboxes" in extra_text
    assert len(res.tree["children"]) == 1 and not res.tree["children"][0]["children"]


@pytest.mark.parametrize("launcher", ["fork", "subprocess"])
def test_sandbox_kernel_connection_files_are_private_and_use_ipc(
    launcher: str, tmp_path: Path
) -> None:
    handle = start_kernel(
        str(tmp_path),
        {"PATH": os.environ["PATH"]},
        runtime_dir=str(tmp_path / "rt"),
        launcher=launcher,
    )
    try:
        cf = Path(handle.connection_file)
        assert stat.S_IMODE(cf.stat().st_mode) == 0o600
        assert cf.parent.stat().st_mode & 0o777 == 0o700  # (jupyter adds the sticky bit)
        assert stat.S_IMODE((tmp_path / "rt").stat().st_mode) == 0o700
        info = json.loads(cf.read_text())
        assert info["transport"] == "ipc"
        sockets = [
            Path(f"{info['ip']}-{info[k]}") for k in ("shell_port", "iopub_port", "control_port")
        ]
        assert all(s.is_socket() for s in sockets)
        assert all(stat.S_IMODE(s.parent.stat().st_mode) == 0o700 for s in sockets)
        # The Jupyter channels are ipc; the kernel's only TCP socket is ipykernel's loopback pipe
        # for output of forked subprocesses (messages carry a random 16-byte id).
        pid = handle.pid
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        inodes = {link[8:-1] for link in links if link.startswith("socket:[")}
        tcp = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            if os.path.exists(table):
                for line in Path(table).read_text().splitlines()[1:]:
                    fields = line.split()
                    if fields[9] in inodes:
                        tcp.append(fields[1].split(":")[0])
        assert len(inodes) > len(tcp)  # the ipc channels
        assert set(tcp) <= {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1
    finally:
        handle.shutdown()


def test_edit_file_and_apply_patch_refuse_paths_outside_the_workspace(
    make_repo: Callable[..., Path], config: Config, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("host file\n")
    escape = tmp_path / "escape.txt"
    code = f"""
import json, os
tries = {{}}
def attempt(name, fn):
    try:
        tries[name] = "ALLOWED: " + str(fn())
    except Exception as exc:
        tries[name] = f"{{type(exc).__name__}}: {{exc}}"
os.symlink({str(tmp_path)!r}, "link")
attempt("absolute", lambda: edit_file({str(outside)!r}, "host", "HACKED"))
attempt("dotdot", lambda: edit_file(os.path.relpath({str(outside)!r}), "host", "HACKED"))
attempt("symlink", lambda: edit_file("link/outside.txt", "host", "HACKED"))
new = "--- /dev/null\\n+++ b/{{}}\\n@@ -0,0 +1 @@\\n+x\\n"
attempt("patch_dotdot", lambda: apply_patch(new.format(os.path.relpath({str(escape)!r}))))
attempt("patch_absolute", lambda: apply_patch(new.format({str(escape)!r})))
attempt("patch_symlink", lambda: apply_patch(new.format("link/escape.txt")))
attempt("inside", lambda: edit_file("pkg/mod.py", "VALUE = 1", "VALUE = 2"))
os.chdir({str(tmp_path)!r})  # the helpers still act on the workspace, not on the new cwd
attempt("patch_after_chdir", lambda: apply_patch(new.format("escape.txt")))
attempt("edit_after_chdir", lambda: edit_file("outside.txt", "host", "HACKED"))
FINAL(json.dumps(tries))
"""
    name = register_scripted(f"escape-{os.getpid()}", lambda _m, _i: f"```python\n{code}```")
    res = rlm_kernel.run("escape", make_repo(), config=config(name))
    assert res.status == "done", res.error
    tries = json.loads(res.answer)
    for key in ("absolute", "dotdot", "symlink", "edit_after_chdir"):
        assert tries[key].startswith("PermissionError: edit_file: "), (key, tries[key])
        assert (
            "is outside the workspace" in tries[key]
            and "edit the workspace's files only" in tries[key]
        )
    for key in ("patch_dotdot", "patch_absolute", "patch_symlink"):
        assert tries[key].startswith("RuntimeError: apply_patch: git apply failed"), (
            key,
            tries[key],
        )
    assert tries["inside"].startswith("ALLOWED: edited")
    assert tries["patch_after_chdir"] == "ALLOWED: patch applied"
    assert outside.read_text() == "host file\n" and not escape.exists()
    assert "+VALUE = 2" in res.patch and "escape.txt" in res.patch  # both landed in the workspace
