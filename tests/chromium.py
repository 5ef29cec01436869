"""Debian's Chromium for the browser tests (Playwright's own builds cannot be
downloaded here): ``/usr/bin/chromium``, or ``$REALTIME_TEST_CHROMIUM``.

One Chromium per test session: Playwright's sync API runs one event loop per
thread, so a second ``sync_playwright()`` while the first is open fails.
"""

from __future__ import annotations

import os
import shutil
import typing as t

import pytest

if t.TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def chromium_path() -> str | None:
    configured = os.environ.get("REALTIME_TEST_CHROMIUM")
    if configured:
        return configured
    for candidate in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser() -> t.Iterator[Browser]:
    from playwright import sync_api

    executable = chromium_path()
    if executable is None:
        # Never a skip: a missing browser must fail the run, in CI above all.
        pytest.fail("no Chromium: install Debian's chromium package")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()
