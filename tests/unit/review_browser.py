"""The review app in a real browser: served by uvicorn on loopback, driven by headless
Chromium through playwright (skipped when either is missing)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import free_port


@contextmanager
def serving(app) -> Iterator[str]:
    """`app` on uvicorn, on loopback and a free port; yields its base URL."""
    import uvicorn

    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


def chromium():
    """(playwright.sync_api, the chromium binary), or skip the test."""
    playwright = pytest.importorskip("playwright.sync_api")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("no chromium binary (apt-get install chromium; .ci/run installs it)")
    return playwright, binary
