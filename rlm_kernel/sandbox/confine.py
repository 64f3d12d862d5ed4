"""Confine one forked kernel (the bwrap tier): runs in the fork server, under bubblewrap, Linux only.

The fork server of the bwrap tier runs inside ``bwrap`` (:mod:`.isolation` builds the command):
its own user, PID, IPC and (optionally) network namespaces, the host's ``/`` read-only, and every
capability *inside* its user namespace (it receives each kernel's log file as a descriptor). For
each kernel:

1. the fork server forks with :func:`fork_in_new_pid_namespace`: the child is PID 1 of a
   fresh PID namespace (the host's processes, the fork server and the other agents' kernels are
   invisible and out of reach of signals and ``ptrace``);
2. the child calls :func:`enter` with the kernel's *view*: a private mount (and IPC) namespace,
   a fresh ``/proc``, the hidden directories replaced by empty read-only tmpfs, the readable
   paths bound back read-only, the writable ones (workspace, bridge, kernel runtime directory)
   bound writable, a private ``/tmp``, a private ``/dev/shm`` and ``/dev`` read-only;
3. it forks the kernel proper (PID 2) and stays as the namespace's init (:func:`run_init`): it
   reaps orphans and exits with the kernel's status, so PID-1 signal rules never apply to the
   kernel (``os.kill(os.getpid(), 9)`` works as anywhere else) and everything the kernel started
   dies with it;
4. the kernel drops every capability (:func:`drop_privileges`) before any agent code runs.

A view is plain JSON (the host sends it with the spawn request)::

    {"hide": [path, ...],             # empty, read-only (a directory or a file)
     "ro": [path, ...],               # bound read-only at the same path
     "rw": [path, ...],               # bound writable at the same path
     "tmp": dir}                      # bound writable on /tmp

Paths must be absolute and normalised; the host (:func:`.isolation.kernel_view`) makes sure no
exposed path equals or contains a hidden one.

Standard library only (ctypes): the fork server must not import anything that starts threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

__all__ = [
    "ConfineError",
    "drop_privileges",
    "enter",
    "fork_in_new_pid_namespace",
    "inject",
    "run_init",
    "send_pid",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# NOROOT, NO_SETUID_FIXUP, KEEP_CAPS off, NO_CAP_AMBIENT_RAISE: each with its lock bit.
SECUREBITS = 0b1 | 0b10 | 0b100 | 0b1000 | 0b100000 | 0b1000000 | 0b10000000 | 0b1000000000
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# /proc entries bubblewrap keeps read-only in its own /proc mount (writes there reach the host).
PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus")
_ST_TO_MS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC))

_libc: Any = None


class ConfineError(OSError):
    """A namespace or mount operation failed (the message names the operation and the path)."""


def _lib() -> Any:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.unshare.argtypes = [ctypes.c_int]
        lib.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
        lib.capset.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.syscall.restype = ctypes.c_long
        _libc = lib
    return _libc


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise ConfineError(err, f"{what}: {os.strerror(err)}")


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str = "") -> None:
    res = _lib().mount(_b(src), _b(dst), _b(fstype), flags, data.encode() if data else None)
    _check(res, f"mount {src or fstype or ''} on {dst}")


def _remount(path: str, readonly: bool) -> None:
    """Make the mount at `path` read-only or writable, keeping its nosuid/nodev/noexec flags."""
    st = os.statvfs(path)
    keep = 0
    for st_flag, ms_flag in _ST_TO_MS:
        if st.f_flag & st_flag:
            keep |= ms_flag
    _mount(None, path, None, MS_REMOUNT | MS_BIND | (MS_RDONLY if readonly else 0) | keep)


def _remount_ro(path: str) -> None:
    _remount(path, readonly=True)


# ---------------------------------------------------------------------------------------------
# PID namespaces (in the fork server)
# ---------------------------------------------------------------------------------------------
_own_pidns: int | None = None


def fork_in_new_pid_namespace() -> int:
    """``os.fork()``, the child being PID 1 of a fresh PID namespace (returns 0 in the child)."""
    global _own_pidns
    if _own_pidns is None:
        _own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    _check(_lib().unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
    pid = -1
    try:
        pid = os.fork()
    finally:
        if pid != 0:
            # Back to our own namespace for later children (a second unshare would be refused).
            _check(_lib().setns(_own_pidns, CLONE_NEWPID), "setns(own PID namespace)")
    return pid


# ---------------------------------------------------------------------------------------------
# the mount namespace of one kernel (in the forked child, before the kernel starts)
# ---------------------------------------------------------------------------------------------
def _depth(path: str) -> int:
    return 0 if path == "/" else path.rstrip("/").count("/")


def _make_mountpoint(path: str, is_dir: bool) -> None:
    """Create the mount point (and its parents) where the view needs it; an existing one is kept."""
    if os.path.lexists(path):
        return
    if is_dir:
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))


def _bind_fd(fd: int, dst: str, is_dir: bool, readonly: bool) -> None:
    """Bind what `fd` (an O_PATH descriptor opened before anything was hidden) refers to on `dst`."""
    _make_mountpoint(dst, is_dir)
    _mount(f"/proc/self/fd/{fd}", dst, None, MS_BIND | (MS_REC if readonly else 0))
    # The fork server sees everything read-only; a writable path is made writable here.
    _remount(dst, readonly)


def _mount_proc() -> None:
    """A /proc of this PID namespace, with bubblewrap's read-only entries."""
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_READONLY:
        path = f"/proc/{name}"
        if os.path.exists(path):
            _mount(path, path, None, MS_BIND | MS_REC)
            _remount_ro(path)


