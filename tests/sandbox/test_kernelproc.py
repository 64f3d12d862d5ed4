"""The host's Session for sandbox kernels (`kernelproc._HostSession`): jupyter_client's checks
on every message a sandbox sends (its code is hostile), without parsing the headers' dates."""

from __future__ import annotations

import pytest
import zmq
from jupyter_client.session import Session

from rlm_kernel.sandbox.kernelproc import _Client, _HostSession

KEY = b"k" * 32


def _wire(sender: Session, **kw: object) -> list[bytes]:
    msg = sender.msg("stream", {"name": "stdout", "text": "hi"}, parent=sender.msg("x", {}))
    return [bytes(p) for p in sender.serialize(msg, **kw)[1:]]  # without the delimiter


def test_it_reads_what_jupyter_client_reads_but_the_dates() -> None:
    wire = _wire(Session(key=KEY))
    ours, theirs = _HostSession(key=KEY).deserialize(wire), Session(key=KEY).deserialize(wire)
    assert isinstance(ours["header"]["date"], str)
    for m in (ours, theirs):
        m["header"].pop("date")
        m["parent_header"].pop("date")
    assert ours == theirs
    frames = [zmq.Frame(p) for p in _wire(Session(key=KEY))] + [zmq.Frame(b"buf")]
    m = _HostSession(key=KEY).deserialize(frames, copy=False)
    assert m["content"]["text"] == "hi" and bytes(m["buffers"][0]) == b"buf"
    assert _HostSession(key=KEY).deserialize(_wire(Session(key=KEY)), content=False)["content"]


def test_forged_replayed_unsigned_and_short_messages_are_refused() -> None:
    host = _HostSession(key=KEY)
    wire = _wire(Session(key=KEY))
    host.deserialize(wire)
    with pytest.raises(ValueError, match="Duplicate Signature"):
        host.deserialize(wire)  # a replay
    forged = _wire(Session(key=b"not the key"))
    with pytest.raises(ValueError, match="Invalid Signature"):
        host.deserialize(forged)
    tampered = _wire(Session(key=KEY))
    tampered[4] = b'{"name": "stdout", "text": "forged"}'
    with pytest.raises(ValueError, match="Invalid Signature"):
        host.deserialize(tampered)
    with pytest.raises(ValueError, match="Unsigned"):
        host.deserialize([b"", *tampered[1:]])
    with pytest.raises(TypeError, match="malformed"):
        _HostSession(key=b"").deserialize([b"", b"{}"])  # no key: too short


def test_sandbox_clients_use_it() -> None:
    client = _Client()
    assert isinstance(client.session, _HostSession)
