"""A node's live delivery of a kept channel has no hole when its broker
link drops: what was published meanwhile is read back from the history.

Redis pub/sub delivers nothing to a subscriber that is reconnecting; the
events are stored all the same. Node A has the subscriber, node B
publishes; the test kills every pub/sub connection on the Redis server
while B publishes, so A's link drops and comes back with a hole.
"""

from __future__ import annotations

import threading
import typing as t

import redis

from tests.brokerservers import BrokerServer
from tests.http_helpers import app_env, broadcast, unique
from tests.wsclient import connect as ws_connect

HISTORY = app_env(
    REALTIME_HEARTBEAT=2,
    REALTIME_HISTORY={"kept.*": {"size": 10_000, "ttl": 600}},
)


def _kill_pubsub(broker: BrokerServer) -> int:
    with redis.Redis.from_url(broker.url) as client:
        return t.cast(int, client.client_kill_filter(_type="pubsub"))


def _nodes(
    broker_servers: t.Callable[[str], BrokerServer], live_server: t.Any
) -> tuple[BrokerServer, t.Any, t.Any]:
    broker = broker_servers("redis")
    env = {**broker.app_env, **HISTORY}
    return (
        broker,
        live_server("geventwebsocket", env=env),
        live_server("geventwebsocket", env=env),
    )


def _subscribe(server: t.Any, channel: str) -> t.Any:
    client = ws_connect(server.ws_url)
    client.send_json({"type": "subscribe", "channel": channel, "id": 1})
    reply = client.wait_for(lambda m: m.get("id") == 1, 10)
    assert reply["type"] == "subscribed", reply
    return client


def _received(client: t.Any, channel: str, count: int) -> list[tuple[int, int]]:
    events = [
        client.wait_for(
            lambda m: m.get("type") == "event" and m.get("channel") == channel, 15
        )
        for _ in range(count)
    ]
    return [(e["offset"], e["data"]) for e in events]


def test_events_published_while_the_link_reconnects_reach_the_node(
    broker_servers: t.Callable[[str], BrokerServer], live_server: t.Any
) -> None:
    broker, a, b = _nodes(broker_servers, live_server)
    channel = unique("kept")
    client = _subscribe(a, channel)
    published = 0
    stop = threading.Event()

    def publish() -> None:
        nonlocal published
        while not stop.is_set():
            published += 1
            broadcast(b, channel, "n", published)

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        kills = 0
        # Three drops, each while events flow: each would leave a hole.
        for _ in range(3):
            start = published
            while published < start + 40:
                stop.wait(0.01)
            kills += _kill_pubsub(broker)
        assert kills >= 3
        while published < start + 80:
            stop.wait(0.01)
    finally:
        stop.set()
        publisher.join()
    received = _received(client, channel, published)
    assert received == [(n, n) for n in range(1, published + 1)]
    client.close()


def test_events_published_just_before_the_link_comes_back_reach_the_node(
    broker_servers: t.Callable[[str], BrokerServer], live_server: t.Any
) -> None:
    """No newer event reveals this hole: the node checks after the link
    came back."""
    broker, a, b = _nodes(broker_servers, live_server)
    channel = unique("kept")
    client = _subscribe(a, channel)
    broadcast(b, channel, "n", 1)
    assert _received(client, channel, 1) == [(1, 1)]
    _kill_pubsub(broker)
    for n in range(2, 12):  # some while A reconnects, none after
        broadcast(b, channel, "n", n)
    assert _received(client, channel, 10) == [(n, n) for n in range(2, 12)]
    client.close()
