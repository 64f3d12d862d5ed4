"""The bwrap tier, attacked from agent code: keys, files, processes and the network.

Each attack also runs in the `none` tier where it succeeds there, so a passing bwrap test is not a
test that could never fail. Skipped with the reason where bubblewrap cannot run here; failing
instead when `CI` is set and bwrap is installed.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rlm_kernel
from rlm_kernel.config import RLMConfig
from rlm_kernel.paths import tmp_root
from rlm_kernel.sandbox import forkclient, isolation, kernels
from rlm_kernel.sandbox.base import SandboxSpec
from rlm_kernel.sandbox.isolation import Isolation, IsolationError
from rlm_kernel.sandbox.local import LocalSandbox
from rlm_kernel.sandbox.workspace import Target, resolve_target

BWRAP = Isolation("bwrap", True, "bwrap")
NO_NET = Isolation("bwrap", False, "bwrap")
NONE = Isolation("none", True, "none")
KEY_PREFIX = "rlmtest-key-"


def require_bwrap() -> None:
    """Skip (or, with CI set and bwrap installed, fail) where the bwrap tier cannot run."""
    why = isolation.probe()
    if why is None:
        return
    if os.environ.get("CI") and isolation.bwrap_path():
        pytest.fail(f"CI is set and bwrap is installed, but the bwrap tier does not work: {why}")
    pytest.skip(f"the bwrap tier cannot run here: {why}")


Make = Callable[..., LocalSandbox]


@pytest.fixture
def sandbox() -> Iterator[Make]:
    """Start local sandboxes of a tier (closed after the test)."""
    made: list[LocalSandbox] = []

    def make(
        iso: Isolation, target: Target | None = None, agent: str = "root", run: str = "t-iso"
    ) -> LocalSandbox:
        if iso.confined:
            require_bwrap()
        spec = SandboxSpec(run, agent, target or Target(None, None, None), lambda op, a: None)
        spec.isolation = iso
        sb = LocalSandbox(spec)
        made.append(sb)
        sb.start()
        return sb

    yield make
    for sb in made:
        sb.close()


def run(sb: LocalSandbox, code: str) -> Any:
    """Run `code` (whose last line prints one JSON value) and return that value."""
    res = sb.execute(code, timeout=120)
    assert res.status == "ok", res.error
    return json.loads(res.output.strip().splitlines()[-1])


@pytest.fixture
def secret_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A key in the host's environment and in a `.env` of the directory the host started from."""
    key = KEY_PREFIX + secrets.token_hex(16)
    monkeypatch.setenv("RLMTEST_API_KEY", key)
    start = tmp_path / "start"
    start.mkdir()
    (start / ".env").write_text(f"RLMTEST_API_KEY={key}\n")
    monkeypatch.chdir(start)
    return key


# The attack: every place a key could be read from inside the sandbox. The prefix is built at run
# time and the hex part is matched, so the attack's own text never matches.
FIND_KEYS = r"""
import glob, json, os, re, subprocess
pat = re.compile((%(prefix)r[:7] + %(prefix)r[7:]).encode() + rb"[0-9a-f]{32}")
found = {}
def scan(where, data):
    for m in pat.findall(data):
        found.setdefault(m.decode(), []).append(where)
def read(path):
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return b""
scan("os.environ", "\n".join(f"{k}={v}" for k, v in os.environ.items()).encode())
pids = [p for p in os.listdir("/proc") if p.isdigit()]
for pid in pids:
    scan(f"/proc/{pid}/environ", read(f"/proc/{pid}/environ"))
    scan(f"/proc/{pid}/cwd/.env", read(f"/proc/{pid}/cwd/.env"))
    try:
        maps = open(f"/proc/{pid}/maps").read().splitlines()
        mem = open(f"/proc/{pid}/mem", "rb", 0)
    except OSError:
        continue
    with mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r") or line.endswith(("[vvar]", "[vsyscall]", "[vvar_vclock]")):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            if end - start > 1 << 28:
                continue
            try:
                mem.seek(start)
                scan(f"/proc/{pid}/mem", mem.read(end - start))
            except (OSError, OverflowError, ValueError):
                pass
# the ancestors, by walking parent pids
pid = os.getpid()
while pid > 1:
    try:
        pid = int(read(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()[1])
    except (IndexError, ValueError):
        break
    scan(f"/proc/{pid}/cwd/.env (ancestor)", read(f"/proc/{pid}/cwd/.env"))
ps = subprocess.run(["ps", "axeww"], capture_output=True).stdout
scan("ps e", ps)
print(json.dumps({"found": found, "pids": len(pids), "ps_lines": len(ps.splitlines())}))
"""


