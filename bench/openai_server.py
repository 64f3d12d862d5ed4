"""A small local OpenAI-compatible chat server with scripted replies, for the peers benchmark.

Every system under test (rlm-kernel, `rlms`, `dspy.RLM`) is pointed at the same server, which
answers `POST /v1/chat/completions` after the same fixed latency. The request's `model` names the
workload (`mapreduce`, `w1`, `w2`, `w3`; anything else is `mapreduce`); the server recognises
which system is asking, which agent (the root, or child `i` of a workload with children) and
which turn from the request's messages, and replies with code in that system's format:

- rlm-kernel: a ```python block; FINAL(...) ends an agent.
- rlms 0.1.3: a ```repl block; `answer["content"] = ...`, `answer["ready"] = True` ends it.
- dspy.RLM (ChatAdapter): `[[ ## reasoning ## ]]`, `[[ ## code ## ]]` fields, then
  `[[ ## completed ## ]]`; SUBMIT(...) ends it.

Workloads (the code is the same for the three systems; see `bench_peers.py`):

- mapreduce: turn 1 sends one sub-LLM prompt per chunk of `context` with `llm_query_batched`
  and one aggregate `llm_query` over the answers; turn 2 submits the aggregate.
- w1: turn 1 sends 100 sub-LLM prompts in one `llm_query_batched`; turn 2 submits their sum.
- w2: turn 1 starts 10 children with `rlm_query_batched`; each child takes 2 turns (computes,
  then submits); the root's turn 2 submits the children's answers.
- w3: 30 trivial turns (assign and print a number); turn 30 submits.

Sub-LLM prompts (a single user message starting with `CHUNK` or `AGGREGATE`) get short answers.
Every request's arrival time, system, role and turn is logged (`Server.log`), so a benchmark can
see where the time between two LLM calls of one agent went.

    python bench/openai_server.py --port 8765 --latency 1.0   # serve until interrupted
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STREAM_CHARS = 4  # characters per streamed delta (a token or so, as providers send them)
W1_CALLS = 100
W2_CHILDREN = 10
W3_TURNS = 30

MAPREDUCE_TURN1 = """chunks = list(context)
answers = llm_query_batched([f"CHUNK {i}: count the words.\\n{c}" for i, c in enumerate(chunks)])
total = llm_query("AGGREGATE: add up these counts.\\n" + "\\n".join(answers))
print(len(answers), "answers;", total)"""

W1_TURN1 = f"""answers = llm_query_batched(
    [f"CHUNK {{i}}: count the words.\\n" + " ".join(["w"] * (i % 7 + 1)) for i in range({W1_CALLS})]
)
print(len(answers), "answers")"""

W2_TASKS = f'[f"CHILD {{i}}: double {{i}}" for i in range({W2_CHILDREN})]'
# dspy's host tools take keyword arguments only (dspy.Tool.__call__(**kwargs)).
W2_TURN1 = f"results = rlm_query_batched({W2_TASKS})\nprint(results)"
W2_TURN1_DSPY = f"results = rlm_query_batched(tasks={W2_TASKS})\nprint(results)"

# What each workload's agents submit, as a Python expression, per (workload, role).
SUBMITS = {
    ("mapreduce", "root"): "total",
    ("w1", "root"): 'f"{len(answers)} answers, {sum(int(a) for a in answers)} words"',
    ("w2", "root"): '",".join(str(r).strip() for r in results)',
    ("w2", "child"): "str(x)",
    ("w3", "root"): "str(x)",
}


def expected(workload: str, n_chunks: int = 0) -> str:
    """The answer a correct run of `workload` gives."""
    if workload == "w1":
        words = sum(i % 7 + 1 for i in range(W1_CALLS))
        return f"{W1_CALLS} answers, {words} words"
    if workload == "w2":
        return ",".join(str(2 * i) for i in range(W2_CHILDREN))
    if workload == "w3":
        return str(W3_TURNS - 1)
    return f"{sum(20 + i % 13 for i in range(n_chunks))} words in {n_chunks} chunks"


def finish(system: str, expr: str) -> str:
    """The code that ends an agent with the value of `expr`, in `system`'s protocol."""
    if system == "rlms":
        return f'answer["content"] = {expr}\nanswer["ready"] = True'
    if system == "dspy":
        return f"SUBMIT(answer={expr})"
    return f"FINAL({expr})"


def script(workload: str, role: str, index: int, turn: int, system: str) -> str:
    """The code an agent runs at `turn` (0-based)."""
    if workload == "w3":
        if turn < W3_TURNS - 1:
            return f"x = {turn}\nprint(x)"
        return f"x = {turn}\n" + finish(system, SUBMITS[("w3", "root")])
    if workload == "w2" and role == "child":
        if turn > 0:
            return finish(system, SUBMITS[("w2", "child")])
        if index < 0:  # an rlms child: its task is its `context`, which the server cannot see
            return 'x = 2 * int(str(context).split()[1].rstrip(":"))\nprint(x)'
        return f"x = 2 * {index}\nprint(x)"
    if workload == "w2" and system == "dspy":
        return W2_TURN1_DSPY if turn == 0 else finish(system, SUBMITS[("w2", "root")])
    first = {"mapreduce": MAPREDUCE_TURN1, "w1": W1_TURN1, "w2": W2_TURN1}[workload]
    return first if turn == 0 else finish(system, SUBMITS[(workload, "root")])


