"""Tests for rlm_kernel.llm.direct: calls to OpenAI-compatible providers go out as plain HTTP
requests (the first ones while litellm is still being imported); litellm's path takes over when
a direct request fails, makes the retries, and makes every call with `model.direct: false`."""

from __future__ import annotations

import http.client
import http.server
import textwrap
import threading
import urllib.parse
from pathlib import Path

import pytest

from rlm_kernel.llm.direct import direct_route

from .helpers import TESTS, run_python


def test_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "OPENROUTER_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(var, raising=False)
    assert direct_route("openai/gpt-4o-mini", None, None) is None  # no key: litellm says so
    monkeypatch.setenv("OPENAI_API_KEY", "sk-a")
    r = direct_route("openai/gpt-4o-mini", None, "sk-fallback")
    assert r is not None
    assert (r.url, r.key, r.model) == (
        "https://api.openai.com/v1/chat/completions",
        "sk-a",  # the provider's own variable wins over LLM_API_KEY
        "gpt-4o-mini",
    )
    r = direct_route("openai/local-model", "http://127.0.0.1:8000/v1/", None)
    assert r is not None and r.url == "http://127.0.0.1:8000/v1/chat/completions"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://proxy/v1")
    r = direct_route("openai/gpt-4o-mini", None, None)
    assert r is not None and r.url == "http://proxy/v1/chat/completions"
    r = direct_route("openrouter/google/gemini-3-flash-preview", None, "sk-llm")
    assert r is not None
    assert (r.url, r.key, r.model) == (
        "https://openrouter.ai/api/v1/chat/completions",
        "sk-llm",
        "google/gemini-3-flash-preview",
    )
    for model in ("anthropic/claude-sonnet-4-5", "scripted/x.py", "gpt-4o", "openai/"):
        assert direct_route(model, None, "sk") is None


_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
from faults.openai_server import FaultServer, error, malformed, reply
srv = FaultServer().start()
srv.script(*[eval(b) for b in {script!r}])
import rlm_kernel.llm as m
from rlm_kernel.llm import runtime
runtime.prewarm()  # the background import, as `rlm run` and the kernel start it
c = m.LLMClient(api_base=srv.api_base, {client})
c.retry.base_s = 0.01
seen = []
out = []
error = None
for i in range({calls}):
  try:
    r = c.complete([{{"role": "user", "content": "hi"}}], model="openai/fault-model",
                   on_text=lambda o, t: seen.append((o, t)))
    out.append([r.text, r.usage.prompt_tokens, r.usage.completion_tokens, r.attempts])
  except m.LLMError as exc:
    error = str(exc)
for r in c.complete_many([[{{"role": "user", "content": "hi"}}]] * {batch}, model="openai/fault-model"):
    out.append([r.text, r.usage.prompt_tokens, r.usage.completion_tokens, r.attempts])
agents = [q.headers.get("User-Agent", "") for q in srv.requests]
print(json.dumps({{"error": error, "out": out, "seen": seen, "kinds": srv.kinds(), "agents": agents,
                  "streams": [q.stream for q in srv.requests],
                  "peers": [q.peer for q in srv.requests]}}))
