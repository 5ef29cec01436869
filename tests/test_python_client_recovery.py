"""The Python client recovers what it missed while cut off.

It reaches a real server (the null broker, with ``REALTIME_HISTORY``)
through ``tests.cutproxy.CutProxy``; the test cuts the connection with an
RST, publishes through the server's own port meanwhile, lets the client
back, and checks that every event arrived exactly once and in order with
``recovered`` true, or that a gap the history cannot fill (trimmed by
``size``, another epoch after a restart) says ``recovered`` false. These
run on WebSocket; tests/test_python_client_transports.py recovers over SSE,
long-polling and across a fallback.
"""

from __future__ import annotations

import threading
import typing as t

import pytest

from flask_realtime.client import RealtimeClient
from flask_realtime.client.recovery import Recovery
from tests import servers
from tests.client_recorder import Recorder
from tests.conftest import LiveServerFactory, module_server
from tests.cutproxy import CutProxy
from tests.http_helpers import app_env, broadcast, unique
from tests.servers import Server

ENV = app_env(
    REALTIME_HEARTBEAT=2,
    REALTIME_HISTORY={
        "hist.*": {"size": 100, "ttl": 600},
        "small.*": {"size": 5, "ttl": 600},
    },
)
server = module_server(("geventwebsocket",), env=ENV)


class Room(Recorder):
    """A client subscribed to one channel through a proxy, recording every
    ``m`` event (offset, data) and every ``subscribed`` payload."""

    def __init__(self, proxy: CutProxy, channel: str) -> None:
        self.client = RealtimeClient(
            proxy.url, reconnect_delay=0.05, max_reconnect_delay=0.2
        )
        self.lost = threading.Event()
        self.client.on("disconnected", lambda data: self.lost.set())
        self.client.connect(timeout=5)
        super().__init__(self.client, channel)

    def cut(self, proxy: CutProxy) -> None:
        self.lost.clear()
        proxy.cut()
        assert self.lost.wait(10), "the client did not notice the cut"


@pytest.fixture
def proxy(server: Server) -> t.Iterator[CutProxy]:
    with CutProxy(server.port) as opened:
        yield opened


def publish(server: Server, channel: str, numbers: t.Iterable[int]) -> None:
    for n in numbers:
        broadcast(server, channel, "m", n)


def test_every_missed_event_once_in_order(server: Server, proxy: CutProxy) -> None:
    channel = unique("hist")
    room = Room(proxy, channel)
    try:
        assert room.channel.recovered is False
        epoch = room.channel.position["epoch"]
        publish(server, channel, [1, 2])
        assert room.received(2) == [(1, 1), (2, 2)]
        room.cut(proxy)
        publish(server, channel, range(3, 9))
        proxy.restore()
        room.wait(lambda: len(room.replies) == 2)
        assert room.replies[1]["recovered"] is True
        assert room.channel.recovered is True
        publish(server, channel, [9])
        assert room.received(9) == [(n, n) for n in range(1, 10)]
        assert room.channel.position == {"offset": 9, "epoch": epoch}
    finally:
        room.client.disconnect()


def test_a_gap_past_the_history_is_not_recovered(
    server: Server, proxy: CutProxy
) -> None:
    channel = unique("small")  # keeps 5 events
    room = Room(proxy, channel)
    try:
        publish(server, channel, [1])
        room.received(1)
        room.cut(proxy)
        publish(server, channel, range(2, 12))
        proxy.restore()
        room.wait(lambda: len(room.replies) == 2)
        assert room.replies[1]["recovered"] is False
        assert room.replies[1]["position"]["offset"] == 11
        publish(server, channel, [12])
        assert room.received(2) == [(1, 1), (12, 12)]
    finally:
        room.client.disconnect()


def test_a_new_epoch_is_not_recovered(
    live_server: LiveServerFactory, tmp_path: t.Any
) -> None:
    first = live_server("geventwebsocket", env=ENV)
    channel = unique("hist")
    with CutProxy(first.port) as proxy:
        room = Room(proxy, channel)
        second = None
        try:
            publish(first, channel, [1, 2, 3])
            room.received(3)
            old = room.channel.position
            first.stop()
            second = servers.start(
                "geventwebsocket", tmp_path, env=ENV, name="second", port=first.port
            )
            room.wait(lambda: len(room.replies) == 2)
            assert room.replies[1]["recovered"] is False
            assert room.replies[1]["position"]["epoch"] != old["epoch"]
            publish(second, channel, [4])
            assert room.received(4)[3] == (1, 4)  # a new stream, not a duplicate
        finally:
            room.client.disconnect()
            if second is not None:
                second.discard()


def test_duplicates_are_dropped_by_offset() -> None:
    """The bookkeeping alone: a replay that overlaps what was delivered."""
    recovery = Recovery()
    assert recovery.since() is None
    recovery.on_reply({"position": {"offset": 3, "epoch": "e"}})
    delivered = [n for n in (4, 5, 5, 3) if recovery.accept({"offset": n})]
    assert delivered == [4, 5]
    assert recovery.since() == {"offset": 5, "epoch": "e"}
    assert recovery.on_reply(
        {"position": {"offset": 7, "epoch": "e"}, "recovered": True}
    )
    delivered = [n for n in (5, 6, 7, 7) if recovery.accept({"offset": n})]
    assert delivered == [6, 7]
    assert recovery.accept({"data": "no offset"})
