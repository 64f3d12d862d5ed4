"""Isolation tiers of local sandboxes: `none` (today's processes) or `bwrap` (bubblewrap namespaces).

``sandbox.isolation`` picks the tier: ``bwrap`` runs every local sandbox kernel confined (see
:mod:`.confine`), ``none`` runs it as a plain process of the user, and ``auto`` (the default)
uses ``bwrap`` when it works on this machine (probed once per process) and ``none`` otherwise.
``$RLM_SANDBOX_ISOLATION`` (``auto``, ``bwrap`` or ``none``) replaces ``auto``, so a whole test
suite or a deployment can pin the tier without touching configuration files.
``sandbox.network: false`` also cuts the bwrap tier's network (a network namespace with only
``lo``).

Under ``bwrap`` a kernel sees the host's filesystem read-only, except:

- hidden (an empty, read-only directory): the user's home, the directory the host process was
  started from, the sandboxes' tmp root, and the ``.git`` of the run's repository;
- readable again inside those: the Python installation (prefixes, ``sys.path``), the git objects
  the workspace borrows, and (the notebook's root sandbox) the notebook's directory;
- writable: its workspace, its bridge and kernel runtime directories, and a private ``/tmp``
  (``HOME`` is ``/tmp/home`` in there).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..config import ISOLATIONS
from .base import SandboxError

__all__ = [
    "ENV_VAR",
    "SETTINGS",
    "Isolation",
    "IsolationError",
    "announce",
    "bwrap_path",
    "confined_env",
    "kernel_view",
    "probe",
    "resolve",
    "zygote_command",
]

SETTINGS = ISOLATIONS
ENV_VAR = "RLM_SANDBOX_ISOLATION"
PRIVATE_HOME = "/tmp/home"
_PROBE_TIMEOUT_S = 20.0
# Never hidden, whatever the start directory is: the system (a start directory of / or /usr).
_SYSTEM_DIRS = ("/", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/dev", "/proc")
_SYSTEM_TREES = ("/usr/lib", "/usr/lib64", "/usr/bin", "/usr/sbin", "/usr/share", "/usr/include")
_SECRET_FILES = (".env",)  # hidden inside readable directories too (the host loads keys from it)


class IsolationError(SandboxError):
    """The requested isolation cannot be had here; the message says why and what to do."""


@dataclass(frozen=True)
class Isolation:
    """The tier a sandbox runs in, and why (for the run record and the one-time notice)."""

    tier: str = "none"  # "bwrap" or "none"
    network: bool = True
    requested: str = "none"  # what the configuration (or $RLM_SANDBOX_ISOLATION) asked for
    reason: str = ""  # auto: why bwrap was not used

    @property
    def confined(self) -> bool:
        """Whether kernels run under bubblewrap."""
        return self.tier == "bwrap"

    @property
    def key(self) -> tuple[str, bool]:
        """One fork server per key."""
        return (self.tier, self.network if self.confined else True)

    def to_dict(self) -> dict[str, Any]:
        """For the run record."""
        return asdict(self)

    def describe(self) -> str:
        """One line for people: which tier, and what it means."""
        if self.confined:
            net = "on" if self.network else "off (loopback only)"
            return (
                "local sandboxes run under bubblewrap (sandbox.isolation: bwrap): own processes, "
                f"read-only filesystem except their workspace, no home or keys; network {net}"
            )
        why = f" ({self.reason})" if self.reason else ""
        return (
            "local sandboxes run without isolation (sandbox.isolation: none)"
            f"{why}: agent code can read and write what your user can"
        )


NONE = Isolation()


def bwrap_path() -> str | None:
    """The bubblewrap executable on PATH, if any."""
    return shutil.which("bwrap")


def _setting(requested: str) -> str:
    value = requested.strip().lower()
    if value == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env:
            if env not in SETTINGS:
                raise IsolationError(
                    f"${ENV_VAR}={os.environ[ENV_VAR]!r}: expected one of {', '.join(SETTINGS)}"
                )
            value = env
    if value not in SETTINGS:
        raise IsolationError(
            f"sandbox.isolation must be one of {', '.join(SETTINGS)}, got {requested!r}"
        )
    return value


def resolve(requested: str = "auto", network: bool = True) -> Isolation:
    """The tier for `sandbox.isolation` = `requested`; IsolationError if `bwrap` cannot work."""
    setting = _setting(requested)
    if setting == "none":
        if not network:
            raise IsolationError(
                "sandbox.network: false needs sandbox.isolation: bwrap (or auto where bubblewrap "
                "works); without isolation a sandbox uses the host's network"
            )
        return Isolation("none", True, setting)
    failure = probe()
    if failure is None:
        return Isolation("bwrap", network, setting)
    if setting == "bwrap" or not network:
        raise IsolationError(
            f"sandbox.isolation: bwrap cannot be used here: {failure}. Install bubblewrap "
            "(`apt-get install bubblewrap`), allow unprivileged user namespaces, or set "
            "sandbox.isolation: none (agent code then runs unconfined)"
        )
    return Isolation("none", True, setting, f"bubblewrap unusable: {failure}")


_announced: set[tuple[str, bool]] = set()
_announce_lock = threading.Lock()
_notice: Callable[[str], None] | None = None


def set_notice(fn: Callable[[str], None] | None) -> None:
    """Where the one-time tier notice goes instead of the process's stderr: the kernel sends it
    to its log (a kernel's stderr is captured into the notebook's outputs), `rlm run --quiet`
    drops it (the record says the tier either way)."""
    global _notice
    _notice = fn


def announce(iso: Isolation) -> None:
    """Say once per process and tier, on the process's stderr, which tier local sandboxes get."""
    with _announce_lock:
        if iso.key in _announced:
            return
        _announced.add(iso.key)
    if _notice is not None:
        _notice(f"rlm: {iso.describe()}")
        return
    stream = sys.__stderr__
    if stream is not None:
        try:
            stream.write(f"rlm: {iso.describe()}\n")
            stream.flush()
        except (OSError, ValueError):
            pass


