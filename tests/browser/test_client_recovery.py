"""The JavaScript client recovers what it missed while cut off, in Chromium.

The page reaches the server through ``tests.cutproxy.CutProxy``; the test
cuts the connection (an RST, as a tunnel would), publishes through the
server's own port meanwhile, lets the client back, and checks that every
event arrived exactly once, in order, with ``recovered: true``; that a gap
the history cannot fill (trimmed by ``size``, another epoch after a restart)
says ``recovered: false``; and that it all holds across a fallback from
WebSocket to SSE to long-polling.
"""

from __future__ import annotations

import typing as t

import pytest

from tests.browser.conftest import APP, KIND, Pages, RestartFactory
from tests.browser.test_client_websocket import (
    TRANSPORTS,
    broadcast,
    new_client,
    seen,
    subscribe,
    wait_for,
    wait_seen,
)
from tests.conftest import module_server
from tests.cutproxy import CutProxy
from tests.http_helpers import app_env, unique
from tests.servers import Server

if t.TYPE_CHECKING:
    from playwright.sync_api import Page

    from tests.conftest import LiveServerFactory

pytestmark = pytest.mark.browser

ENV = app_env(
    REALTIME_HEARTBEAT=2,
    REALTIME_LONGPOLL_TIMEOUT=3,
    REALTIME_HISTORY={
        "hist.*": {"size": 100, "ttl": 600},
        "small.*": {"size": 5, "ttl": 600},
    },
)
# Quick reconnects: the test waits for them.
FAST = {"minDelay": 50, "maxDelay": 200}

server = module_server((KIND,), app=APP, env=ENV)


@pytest.fixture
def proxy(server: Server) -> t.Iterator[CutProxy]:
    with CutProxy(server.port) as opened:
        yield opened


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return t.cast(str, request.param)


def publish(server: Server, channel: str, numbers: t.Iterable[int]) -> None:
    for n in numbers:
        broadcast(server, channel, "m", n)


def received(page: Page, count: int) -> list[tuple[int, int]]:
    """(offset, data) of the page's ``m`` events, once ``count`` have come."""
    return [(m["offset"], data) for data, m in wait_seen(page, "room", "m", count)]


def open_room(pages: Pages, proxy: CutProxy, channel: str, **options: t.Any) -> Page:
    page = pages.open(proxy.url + "/page")
    new_client(page, **FAST, **options)
    subscribe(page, "room", channel, "m")
    wait_seen(page, "room", "subscribed")
    return page


def cut_and_wait(page: Page, proxy: CutProxy, times: int = 1) -> None:
    """Cut the page's connection; return once the client has noticed."""
    proxy.cut()
    wait_seen(page, "c", "disconnected", times)


def test_every_missed_event_once_in_order(
    server: Server, proxy: CutProxy, pages: Pages, transport: str
) -> None:
    channel = unique("hist")
    page = open_room(pages, proxy, channel, transports=[transport])
    [[first]] = seen(page, "room", "subscribed")
    assert first["recovered"] is False and first["resubscribed"] is False
    epoch = first["position"]["epoch"]
    publish(server, channel, [1, 2])
    assert received(page, 2) == [(1, 1), (2, 2)]

    cut_and_wait(page, proxy)
    publish(server, channel, range(3, 9))  # missed while cut off
    proxy.restore()
    _, [again] = wait_seen(page, "room", "subscribed", 2)
    assert again["recovered"] is True and again["resubscribed"] is True
    publish(server, channel, [9])  # live, after the replay
    assert received(page, 9) == [(n, n) for n in range(1, 10)]
    assert page.evaluate("room.position") == {"offset": 9, "epoch": epoch}
    assert page.evaluate("c.transport") == transport


def test_a_gap_past_the_history_is_not_recovered(
    server: Server, proxy: CutProxy, pages: Pages, transport: str
) -> None:
    channel = unique("small")  # keeps 5 events
    page = open_room(pages, proxy, channel, transports=[transport])
    publish(server, channel, [1])
    assert received(page, 1) == [(1, 1)]

    cut_and_wait(page, proxy)
    publish(server, channel, range(2, 12))  # 10 missed: 2..6 are gone
    proxy.restore()
    _, [again] = wait_seen(page, "room", "subscribed", 2)
    assert again["recovered"] is False and again["resubscribed"] is True
    assert again["position"]["offset"] == 11
    publish(server, channel, [12])
    # Nothing replayed: the application reloads its state instead.
    assert received(page, 2) == [(1, 1), (12, 12)]


def test_a_new_epoch_is_not_recovered(
    live_server: LiveServerFactory, restart_server: RestartFactory, pages: Pages
) -> None:
    """The null broker keeps its history in the process: a restart loses it,
    and the client hears ``recovered: false`` from the new epoch, then gets
    the new stream's events, whose offsets start again from 1."""
    first = live_server(KIND, app=APP, env=ENV)
    channel = unique("hist")
    with CutProxy(first.port) as proxy:
        page = open_room(pages, proxy, channel)
        publish(first, channel, [1, 2, 3])
        assert received(page, 3) == [(1, 1), (2, 2), (3, 3)]
        old = page.evaluate("room.position")
        second = restart_server(first, env=ENV)
        _, [again] = wait_seen(page, "room", "subscribed", 2)
        assert again["recovered"] is False
        assert again["position"]["epoch"] != old["epoch"]
        publish(second, channel, [4])
        assert received(page, 4)[3] == (1, 4)  # not dropped as "seen already"
        assert page.evaluate("room.position")["offset"] == 1


def test_recovers_across_a_transport_fallback(
    server: Server, proxy: CutProxy, pages: Pages
) -> None:
    channel = unique("hist")
    page = open_room(pages, proxy, channel)  # every transport, WebSocket first
    assert page.evaluate("c.transport") == "websocket"
    publish(server, channel, [1])
    received(page, 1)

    # WebSocket stops working while the client is cut off: it comes back on SSE.
    page.route_web_socket("**/realtime/ws*", lambda ws: ws.close())
    cut_and_wait(page, proxy)
    publish(server, channel, [2, 3])
    proxy.restore()
    wait_for(page, "() => c.transport === 'sse' && room.state === 'subscribed'")

    # And then SSE does too: it comes back on long-polling.
    page.route("**/realtime/sse*", lambda route: route.abort())
    cut_and_wait(page, proxy, 2)
    publish(server, channel, [4, 5])
    proxy.restore()
    wait_for(page, "() => c.transport === 'longpolling' && room.state === 'subscribed'")
    publish(server, channel, [6])

    assert received(page, 6) == [(n, n) for n in range(1, 7)]
    replies = [args[0] for args in seen(page, "room", "subscribed")]
    assert [r["recovered"] for r in replies] == [False, True, True]
