"""A local emulator of the Daytona HTTP API, enough for the real `daytona` SDK to run unmodified.

Endpoints (see FACTS.md): API `POST|GET /api/sandbox`, `GET|DELETE /api/sandbox/{id}`; toolbox
`/toolbox/{id}/...`: `process/execute`, `process/interpreter/context` (+ `/{id}`), the WebSocket
`process/interpreter/execute`, `files/bulk-upload`, `files/bulk-download`, `git/clone`,
`user-home-dir`, `work-dir`. Every request needs `Authorization: Bearer <key>` (401 otherwise).
Socket.IO is not served (404), so the SDK falls back to polling.

Each sandbox is a temporary directory; a code-interpreter context is a persistent local Python
process (`_REPL` below) that execs code in one globals dict and streams stdout/stderr as JSON lines.
A timeout interrupts the cell, then kills the process and restarts the context empty, like
Daytona's daemon. Fault knobs: `fail_creates`, `restart_contexts()`, `drop_next_ws`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_REPL = r"""
import json, os, sys, traceback
proto = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)  # subprocess output of user code goes to stderr, never into the protocol
sys.stdin = open(os.devnull)

class _Out:
    def __init__(self, name):
        self.name = name
    def write(self, s):
        if s:
            proto.write(json.dumps({"type": self.name, "text": s}) + "\n")
        return len(s)
    def flush(self):
        proto.flush()
    def isatty(self):
        return False
    @property
    def encoding(self):
        return "utf-8"

sys.stdout, sys.stderr = _Out("stdout"), _Out("stderr")
g = {"__name__": "__main__", "__builtins__": __builtins__}
for line in iter(sys.__stdin__.readline, ""):
    req = json.loads(line)
    try:
        exec(compile(req["code"], "<cell>", "exec"), g)
    except BaseException as e:
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        proto.write(json.dumps({"type": "error", "name": type(e).__name__, "value": str(e), "traceback": tb}) + "\n")
    proto.write(json.dumps({"type": "done"}) + "\n")
