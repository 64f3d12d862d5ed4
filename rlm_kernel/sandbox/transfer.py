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

import json
import os
import stat
from typing import Any

from .base import SandboxError

__all__ = ["MAX_PULL_BYTES", "decode", "pull_code", "read_file", "write_new"]

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
