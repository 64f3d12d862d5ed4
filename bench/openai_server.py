"""A small local OpenAI-compatible chat server with scripted replies, for the peers benchmark.

Every system under test (rlm-kernel, `rlms`, `dspy.RLM`) is pointed at the same server, which
answers `POST /v1/chat/completions` after the same fixed latency. It recognises which system is
asking, and which turn, from the request's messages, and replies with code in that system's
format:

- rlm-kernel: a ```python block; FINAL(...) ends the run.
- rlms 0.1.3: a ```repl block; `answer["content"]`, `answer["ready"] = True` ends the run.
- dspy.RLM (ChatAdapter): `[[ ## reasoning ## ]]`, `[[ ## code ## ]]` fields, then
  `[[ ## completed ## ]]`; SUBMIT(...) ends the run.

The task is the same for all three (see `bench_peers.py`): turn 1 sends one sub-LLM prompt per
chunk with `llm_query_batched` and one aggregate `llm_query` over the answers; turn 2 submits.
Sub-LLM prompts (a single user message starting with `CHUNK` or `AGGREGATE`) get short answers.

    python bench/openai_server.py --port 8765 --latency 1.0   # serve until interrupted
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# The code each system runs, per turn. `context` is the list of chunks in every system.
TURN1 = """chunks = list(context)
answers = llm_query_batched([f"CHUNK {i}: count the words.\\n{c}" for i, c in enumerate(chunks)])
total = llm_query("AGGREGATE: add up these counts.\\n" + "\\n".join(answers))
print(len(answers), "answers;", total)"""

FINISH = {
    "rlm-kernel": "FINAL(total)",
    "rlms": 'answer["content"] = total\nanswer["ready"] = True',
    "dspy": "SUBMIT(answer=total)",
}


def classify(messages: list[dict[str, Any]]) -> tuple[str, int]:
    """(system, turn) of a request: system is rlm-kernel, rlms, dspy or sub; turn counts from 0."""
    system_text = " ".join(_text(m) for m in messages if m.get("role") == "system")
    if "[[ ## code ## ]]" in system_text:
        user = " ".join(_text(m) for m in messages if m.get("role") == "user")
        found = re.findall(r"\[\[ ## iteration ## \]\]\s*(\d+)", user)
        return "dspy", (int(found[-1]) - 1) if found else 0
    turn = sum(1 for m in messages if m.get("role") == "assistant")
    if "```repl" in system_text:
        return "rlms", turn
    if system_text:
        return "rlm-kernel", turn
    return "sub", 0


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def reply(messages: list[dict[str, Any]]) -> tuple[str, str]:
    """(system, text) of the scripted reply."""
    system, turn = classify(messages)
    if system == "sub":
        prompt = _text(messages[-1]) if messages else ""
        if prompt.startswith("CHUNK"):
            words = len(prompt.split("\n", 1)[-1].split())
            return system, str(words)
        if prompt.startswith("AGGREGATE"):
            counts = [int(x) for x in prompt.split("\n")[1:] if x.strip().isdigit()]
            return system, f"{sum(counts)} words in {len(counts)} chunks"
        return system, "ok"
    code = TURN1 if turn == 0 else FINISH[system]
    if system == "rlms":
        return system, f"```repl\n{code}\n```"
    if system == "dspy":
        return system, (
            "[[ ## reasoning ## ]]\nscripted\n\n"
            f"[[ ## code ## ]]\n```python\n{code}\n```\n\n[[ ## completed ## ]]"
        )
    return system, f"```python\n{code}\n```"


class Server:
    """The server on 127.0.0.1 in a background thread; counts requests per system."""

    def __init__(self, latency: float, port: int = 0) -> None:
        self.latency = latency
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                system, text = reply(body.get("messages") or [])
                with outer._lock:
                    outer.counts[system] = outer.counts.get(system, 0) + 1
                if outer.latency > 0:
                    time.sleep(outer.latency)
                prompt_tokens = sum(len(_text(m)) for m in body.get("messages") or []) // 4 + 1
                completion_tokens = len(text) // 4 + 1
                self._send(
                    200,
                    {
                        "id": "chatcmpl-bench",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "bench"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": completion_tokens,
                            "total_tokens": prompt_tokens + completion_tokens,
                        },
                    },
                )

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class _HTTPServer(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self.httpd = _HTTPServer(("127.0.0.1", port), Handler)
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--latency", type=float, default=1.0)
    args = ap.parse_args()
    with Server(args.latency, args.port) as srv:
        print(f"serving {srv.url} (latency {args.latency} s); Ctrl-C stops", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
