"""The Python client's HTTP transports through a balancer without sticky
sessions, on two nodes sharing a Redis broker.

``CutProxy(a, b)`` sends each new TCP connection to the other node in turn,
so the event stream (or the poll) is held by one node while the client's
``POST /send`` reaches the other, which must route it to the holder. A cut
sends the reconnection wherever the balancer says; the channel recovers what
was published meanwhile, on the other node, each event once and in order.
"""

from __future__ import annotations

import threading
import typing as t

import pytest

from flask_realtime.client import RealtimeClient
from tests.brokerservers import BrokerServer
from tests.client_recorder import Recorder
from tests.cutproxy import CutProxy
from tests.http_helpers import app_env, broadcast, unique

HISTORY = app_env(
    REALTIME_HEARTBEAT=2, REALTIME_HISTORY={"kept.*": {"size": 100, "ttl": 600}}
)


@pytest.mark.parametrize("transport", ["sse", "longpolling"])
def test_http_transports_need_no_sticky_sessions(
    transport: str,
    broker_servers: t.Callable[[str], BrokerServer],
    start_cluster: t.Callable[..., t.Any],
) -> None:
    cluster = start_cluster(broker_servers("redis"), workers=1, env=HISTORY)
    first, second = cluster.instances
    with CutProxy(first.port, second.port) as proxy:
        client = RealtimeClient(
            proxy.url,
            transports=[transport],
            reconnect_delay=0.05,
            max_reconnect_delay=0.2,
            connect_timeout=3,
            timeout=5,
        ).connect()
        try:
            room = Recorder(client, unique("kept"))
            # The subscribe went on a connection of its own, to the other node.
            assert set(proxy.routed) == {first.port, second.port}
            for n in (1, 2):
                broadcast(second, room.channel.name, "m", n)
            assert room.received(2) == [(1, 1), (2, 2)]
            assert client.ping() < 5

            lost = threading.Event()
            client.on("disconnected", lambda data: lost.set())
            proxy.cut()
            assert lost.wait(10), "the client did not notice the cut"
            for n in range(3, 9):
                broadcast(first, room.channel.name, "m", n)
            proxy.restore()
            room.wait(lambda: len(room.replies) == 2)
            assert room.replies[1]["recovered"] is True
            broadcast(second, room.channel.name, "m", 9)
            assert room.received(9) == [(n, n) for n in range(1, 10)]
        finally:
            client.disconnect()
