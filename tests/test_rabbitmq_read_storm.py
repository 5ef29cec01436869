"""A recovery storm on one RabbitMQ node: many clients of one channel
resubscribe with ``since`` at once, while the channel is published to.

Their history reads share rounds (``brokers/_shared_reads.py``): one
question to the channel's writer and one stream scan serve every read that
began before the question. Each client must still get exactly the events
it missed, then the live ones, in order, without a gap or a duplicate at
the hand-over; and the node must scan the stream far fewer times than it
was asked to read it (each read scanning on its own: 200 scans).
"""

from __future__ import annotations

import threading
import time
import typing as t

from flask import Flask

from flask_realtime import Realtime
from tests.brokerservers import BrokerServer

CLIENTS = 200
MISSED = 40  # client n missed the last 1 + n % MISSED of these
LIVE = 60  # published by another node while the clients come back


def make_app(url: str, name: str) -> tuple[Flask, Realtime]:
    app = Flask(name)
    app.config.update(
        REALTIME_TRANSPORTS="memory",
        REALTIME_BROKER="rabbitmq",
        REALTIME_BROKER_URL=url,
        REALTIME_HISTORY={"storm.*": {"size": 100, "ttl": 600}},
    )
    return app, Realtime(app)


def wait_until(predicate: t.Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_storm_of_recoveries_on_one_node_shares_stream_scans_and_loses_nothing(
    broker_servers: t.Callable[[str], BrokerServer],
) -> None:
    url = broker_servers("rabbitmq").url
    (app, realtime), (other_app, other) = (
        make_app(url, "storm_node"),
        make_app(url, "storm_publisher"),
    )
    channel = f"storm.{time.monotonic_ns()}"
    try:
        with app.app_context():
            first = realtime.test_client()
            epoch = first.subscribe(channel)["data"]["position"]["epoch"]
            for n in range(1, MISSED + 1):
                realtime.broadcast(channel, "e", n)
            # The node follows the channel: it delivered all of them.
            wait_until(lambda: len(first.events(channel)) == MISSED)
            broker = realtime.node.broker
            scans_before = broker.history_scans
        clients: list[t.Any] = [None] * CLIENTS
        replies: list[t.Any] = [None] * CLIENTS
        start = threading.Barrier(CLIENTS + 1)

        def come_back(n: int) -> None:
            with app.app_context():
                clients[n] = realtime.test_client()
                since = {"offset": MISSED - 1 - n % MISSED, "epoch": epoch}
                start.wait()
                replies[n] = clients[n].subscribe(channel, since)

        def publish_live() -> None:
            start.wait()
            with other_app.app_context():
                for n in range(MISSED + 1, MISSED + LIVE + 1):
                    other.broadcast(channel, "e", n)

        threads = [
            threading.Thread(target=come_back, args=(n,)) for n in range(CLIENTS)
        ]
        threads.append(threading.Thread(target=publish_live))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        last = MISSED + LIVE
        for reply in replies:
            assert reply["type"] == "subscribed" and reply["data"]["recovered"], reply
        wait_until(
            lambda: all(
                len(c.events(channel)) >= 1 + n % MISSED + LIVE
                for n, c in enumerate(clients)
            )
        )
        for n, client in enumerate(clients):
            received = [
                (m["offset"], m["data"])
                for m in client.received
                if m.get("type") == "event" and m.get("channel") == channel
            ]
            first_missed = MISSED - n % MISSED
            expected = [(k, k) for k in range(first_missed, last + 1)]
            assert received == expected, (n, received[:5], len(received))
        scans = broker.history_scans - scans_before
        assert 0 < scans <= CLIENTS // 4, scans  # unshared: one or more each
    finally:
        for one_app, one in ((app, realtime), (other_app, other)):
            with one_app.app_context():
                one.node.broker.close()
