"""Every broker keeps history as ``brokers.interface.Broker`` promises.

One contract, run against each broker on its real server (the null broker in
the process): offsets contiguous from 1 across publishers, stamped delivery
in offset order, reading back by offset, trimming by size and age, epochs.
A broker joins by adding its kind to ``HISTORY_KINDS``.
"""

from __future__ import annotations

import json
import time
import typing as t

import pytest

from flask_realtime.brokers import _history
from flask_realtime.brokers.interface import Retention
from tests.brokerclients import Brokers, Inbox, in_threads, wait_until

HISTORY_KINDS = ["null", "redis", "nats", "rabbitmq"]

KEPT = Retention(size=5, ttl=60.0)


@pytest.fixture(params=HISTORY_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make(
    kind: str, broker_servers: t.Callable[[str], t.Any]
) -> t.Iterator[t.Callable[..., tuple[t.Any, Inbox]]]:
    """``make(rule=KEPT)``: a broker (on the session's server of ``kind``)
    that keeps topics starting ``c:kept`` by ``rule``, and its Inbox."""
    url = None if kind == "null" else broker_servers(kind).url
    brokers = Brokers(kind)
    made: list[t.Any] = []

    def make_one(rule: Retention = KEPT) -> tuple[t.Any, Inbox]:
        if kind == "null" and made:
            return made[0], made[1]  # one process, one broker
        broker, inbox = brokers.make(url)
        broker.retention = lambda topic: rule if topic.startswith("c:kept") else None
        made[:] = [broker, inbox]
        return broker, inbox

    yield make_one
    brokers.close()


def topic_for(request: pytest.FixtureRequest) -> str:
    """A kept topic of this test alone (the servers outlive tests)."""
    return f"c:kept.{request.node.name}.{time.monotonic_ns()}"


def event(n: int) -> bytes:
    return b"m\n" + json.dumps({"type": "event", "event": "e", "data": n}).encode()


def offsets(envelopes: list[bytes]) -> list[int]:
    return [t.cast(int, _history.offset_of(e)) for e in envelopes]


def test_stamp_puts_the_offset_first_and_keeps_the_header() -> None:
    stamped = _history.stamp(b'mconn.1\n{"type":"event"}', 42)
    assert stamped == b'mconn.1\n{"offset":42,"type":"event"}'
    assert _history.offset_of(_history.envelope(stamped)) == 42
    assert json.loads(_history.envelope(stamped)) == {"offset": 42, "type": "event"}
    assert _history.offset_of(b'{"type":"event"}') is None


def test_offsets_start_at_1_and_subscribers_get_stamped_events_in_order(
    make: t.Any, request: pytest.FixtureRequest
) -> None:
    broker, inbox = make()
    topic = topic_for(request)
    broker.subscribe(topic)
    assert broker.history(topic, limit=0)[0].offset == 0
    for n in range(10):
        broker.publish(topic, event(n))
    inbox.wait_for(lambda: len(inbox.payloads(topic)) == 10)
    delivered = inbox.payloads(topic)
    assert all(d.startswith(b"m\n") for d in delivered)
    envelopes = [_history.envelope(d) for d in delivered]
    assert offsets(envelopes) == list(range(1, 11))
    assert [json.loads(e)["data"] for e in envelopes] == list(range(10))


def test_a_topic_without_retention_is_delivered_as_published(
    make: t.Any, request: pytest.FixtureRequest
) -> None:
    broker, inbox = make()
    topic = f"c:plain.{time.monotonic_ns()}"
    broker.subscribe(topic)
    broker.publish(topic, event(1))
    inbox.wait_for(lambda: inbox.payloads(topic) == [event(1)])


def test_history_reads_back_by_offset_and_by_limit(
    make: t.Any, request: pytest.FixtureRequest
) -> None:
    broker, _ = make()
    topic = topic_for(request)
    for n in range(3):
        broker.publish(topic, event(n))
    position, kept = broker.history(topic)
    assert position.offset == 3 and position.epoch
    assert offsets(t.cast(list, kept)) == [1, 2, 3]
    assert offsets(t.cast(list, broker.history(topic, limit=2)[1])) == [2, 3]
    assert broker.history(topic, limit=0) == (position, [])
    assert offsets(t.cast(list, broker.history(topic, after=1)[1])) == [2, 3]
    assert broker.history(topic, after=3) == (position, [])
    assert broker.history(topic, after=4) == (position, None)  # beyond the stream


def test_size_trims_and_a_trimmed_offset_cannot_be_recovered(
    make: t.Any, request: pytest.FixtureRequest
) -> None:
    broker, _ = make()
    topic = topic_for(request)
    for n in range(8):  # KEPT.size is 5: offsets 4..8 stay
        broker.publish(topic, event(n))
    position, kept = broker.history(topic)
    assert position.offset == 8
    assert offsets(t.cast(list, kept)) == [4, 5, 6, 7, 8]
    assert offsets(t.cast(list, broker.history(topic, after=3)[1])) == [4, 5, 6, 7, 8]
    assert broker.history(topic, after=2)[1] is None


def test_events_older_than_the_ttl_are_not_kept_but_the_position_is(
    make: t.Any, request: pytest.FixtureRequest
) -> None:
    broker, _ = make(Retention(size=100, ttl=1.0))
    topic = topic_for(request)
    broker.publish(topic, event(1))
    broker.publish(topic, event(2))
    before = broker.history(topic)[0]
    wait_until(lambda: broker.history(topic)[1] == [], timeout=10.0)
    position, _ = broker.history(topic)
    assert position == before  # same offset, same epoch
    assert broker.history(topic, after=0)[1] is None  # 1 and 2 are gone
    assert broker.history(topic, after=2) == (position, [])  # nothing missed
    broker.publish(topic, event(3))
    assert offsets(t.cast(list, broker.history(topic, after=2)[1])) == [3]


def test_an_empty_stream_has_the_epoch_its_first_event_gets(
    make: t.Any, request: pytest.FixtureRequest
) -> None:
    broker, _ = make()
    topic = topic_for(request)
    empty = broker.history(topic, limit=0)[0]
    assert empty.offset == 0 and empty.epoch
    broker.publish(topic, event(1))
    assert broker.history(topic, after=0) == (
        (1, empty.epoch),
        [_history.envelope(_history.stamp(event(1), 1))],
    )


def test_concurrent_publishers_get_distinct_contiguous_offsets_in_order(
    make: t.Any, request: pytest.FixtureRequest
) -> None:
    subscriber, inbox = make()
    publishers = [make()[0] for _ in range(2)]
    topic = topic_for(request)
    subscriber.subscribe(topic)
    per_thread = 50

    def publish(n: int) -> None:
        publisher = publishers[n % 2]
        for i in range(per_thread):
            publisher.publish(topic, event(n * 1000 + i))

    in_threads(publish, 4)
    total = 4 * per_thread
    inbox.wait_for(lambda: len(inbox.payloads(topic)) == total)
    envelopes = [_history.envelope(d) for d in inbox.payloads(topic)]
    assert offsets(envelopes) == list(range(1, total + 1))
    data = [json.loads(e)["data"] for e in envelopes]
    assert sorted(data) == sorted(n * 1000 + i for n in range(4) for i in range(50))
    for n in range(4):  # each publisher's own events keep their order
        mine = [d for d in data if d // 1000 == n]
        assert mine == sorted(mine)
    position, kept = subscriber.history(topic)
    assert position.offset == total
    assert kept == envelopes[-KEPT.size :]
