"""Debian's Chromium, headless, driven by Playwright: one launcher for the player tests.

The browser is the system's (``apt-get install -y chromium``), not one Playwright
downloads, so the tests play what this machine's users play. WebRTC tests start it
their own way (inside a network namespace, with a fake camera): test_browser_webrtc.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",  # nothing but what the page asks for
    "--disable-gpu",
    "--disable-component-update",
    "--no-first-run",
]


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (a Playwright ``Browser``), closed on exit; the test fails,
    saying what to install, without Playwright or Chromium."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Playwright for Python is missing: .venv/bin/pip install playwright"
            " (the pip package only; Chromium comes from Debian, not `playwright install`)"
        )
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"Chromium is missing at {CHROMIUM}: install Debian's with"
            " `apt-get install -y chromium` (the player tests drive a real browser)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
