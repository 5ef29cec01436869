"""Kept channels coming and going at once on RabbitMQ, and the consumer connection.

RabbitMQ 3.10 answers a stream's declare at once while another connection
is still making it; a consume of it then closes the channel
(PRECONDITION_FAILED, "does not have a replica on the local node") or, a
little earlier, the whole connection (INTERNAL_ERROR), and so does a
publish. A node's consumer connection follows its kept channels and appends
to their streams as their writer: either error took it down, and reads
meanwhile answered 503, in a storm of first subscribes to new channels. The
node now checks each new stream first on a connection of its own
(``brokers/_amqp_ready.py``). And a node that stops following a channel
while its events flow keeps its stream consumer (a cancel there cost the
connection too).
"""

from __future__ import annotations

import threading
import time
import typing as t

import pika

from flask_realtime.brokers import _amqp_follow, _history
from flask_realtime.brokers._amqp import Link
from flask_realtime.brokers._amqp_history import arguments
from flask_realtime.brokers.interface import Retention
from tests.brokerclients import broker_fixtures, in_threads, wait_until
from tests.brokerservers import BrokerServer

make, server = broker_fixtures("rabbitmq")

CHANNELS = 60  # half followed, half only read
RULE = Retention(size=100, ttl=60.0)


def keep(broker: t.Any) -> t.Any:
    broker.retention = lambda topic: RULE if topic.startswith("c:kept") else None
    return broker


def declare_at_once(url: str, names: list[str], sent: threading.Event) -> None:
    """Declare the streams ``names`` as other nodes would, all at once: one
    channel each, so RabbitMQ has them all in hand while its stream
    coordinator makes them one after another. ``sent`` once all are out."""
    link = Link(pika.URLParameters(url), "guest")
    asked: list[str] = []
    declared: list[str] = []

    def opened(channel: t.Any, name: str) -> None:
        channel.queue_declare(
            name,
            durable=True,
            arguments=arguments(RULE),
            callback=lambda _frame: link.wake(declared.append(name)),
        )
        asked.append(name)
        if len(asked) == len(names):
            sent.set()

    try:
        for name in names:
            link.connection.channel(
                on_open_callback=lambda channel, name=name: opened(channel, name)
            )
        link.wait(lambda: len(declared) == len(names), 30.0)
    finally:
        sent.set()
        link.close()


def test_streams_made_elsewhere_at_once_never_cost_the_consumer_connection(
    server: BrokerServer, make: t.Any
) -> None:
    broker, inbox = make(server.url)
    keep(broker).subscribe("c:plain")  # connected, its consumer connection up
    consumer = broker._consumer
    stamp = time.monotonic_ns()
    topics = [f"c:kept.made.{stamp}.{n}" for n in range(CHANNELS)]
    followed = topics[::2]  # the others are only read
    sent = threading.Event()
    names = [broker._history.name(topic) for topic in topics]
    racer = threading.Thread(target=declare_at_once, args=(server.url, names, sent))
    racer.start()
    sent.wait(10)
    positions: dict[str, t.Any] = {}

    def first(n: int) -> None:
        topic = topics[n]
        if topic in followed:
            broker.subscribe(topic)  # the follow: a consume of the stream
        else:  # the first read: this node becomes the writer (a fence)
            positions[topic] = broker.history(topic, limit=0)[0]

    try:
        in_threads(first, CHANNELS)
    finally:
        racer.join()
    assert broker._consumer is consumer  # never lost (nor reconnected)
    assert {p.offset for p in positions.values()} == {0}
    for topic in followed:
        assert broker.history(topic, limit=0)[0].offset == 0
    assert broker._checks.checks >= len(followed)
    for topic in followed:  # followed from the end: live events come
        broker.publish(topic, b"m\n" + b'{"type":"event","data":1}')
    inbox.wait_for(lambda: all(inbox.payloads(topic) for topic in followed))
    assert all(
        _history.offset_of(_history.envelope(inbox.payloads(topic)[0])) == 1
        for topic in followed
    )
    assert broker._consumer is consumer


def test_unfollowing_a_busy_stream_never_costs_the_consumer_connection(
    server: BrokerServer, make: t.Any, monkeypatch: t.Any
) -> None:
    """pika rejects what a consumer receives between its cancel and the
    answer, and a stream takes a reject for a connection error
    (NOT_IMPLEMENTED): a node that stopped following a channel while its
    events flowed lost its consumer connection. A stream consumer no longer
    followed is kept, parked, and followed again if the channel comes
    back; it is cancelled only once its stream has been quiet a while."""
    broker, inbox = make(server.url)
    publisher = keep(make(server.url)[0])
    topic = f"c:kept.busy.{time.monotonic_ns()}"
    keep(broker).subscribe(topic)
    consumer = broker._consumer
    flowing, stop = threading.Event(), threading.Event()

    def publish() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            publisher.publish(topic, b"m\n" + b'{"type":"event","data":%d}' % n)
            if n == 50:
                flowing.set()

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        flowing.wait(10)
        inbox.wait_for(lambda: len(inbox.payloads(topic)) >= 20)
        for _ in range(5):  # unfollowed and followed again, events flowing
            broker.unsubscribe(topic)
            seen = len(inbox.payloads(topic))
            broker.subscribe(topic)
            inbox.wait_for(lambda seen=seen: len(inbox.payloads(topic)) > seen + 20)
        broker.unsubscribe(topic)
    finally:
        stop.set()
        thread.join()
    broker.subscribe("c:plain")  # a round trip on the consumer connection
    assert broker._consumer is consumer
    assert broker._streams.parked  # still there: the stream was busy a moment ago
    monkeypatch.setattr(_amqp_follow, "_PARKED_QUIET", 0.2)
    wait_until(lambda: not broker._streams.parked)  # quiet now: cancelled
    broker.subscribe("c:plain.2")
    assert broker._consumer is consumer
