"""Real models' behaviour through litellm's real HTTP path (tests/faults/openai_server.py): streamed
replies, a cancel that closes the stream, prompt caching, and long runs that fit the window.

The server streams server-sent events as OpenAI does, counts prompt tokens (characters / 4),
reports the cached prefix of each prompt, and refuses prompts above `context_limit` with OpenAI's
context-length error.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rlm_kernel.config import RLMConfig
from rlm_kernel.console import ConsoleProgress
from rlm_kernel.events import Event, EventType, GateState, LLMText
from rlm_kernel.llm import import_litellm
from rlm_kernel.records import load_record
from rlm_kernel.runner import Run
from rlm_widget import AgentTree

from .openai_server import FaultServer, reply

Config = Callable[..., RLMConfig]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _wait(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached")


def _texts(events: list[Event], index: int) -> list[tuple[int, str]]:
    return [
        (e.data["offset"], e.data["text"])
        for e in events
        if e.type is EventType.LLM_TEXT and e.data["index"] == index
    ]


def test_a_streamed_reply_reaches_every_consumer_in_order_and_the_record_holds_it(
    llm_server: FaultServer, fault_config: Config
) -> None:
    thinking = "".join(f"Step {i}: looking at the data.\n" for i in range(30))
    text = thinking + "```python\nFINAL('streamed')\n```"
    llm_server.script(reply(text, chunk_s=0.01, chunk_chars=7))
    events: list[Event] = []
    tty = _Tty()
    console = ConsoleProgress(stream=tty, interval_s=0, width=100)
    tree = AgentTree(min_interval_s=0.05)
    sent: list[dict[str, Any]] = []
    tree._send = lambda msg, buffers=None: sent.append(msg)  # type: ignore[method-assign]
    run = Run("stream it", config=fault_config(), on_event=[events.append, console, tree.on_event])
    res = run.execute()
    assert (res.status, res.answer) == ("done", "streamed"), res.error
    (request,) = llm_server.requests
    assert request.stream and request.body["stream_options"] == {"include_usage": True}
    assert request.completed
    # the deltas, in order, add up to the reply
    pieces = _texts(events, 0)
    assert len(pieces) >= 3
    shown = ""
    for offset, piece in pieces:
        assert offset == len(shown)  # in order, nothing missed
        shown += piece
    assert shown == text
    # the console showed the reply's end on the agent's line while it was written
    assert "✎ " in tty.getvalue() and "looking at the data" in tty.getvalue()
    # the widget carried it too (throttled), and its final state is the record
    lives = [
        m["content"]["nodes"]["root"]["live"]["text"]
        for m in sent
        if m.get("method") == "custom"
        and m["content"].get("kind") == "delta"
        and (m["content"]["nodes"].get("root") or {}).get("live")
    ]
    assert lives and all(text.startswith(t) for t in lives)
    # the record keeps the whole reply, never the pieces
    record_text = Path(res.record_path or "").read_text()
    assert "llm_text" not in record_text
    assert load_record(res.record_path or "")["root"]["iterations"][0]["llm_response"] == text


def test_cancel_mid_stream_closes_the_http_stream(
    llm_server: FaultServer, fault_config: Config
) -> None:
    endless = "".join(f"thought {i}\n" for i in range(2000))
    llm_server.script(reply(endless, chunk_s=0.05, chunk_chars=10))
    first_text = threading.Event()
    run = Run(
        "think forever",
        config=fault_config(),
        on_event=lambda e: first_text.set() if e.type is EventType.LLM_TEXT else None,
    )
    run.start()
    assert first_text.wait(30), "no streamed text arrived"
    run.cancel()
    res = run.wait(60)  # a hang guard: the stream lasts 100 s
    assert res.status == "cancelled"
    (request,) = llm_server.requests
    # the provider saw the client go away and stopped generating: nothing left running, billed
    _wait(lambda: request.disconnected, 10, "the server to see the disconnect")
    assert not request.completed
    # the partial reply is not mistaken for an answer
    assert res.answer.startswith("[partial answer: cancelled")


def test_pause_mid_stream_holds_the_agent_once_its_reply_is_whole(
    llm_server: FaultServer, fault_config: Config
) -> None:
    text = "Let me write it.\n" * 20 + "```python\nx = 41\nprint(x + 1)\n```"
    llm_server.script(reply(text, chunk_s=0.02, chunk_chars=8))
    llm_server.default = reply("```python\nFINAL(str(x))\n```")
    streaming = threading.Event()
    gate = [GateState()]  # the step gate as the events tell it

    def on_event(e: Event) -> None:
        gate[0] = gate[0].after(e)
        if isinstance(e.payload, LLMText):
            streaming.set()

    run = Run("pause me", config=fault_config(), on_event=on_event)
    run.start()
    assert streaming.wait(30)
    run.pause()  # while the reply is still being written
    _wait(lambda: gate[0].waiting, 30, "the agent at the step gate")
    assert gate[0].waiting[0]["code"] == "x = 41\nprint(x + 1)\n"
    assert llm_server.requests[0].completed  # the stream was read to its end, not cut
    run.resume()
    res = run.wait(30)
    assert (res.status, res.answer) == ("done", "41"), res.error


def test_cached_tokens_appear_in_usage_and_cost_less(
    llm_server: FaultServer, fault_config: Config
) -> None:
    model = "openai/fault-cached-model"
    import_litellm().register_model(
        {
            model: {
                "input_cost_per_token": 1e-6,
                "output_cost_per_token": 2e-6,
                "cache_read_input_token_cost": 1e-7,
                "litellm_provider": "openai",
                "mode": "chat",
            }
        }
    )
    turns = [reply(f"```python\nx{i} = {i}\nprint('step {i} ' * 200)\n```") for i in range(3)]
    llm_server.script(*turns, reply("```python\nFINAL('cached')\n```"))
    res = Run("use the cache", config=fault_config(model__name=model)).execute()
    assert (res.status, res.answer) == ("done", "cached"), res.error
    reqs = llm_server.requests
    # each prompt begins with the previous prompt, byte for byte (nothing rewritten, no fold)
    for before, after in itertools.pairwise(reqs):
        assert after.messages[: len(before.messages)] == before.messages
    assert reqs[0].cached_tokens == 0 and all(r.cached_tokens > 0 for r in reqs[1:])
    cached = sum(r.cached_tokens for r in reqs)
    assert res.usage.cache_read_tokens == cached
    record = load_record(res.record_path or "")
    assert record["usage"]["cache_read_tokens"] == cached
    assert record["root"]["usage"]["cache_read_tokens"] == cached
    prompt = sum(r.prompt_tokens for r in reqs)
    completion = res.usage.completion_tokens
    full_price = prompt * 1e-6 + completion * 2e-6
    cached_price = (prompt - cached) * 1e-6 + cached * 1e-7 + completion * 2e-6
    assert res.usage.cost_usd == pytest.approx(cached_price, rel=1e-6)
    assert res.usage.cost_usd < full_price


@pytest.mark.slow
def test_a_long_run_with_big_outputs_fits_a_32k_window(
    llm_server: FaultServer, fault_config: Config
) -> None:
    """60 iterations, each printing 20 KB, against a provider with a 32k-token window: the run
    ends with its answer, every prompt the provider accepted is under the limit, and the agent
    still knows its variables (the REPL kept them)."""
    llm_server.context_limit = 32_768
    turns = 60
    count = [0]

    def respond(body: dict[str, Any]) -> Any:
        i = count[0]
        count[0] += 1
        if i < turns - 1:
            return reply(f"```python\nv{i} = {i}\nprint(str({i}) * 20000)\n```")
        return reply("```python\nFINAL(str(sum(globals()[f'v{j}'] for j in range(59))))\n```")

    llm_server.default = respond
    res = Run("print a lot", config=fault_config(rlm__max_iterations=turns)).execute()
    assert (res.status, res.answer) == ("done", str(sum(range(59)))), res.error
    accepted = [r for r in llm_server.requests if r.kind != "context_error"]
    assert len(accepted) == turns
    assert all(r.prompt_tokens <= 32_768 for r in accepted)
    # at most one refusal (the window was unknown until the provider named it), then folded
    assert len(llm_server.requests) - len(accepted) <= 1
    last = accepted[-1].messages
    assert last[0]["role"] == "system" and "You are the root agent" in last[0]["content"]
    assert last[1]["content"].startswith("Task:\nprint a lot")
    # the oldest outputs became notes (the code that made them is still there, whole)
    assert last[2]["content"] == "```python\nv0 = 0\nprint(str(0) * 20000)\n```"
    assert "output of turn 1 is elided to fit the context window" in last[3]["content"]
    assert "REPL still holds every variable" in last[3]["content"]
    assert str(58) * 100 in last[-1]["content"]  # the last turns stay whole
    # the record keeps every turn whole
    record = load_record(res.record_path or "")
    its = record["root"]["iterations"]
    assert len(its) == turns
    assert all(len(it["code_blocks"][0]["output"]) >= 20_000 for it in its[:-1])
    assert record["root"]["history_folds"]


def test_a_context_error_folds_and_retries_once_then_gives_a_clear_error(
    llm_server: FaultServer, fault_config: Config
) -> None:
    llm_server.context_limit = 100  # the task alone does not fit: folding cannot help
    res = Run("x" * 2000, config=fault_config()).execute()
    assert res.status == "error"
    msg = res.error or ""
    assert "too long for model 'openai/fault-model'" in msg
    assert "maximum context length is 100 tokens" in msg
    assert [r.kind for r in llm_server.requests] == ["context_error"]
    data = json.loads(Path(res.record_path or "").read_text())
    assert data["root"]["status"] == "error"


def test_rlm_status_shows_tokens_cached_tokens_and_cost(
    llm_server: FaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_magics import ipython

    sh = ipython()
    sh.run_line_magic("load_ext", "rlm_kernel")
    try:
        sh.run_line_magic(
            "rlm",
            f"config model.name=openai/fault-model model.api_base={llm_server.api_base} "
            f"results_dir={tmp_path} retries=0",
        )
        llm_server.script(
            reply("```python\nx = 1\nprint('step ' * 500)\n```"),
            reply("```python\nFINAL('cached')\n```"),
        )
        sh.run_cell_magic("rlm", "--quiet -o res", "use the cache")
        assert sh.user_ns["res"].answer == "cached"
        cached = sum(r.cached_tokens for r in llm_server.requests)
        assert cached > 0
        capsys.readouterr()
        sh.run_line_magic("rlm", "status")
        out = capsys.readouterr().out
        assert f"({cached:,} cached)" in out and "$0.0000" in out
    finally:
        sh.run_line_magic("unload_ext", "rlm_kernel")
        sh.user_ns.pop("res", None)
        sh.user_ns.pop("_rlm", None)


def test_a_context_error_folds_the_history_and_the_retry_goes_through(
    llm_server: FaultServer, fault_config: Config
) -> None:
    """The window is unknown (the default budget is far above it): the provider refuses the
    prompt once, naming its limit; the agent folds its history to fit and asks again."""
    llm_server.context_limit = 8_000
    turns = [reply(f"```python\nv{i} = {i}\nprint('{i}' * 6000)\n```") for i in range(8)]
    llm_server.script(*turns, reply("```python\nFINAL(str(v0 + v7))\n```"))
    events: list[Event] = []
    cfg = fault_config(rlm__max_iterations=10)
    res = Run("fold once", config=cfg, on_event=events.append).execute()
    assert (res.status, res.answer) == ("done", "7"), res.error
    kinds = [r.kind for r in llm_server.requests]
    assert kinds.count("context_error") == 1
    refused = kinds.index("context_error")
    assert llm_server.requests[refused + 1].kind != "context_error"  # the retry went through
    assert all(r.prompt_tokens <= 8_000 for r in llm_server.requests if r.kind != "context_error")
    folds = [e.data for e in events if e.type is EventType.HISTORY_FOLDED]
    assert folds and folds[0]["retry"] is True and folds[0]["budget"] <= 6_000
    record = load_record(res.record_path or "")
    assert len(record["root"]["iterations"]) == 9  # the record keeps every turn
