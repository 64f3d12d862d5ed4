"""The LLM call path: host CPU per call (one at a time, 100 in flight) and time to first request.

A local OpenAI-compatible server (bench/openai_server.py) runs in its own process, so the CPU
measured here is the host's alone: litellm, the openai SDK, httpx and our client.

- **Sequential**: `--calls` `llm_query`-style calls one after another (a single user message,
  a short reply), plain and streamed; host CPU per call = process CPU time / calls.
- **100 in flight**: `--rounds` batches of `--inflight` calls made at once (what
  `llm_query_batched` does), against a server that answers after 0.3 s, so all of a batch are
  in flight together.
- **Time to first request**: a fresh `rlm run` process (and a fresh kernel running a `%%rlm`
  cell at once) against the server; the time from starting the process to the server seeing
  the first request (the disk cache is warm: each is run once before timing).

    .venv/bin/python bench/bench_llm.py [--calls 200] [--inflight 100] [--rounds 5] [--reps 3]
    .venv/bin/python bench/bench_llm.py --smoke      # CI: a few calls, one start of each

To see where the host's time goes: `py-spy record -r 500 -o prof.svg -- .venv/bin/python
bench/bench_llm.py --only sequential`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, median, table

BENCH = Path(__file__).resolve().parent
KEY = "sk-bench-not-a-real-key"
PROMPT = "CHUNK 0: count the words.\nw w w"


class Server:
    """bench/openai_server.py in a subprocess; collects the arrival times it prints (with
    `arrivals`: reading them costs this process CPU, so the CPU rows go without)."""

    def __init__(self, latency: float, arrivals: bool = False) -> None:
        self.latency = latency
        self.want_arrivals = arrivals
        self.arrivals: list[float] = []
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> Server:
        cmd = [sys.executable, str(BENCH / "openai_server.py"), "--port", "0"]
        cmd += ["--latency", str(self.latency)] + (["--arrivals"] if self.want_arrivals else [])
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        first = self._proc.stdout.readline()
        if not first.startswith("serving "):
            raise RuntimeError(f"the bench server did not start: {first!r}")
        self.url = first.split()[1]
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith("ARRIVAL "):
                self.arrivals.append(float(line.split()[1]))

    def first_after(self, t0: float, timeout: float = 120) -> float | None:
        """The first arrival at or after `t0` (epoch), waiting up to `timeout`."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            later = [a for a in self.arrivals if a >= t0]
            if later:
                return min(later)
            time.sleep(0.01)
        return None

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)


def _client(url: str, direct: bool = True) -> Any:
    import inspect

    from rlm_kernel.llm import LLMClient

    kwargs: dict[str, Any] = {"api_base": url, "retries": 0, "timeout": 60}
    if "direct" in inspect.signature(LLMClient).parameters:  # `model.direct` (plain HTTP)
        kwargs["direct"] = direct
    return LLMClient(**kwargs)


def _messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPT}]


def _one(client: Any, stream: bool) -> str:
    kwargs: dict[str, Any] = {"model": "openai/bench-sub", "info": {"kind": "llm_query"}}
    if stream:
        kwargs["on_text"] = lambda _offset, _text: None
    return str(client.complete(_messages(), **kwargs).text)


def _many(client: Any, n: int) -> list[str]:
    """`n` calls at once: the client's batch call when it has one, else one thread per call."""
    batch = getattr(client, "complete_many", None)
    if batch is not None:
        outs = batch([_messages()] * n, model="openai/bench-sub", info={"kind": "llm_query"})
        return [o if isinstance(o, str) else o.text for o in outs]
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda _i: _one(client, False), range(n)))


def _cpu_per_call(work: Callable[[], int], reps: int) -> float:
    """Median over `reps` of process CPU ms per call of `work()` (which returns its call count)."""
    values = []
    for _ in range(reps):
        c0 = time.process_time()
        calls = work()
        values.append((time.process_time() - c0) * 1000 / calls)
    return median(values)


def cpu_rows(args: argparse.Namespace) -> list[list[Any]]:
    from rlm_kernel import llm

    # the one-time import is not per-call cost (`_litellm` before the LLM package split)
    (getattr(llm, "import_litellm", None) or llm._litellm)()
    rows: list[list[Any]] = []
    streams = [False, True] if _supports_stream() else [False]
    paths = {"both": [True, False], "direct": [True], "litellm": [False]}[args.path]
    with Server(0.0) as srv:
        clients = {d: _client(srv.url, d) for d in paths}
        for client in clients.values():
            for stream in streams:
                for _ in range(5):
                    _one(client, stream)  # warm: connections, pydantic models, cost lookups
        for stream in streams:
            for direct, client in clients.items():

                def seq(stream: bool = stream, client: Any = client) -> int:
                    for _ in range(args.calls):
                        _one(client, stream)
                    return args.calls

                label = ("sequential, streamed" if stream else "sequential") + _path(direct)
                rows.append([label, args.calls, f"{_cpu_per_call(seq, args.reps):.2f}"])
    with Server(0.3) as srv:
        for direct in paths:
            client = _client(srv.url, direct)
            _many(client, min(10, args.inflight))

            def batch(client: Any = client) -> int:
                for _ in range(args.rounds):
                    out = _many(client, args.inflight)
                    assert all(o == "3" for o in out), out[:3]
                return args.rounds * args.inflight

            rows.append(
                [
                    f"{args.inflight} in flight" + _path(direct),
                    args.rounds * args.inflight,
                    f"{_cpu_per_call(batch, 1):.2f}",
                ]
            )
    return rows