def _private_dev() -> None:
    """A private /dev/shm; the rest of /dev (bubblewrap's tmpfs of device nodes) read-only."""
    if os.path.isdir("/dev/shm"):
        _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    if os.path.ismount("/dev"):
        _remount_ro("/dev")


def enter(view: Mapping[str, Any]) -> None:
    """Give this (single-threaded, capable) process the mount and IPC namespace of `view`."""
    hide = [str(p) for p in view.get("hide") or []]
    ro = [str(p) for p in view.get("ro") or []]
    rw = [str(p) for p in view.get("rw") or []]
    tmp = view.get("tmp")
    for p in [*hide, *ro, *rw, *([tmp] if tmp else [])]:
        if not os.path.isabs(p) or os.path.normpath(p) != p:
            raise ConfineError(errno.EINVAL, f"view paths must be absolute and normalised: {p!r}")
    _check(_lib().unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare(CLONE_NEWNS|CLONE_NEWIPC)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Every source is opened before anything is hidden; the descriptors are closed at the end.
    fds: dict[tuple[str, str], tuple[int, bool]] = {}
    try:
        for kind, paths in (("ro", ro), ("rw", rw)):
            for p in paths:
                if os.path.exists(p):  # a path that is gone (an old workspace) is left out
                    fds[(kind, p)] = (os.open(p, os.O_PATH | os.O_CLOEXEC), os.path.isdir(p))
        if tmp:
            fds[("tmp", "/tmp")] = (os.open(tmp, os.O_PATH | os.O_CLOEXEC), True)
        _mount_proc()
        _private_dev()
        # Parents before children, so a later mount lands inside an earlier one.
        ops: list[tuple[int, int, str, str]] = []
        order = {"hide": 0, "tmp": 1, "ro": 2, "rw": 2}
        for p in hide:
            ops.append((_depth(p), order["hide"], "hide", p))
        for kind, p in fds:
            ops.append((_depth(p), order[kind], kind, p))
        ops.sort()
        hidden: list[str] = []
        for _, _, kind, p in ops:
            if kind == "hide":
                if not os.path.lexists(p):
                    # e.g. the tmp root inside the private /tmp: hidden there too, so that the
                    # kernel's own paths under it stay the only writable ones
                    with contextlib.suppress(OSError):
                        os.makedirs(p)
                if os.path.isdir(p):
                    _mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
                    hidden.append(p)
                elif os.path.lexists(p):  # a file (e.g. a .env): shown empty
                    _mount("/dev/null", p, None, MS_BIND)
                    _remount_ro(p)
                continue
            fd, is_dir = fds[(kind, p)]
            _bind_fd(fd, p, is_dir, readonly=(kind == "ro"))
        for p in hidden:  # only now: they held the mount points made above
            _remount_ro(p)
    finally:
        for fd, _ in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)


# ---------------------------------------------------------------------------------------------
# adding to a running kernel's view (set_workspace): run by a helper forked from the fork server
# ---------------------------------------------------------------------------------------------
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = 0o2000000
_AT_RECURSIVE = 0x8000
_AT_FDCWD = -100
_MOVE_MOUNT_F_EMPTY_PATH = 0x4


def _open_tree(path: str) -> int:
    lib = _lib()
    fd = lib.syscall(
        ctypes.c_long(_SYS_OPEN_TREE),
        ctypes.c_int(_AT_FDCWD),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.c_uint(_OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_RECURSIVE),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise ConfineError(err, f"open_tree {path}: {os.strerror(err)}")
    return int(fd)


def _move_mount(fd: int, dst: str) -> None:
    res = _lib().syscall(
        ctypes.c_long(_SYS_MOVE_MOUNT),
        ctypes.c_int(fd),
        ctypes.c_char_p(b""),
        ctypes.c_int(_AT_FDCWD),
        ctypes.c_char_p(os.fsencode(dst)),
        ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH),
    )
    _check(int(res), f"move_mount on {dst}")


def _mount_of(path: str) -> str:
    """The mount point that holds `path` (which exists)."""
    p = os.path.realpath(path)
    while p != "/" and not os.path.ismount(p):
        p = os.path.dirname(p)
    return p


