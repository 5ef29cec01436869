"""Fixtures for the browser tests: Chromium, pages, and servers on a chosen port.

Chromium is Debian's (``/usr/bin/chromium``, or ``$REALTIME_TEST_CHROMIUM``):
Playwright's own browser builds cannot be downloaded here.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest

from tests import servers
from tests.chromium import CHROMIUM_ARGS as CHROMIUM_ARGS
from tests.chromium import chromium_path as chromium_path
from tests.servers import Server

if t.TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

APP = "tests.apps.browser:app"
KIND = "geventwebsocket"
_MY_SERVERS = pytest.StashKey[list]()


class Pages:
    """Opens pages, each in its own browser context (own cookies), and closes
    them all at the end of the test."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []

    def open(self, url: str) -> Page:
        context = self.browser.new_context()
        self.contexts.append(context)
        page = context.new_page()
        page.goto(url)
        return page

    def close_all(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def pages(browser: Browser) -> t.Iterator[Pages]:
    opened = Pages(browser)
    yield opened
    opened.close_all()


def start_on_port(
    port: int,
    log_dir: Path,
    app: str = APP,
    env: t.Mapping[str, str | None] | None = None,
    name: str = "restarted",
) -> Server:
    """Like ``servers.start`` but on a given port, to restart a server where
    its clients will look for it."""
    return servers.start(KIND, log_dir, app=app, env=env, name=name, port=port)


class RestartFactory(t.Protocol):
    def __call__(
        self, server: Server, env: t.Mapping[str, str | None] | None = ...
    ) -> Server: ...


@pytest.fixture
def restart_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> t.Iterator[RestartFactory]:
    """``restart_server(server, env=None)``: SIGTERM ``server``, wait for it
    to exit, and start the same app on the same port (pass the first server's
    ``env`` again); the new server is stopped at the end of the test."""
    started: list[Server] = []
    request.node.stash[_MY_SERVERS] = started

    def restart(
        server: Server, env: t.Mapping[str, str | None] | None = None
    ) -> Server:
        server.stop()
        new = start_on_port(
            server.port,
            tmp_path,
            app=server.argv[-1],
            env=env,
            name=f"restarted-{len(started) + 1}",
        )
        started.append(new)
        return new

    yield restart
    for server in started:
        server.discard()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> t.Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for server in item.stash.get(_MY_SERVERS, []):
            report.sections.append(
                (f"server log: {server!r} ({server.log_path})", server.log_tail(200))
            )
    return report
