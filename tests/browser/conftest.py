"""Browser tests: Debian's Chromium driven by Python playwright (no browser download here).

`scripts/install-system-deps` installs /usr/bin/chromium. Without it these tests are skipped on a
developer's machine and fail in CI (CI=true), so a missing install step cannot hide.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("RLM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STATIC = Path(__file__).parents[2] / "rlm_widget" / "static"
HERE = Path(__file__).parent


def _need_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    msg = f"{CHROMIUM} is missing: run scripts/install-system-deps"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """One headless Chromium for the browser tests (each test gets its own context and page).

    Package scope, not session: playwright's sync API keeps an event loop running on the main
    thread while it is open, which would break later in-process IPython tests.
    """
    _need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page; browser console errors fail the test."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.errors = errors
    try:
        yield pg
    finally:
        ctx.close()
    assert not errors, f"browser errors: {errors}"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Any]:
    """`serve(directory)` → base URL of a local HTTP server for that directory (127.0.0.1)."""
    servers: list[ThreadingHTTPServer] = []

    def start(directory: Path) -> str:
        handler = functools.partial(_Quiet, directory=str(directory))
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def harness_url(serve: Any, tmp_path: Path) -> str:
    """The ESM-alone harness page (tests/browser/harness.html next to the widget's ESM and CSS)."""
    site = tmp_path / "site"
    site.mkdir()
    for name in ("agent_tree.js", "agent_tree.css"):
        shutil.copy(STATIC / name, site / name)
    shutil.copy(HERE / "harness.html", site / "index.html")
    return str(serve(site)) + "index.html"


@pytest.fixture(autouse=True)
def plain_comms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Widgets here run without a kernel: use comm's own DummyComm even when an earlier test
    imported ipykernel (which swaps in kernel comms that drop state updates without a kernel)."""
    import comm

    monkeypatch.setattr(comm, "create_comm", lambda *a, **k: comm.DummyComm(*a, **k))
