"""History reads on RabbitMQ under a recovery storm, and the writer's copy
of the tail.

Reads of one channel at once share rounds (``brokers/_shared_reads.py``):
one question to the channel's writer serves every read that began before
it. Each client must still get exactly the events it missed, then the live
ones, in order, without a gap or a duplicate at the hand-over; and the node
must ask far fewer questions than it was asked to read (200 unshared). The
writer answers with the events a round wants when it holds them
(``HeldTails``); what it does not hold (a new writer after a take-over) is
read from the stream.
"""

from __future__ import annotations

import threading
import time
import typing as t

from flask import Flask

from flask_realtime import Realtime
from flask_realtime.brokers import _history
from flask_realtime.brokers.interface import Retention
from tests.brokerclients import broker_fixtures
from tests.brokerservers import BrokerServer

make, server = broker_fixtures("rabbitmq")

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


def test_a_storm_of_recoveries_on_one_node_shares_reads_and_loses_nothing(
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
            rounds_before = broker.history_rounds
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
        rounds = broker.history_rounds - rounds_before
        assert 0 < rounds <= CLIENTS // 4, rounds  # unshared: one each
    finally:
        for one_app, one in ((app, realtime), (other_app, other)):
            with one_app.app_context():
                one.node.broker.close()


def test_the_writer_answers_from_its_copy_and_a_new_writer_from_the_stream(
    server: BrokerServer, make: t.Any
) -> None:
    rule = Retention(size=100, ttl=60.0)
    topic = f"c:kept.held.{time.monotonic_ns()}"
    (writer, _), (reader, _) = make(server.url), make(server.url)
    for broker in (writer, reader):
        broker.retention = lambda topic: rule if topic.startswith("c:kept") else None
    writer.subscribe(topic)  # the first consumer of the inbox: the writer

    def publish(broker: t.Any, numbers: range) -> None:
        for n in numbers:
            broker.publish(topic, b"m\n" + f'{{"type":"event","data":{n}}}'.encode())

    def read(after: int) -> list[int]:
        position, events = reader.history(topic, after=after)
        found = [_history.offset_of(e) for e in t.cast(list, events)]
        data = [int(e.rsplit(b":", 1)[1][:-1]) for e in t.cast(list, events)]
        assert data == found and position.offset == found[-1], (data, found)
        return found

    publish(writer, range(1, 31))
    assert read(5) == list(range(6, 31))
    assert reader.history_scans == 0  # the writer's copy had them
    writer.close()  # the reader's node takes over, holding nothing yet
    assert read(5) == list(range(6, 31))
    scans = reader.history_scans
    assert scans > 0  # read from the stream
    publish(reader, range(31, 36))
    assert read(30) == list(range(31, 36))  # its own copy: no scan
    assert reader.history_scans == scans
    assert read(28) == list(range(29, 36))  # 29 and 30 only in the stream
    assert reader.history_scans > scans
