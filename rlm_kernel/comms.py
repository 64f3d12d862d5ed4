"""The RLM kernel's relay between the frontend and the sandbox kernels that run its cells.

Ordinary cells run in a sandbox's IPython kernel: the notebook's root sandbox, or a kept agent's
after ``%rlm attach``. For each such kernel the relay keeps a `links.SandboxLink`: a SUB socket on
the sandbox kernel's iopub, read on the RLM kernel's main event loop, and a DEALER socket on its
shell.

- **Outputs** of a forwarded cell (stream, display_data, update_display_data, clear_output, error,
  execute_result) go to the frontend's iopub with the frontend's request as parent. The kernel
  sends the cell to the sandbox under the frontend's own msg_id, so what the sandbox does in the
  request's name (an ``ipywidgets.Output`` capturing by msg_id, a widget callback's print) lines up
  on the frontend. The hop is thin: metadata, content and binary buffers are passed on as received
  (zero-copy); only a new header and the frontend's parent header are made and the message is
  signed with the kernel's key. Only stream text (bridge frames removed, size capped) and
  execute_result (renumbered) are decoded and re-encoded.
- **Comms** (ipywidgets, anywidget, tqdm.notebook, ...): ``comm_open``/``comm_msg``/``comm_close``
  of the frontend go to the sandbox kernel that owns the comm (by comm_id; a comm the frontend
  opens goes to the sandbox that runs cells now), also while a cell runs there; the sandbox's go
  to the frontend. A comm belongs to the sandbox that opened it, so widgets keep working after
  ``%rlm detach``; when that sandbox goes away (closed, died, restarted) the frontend gets a
  ``comm_close`` for each of its comms. The kernel's own comms (the ``%%rlm`` AgentTree) stay
  with the kernel's comm manager. ``comm_info`` lists both (`CommRouter.comm_info`). A reloaded
  page asks for every widget's state at once (ipywidgets' ``jupyter.widget.control`` comm); while
  sandboxes have widgets the relay turns that comm down, and the page falls back to asking each
  widget listed by ``comm_info``, so the kernel's and the sandboxes' widgets both come back.

Everything a sandbox sends is hostile data: code of the notebook and of agents runs there. Only
the types above are passed on (never status, replies or input requests); outputs only for a
request of the frontend; a ``comm_open`` only in answer to one, and never for a comm_id the kernel
or another sandbox uses; ``comm_msg``/``comm_close`` only for comms the sandbox itself opened. No
sandbox message is ever handled by the kernel's own comms or shell handlers, and only JSON is
parsed (nothing is unpickled or evaluated).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import zmq

from .links import DELIM, CellForward, SandboxLink, publish_raw
from .sandbox.bridge import FrameParser

if TYPE_CHECKING:
    from .relay import OutputRelay
    from .sandbox.base import Sandbox

__all__ = ["COMM_TYPES", "CommRouter"]

log = logging.getLogger(__name__)

COMM_TYPES = frozenset({"comm_open", "comm_msg", "comm_close"})
OUTPUT_TYPES = frozenset({"stream", "display_data", "update_display_data", "clear_output", "error"})
WIDGET_TARGET = "jupyter.widget"
CONTROL_TARGET = "jupyter.widget.control"  # ipywidgets' "send me every widget's state" comm

LINK_READY_S = 3.0  # wait for the new SUB socket's subscription before the first cell is sent
MAX_PARENTS = 4096  # frontend requests remembered (outputs of background threads, widget replies)
MAX_COMM_ID = 256
REFUSALS_LOGGED = 5  # per link; a sandbox that floods forged messages must not flood the log


class CommRouter:
    """Routes outputs and comm messages between the frontend and sandbox kernels (main thread).

    `session`, `iopub` and `topic` are the kernel's (its iopub socket may be used from any
    thread); `host_comms` returns the kernel's own comms (comm_id -> comm).
    """

    def __init__(
        self,
        session: Any,
        iopub: Any,
        topic: Callable[[str], bytes],
        host_comms: Callable[[], Mapping[str, Any]],
        context: Callable[[], zmq.Context[Any]],
    ) -> None:
        self.session = session
        self.iopub = iopub
        self.topic = topic
        self.host_comms = host_comms
        self._context = context
        self.links: dict[int, SandboxLink] = {}  # id(sandbox) -> its link
        self.owner: dict[str, SandboxLink] = {}  # comm_id -> link of the sandbox it belongs to
        self.cells: dict[str, CellForward] = {}  # msg_id -> running forwarded cell
        self.parents: collections.OrderedDict[str, tuple[SandboxLink, bytes]] = (
            collections.OrderedDict()
        )  # msg_id of a frontend request sent to a sandbox -> (link, packed header)
        self.refused = 0  # sandbox messages not passed on (forged, misaddressed, malformed)
        self.closed = False

    # -- links ---------------------------------------------------------------------------------
    def link_of(self, sandbox: Sandbox) -> SandboxLink | None:
        """The sandbox's live link, if one was made."""
        link = self.links.get(id(sandbox))
        if link is not None and link.sandbox is sandbox and not link.stale():
            return link
        return None

    async def link_for(self, sandbox: Sandbox) -> SandboxLink | None:
        """The link to `sandbox`'s kernel, made (and subscribed) if needed; None if it has none
        (a Daytona context is no Jupyter kernel). Main thread."""
        if self.closed or sandbox.closed or not sandbox.capabilities.jupyter:
            return None
        link = self.link_of(sandbox)
        if link is not None:
            return link
        old = self.links.pop(id(sandbox), None)
        if old is not None:
            self.retire(old)
        cf = sandbox.kernel_connection()
        if not cf:
            return None
        try:
            link = SandboxLink(sandbox, cf, self._context(), self._on_iopub)
        except Exception as exc:
            log.warning("cannot relay widgets of sandbox %s: %s", sandbox.id, exc)
            return None
        self.links[id(sandbox)] = link
        # A SUB socket gets nothing until its subscription reached the kernel (ipykernel then
        # greets it with iopub_welcome): wait, or the first cell's first outputs could be lost.
        try:
            await asyncio.wait_for(asyncio.wrap_future(link.ready), LINK_READY_S)
        except asyncio.TimeoutError:
            log.warning(
                "the sandbox kernel's iopub did not greet the relay in %.0f s", LINK_READY_S
            )
        return link

    def check(self) -> None:
        """Retire links whose sandbox went away (periodic, main thread)."""
        for key, link in list(self.links.items()):
            if link.stale():
                del self.links[key]
                self.retire(link)

    def retire(self, link: SandboxLink, notify: bool = True) -> None:
        """Close a link; the frontend gets a comm_close for each comm of its sandbox."""
        link.close()
        for cid in list(link.comms):
            if self.owner.get(cid) is link:
                del self.owner[cid]
                if notify:
                    self.publish("comm_close", {"comm_id": cid, "data": {}}, link.last_parent)
        link.comms.clear()
        for cell in list(self.cells.values()):
            if cell.link is link:
                cell.idle()

    def close(self) -> None:
        """Close every link (kernel shutdown; idempotent)."""
        self.closed = True
        for link in list(self.links.values()):
            self.retire(link, notify=False)
        self.links.clear()

    def flush(self, sandbox: Sandbox) -> None:
        """Handle every message already waiting on the sandbox's iopub (main thread)."""
        link = self.link_of(sandbox)
        if link is not None:
            with contextlib.suppress(Exception):
                link.stream.flush(zmq.POLLIN)

    # -- cells ---------------------------------------------------------------------------------
    def begin_cell(self, link: SandboxLink, relay: OutputRelay) -> CellForward:
        """Pass on the outputs of the cell `relay` stands for (sent to `link` under its msg_id)."""
        cell = CellForward(link, relay)
        self.cells[cell.msg_id] = cell
        self._remember(cell.msg_id, link, relay.parent_bytes)
        return cell

    def end_cell(self, cell: CellForward) -> None:
        """Stop treating the cell as running (later outputs pass on as a background thread's)."""
        if self.cells.get(cell.msg_id) is cell:
            del self.cells[cell.msg_id]
        cell.idle()

    # -- the frontend's side -------------------------------------------------------------------
    def from_frontend(self, msg: dict[str, Any], current: Any) -> bool:
        """Route a comm message of the frontend to a sandbox kernel; False when the kernel's own
        comm manager should handle it. `current` is the sandbox cells run in now (or None)."""
        if self.closed:
            return False
        mtype = str(msg.get("header", {}).get("msg_type"))
        content = msg.get("content") or {}
        cid = content.get("comm_id")
        if not isinstance(cid, str) or cid in self.host_comms():
            return False
        if mtype == "comm_open":
            target = content.get("target_name")
            if target == CONTROL_TARGET:
                # The frontend asks for all widgets' states at once. Widgets live in the kernel
                # and in sandboxes: refuse, so that it asks each widget (by comm_info) instead.
                if any(WIDGET_TARGET in link.comms.values() for link in self.links.values()):
                    self.publish("comm_close", {"comm_id": cid, "data": {}}, self._pack(msg))
                    return True
                return False
            link = self.link_of(current) if current is not None else None
            if link is None:
                return False
            self.owner[cid] = link
            link.comms[cid] = str(target)
        else:
            owner = self.owner.get(cid)
            if owner is None:
                return False
            if owner.stale():  # its sandbox went away since the last check: close its comms now
                if self.links.get(id(owner.sandbox)) is owner:
                    del self.links[id(owner.sandbox)]
                self.retire(owner)
                return True
            link = owner
            if mtype == "comm_close":
                del self.owner[cid]
                link.comms.pop(cid, None)
        self._send(link, msg)
        return True

    def _send(self, link: SandboxLink, msg: dict[str, Any]) -> None:
        """Send a frontend message to the sandbox kernel under the same header (so msg_id)."""
        header = dict(msg["header"])
        header.pop("subshell_id", None)  # the frontend's subshells are the RLM kernel's
        out = {
            "header": header,
            "parent_header": msg.get("parent_header") or {},
            "metadata": msg.get("metadata") or {},
            "content": msg.get("content") or {},
        }
        frames: list[Any] = link.session.serialize(out)
        frames.extend(msg.get("buffers") or [])
        try:
            link.shell.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.warning("the sandbox kernel does not read its shell: a widget message was dropped")
            return
        packed = self._pack(msg)
        self._remember(str(header.get("msg_id")), link, packed)
        link.last_parent = packed

    def comm_info(self, target_name: str | None) -> dict[str, dict[str, str]]:
        """The sandboxes' comms open with the frontend, as in a comm_info_reply."""
        return {
            cid: {"target_name": target}
            for link in self.links.values()
            if not link.closed
            for cid, target in link.comms.items()
            if target_name is None or target == target_name
        }

    # -- the sandbox's side --------------------------------------------------------------------
    def _on_iopub(self, link: SandboxLink, frames: list[Any]) -> None:
        try:
            self._dispatch(link, frames)
        except Exception as exc:
            self._refuse(link, f"a malformed message ({type(exc).__name__}: {exc})")

    def _dispatch(self, link: SandboxLink, frames: list[Any]) -> None:
        if link.closed:
            return
        i = next((n for n, f in enumerate(frames) if f.buffer == DELIM), -1)
        if i < 0 or len(frames) < i + 6:
            raise ValueError("not a Jupyter message")
        sig = frames[i + 1].bytes
        header_b, parent_b = frames[i + 2].bytes, frames[i + 3].bytes
        metadata, content = frames[i + 4].buffer, frames[i + 5].buffer
        if link.auth is not None:
            auth = link.auth.copy()
            for part in (header_b, parent_b, metadata, content):
                auth.update(part)
            if not hmac.compare_digest(auth.hexdigest().encode(), sig):
                raise ValueError("bad signature")
        if not link.ready.done():
            link.ready.set_result(None)
        header = json.loads(header_b)
        mtype = header.get("msg_type") if isinstance(header, dict) else None
        if mtype != "status" and mtype != "execute_result" and mtype not in OUTPUT_TYPES:
            if mtype in COMM_TYPES:
                parent = json.loads(parent_b)
                pid = parent.get("msg_id") if isinstance(parent, dict) else None
                self._comm_from_sandbox(link, mtype, pid, metadata, content, frames[i + 6 :])
            return  # execute_input, iopub_welcome, debug_event, anything else: not passed on
        parent = json.loads(parent_b)
        pid = parent.get("msg_id") if isinstance(parent, dict) else None
        cell = self.cells.get(pid) if isinstance(pid, str) else None
        if cell is not None and cell.link is not link:
            cell = None
        if mtype == "status":
            if cell is not None:
                body = json.loads(bytes(content))
                if isinstance(body, dict) and body.get("execution_state") == "idle":
                    cell.idle()
            return
        buffers = [f.buffer for f in frames[i + 6 :]]
        if cell is not None:
            cell.output(mtype, metadata, content, buffers)
            return
        known = self._parent_for(link, pid)
        if known is None or mtype == "execute_result":
            return  # not in answer to the frontend (an agent's cell, a request of the kernel)
        if mtype == "stream":  # e.g. a thread's print after its cell ended, a widget callback's
            body = json.loads(bytes(content))
            text = body.get("text") if isinstance(body, dict) else None
            if not isinstance(text, str):
                raise ValueError("stream text is not a string")
            parser = FrameParser()
            text = parser.feed(text)[0] + parser.flush()
            if text:
                self.publish("stream", {"name": str(body.get("name")), "text": text}, known)
            return
        self.publish_raw(mtype, known, metadata, content, buffers)

    def _comm_from_sandbox(
        self,
        link: SandboxLink,
        mtype: str,
        pid: Any,
        metadata: Any,
        content: Any,
        rest: list[Any],
    ) -> None:
        body = json.loads(bytes(content))
        cid = body.get("comm_id") if isinstance(body, dict) else None
        if not isinstance(cid, str) or not cid or len(cid) > MAX_COMM_ID:
            raise ValueError("bad comm_id")
        known = self._parent_for(link, pid)
        if mtype == "comm_open":
            target = body.get("target_name")
            if not isinstance(target, str):
                raise ValueError("bad target_name")
            owner = self.owner.get(cid)
            if cid in self.host_comms() or (owner is not None and owner is not link):
                self._refuse(link, f"a comm_open for the comm {cid}, which is not its own")
                return
            if known is None:
                return  # not in answer to the frontend (e.g. an agent's cell): stays in the sandbox
            self.owner[cid] = link
            link.comms[cid] = target
        elif self.owner.get(cid) is not link:
            self._refuse(link, f"a {mtype} for the comm {cid}, which is not its own")
            return
        elif mtype == "comm_close":
            del self.owner[cid]
            link.comms.pop(cid, None)
        self.publish_raw(
            mtype, known or link.last_parent, metadata, content, [f.buffer for f in rest]
        )

    def _refuse(self, link: SandboxLink, what: str) -> None:
        self.refused += 1
        link.refused += 1
        level = logging.WARNING if link.refused <= REFUSALS_LOGGED else logging.DEBUG
        log.log(level, "relay: not passed on from sandbox %s: %s", link.name, what)

    # -- publishing ----------------------------------------------------------------------------
    def publish_raw(
        self, mtype: str, parent: bytes, metadata: Any, content: Any, buffers: Iterable[Any] = ()
    ) -> None:
        """Publish on the kernel's iopub: a new header, `parent` (packed), the rest as given."""
        publish_raw(self.session, self.iopub, self.topic, mtype, parent, metadata, content, buffers)

    def publish(self, mtype: str, content: dict[str, Any], parent: bytes) -> None:
        """Publish a message the kernel makes itself."""
        self.publish_raw(mtype, parent, b"{}", self.session.pack(content))

    def _pack(self, msg: dict[str, Any]) -> bytes:
        return bytes(self.session.pack(msg.get("header") or {}))

    def _remember(self, msg_id: str, link: SandboxLink, packed: bytes) -> None:
        self.parents[msg_id] = (link, packed)
        self.parents.move_to_end(msg_id)
        while len(self.parents) > MAX_PARENTS:
            self.parents.popitem(last=False)

    def _parent_for(self, link: SandboxLink, pid: Any) -> bytes | None:
        """The packed header of the frontend request `pid`, if it was sent to `link`'s kernel."""
        if not isinstance(pid, str):
            return None
        ref = self.parents.get(pid)
        if ref is None or ref[0] is not link:
            return None
        return ref[1]
