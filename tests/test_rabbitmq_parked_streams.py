"""Parked stream consumers on RabbitMQ stay bounded.

A node that stops following a kept channel keeps its stream consumer,
parked (a cancel of a busy stream's consumer would cost the consumer
connection: ``brokers/_amqp_follow.py``). Those of streams other nodes
write could never be cancelled safely, so a node whose clients visited
many kept channels held one per channel ever visited, and their
deliveries. A channel of stream consumers holding too many parked ones is
now retired: its followed topics consumed again elsewhere, then it is
closed.
"""

from __future__ import annotations

import threading
import time
import typing as t

from flask_realtime.brokers import _history, rabbitmq
from flask_realtime.brokers.interface import Retention
from tests.brokerclients import broker_fixtures, in_threads, wait_until
from tests.brokerservers import BrokerServer

make, server = broker_fixtures("rabbitmq")

RULE = Retention(size=100, ttl=60.0)
VISITED = 80  # kept channels visited one after another, another node writing
LIVE = 3  # followed throughout, published to throughout
PARKED_MAX = 4  # per channel of stream consumers (the default is larger)


def keep(broker: t.Any) -> t.Any:
    broker.retention = lambda topic: RULE if topic.startswith("c:kept") else None
    return broker


def event(n: int) -> bytes:
    return b'm\n{"type":"event","data":%d}' % n


def offsets(inbox: t.Any, topic: str) -> list[int | None]:
    return [
        _history.offset_of(_history.envelope(payload))
        for payload in inbox.payloads(topic)
    ]


def test_parked_consumers_of_other_nodes_streams_stay_bounded(
    server: BrokerServer, make: t.Any, monkeypatch: t.Any
) -> None:
    monkeypatch.setattr(rabbitmq, "_TICK", 0.05)  # sweeps often
    broker, inbox = make(server.url)
    writer = keep(make(server.url)[0])
    stamp = time.monotonic_ns()
    visited = [f"c:kept.visit.{stamp}.{n}" for n in range(VISITED)]
    live = [f"c:kept.live.{stamp}.{n}" for n in range(LIVE)]
    # The other node writes the visited channels' streams (it publishes first).
    in_threads(lambda n: writer.publish(visited[n], event(0)), VISITED)
    keep(broker).subscribe("c:plain")
    broker._streams.parked_max = PARKED_MAX
    consumer, links = broker._consumer, broker.links
    for topic in live:
        broker.subscribe(topic)
    sent = dict.fromkeys(live, 0)
    stop = threading.Event()

    def publish() -> None:  # live channels numbered; visited ones kept busy
        n = 0
        while not stop.is_set():
            n += 1
            for topic in live:
                sent[topic] += 1
                writer.publish(topic, event(sent[topic]))
            writer.publish(visited[n % VISITED], event(n))

    thread = threading.Thread(target=publish)
    thread.start()
    most = 0
    try:
        for topic in visited:  # a client comes and goes
            broker.subscribe(topic)
            broker.unsubscribe(topic)
            most = max(most, len(broker._streams.parked))
    finally:
        stop.set()
        thread.join()
    wait_until(lambda: all(len(inbox.payloads(t)) >= sent[t] for t in live))
    # Bounded: a sweep retires a channel once it holds PARKED_MAX of them.
    assert most < rabbitmq.FOLLOW_CHANNELS * PARKED_MAX + 16
    assert broker._streams.retired > 0
    assert broker._consumer is consumer and broker.links == links  # no 540
    for topic in live:  # every event once, in order
        assert offsets(inbox, topic) == list(range(1, sent[topic] + 1))
