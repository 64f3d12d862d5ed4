"""What may cross from a sandbox to the host: plain data, never code.

A value read out of a sandbox (`Sandbox.pull`) is computed *in the sandbox* into JSON text —
`str(value)` for text, or the value itself when it is JSON data (str, int, float, bool, None,
lists and dicts with string keys) — and the host only parses that text. Nothing a sandbox wrote
is unpickled or evaluated in the host process: an object whose `__reduce__`, `__str__` or
`__len__` runs code runs it in the sandbox, where there are no keys.

Host → sandbox transfers (`Sandbox.push`, a run's `context`) stay pickles: the sandbox unpickles
data the host made.
"""

from __future__ import annotations

import abc
import json
import os
import pickle
import stat
from typing import Any

from .base import NO_CONTEXT, SandboxError, SandboxSpec

__all__ = [
    "MAX_PULL_BYTES",
    "Transfers",
    "chdir_code",
    "decode",
    "pickled",
    "pull_code",
    "read_file",
    "write_new",
]

MAX_PULL_BYTES = 64 * 1024 * 1024
"""The largest JSON text the host reads back for one value."""


def pull_code(name: str, path: str, as_text: bool) -> str:
    """Code for the sandbox's REPL: write `name`'s value (or its `str`) as JSON text to `path`."""
    if not name.isidentifier():
        raise SandboxError(f"{name!r} is not a valid variable name")
    convert = "str(_rlm_v)" if as_text else "_rlm_v"
    return (
        "def _rlm_pull():\n"
        "    import json\n"
        "    try:\n"
        f"        _rlm_v = globals()[{name!r}]\n"
        "    except KeyError:\n"
        "        return {'missing': True}\n"
        "    try:\n"
        f"        return {{'value': json.loads(json.dumps({convert}, allow_nan=False))}}\n"
        "    except Exception as e:\n"
        "        return {'error': type(_rlm_v).__name__, 'why': f'{type(e).__name__}: {e}'[:300]}\n"
        f"with open({path!r}, 'w', encoding='utf-8') as _rlm_f:\n"
        "    __import__('json').dump(_rlm_pull(), _rlm_f)\n"
        "del _rlm_pull, _rlm_f\n"
    )


def read_file(path: str) -> str:
    """Read a file the sandbox wrote, as text: a regular file only (no symlink, no FIFO), capped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxError(f"the sandbox did not write the value ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SandboxError("the sandbox wrote something other than a file for the value")
        if st.st_size > MAX_PULL_BYTES:
            raise SandboxError(
                f"the value is too large to read back ({st.st_size:,} bytes of JSON; "
                f"at most {MAX_PULL_BYTES:,})"
            )
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_PULL_BYTES + 1)
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="replace")


def decode(text: str, name: str) -> Any:
    """The value of `name` from the sandbox's JSON answer; KeyError when it is not defined."""
    try:
        answer = json.loads(text)
    except ValueError:
        raise SandboxError(f"{name}: the sandbox's answer is not JSON") from None
    if not isinstance(answer, dict):
        raise SandboxError(f"{name}: the sandbox's answer is not a JSON object")
    if answer.get("missing"):
        raise KeyError(name)
    if "value" in answer:
        return answer["value"]
    kind = str(answer.get("error", "?"))[:100]
    why = str(answer.get("why", ""))[:300]
    raise SandboxError(
        f"{name} is a {kind}, which cannot leave the sandbox: only text and plain JSON data "
        f"(str, numbers, bools, None, lists, dicts with string keys) do ({why}). "
        f"Convert it in a cell first, e.g. `{name}_data = str({name})` or a list/dict of plain values"
    )


def write_new(path: str, data: bytes) -> None:
    """Create `path` (in a directory a sandbox can write) with `data`, never through a link.

    Whatever the sandbox put at `path` (a symlink to a host file, a FIFO) is removed first, and
    the file is created exclusively, so the host never writes where the sandbox points it.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        raise SandboxError(f"cannot write {path}: the sandbox made it a directory") from None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def pickled(value: Any, what: str) -> bytes:
    """`value` as a pickle for the sandbox; SandboxError naming `what` when it cannot be one."""
    try:
        return pickle.dumps(value, protocol=4)
    except Exception as exc:
        raise SandboxError(f"{what} cannot be sent to the sandbox (not picklable: {exc})") from exc


def chdir_code(path: str) -> str:
    """Code for the sandbox's REPL: work in `path` from now on (the runtime's workspace too)."""
    return (
        f"import os as _o\n_o.chdir({path!r})\n"
        "if '__rlm__' in globals(): __rlm__.workspace = _o.getcwd()\ndel _o\n"
    )


class Transfers(abc.ABC):
    """Values and files across the sandbox boundary, written once over a backend's primitives:
    a file in the sandbox's bridge directory, code run quietly (no bridge, no output)."""

    spec: SandboxSpec
    secret: str
    bridge_dir: str

    @abc.abstractmethod
    def _bridge_file(self, name: str) -> str:
        """The sandbox's path of file `name` in its bridge directory."""

    @abc.abstractmethod
    def _write_file(self, path: str, data: bytes) -> None:
        """Create the file `path` in the sandbox with `data` (never through a link it planted)."""

    @abc.abstractmethod
    def _read_file(self, path: str) -> str:
        """The text of a file the sandbox's code wrote (a regular file, at most MAX_PULL_BYTES)."""

    @abc.abstractmethod
    def _remove_file(self, path: str) -> None:
        """Remove a file of the sandbox; never raises."""

    @abc.abstractmethod
    def _quiet(self, code: str, what: str, timeout: int = 60) -> str:
        """Run helper code unwrapped (no bridge); its stdout; SandboxError `could not {what}: …`."""

    def push(self, name: str, value: Any) -> None:
        """Bind `name` to a copy of `value` in the REPL (a pickle through the bridge directory)."""
        if not name.isidentifier():
            raise SandboxError(f"{name!r} is not a valid variable name")
        blob = pickled(value, f"{name}: the value")
        path = self._bridge_file(f"push-{os.urandom(6).hex()}.pickle")
        self._write_file(path, blob)
        self._quiet(
            f"import pickle as _p, os as _o\nwith open({path!r}, 'rb') as _f:\n"
            f"    {name} = _p.load(_f)\n_o.unlink({path!r})\ndel _p, _o, _f\n",
            f"set {name} in the sandbox",
        )

    def pull(self, name: str, *, as_text: bool = False) -> Any:
        """The REPL variable `name` as plain data (or `str(value)`), computed in the sandbox.

        Only JSON text crosses (see this module); KeyError when it does not exist.
        """
        path = self._bridge_file(f"pull-{os.urandom(6).hex()}.json")
        code = pull_code(name, path, as_text)
        try:
            self._quiet(code, f"read {name} from the sandbox")
            text = self._read_file(path)
        finally:
            self._remove_file(path)
        return decode(text, name)

    def runtime_config(self) -> dict[str, Any]:
        """The in-sandbox runtime's configuration: the spec's, the bridge's secret and directory,
        and the path of the run's context (sent as a pickle) if it has one."""
        cfg = dict(self.spec.runtime_cfg)
        cfg["secret"] = self.secret
        cfg["bridge_dir"] = self.bridge_dir
        if self.spec.context is not NO_CONTEXT:
            path = self._bridge_file("context.pickle")
            self._write_file(path, pickled(self.spec.context, "the context"))
            cfg["context_path"] = path
        return cfg