def _path(direct: bool) -> str:
    return " (plain HTTP, `model.direct`)" if direct else " (litellm)"


def _supports_stream() -> bool:
    import inspect

    from rlm_kernel.llm import LLMClient

    return "on_text" in inspect.signature(LLMClient.complete).parameters


@contextlib.contextmanager
def _workdir(url: str) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="rlm-bench-llm-"))
    try:
        (base / "config.yaml").write_text(
            f"model:\n  name: openai/bench\n  api_base: {url}\n  retries: 0\n"
            f"results_dir: {base / 'results'}\n",
            encoding="utf-8",
        )
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _env(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OPENAI_API_KEY=KEY, TMPDIR=str(base))
    env.pop("LLM_API_KEY", None)
    return env


def first_request_cli(srv: Server) -> float:
    """Seconds from starting `rlm run` to the server seeing its first request."""
    rlm = str(Path(sys.executable).with_name("rlm"))
    with _workdir(srv.url) as base:
        t0 = time.time()
        proc = subprocess.run(
            [rlm, "run", "-p", "bench", "--max-iterations", "1", "--quiet"],
            cwd=base,
            env=_env(base),
            capture_output=True,
            text=True,
            timeout=300,
        )
        first = srv.first_after(t0, timeout=5)
        if first is None:
            raise RuntimeError(f"rlm run made no request: {proc.stderr[-2000:]}")
        return first - t0


def first_request_kernel(srv: Server, jupyter: Path) -> float:
    """Seconds from launching an rlm kernel (and running a `%%rlm` cell at once) to the server
    seeing the first request."""
    from jupyter_client.manager import KernelManager

    with _workdir(srv.url) as base:
        env = _env(base)
        env.update(_jupyter_env(jupyter))
        # ipc socket paths are relative to the working directory: make them absolute
        km = KernelManager(kernel_name="rlm", transport="ipc", ip=str(base / "kernel-ipc"))
        t0 = time.time()
        km.start_kernel(cwd=str(base), env=env)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=120)
            kc.execute_interactive(
                "%%rlm --max-iterations 1\nbench", timeout=300, output_hook=lambda m: None
            )
            first = srv.first_after(t0, timeout=5)
            if first is None:
                raise RuntimeError("the %%rlm cell made no request")
            return first - t0
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=False)


def _jupyter_env(base: Path) -> dict[str, str]:
    return {
        "JUPYTER_PATH": str(base / "prefix" / "share" / "jupyter"),
        "JUPYTER_DATA_DIR": str(base / "data"),
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "IPYTHONDIR": str(base / "ipython"),
    }


def start_rows(args: argparse.Namespace) -> list[list[Any]]:
    from rlm_kernel.cli import main as rlm_main

    jupyter = Path(tempfile.mkdtemp(prefix="rlm-bench-jupyter-"))
    try:
        if rlm_main(["kernel", "install", "--prefix", str(jupyter / "prefix")]) != 0:
            raise SystemExit("rlm kernel install failed")
        os.environ.update(_jupyter_env(jupyter))
        with Server(0.0, arrivals=True) as srv:
            rows = []
            for label, fn in (
                ("`rlm run`", lambda: first_request_cli(srv)),
                ("kernel start + `%%rlm` cell", lambda: first_request_kernel(srv, jupyter)),
            ):
                fn()  # warm the disk cache
                times = [fn() for _ in range(args.reps)]
                rows.append([label, len(times), f"{median(times):.2f}", f"{max(times):.2f}"])
            return rows
    finally:
        shutil.rmtree(jupyter, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, default=200, help="sequential calls per repetition")
    ap.add_argument("--inflight", type=int, default=100, help="calls made at once")
    ap.add_argument("--rounds", type=int, default=5, help="batches of --inflight calls")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (medians are reported)")
    ap.add_argument("--only", choices=("cpu", "start"), help="one part only")
    ap.add_argument(
        "--path",
        choices=("both", "direct", "litellm"),
        default="both",
        help="the call path(s) measured: plain HTTP (`model.direct`, the default) or litellm",
    )
    ap.add_argument("--smoke", action="store_true", help="a few calls, one start of each (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.calls, args.inflight, args.rounds, args.reps = 10, 10, 1, 1
    os.environ.setdefault("OPENAI_API_KEY", KEY)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    print(f"machine: {machine()}")
    if args.only in (None, "cpu"):
        rows = cpu_rows(args)
        print(table(["host CPU per LLM call", "calls", "ms per call (median)"], rows))
    if args.only in (None, "start"):
        rows = start_rows(args)
        print()
        print(table(["time to first request", "starts", "median (s)", "max (s)"], rows))


if __name__ == "__main__":
    main()
