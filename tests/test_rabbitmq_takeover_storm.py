"""Many kept channels becoming active at once on one RabbitMQ node.

A storm of first subscribes to new channels (the recovery storm with as
many channels as clients) makes one node the writer of hundreds of
channels at once: each take-over fences the stream and reads its tail
before the writer answers the read's question, and a read gives up after
5 s. One take-over after another on one connection (some 20 ms each)
failed 1,000 of them; take-overs of many channels at once share their
round trips (``StreamHistory.tails``).
"""

from __future__ import annotations

import threading
import time
import typing as t

from flask_realtime.brokers import _amqp_history, _history
from flask_realtime.brokers.interface import Retention
from tests.brokerclients import broker_fixtures, in_threads
from tests.brokerservers import BrokerServer

make, server = broker_fixtures("rabbitmq")

CHANNELS = 300
RULE = Retention(size=100, ttl=60.0)


def keep(broker: t.Any) -> t.Any:
    broker.retention = lambda topic: RULE if topic.startswith("c:kept") else None
    return broker


def event(n: int) -> bytes:
    return b"m\n" + f'{{"type":"event","data":{n}}}'.encode()


def test_first_reads_of_many_new_channels_at_once_all_succeed(
    server: BrokerServer, make: t.Any
) -> None:
    broker = keep(make(server.url)[0])
    stamp = time.monotonic_ns()
    topics = [f"c:kept.new.{stamp}.{n}" for n in range(CHANNELS)]
    positions: list[t.Any] = [None] * CHANNELS
    failures: list[BaseException] = []

    def first_read(n: int) -> None:
        try:
            positions[n] = broker.history(topics[n], limit=0)[0]
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    started = time.monotonic()
    in_threads(first_read, CHANNELS)
    took = time.monotonic() - started
    assert not failures, (len(failures), failures[0])
    assert {p.offset for p in positions} == {0}  # each marked, once
    assert len({p.epoch for p in positions}) == CHANNELS
    # 5.0 to 10.6 s before (one take-over after another), 2.7 to 4.6 after.
    assert took < 8.0, took
    # Numbering starts right after the marker on every one of them.
    for topic in topics[:3]:
        broker.publish(topic, event(1))
        position, kept = broker.history(topic)
        assert position.offset == 1
        assert [_history.offset_of(e) for e in t.cast(list, kept)] == [1]


def test_a_read_waits_past_its_timeout_for_a_writer_still_taking_over(
    server: BrokerServer, make: t.Any, monkeypatch: t.Any
) -> None:
    """A read's answer behind a slow take-over (RabbitMQ making hundreds of
    streams) comes late: the read waits on while this node's writer is
    taking channels over, instead of failing (a 503) after its timeout."""
    monkeypatch.setattr(_amqp_history, "_SYNC_WAIT", 0.3)
    broker = keep(make(server.url)[0])
    tails, slow = broker._writer._tails.tails, threading.Event()

    def slow_tails(wanted: t.Any) -> t.Any:
        slow.wait(1.0)  # a take-over three times as long as the read's wait
        return tails(wanted)

    broker._writer._tails.tails = slow_tails
    position, kept = broker.history(f"c:kept.slow.{time.monotonic_ns()}", limit=0)
    assert position.offset == 0 and kept == []