srv.stop()
"""


def _run(
    script: list[str], calls: int, *, batch: int = 0, client: str = "retries=1"
) -> dict[str, object]:
    code = textwrap.dedent(
        _SCRIPT.format(tests=str(TESTS), script=script, calls=calls, batch=batch, client=client)
    )
    return run_python(code)


def test_calls_go_out_directly_from_the_first_one_on_and_stream() -> None:
    reply = "word " * 40
    got = _run(
        [f"reply({reply!r}, chunk_s=0.01, chunk_chars=9)", "reply('second')", "reply('b')"] * 2,
        calls=2,
        batch=3,
    )
    assert got["kinds"] == ["reply"] * 5
    agents = got["agents"]
    assert all(a.startswith("rlm-kernel/") and "(direct)" in a for a in agents)  # type: ignore[attr-defined]
    assert got["streams"] == [True, True, False, False, False]  # llm_query batches never stream
    out = got["out"]
    assert out[0][0] == reply and out[0][1] > 0 and out[0][2] > 0  # type: ignore[index]
    assert out[1][0] == "second"  # type: ignore[index]
    # one connection for the calls one after another: a streamed reply's connection is kept
    assert len(set(got["peers"][:2])) == 1  # type: ignore[index]
    assert [o[3] for o in out] == [1] * 5  # type: ignore[attr-defined,index]
    text = ""
    for offset, piece in got["seen"]:  # type: ignore[attr-defined]
        text = text[:offset] + piece
    assert text.endswith("second") and len(got["seen"]) >= 2  # type: ignore[arg-type]


def test_a_streamed_event_longer_than_the_transports_buffer_comes_whole() -> None:
    # One server-sent event of 300 kB (a long tool call, a whole file in one delta): more than
    # aiohttp's line buffer, so the stream is split into lines by the client itself.
    long = "0123456789" * 30_000
    got = _run(["reply('0123456789' * 30_000, chunk_chars=400_000)", "reply('after')"], calls=2)
    assert got["kinds"] == ["reply", "reply"]
    assert all("(direct)" in a for a in got["agents"])  # type: ignore[attr-defined]
    assert got["streams"] == [True, True]
    assert [o[0] for o in got["out"]] == [long, "after"]  # type: ignore[attr-defined,index]
    assert [o[3] for o in got["out"]] == [1, 1]  # type: ignore[attr-defined,index]


def test_a_broken_direct_reply_is_made_again_on_litellms_path() -> None:
    got = _run(["malformed()", "reply('recovered')", "reply('next')"], calls=2)
    assert got["kinds"] == ["malformed", "reply", "reply"]
    agents = got["agents"]
    assert "(direct)" in agents[0] and "rlm-kernel" not in agents[1]  # type: ignore[index]
    assert "(direct)" in agents[2]  # type: ignore[index]  # the next call goes direct again
    assert [o[0] for o in got["out"]] == ["recovered", "next"]  # type: ignore[attr-defined,index]
    assert got["out"][0][3] == 1  # type: ignore[index]  # litellm made the attempt: one attempt


def test_an_http_error_is_litellms_error_retried_on_the_direct_path() -> None:
    got = _run(
        ["error(503, message='busy', retry_after=0.05)", "reply('second time')"],
        calls=1,
        client="retries=1",
    )
    assert got["kinds"] == ["error", "reply"]  # not sent again at once: retried after Retry-After
    assert all("(direct)" in a for a in got["agents"])  # type: ignore[attr-defined]
    assert got["out"][0][0] == "second time" and got["out"][0][3] == 2  # type: ignore[index]
    over = _run(["error(429, message='slow down')"] * 3, calls=1, client="retries=1")
    assert over["kinds"] == ["error", "error"]  # the retries are counted on the direct path too
    assert "RateLimitError" in str(over["error"]) and "retries" in str(over["error"])


def test_model_direct_false_leaves_every_call_to_litellm() -> None:
    got = _run(["reply('one')", "reply('two')"], calls=1, batch=1, client="direct=False")
    assert got["kinds"] == ["reply", "reply"]
    assert not any("rlm-kernel" in a for a in got["agents"])  # type: ignore[attr-defined]
    assert [o[0] for o in got["out"]] == ["one", "two"]  # type: ignore[attr-defined,index]


def test_the_providers_bill_is_the_price() -> None:
    from rlm_kernel.llm.direct import _completion

    billed = _completion("x", {"prompt_tokens": 3, "completion_tokens": 2, "cost": 0.25})
    assert (billed.usage.cost_usd, billed.usage.prompt_tokens) == (0.25, 3)
    assert _completion("x", {"prompt_tokens": 3, "cost": True}).usage.cost_usd == 0.0
    assert _completion("x", None).usage.llm_calls == 1


class _Proxy:
    """A forward HTTP proxy on 127.0.0.1 that relays each request to its absolute URL and
    records the URLs it saw."""

    def __init__(self) -> None:
        seen: list[str] = []
        self.seen = seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                seen.append(self.path)
                url = urllib.parse.urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
                keep = {k: v for k, v in self.headers.items() if k.lower() != "proxy-connection"}
                conn.request("POST", url.path, body, keep)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.getheader("Content-Type", "text/plain"))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("bypass", [False, True])
def test_the_environments_proxy_is_used_and_netrc_never_replaces_the_key(
    bypass: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Proxies come from the environment (HTTP_PROXY, NO_PROXY), looked up once per URL rather
    than on a worker thread per request; a ~/.netrc entry for the provider's host does not
    clash with the API key's Authorization header (the calls stay on the direct path)."""
    proxy = _Proxy()
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    if bypass:
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login someone password secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    try:
        got = _run(["reply('one')", "reply('two')", "reply('three')"], calls=2, batch=1)
    finally:
        proxy.close()
    assert got["error"] is None
    assert [o[0] for o in got["out"]] == ["one", "two", "three"]  # type: ignore[attr-defined,index]
    assert all("(direct)" in a for a in got["agents"])  # type: ignore[attr-defined]
    if bypass:
        assert proxy.seen == []
    else:
        assert len(proxy.seen) == 3 and all(u.startswith("http://127.0.0.1:") for u in proxy.seen)