@pytest.mark.parametrize("iso", [BWRAP, NONE], ids=["bwrap", "none"])
def test_agent_code_finds_no_key(iso: Isolation, sandbox: Make, secret_key: str) -> None:
    sb = sandbox(iso)
    out = run(sb, FIND_KEYS % {"prefix": KEY_PREFIX})
    found = out["found"].get(secret_key, [])
    if iso.confined:
        assert found == [], f"the key leaked through {sorted(set(found))}"
        assert out["pids"] <= 3 and out["ps_lines"] <= 4  # init, kernel (and ps): nothing else
    else:  # the same attack without isolation: the host's environ and .env give the key away
        assert any(w.startswith("/proc/") for w in found), out


@pytest.fixture
def visible_dir() -> Iterator[Path]:
    """A directory outside /tmp (whose host copy a bwrap sandbox never sees): under /var/tmp."""
    base = Path("/var/tmp")
    if not os.access(base, os.W_OK):
        pytest.skip("/var/tmp is not writable here: no directory a bwrap sandbox would see")
    d = Path(tempfile.mkdtemp(prefix="rlm-test-project-", dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("iso", [BWRAP, NONE], ids=["bwrap", "none"])
def test_a_env_file_in_this_projects_checkout_stays_hidden(
    iso: Isolation, sandbox: Make, visible_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rlm run from elsewhere with an editable install whose checkout holds the user's .env: the
    checkout is readable (the kernel imports from it), its .env is not; /proc/1/cwd (the
    kernel's init, forked by the fork server that runs in the checkout) is not the checkout."""
    key = KEY_PREFIX + secrets.token_hex(16)
    (visible_dir / ".env").write_text(f"RLMTEST_API_KEY={key}\n")
    (visible_dir / "README.md").write_text("the project\n")
    monkeypatch.setattr(isolation, "_project_root", lambda: str(visible_dir))
    sb = sandbox(iso)
    code = (
        f"import json, os\nd = {str(visible_dir)!r}\n"
        "def read(p, f=lambda p: open(p).read()):\n    try:\n        return f(p)\n"
        "    except OSError as exc:\n        return type(exc).__name__\n"
        "print(json.dumps({'env': read(os.path.join(d, '.env')), "
        "'readme': read(os.path.join(d, 'README.md')), "
        "'init_cwd': read('/proc/1/cwd', os.readlink)}))\n"
    )
    out = run(sb, code)
    assert out["readme"] == "the project\n"
    if iso.confined:
        assert out["env"] == "" and out["init_cwd"] in ("/", "PermissionError"), out
    else:
        assert key in out["env"]


WRITE = r"""
import json, os
out = {}
for p in %(paths)r:
    try:
        with open(p, "w") as fh:
            fh.write("pwned")
        out[p] = "written"
    except OSError as exc:
        out[p] = type(exc).__name__
print(json.dumps(out))
"""


@pytest.mark.parametrize("iso", [BWRAP, NONE], ids=["bwrap", "none"])
def test_agent_code_writes_only_its_workspace_and_temp_dir(
    iso: Isolation, sandbox: Make, make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    repo = make_repo()
    target = resolve_target(repo)
    a = sandbox(iso, target, agent="a")
    b = sandbox(iso, target, agent="b")
    tag = secrets.token_hex(4)
    outside = {
        "the user's repository": str(repo / f"pwned-{tag}"),
        "the user's .git": str(repo / ".git" / f"pwned-{tag}"),
        "home": os.path.join(os.path.expanduser("~"), f"rlm-pwned-{tag}"),
        "another agent's workspace": os.path.join(b.path, f"pwned-{tag}"),
        "another agent's bridge": os.path.join(b.bridge_dir, f"pwned-{tag}"),
        "its own sandbox directory": os.path.join(a.root, f"pwned-{tag}"),
        "the tmp root": str(tmp_root() / f"pwned-{tag}"),
        "the test's directory": str(tmp_path / f"pwned-{tag}"),
    }
    inside = {
        "its workspace": os.path.join(a.path, f"mine-{tag}"),
        "its temp dir": f"/tmp/mine-{tag}",
    }
    try:
        out = run(a, WRITE % {"paths": [*outside.values(), *inside.values()]})
        for what, path in inside.items():
            assert out[path] == "written", what
        if iso.confined:
            for what, path in outside.items():
                assert not os.path.exists(path), f"{what}: {path}"
                if not path.startswith("/tmp/"):  # under /tmp it may land in its private /tmp
                    assert out[path] != "written", f"{what}: {path}"
            # its /tmp is private: the file is in the sandbox's own temp dir, not the host's
            assert not os.path.exists(f"/tmp/mine-{tag}")
            assert os.path.exists(os.path.join(a.root, "tmp", f"mine-{tag}"))
        else:  # no isolation: all of it is writable
            assert all(out[p] == "written" for p in outside.values()), out
    finally:
        for path in [*outside.values(), f"/tmp/mine-{tag}"]:
            if os.path.isfile(path):
                os.unlink(path)


READ = r"""
import json, os
out = {}
for p in %(paths)r:
    try:
        out[p] = sorted(os.listdir(p)) if os.path.isdir(p) else open(p).read()
    except OSError as exc:
        out[p] = type(exc).__name__
print(json.dumps(out))
"""


@pytest.mark.parametrize("iso", [BWRAP, NONE], ids=["bwrap", "none"])
def test_agent_code_cannot_read_home_the_start_directory_the_repository_or_other_agents(
    iso: Isolation,
    sandbox: Make,
    make_repo: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start = tmp_path / "start"
    start.mkdir()
    (start / "notes.txt").write_text("the user's notes\n")
    monkeypatch.chdir(start)
    repo = make_repo({"f.txt": "committed\n"})
    (repo / "draft.txt").write_text("not committed\n")
    target = resolve_target(repo)
    a = sandbox(iso, target, agent="a")
    b = sandbox(iso, target, agent="b")
    home = os.path.expanduser("~")
    paths = {
        "home": home,
        "the start directory": str(start / "notes.txt"),
        "the repository's working tree": str(repo / "draft.txt"),
        "the repository's git config": str(repo / ".git" / "config"),
        "another agent's workspace": os.path.join(b.path, "f.txt"),
        "a file in the host's /tmp": str(tmp_path / "host-only.txt"),
    }
    (tmp_path / "host-only.txt").write_text("host\n")
    out = run(a, READ % {"paths": list(paths.values())})
    if not iso.confined:
        assert out[paths["the start directory"]] == "the user's notes\n"
        assert out[paths["another agent's workspace"]] == "committed\n"
        return
    for what in (
        "the start directory",
        "the repository's working tree",
        "the repository's git config",
        "another agent's workspace",
        "a file in the host's /tmp",
    ):
        assert out[paths[what]] in ("FileNotFoundError", "NotADirectoryError"), (what, out)
    # home is empty but for the Python installation it may hold (shown back, read-only)
    shown = set(out[paths["home"]]) if isinstance(out[paths["home"]], list) else set()
    real = set(os.listdir(home))
    python = {p.relative_to(home).parts[0] for p in map(Path, sys.path) if p.is_relative_to(home)}
    assert shown <= python, shown
    assert not (real - python) & shown
    assert run(a, "import json\nprint(json.dumps(open('f.txt').read()))") == "committed\n"


@pytest.mark.parametrize("iso", [BWRAP, NONE], ids=["bwrap", "none"])
def test_agent_code_cannot_see_or_signal_the_hosts_processes(iso: Isolation, sandbox: Make) -> None:
    sb = sandbox(iso)
    code = (
        "import json, os, signal\n"
        "def comm(p):\n"
        "    try:\n"
        "        return open(f'/proc/{p}/comm').read().strip()\n"
        "    except OSError:\n"
        "        return '?'\n"
        "procs = {p: comm(p) for p in os.listdir('/proc') if p.isdigit()}\n"
        f"try:\n    os.kill({os.getpid()}, 0)\n    host = 'visible'\n"
        "except ProcessLookupError:\n    host = 'no such process'\n"
        "except PermissionError:\n    host = 'visible'\n"
        "print(json.dumps({'procs': procs, 'host': host, 'pid': os.getpid(), 'ppid': os.getppid()}))\n"
    )
    out = run(sb, code)
    if iso.confined:
        assert sorted(out["procs"].values()) == ["rlm-init", "rlm-kernel"], out
        # what it starts, even in a new session, dies with its kernel
        tag = f"{secrets.randbelow(10**6)}.{secrets.randbelow(10**3) + 1}"
        sb.execute(
            f"import subprocess\nsubprocess.Popen(['sleep', '{tag}'], start_new_session=True)",
            timeout=30,
        )
        assert _processes_with_arg(tag), "the sleeper did not start"
        sb.close()
        assert _wait(lambda: not _processes_with_arg(tag)), "the sleeper outlived its kernel"
        assert (out["pid"], out["ppid"]) == (2, 1)
        assert out["host"] == "no such process" or os.getpid() in (1, 2)
        assert str(os.getpid()) not in out["procs"] or os.getpid() in (1, 2)
    else:
        assert str(os.getpid()) in out["procs"] and out["host"] == "visible"


def _processes_with_arg(arg: str) -> list[int]:
    """Host pids whose command line has `arg`."""
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if arg.encode() in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0"):
                    pids.append(int(p))
            except OSError:
                pass
    return pids


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def local_server() -> Iterator[int]:
    """A TCP server on the host's loopback that answers every connection with b"hello"."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"hello")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


CONNECT = r"""
import json, socket
try:
    with socket.create_connection(("127.0.0.1", %(port)d), timeout=5) as c:
        got = c.recv(5).decode()
except OSError as exc:
    got = type(exc).__name__
print(json.dumps(got))
"""


@pytest.mark.parametrize("iso", [NO_NET, BWRAP], ids=["network-false", "network-true"])
def test_network_false_cuts_even_the_hosts_loopback(
    iso: Isolation, sandbox: Make, local_server: int
) -> None:
    sb = sandbox(iso)
    got = run(sb, CONNECT % {"port": local_server})
    if iso.network:
        assert got == "hello"
    else:
        assert got in ("ConnectionRefusedError", "TimeoutError", "OSError"), got
        # its own loopback works: subprocess output reaches the cell through ipykernel's
        # loopback socket, and a server it starts itself is reachable
        res = sb.execute(
            "import subprocess\nsubprocess.run(['echo', 'from a subprocess'])", timeout=30
        )
        assert "from a subprocess" in res.output


def test_the_notebook_directory_is_readable_read_only_and_its_env_file_hidden(
    sandbox: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_bwrap()
    nb = tmp_path / "notebooks"
    nb.mkdir()
    (nb / "data.txt").write_text("next to the notebook\n")
    (nb / ".env").write_text("RLMTEST_API_KEY=rlmtest-key-0123\n")
    monkeypatch.chdir(nb)
    spec = SandboxSpec("t-iso", "root", Target(None, None, None), lambda op, a: None)
    spec.isolation, spec.readable = BWRAP, (str(nb),)
    sb = LocalSandbox(spec)
    try:
        sb.start()
        code = (
            f"import json, os\nd = {str(nb)!r}\n"
            "out = {'data': open(os.path.join(d, 'data.txt')).read(), "
            "'env': open(os.path.join(d, '.env')).read()}\n"
            "try:\n    open(os.path.join(d, 'new.txt'), 'w')\n    out['write'] = 'written'\n"
            "except OSError as exc:\n    out['write'] = type(exc).__name__\n"
            "print(json.dumps(out))\n"
        )
        out = run(sb, code)
        assert out == {"data": "next to the notebook\n", "env": "", "write": "OSError"}
        assert not (nb / "new.txt").exists()
    finally:
        sb.close()


def test_a_new_workspace_of_another_repository_is_shown_to_a_running_kernel(
    sandbox: Make, make_repo: Callable[..., Path]
) -> None:
    repo = make_repo({"f.txt": "hello\n"}, name="other")
    sb = sandbox(BWRAP)
    sb.execute("x = 41", timeout=30)
    sb.set_workspace(resolve_target(repo))
    code = (
        "import json, os, subprocess\nx += 1\nopen('f.txt', 'a').write('more\\n')\n"
        "log = subprocess.run(['git', 'log', '--oneline'], capture_output=True, text=True)\n"
        f"g = {str(repo / '.git')!r}\n"
        "shown = sorted(os.listdir(g)) if os.path.isdir(g) else []\n"
        "print(json.dumps([x, log.returncode, shown]))\n"
    )
    x, status, shown = run(sb, code)
    assert (x, status) == (42, 0)
    assert shown in ([], ["objects"])  # of the repository's .git: only the borrowed objects
    assert "+more" in sb.diff()


def test_kernels_are_confined_and_the_run_record_says_so(
    config: Callable[..., RLMConfig], make_repo: Callable[..., Path]
) -> None:
    require_bwrap()
    res = rlm_kernel.run(
        "isolate",
        make_repo(),
        config=config("isolation.py", sandbox__isolation="bwrap", sandbox__network=False),
    )
    assert res.status == "done", res.error
    record = json.loads(Path(res.record_path).read_text())
    assert record["isolation"]["tier"] == "bwrap" and record["isolation"]["network"] is False
    assert record["config"]["sandbox"]["isolation"] == "bwrap"


def test_auto_and_the_environment_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(isolation.ENV_VAR, "none")
    assert isolation.resolve("auto").tier == "none"
    assert isolation.resolve("bwrap").requested == "bwrap"  # an explicit setting wins
    monkeypatch.setenv(isolation.ENV_VAR, "sideways")
    with pytest.raises(IsolationError, match="RLM_SANDBOX_ISOLATION"):
        isolation.resolve("auto")
    monkeypatch.delenv(isolation.ENV_VAR)
    auto = isolation.resolve("auto")
    assert auto.tier == ("bwrap" if isolation.probe() is None else "none")
    with pytest.raises(IsolationError, match=r"needs sandbox\.isolation: bwrap"):
        isolation.resolve("none", network=False)


def test_bwrap_that_cannot_work_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(isolation.ENV_VAR, raising=False)  # `auto` as configured, not as pinned
    isolation.probe.cache_clear()
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv(isolation.ENV_VAR, raising=False)  # CI's none-tier pass sets it
    try:
        assert isolation.probe() == "bwrap is not installed"
        with pytest.raises(IsolationError, match="apt-get install bubblewrap"):
            isolation.resolve("bwrap")
        auto = isolation.resolve("auto")
        assert (auto.tier, auto.reason) == ("none", "bubblewrap unusable: bwrap is not installed")
    finally:
        monkeypatch.undo()
        isolation.probe.cache_clear()


def test_the_tier_is_said_once_on_stderr() -> None:
    code = (
        "from rlm_kernel.sandbox import isolation\n"
        "iso = isolation.Isolation('none', True, 'auto', 'bubblewrap unusable: test')\n"
        "isolation.announce(iso)\nisolation.announce(iso)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stderr.count("rlm: local sandboxes run without isolation") == 1
    assert "bubblewrap unusable: test" in proc.stderr


def test_confined_kernels_outlive_a_killed_fork_server(tmp_path: Path) -> None:
    require_bwrap()
    start = functools.partial(
        kernels.start_kernel, str(tmp_path), {"PATH": os.environ["PATH"]}, isolation=BWRAP
    )
    h = start(runtime_dir=str(tmp_path / "rt1"))
    try:
        server = forkclient._confined[BWRAP.key]
        os.kill(server.pid, signal.SIGKILL)  # from the host: agents cannot see it
        assert _wait(lambda: not server.alive())
        time.sleep(1.0)
        assert h.is_alive()
        assert h.client.execute_interactive("x = 6 * 7", timeout=30)["content"]["status"] == "ok"
        h2 = start(runtime_dir=str(tmp_path / "rt2"))
        try:
            assert forkclient._confined[BWRAP.key].pid != server.pid
            assert h2.client.execute_interactive("1", timeout=30)["content"]["status"] == "ok"
        finally:
            h2.shutdown()
    finally:
        h.shutdown()


HOST = """
import os, sys, time
from rlm_kernel.sandbox.isolation import Isolation
from rlm_kernel.sandbox.kernels import start_kernel
h = start_kernel(sys.argv[1], {"PATH": os.environ["PATH"]}, runtime_dir=sys.argv[2],
                 isolation=Isolation("bwrap"))
h.client.execute(f"import subprocess; subprocess.Popen(['sleep', {sys.argv[3]!r}])")
print(h.pid, flush=True)
time.sleep(60)
"""


def test_confined_kernels_die_with_their_host(tmp_path: Path) -> None:
    require_bwrap()
    tag = f"{secrets.randbelow(10**6)}.{secrets.randbelow(10**3) + 1}"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOST, str(tmp_path), str(tmp_path / "rt"), tag],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        kernel_pid = int(proc.stdout.readline())
        assert _wait(lambda: bool(_processes_with_arg(tag))), (
            "the kernel's subprocess did not start"
        )
        proc.kill()
        proc.wait()
        assert _wait(
            lambda: not _processes_with_arg(tag) and not Path(f"/proc/{kernel_pid}").exists()
        )
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_a_cells_temporary_repository_is_found_by_the_host(sandbox: Make) -> None:
    sb = sandbox(BWRAP)
    made = run(sb, "import json, tempfile\nprint(json.dumps(tempfile.mkdtemp(prefix='repo-')))")
    assert made.startswith("/tmp/") and not os.path.exists(made)
    assert sb.host_path(made) == os.path.join(sb.root, "tmp", made.removeprefix("/tmp/"))
    assert sb.host_path("/etc") == "/etc" and sb.host_path("relative") == "relative"