_CHILD = re.compile(r"CHILD (\d+): double")


def classify(messages: list[dict[str, Any]]) -> tuple[str, str, int, int]:
    """(system, role, child index, turn) of a request; system is rlm-kernel, rlms, dspy or sub."""
    system_text = " ".join(_text(m) for m in messages if m.get("role") == "system")
    asked = " ".join(_text(m) for m in messages if m.get("role") != "assistant")
    found = _CHILD.search(asked)
    role, index = ("child", int(found.group(1))) if found else ("root", 0)
    if "[[ ## code ## ]]" in system_text:
        user = " ".join(_text(m) for m in messages if m.get("role") == "user")
        its = re.findall(r"\[\[ ## iteration ## \]\]\s*(\d+)", user)
        return "dspy", role, index, (int(its[-1]) - 1) if its else 0
    turn = sum(1 for m in messages if m.get("role") == "assistant")
    if "```repl" in system_text:
        # rlms shows a child only its context's size; its root gets the root prompt ("ROOT w2").
        user = " ".join(_text(m) for m in messages if m.get("role") == "user")
        if role == "root" and "ROOT " not in user and "context is a str" in user:
            role, index = "child", -1
        return "rlms", role, index, turn
    if system_text:
        return "rlm-kernel", role, index, turn
    return "sub", "sub", 0, 0


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def reply(messages: list[dict[str, Any]], workload: str = "mapreduce") -> tuple[str, str]:
    """(system, text) of the scripted reply."""
    system, role, index, turn = classify(messages)
    if system == "sub":
        prompt = _text(messages[-1]) if messages else ""
        if prompt.startswith("CHUNK"):
            return system, str(len(prompt.split("\n", 1)[-1].split()))
        if prompt.startswith("AGGREGATE"):
            counts = [int(x) for x in prompt.split("\n")[1:] if x.strip().isdigit()]
            return system, f"{sum(counts)} words in {len(counts)} chunks"
        return system, "ok"
    code = script(workload, role, index, turn, system)
    if system == "rlms":
        return system, f"```repl\n{code}\n```"
    if system == "dspy":
        return system, (
            "[[ ## reasoning ## ]]\nscripted\n\n"
            f"[[ ## code ## ]]\n```python\n{code}\n```\n\n[[ ## completed ## ]]"
        )
    return system, f"```python\n{code}\n```"


WORKLOADS = ("mapreduce", "w1", "w2", "w3")


class Server:
    """The server on 127.0.0.1 in a background thread; counts and logs requests per system."""

    def __init__(self, latency: float, port: int = 0, arrivals: bool = False) -> None:
        self.latency = latency
        self.arrivals = arrivals  # print "ARRIVAL <epoch>" per request (time-to-first-request)
        self.counts: dict[str, int] = {}
        # (arrival time.monotonic(), system, role, child index, turn) of every request
        self.log: list[tuple[float, str, str, int, int]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls between small writes

            def do_POST(self) -> None:
                t = time.monotonic()
                if outer.arrivals:
                    with outer._lock:  # one whole line per request, however many threads print
                        sys.stdout.write(f"ARRIVAL {time.time():.6f}\n")
                        sys.stdout.flush()
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                messages = body.get("messages") or []
                model = str(body.get("model", "")).rsplit("/", 1)[-1]
                workload = model if model in WORKLOADS else "mapreduce"
                system, text = reply(messages, workload)
                with outer._lock:
                    outer.counts[system] = outer.counts.get(system, 0) + 1
                    outer.log.append((t, *classify(messages)))
                if outer.latency > 0:
                    time.sleep(outer.latency)
                prompt_tokens = sum(len(_text(m)) for m in messages) // 4 + 1
                completion_tokens = len(text) // 4 + 1
                if body.get("stream"):
                    self._stream(body, text, prompt_tokens, completion_tokens)
                    return
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

            def _stream(self, body: dict[str, Any], text: str, prompt: int, done: int) -> None:
                """The reply as server-sent events (chunked, the connection kept): content
                deltas of `STREAM_CHARS` characters, then usage, then [DONE]."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk"}
                base.update(created=int(time.time()), model=body.get("model", "bench"))
                for i in range(0, max(1, len(text)), STREAM_CHARS):
                    delta = {"role": "assistant", "content": text[i : i + STREAM_CHARS]}
                    choice = {"index": 0, "delta": delta, "finish_reason": None}
                    self._event({**base, "choices": [choice]})
                last = {"index": 0, "delta": {}, "finish_reason": "stop"}
                self._event({**base, "choices": [last]})
                if (body.get("stream_options") or {}).get("include_usage"):
                    usage = {"prompt_tokens": prompt, "completion_tokens": done}
                    usage["total_tokens"] = prompt + done
                    self._event({**base, "choices": [], "usage": usage})
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")

            def _event(self, payload: dict[str, Any]) -> None:
                self._chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

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
    ap.add_argument("--arrivals", action="store_true", help='print "ARRIVAL <epoch>" per request')
    args = ap.parse_args()
    with Server(args.latency, args.port, args.arrivals) as srv:
        print(f"serving {srv.url} (latency {args.latency} s); Ctrl-C stops", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