"""


@dataclass
class _Context:
    id: str
    cwd: str
    proc: asyncio.subprocess.Process | None = None
    queue: asyncio.Queue[dict[str, Any]] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ"))
    restarts: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@dataclass
class _Sandbox:
    id: str
    dir: str
    labels: dict[str, str]
    auto_stop_interval: int | None
    contexts: dict[str, _Context] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ"))


class DaytonaEmulator:
    """Serve the emulated API on 127.0.0.1:<free port> from a background thread."""

    def __init__(self, api_key: str = "emu-key", timeout_grace_s: float = 2.0) -> None:
        self.api_key = api_key
        self.timeout_grace_s = timeout_grace_s
        self.root = tempfile.mkdtemp(prefix="daytona-emu-")
        self.sandboxes: dict[str, _Sandbox] = {}
        self.created = 0
        self.deleted = 0
        self.create_requests = 0
        self.fail_creates = 0  # fail the next N creations with HTTP 500
        self.fail_agents: set[str] = set()  # fail creations labelled rlm-agent=<one of these>
        self.drop_next_ws = False  # drop the next cell's WebSocket after its first output
        self.unauthorized = 0
        self.executions = 0
        self.create_delay_s = 0.0
        self.create_spans: list[tuple[float, float]] = []  # (start, end) of successful creations
        self.git_clones: list[dict[str, Any]] = []  # bodies of POST /git/clone
        self.create_bodies: list[dict[str, Any]] = []  # bodies of POST /sandbox
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # -- control ------------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def toolbox_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/toolbox"

    def start(self) -> DaytonaEmulator:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="daytona-emu", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the Daytona emulator did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None:
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            with contextlib.suppress(Exception):
                fut.result(15)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def call(self, coro: Any, timeout: float = 30) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def restart_contexts(self, sandbox_id: str | None = None) -> int:
        """Restart every context (of one sandbox, or all) empty, like Daytona after a timeout."""

        async def go() -> int:
            n = 0
            for sb in list(self.sandboxes.values()):
                if sandbox_id is None or sb.id == sandbox_id:
                    for ctx in sb.contexts.values():
                        await self._restart(ctx)
                        n += 1
            return n

        return int(self.call(go()))

    def labels_of_live(self) -> list[dict[str, str]]:
        return [dict(sb.labels) for sb in self.sandboxes.values()]

    # -- server -------------------------------------------------------------------------------
    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        app = web.Application(middlewares=[self._auth], client_max_size=1024**3)
        r = app.router
        r.add_post("/api/sandbox", self._create)
        r.add_get("/api/sandbox", self._list)
        r.add_get("/api/sandbox/{id}", self._get)
        r.add_delete("/api/sandbox/{id}", self._delete)
        r.add_get("/api/sandbox/{id}/toolbox-proxy-url", self._proxy_url)
        t = "/toolbox/{id}"
        r.add_get(t + "/user-home-dir", self._home)
        r.add_get(t + "/work-dir", self._home)
        r.add_post(t + "/process/execute", self._execute)
        r.add_post(t + "/process/interpreter/context", self._ctx_create)
        r.add_get(t + "/process/interpreter/context", self._ctx_list)
        r.add_delete(t + "/process/interpreter/context/{cid}", self._ctx_delete)
        r.add_get(t + "/process/interpreter/execute", self._ws_execute)
        r.add_post(t + "/files/bulk-upload", self._upload)
        r.add_post(t + "/files/bulk-download", self._download)
        r.add_post(t + "/git/clone", self._git_clone)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        loop.run_until_complete(site.start())
        self._ready.set()
        loop.run_forever()
        loop.close()

    async def _shutdown(self) -> None:
        for sid in list(self.sandboxes):
            await self._remove(sid)
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}" and (
            request.path.startswith(("/api/sandbox", "/toolbox"))
        ):
            self.unauthorized += 1
            return web.json_response(
                {"statusCode": 401, "message": "Invalid credentials", "error": "Unauthorized"},
                status=401,
            )
        resp: web.StreamResponse = await handler(request)
        return resp

    def _sb(self, request: web.Request) -> _Sandbox:
        sb = self.sandboxes.get(request.match_info["id"])
        if sb is None:
            raise web.HTTPNotFound(
                text=json.dumps({"statusCode": 404, "message": "Sandbox not found"}),
                content_type="application/json",
            )
        return sb

    def _dto(self, sb: _Sandbox, state: str = "started") -> dict[str, Any]:
        return {
            "id": sb.id,
            "organizationId": "emu-org",
            "name": sb.id,
            "user": "daytona",
            "env": {},
            "labels": sb.labels,
            "public": False,
            "networkBlockAll": False,
            "kvm": False,
            "target": "emu",
            "cpu": 1,
            "gpu": 0,
            "memory": 1,
            "disk": 3,
            "state": state,
            "desiredState": state,
            "autoStopInterval": sb.auto_stop_interval or 0,
            "createdAt": sb.created_at,
            "updatedAt": sb.created_at,
            "toolboxProxyUrl": self.toolbox_url,
        }

    # -- sandboxes ----------------------------------------------------------------------------
    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.create_requests += 1
        self.create_bodies.append(dict(body))
        agent = (body.get("labels") or {}).get("rlm-agent")
        if self.fail_creates > 0 or agent in self.fail_agents:
            if agent not in self.fail_agents:
                self.fail_creates -= 1
            return web.json_response(
                {"statusCode": 500, "message": "Internal server error (injected fault)"},
                status=500,
            )
        began = time.monotonic()
        if self.create_delay_s:
            await asyncio.sleep(self.create_delay_s)
        self.create_spans.append((began, time.monotonic()))
        sid = uuid.uuid4().hex[:12]
        d = os.path.join(self.root, sid, "home")
        os.makedirs(d)
        sb = _Sandbox(sid, d, dict(body.get("labels") or {}), body.get("autoStopInterval"))
        self.sandboxes[sid] = sb
        self.created += 1
        return web.json_response(self._dto(sb))

    async def _list(self, request: web.Request) -> web.Response:
        want = json.loads(request.query.get("labels") or "{}")
        items = [
            self._dto(sb)
            for sb in self.sandboxes.values()
            if all(sb.labels.get(k) == v for k, v in want.items())
        ]
        limit = int(request.query.get("limit") or 0)
        if limit:
            items = items[:limit]
        return web.json_response({"items": items, "nextCursor": None})

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(self._dto(self._sb(request)))

    async def _proxy_url(self, request: web.Request) -> web.Response:
        self._sb(request)
        return web.json_response({"url": self.toolbox_url})

    async def _delete(self, request: web.Request) -> web.Response:
        sb = self._sb(request)
        dto = self._dto(sb, "destroyed")
        await self._remove(sb.id)
        return web.json_response(dto)

    async def _remove(self, sid: str) -> None:
        sb = self.sandboxes.pop(sid, None)
        if sb is None:
            return
        for ctx in sb.contexts.values():
            await self._kill(ctx)
        shutil.rmtree(os.path.dirname(sb.dir), ignore_errors=True)
        self.deleted += 1

    async def _home(self, request: web.Request) -> web.Response:
        return web.json_response({"dir": self._sb(request).dir})

    def _resolve(self, sb: _Sandbox, path: str | None) -> str:
        if not path:
            return sb.dir
        return path if os.path.isabs(path) else os.path.join(sb.dir, path)

    # -- processes ----------------------------------------------------------------------------
    async def _execute(self, request: web.Request) -> web.Response:
        sb = self._sb(request)
        body = await request.json()
        cwd = self._resolve(sb, body.get("cwd"))
        env = {**_sandbox_env(sb.dir), **(body.get("envs") or {})}
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            body["command"],
            cwd=cwd,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), body.get("timeout") or 600)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return web.json_response({"exitCode": -1, "result": "command timed out"})
        return web.json_response(
            {"exitCode": proc.returncode, "result": out.decode("utf-8", "replace")}
        )

    async def _git_clone(self, request: web.Request) -> web.Response:
        sb = self._sb(request)
        body = await request.json()
        self.git_clones.append(dict(body))
        dest = self._resolve(sb, body["path"])
        args = ["git", "clone", "-q"]
        if body.get("branch"):
            args += ["-b", body["branch"]]
        cmds = [[*args, body["url"], dest]]
        if body.get("commit_id") or body.get("commitId"):
            cmds.append(
                ["git", "-C", dest, "checkout", "-q", body.get("commit_id") or body["commitId"]]
            )
        for cmd in cmds:
            proc = await asyncio.create_subprocess_exec(
                *cmd, cwd=sb.dir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                return web.json_response(
                    {"statusCode": 400, "message": out.decode(errors="replace").strip()},
                    status=400,
                )
        return web.Response(status=200)

    # -- files --------------------------------------------------------------------------------
    async def _upload(self, request: web.Request) -> web.Response:
        sb = self._sb(request)
        raw = await request.read()
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode() + raw
        )
        paths: dict[str, str] = {}
        datas: dict[str, bytes] = {}
        for part in msg.iter_parts():
            name = str(part.get_param("name", header="content-disposition") or "")
            idx = name[name.find("[") + 1 : name.find("]")]
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            if name.endswith(".path"):
                paths[idx] = data.decode()
            elif name.endswith(".file"):
                datas[idx] = data
        for idx, path in paths.items():
            dest = self._resolve(sb, path)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as fh:
                fh.write(datas.get(idx, b""))
        return web.Response(status=200)

    async def _download(self, request: web.Request) -> web.StreamResponse:
        sb = self._sb(request)
        body = await request.json()
        boundary = uuid.uuid4().hex
        chunks: list[bytes] = []
        for path in body.get("paths") or []:
            src = self._resolve(sb, path)
            try:
                with open(src, "rb") as fh:
                    data, name, ctype = fh.read(), "file", "application/octet-stream"
            except OSError as exc:
                data = json.dumps({"message": f"file not found: {exc}", "statusCode": 404}).encode()
                name, ctype = "error", "application/json"
            chunks.append(
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                    f'filename="{path}"\r\nContent-Type: {ctype}\r\n\r\n'
                ).encode()
                + data
                + b"\r\n"
            )
        chunks.append(f"--{boundary}--\r\n".encode())
        return web.Response(
            body=b"".join(chunks),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )

    # -- code interpreter ---------------------------------------------------------------------
    def _ctx_dto(self, ctx: _Context) -> dict[str, Any]:
        return {
            "id": ctx.id,
            "cwd": ctx.cwd,
            "language": "python",
            "active": ctx.proc is not None and ctx.proc.returncode is None,
            "createdAt": ctx.created_at,
        }

    async def _ctx_create(self, request: web.Request) -> web.Response:
        sb = self._sb(request)
        body = await request.json() if request.can_read_body else {}
        ctx = _Context(uuid.uuid4().hex[:12], self._resolve(sb, (body or {}).get("cwd")))
        await self._spawn(ctx, sb)
        sb.contexts[ctx.id] = ctx
        return web.json_response(self._ctx_dto(ctx))

    async def _ctx_list(self, request: web.Request) -> web.Response:
        sb = self._sb(request)
        return web.json_response({"contexts": [self._ctx_dto(c) for c in sb.contexts.values()]})

    async def _ctx_delete(self, request: web.Request) -> web.Response:
        sb = self._sb(request)
        ctx = sb.contexts.pop(request.match_info["cid"], None)
        if ctx is None:
            raise web.HTTPNotFound(text='{"message": "context not found"}')
        await self._kill(ctx)
        return web.Response(status=200)

    async def _spawn(self, ctx: _Context, sb: _Sandbox | None = None) -> None:
        home = sb.dir if sb is not None else ctx.cwd
        os.makedirs(ctx.cwd, exist_ok=True)
        ctx.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-u",
            "-c",
            _REPL,
            cwd=ctx.cwd,
            env=_sandbox_env(home),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=64 * 1024 * 1024,
        )
        ctx.queue = asyncio.Queue()
        ctx.tasks = [
            asyncio.ensure_future(self._pump(ctx.proc, ctx.queue, "proto")),
            asyncio.ensure_future(self._pump(ctx.proc, ctx.queue, "stderr")),
        ]

    async def _pump(
        self, proc: asyncio.subprocess.Process, q: asyncio.Queue[dict[str, Any]], which: str
    ) -> None:
        stream = proc.stdout if which == "proto" else proc.stderr
        assert stream is not None
        while True:
            line = await stream.readline()
            if not line:
                if which == "proto":
                    await q.put({"type": "died"})
                return
            if which == "proto":
                with contextlib.suppress(ValueError):
                    await q.put(json.loads(line))
            else:
                await q.put({"type": "stderr", "text": line.decode(errors="replace")})

    async def _kill(self, ctx: _Context) -> None:
        proc = ctx.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5)
        for t in ctx.tasks:
            t.cancel()
        ctx.tasks = []

    async def _restart(self, ctx: _Context) -> None:
        await self._kill(ctx)
        ctx.restarts += 1
        await self._spawn(ctx)

    async def _ws_execute(self, request: web.Request) -> web.StreamResponse:
        sb = self._sb(request)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        msg = await ws.receive()
        if msg.type != web.WSMsgType.TEXT:
            await ws.close()
            return ws
        req = json.loads(msg.data)
        cid = req.get("contextId")
        if cid is None:
            cid = "default"
            if cid not in sb.contexts:
                ctx = _Context(cid, sb.dir)
                await self._spawn(ctx, sb)
                sb.contexts[cid] = ctx
        ctx_or_none = sb.contexts.get(cid)
        if ctx_or_none is None:
            await ws.send_json(
                {
                    "type": "error",
                    "name": "ContextError",
                    "value": "no such context",
                    "traceback": "",
                }
            )
            await ws.close(code=1000)
            return ws
        ctx = ctx_or_none
        self.executions += 1
        # Keep reading so pings are answered while the cell runs.
        reader = asyncio.ensure_future(_drain_ws(ws))
        timeout = req.get("timeout")
        timeout = 600 if timeout is None else (timeout or 10**9)
        drop = self.drop_next_ws
        self.drop_next_ws = False
        try:
            async with ctx.lock:
                if ctx.proc is None or ctx.proc.returncode is not None:
                    await self._restart(ctx)
                assert ctx.proc is not None and ctx.proc.stdin is not None and ctx.queue is not None
                while not ctx.queue.empty():  # leftovers of an earlier (dropped) cell
                    ctx.queue.get_nowait()
                ctx.proc.stdin.write((json.dumps({"code": req["code"]}) + "\n").encode())
                await ctx.proc.stdin.drain()
                deadline = time.monotonic() + timeout
                q = ctx.queue
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        await self._timeout(ctx, ws)
                        return ws
                    try:
                        item = await asyncio.wait_for(q.get(), left)
                    except asyncio.TimeoutError:
                        continue
                    kind = item.get("type")
                    if kind == "done":
                        break
                    if kind == "died":
                        await ws.send_json(
                            {
                                "type": "error",
                                "name": "ContextDied",
                                "value": "the interpreter exited",
                                "traceback": "",
                            }
                        )
                        break
                    if ws.closed:
                        continue  # the client went away; the cell runs on (as in Daytona)
                    await ws.send_json(item)
                    if drop and kind in ("stdout", "stderr"):
                        drop = False
                        # Drop the connection abruptly: no close frame; the cell keeps running.
                        if request.transport is not None:
                            request.transport.close()
                        await _wait_done(q)
                        return ws
            await ws.close(code=1000)
        finally:
            reader.cancel()
        return ws

    async def _timeout(self, ctx: _Context, ws: web.WebSocketResponse) -> None:
        proc = ctx.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
        await asyncio.sleep(self.timeout_grace_s)
        await self._restart(ctx)  # Daytona restarts the context empty, without telling anyone
        with contextlib.suppress(Exception):
            await ws.close(code=4008, message=b"execution timed out")


async def _drain_ws(ws: web.WebSocketResponse) -> None:
    with contextlib.suppress(Exception):
        async for _ in ws:
            pass


async def _wait_done(q: asyncio.Queue[dict[str, Any]]) -> None:
    while True:
        item = await q.get()
        if item.get("type") in ("done", "died"):
            return


def _sandbox_env(home: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "MPLBACKEND": "Agg",
        "GIT_AUTHOR_NAME": "daytona",
        "GIT_AUTHOR_EMAIL": "daytona@localhost",
        "GIT_COMMITTER_NAME": "daytona",
        "GIT_COMMITTER_EMAIL": "daytona@localhost",
    }
    if os.environ.get("TMPDIR"):
        env["TMPDIR"] = os.environ["TMPDIR"]
    return env