def _ensure_mountpoint(path: str, is_dir: bool) -> None:
    """Create the mount point, making a read-only tmpfs on the way writable for the moment."""
    parent = os.path.dirname(path)
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:
        _make_mountpoint(path, is_dir)
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        holder = _mount_of(existing)
        st = os.statvfs(holder)
        if holder == "/" or not st.f_flag & os.ST_RDONLY:
            raise
        _mount(None, holder, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
        try:
            _make_mountpoint(path, is_dir)
        finally:
            _remount_ro(holder)


def inject(pid: int, ro: Sequence[str], rw: Sequence[str], hide: Sequence[str] = ()) -> None:
    """Change the mount namespace of process `pid` (a kernel this server started): hide `hide`,
    then bind `ro` and `rw` from this process's view (parents first)."""
    trees: list[tuple[str, int, bool, bool]] = []
    try:
        for p in [*hide, *rw, *ro]:
            if not os.path.isabs(p) or os.path.normpath(p) != p:
                raise ConfineError(errno.EINVAL, f"paths must be absolute and normalised: {p!r}")
        for p in [*rw, *ro]:
            if not os.path.isabs(p) or os.path.normpath(p) != p:
                raise ConfineError(errno.EINVAL, f"paths must be absolute and normalised: {p!r}")
            if not os.path.exists(p):
                if p in rw:
                    raise ConfineError(errno.ENOENT, f"writable path missing: {p}")
                continue
            trees.append((p, _open_tree(p), os.path.isdir(p), p not in rw))
        ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_lib().setns(ns, CLONE_NEWNS), f"setns(mount namespace of {pid})")
        finally:
            os.close(ns)
        ops: list[tuple[int, int, str, int, bool, bool]] = [
            (_depth(p), 0, p, -1, True, True) for p in hide
        ]
        ops += [(_depth(p), 1, p, fd, is_dir, readonly) for p, fd, is_dir, readonly in trees]
        hidden: list[str] = []
        for _, _, p, fd, is_dir, readonly in sorted(ops):
            if fd < 0:
                if os.path.isdir(p) and not os.path.ismount(p):
                    _mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
                    hidden.append(p)
                continue
            _ensure_mountpoint(p, is_dir)
            _move_mount(fd, p)
            _remount(p, readonly)
        for p in hidden:
            _remount_ro(p)
    finally:
        for _, fd, _, _ in trees:
            with contextlib.suppress(OSError):
                os.close(fd)


# ---------------------------------------------------------------------------------------------
# privileges, init, pid reporting
# ---------------------------------------------------------------------------------------------
def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return 63


def drop_privileges() -> None:
    """Drop every capability for good (also across execve of setuid or root-owned programs)."""
    lib = _lib()
    _check(lib.prctl(PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0), "prctl(PR_SET_SECUREBITS)")
    for cap in range(_last_cap() + 1):
        _check(lib.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"prctl(PR_CAPBSET_DROP, {cap})")
    _check(
        lib.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(PR_CAP_AMBIENT_CLEAR)"
    )
    header = ctypes.create_string_buffer(struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0))
    data = ctypes.create_string_buffer(bytes(24))
    _check(lib.capset(header, data), "capset(none)")
    _check(lib.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def send_pid(sock: socket.socket, pid: int, payload: bytes = b"ok") -> None:
    """Send `payload` with `pid` as the sender's credentials: the receiver sees it in its own
    PID namespace (how the host learns the kernel's pid from inside the sandbox)."""
    creds = struct.pack("iII", pid, os.getuid(), os.getgid())
    sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)])


def recv_pid(sock: socket.socket, bufsize: int = 1 << 16) -> tuple[bytes, int | None]:
    """Receive one message and the sender's pid (in this namespace); SO_PASSCRED must be set."""
    data, ancdata, _, _ = sock.recvmsg(bufsize, socket.CMSG_SPACE(struct.calcsize("iII")))
    pid = None
    for level, kind, raw in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", raw[: struct.calcsize("iII")])[0]
    return data, pid


def run_init(kernel_pid: int) -> NoReturn:
    """Be the PID namespace's init: reap every process, exit with the kernel's status."""
    _set_comm(b"rlm-init")
    # Not the fork server's directory (this project's checkout): /proc/1/cwd leads nowhere.
    with contextlib.suppress(OSError):
        os.chdir("/")
    with contextlib.suppress(OSError):
        _lib().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # the kernel may not ptrace or read us

    def forward(signum: int, frame: Any) -> None:
        with contextlib.suppress(OSError):
            os.kill(kernel_pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    with contextlib.suppress(OSError):
        drop_privileges()
    code = 1
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid == kernel_pid:
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
            break
    os._exit(code)  # the namespace ends with us: the kernel's leftovers are killed


def _set_comm(name: bytes) -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)


def supported() -> bool:
    """Whether this platform has what the module needs (Linux)."""
    return sys.platform.startswith("linux")