# ---------------------------------------------------------------------------------------------
# the fork server's command
# ---------------------------------------------------------------------------------------------
def _ids() -> tuple[int, int]:
    return os.getuid(), os.getgid()


def zygote_command(iso: Isolation) -> list[str]:
    """The bubblewrap prefix of the bwrap tier's fork server (see the module docstring)."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise IsolationError("bubblewrap (bwrap) is not installed")
    uid, gid = _ids()
    cmd = [
        bwrap,
        "--unshare-user",
        "--uid",
        str(uid),
        "--gid",
        str(gid),
        "--cap-add",
        "ALL",  # inside its user namespace only: the fork server sets up each kernel's view
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        # No --die-with-parent: kernels outlive their fork server (bwrap's init stays while they
        # live) and die with the host instead, through the lifeline pipe they inherit.
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
    ]
    if not iso.network:
        cmd.append("--unshare-net")
    return [*cmd, "--"]


_PROBE_CODE = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from rlm_kernel.sandbox import confine
pid = confine.fork_in_new_pid_namespace()
if pid == 0:
    try:
        confine.enter({"hide": [], "ro": [], "rw": [sys.argv[2]], "tmp": sys.argv[2]})
        confine.drop_privileges()
        assert os.listdir("/proc") and os.getpid() == 1
        open("/tmp/probe", "w").close()
    except BaseException as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(1)
    os._exit(0)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@functools.lru_cache(maxsize=1)
def probe() -> str | None:
    """None when the bwrap tier works here (checked once per process), else why not."""
    from .confine import supported

    if not supported():
        return f"bubblewrap needs Linux (this is {sys.platform})"
    if bwrap_path() is None:
        return "bwrap is not installed"
    import tempfile

    from ..paths import tmp_root

    root = str(tmp_root())
    scratch = tempfile.mkdtemp(prefix="probe-", dir=root)
    package_root = _project_root()
    try:
        cmd = [
            *zygote_command(Isolation("bwrap")),
            sys.executable,
            "-I",
            "-c",
            _PROBE_CODE,
            package_root,
            scratch,
        ]
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=_PROBE_TIMEOUT_S,
                env={"PATH": os.environ.get("PATH", os.defpath)},
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bwrap did not run: {exc}"
        if proc.returncode != 0 or not os.path.exists(os.path.join(scratch, "probe")):
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit code {proc.returncode}"
            return f"bwrap failed ({why})"
        return None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the view of one kernel
# ---------------------------------------------------------------------------------------------
def _norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


@functools.lru_cache(maxsize=1)
def _python_paths() -> tuple[str, ...]:
    """What the kernel's Python needs to read: prefixes, sys.path, and this package."""
    out: list[str] = []
    for p in (
        sys.prefix,
        sys.exec_prefix,
        sys.base_prefix,
        sys.base_exec_prefix,
        os.path.dirname(os.path.realpath(sys.executable)),
        os.path.dirname(sys.executable),
        *sys.path,
    ):
        if p and os.path.exists(p):
            out.append(_norm(p))
    return tuple(dict.fromkeys(out))


def _project_root() -> str:
    """The directory holding the rlm_kernel package (an editable install's checkout)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _package_dirs() -> list[str]:
    """The directories of rlm_kernel (and rlm_widget): what a kernel imports from this project."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dirs = [here]
    widget = os.path.join(os.path.dirname(here), "rlm_widget")
    if os.path.isdir(widget):
        dirs.append(widget)
    return dirs


def _hideable(path: str) -> bool:
    """False for / and the system's directories (a start directory of / must not hide them)."""
    if any(_under(s, path) for s in _SYSTEM_DIRS):
        return False
    return not any(_under(path, t) for t in (*_SYSTEM_TREES, *_SYSTEM_DIRS[1:]))


def kernel_view(
    *,
    writable: Iterable[str],
    private_tmp: str,
    readable: Iterable[str] = (),
    hidden: Iterable[str] = (),
) -> dict[str, Any]:
    """The view (see :mod:`.confine`) of a kernel: `writable` and `private_tmp` (its /tmp) are
    the only writable places. Hidden: home, the start directory, the sandboxes' tmp root and
    `hidden`; `readable` paths are visible read-only even inside those (and a `.env` file in a
    readable directory stays hidden)."""
    from ..paths import tmp_root

    wanted = [_norm(r) for r in readable]
    hide: list[str] = []
    for p in [os.path.expanduser("~"), os.getcwd(), str(tmp_root()), *hidden]:
        p = _norm(p)
        if _hideable(p) and p not in wanted:
            hide.append(p)
    hide = list(dict.fromkeys(hide))
    rw = list(dict.fromkeys(_norm(p) for p in writable))
    ro: list[str] = []
    for p in _python_paths():
        if any(p == h for h in hide):
            # e.g. an editable install's project root on sys.path: only this project's packages
            ro.extend(d for d in _package_dirs() if _under(d, p))
        elif any(_under(p, h) for h in hide) or _under(p, "/tmp"):
            ro.append(p)
    ro.extend(wanted)
    # A `.env` stays hidden in the readable directories, and in this project's own directory (an
    # editable install's checkout, where a user may keep the keys `rlm` reads) when it is visible.
    project = _project_root()
    secret_dirs = list(wanted)
    if not any(_under(project, h) for h in hide) or any(_under(project, r) for r in ro):
        secret_dirs.append(project)
    for p in secret_dirs:
        for name in _SECRET_FILES:
            if os.path.isfile(os.path.join(p, name)):
                hide.append(os.path.join(p, name))
    hide = list(dict.fromkeys(hide))
    ro = [p for p in dict.fromkeys(ro) if not any(_under(p, w) for w in rw)]
    return {"hide": hide, "ro": ro, "rw": rw, "tmp": _norm(private_tmp)}


def git_readable(git_dir: str | None) -> list[str]:
    """What a workspace of the repository `git_dir` reads from it: its object store (and the
    stores its `objects/info/alternates` names)."""
    if not git_dir:
        return []
    common = (
        os.path.join(git_dir, ".git") if os.path.isdir(os.path.join(git_dir, ".git")) else git_dir
    )
    objects = os.path.join(common, "objects")
    out = [objects] if os.path.isdir(objects) else []
    alternates = os.path.join(objects, "info", "alternates")
    try:
        with open(alternates, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line and not line.startswith("#"):
                    path = line if os.path.isabs(line) else os.path.join(objects, line)
                    if os.path.isdir(path):
                        out.append(_norm(path))
    except OSError:
        pass
    return out


def git_hidden(git_dir: str | None) -> list[str]:
    """The repository itself (working tree and git directory: hooks, config, refs, files that
    were never committed such as `.env`): hidden from sandboxes, whose workspace is its copy."""
    return [git_dir] if git_dir else []


def confined_env(env: Mapping[str, str]) -> dict[str, str]:
    """A sandbox environment for the bwrap tier: a private, writable home and temp dir."""
    out = {k: v for k, v in env.items() if not k.startswith("XDG_")}
    out["HOME"] = PRIVATE_HOME
    out["TMPDIR"] = "/tmp"
    return out
