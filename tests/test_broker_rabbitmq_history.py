"""What only the RabbitMQ broker's history does: stream queues shared by
several nodes, a deleted stream, the outage buffer, segments trimmed away
under the marker, a writer's hand-over, a batch's events packed in one inbox
message, a restart that keeps the data.

The contract every broker keeps is in tests/test_history_store.py.
"""

from __future__ import annotations

import json
import os
import signal
import time
import typing as t

import pika
import pytest

from flask_realtime.brokers import _history, _support, rabbitmq
from flask_realtime.brokers._amqp_history import inbox_name, stream_name
from flask_realtime.brokers.interface import Retention
from tests.brokerclients import Inbox, broker_fixtures, in_threads, wait_until
from tests.brokerservers import BrokerServer
from tests.test_broker_rabbitmq import erlang_vm

KEPT = Retention(size=100, ttl=60.0)

make, server = broker_fixtures("rabbitmq")


def keep(broker: t.Any, rule: Retention = KEPT) -> t.Any:
    broker.retention = lambda topic: rule if topic.startswith("c:kept") else None
    return broker


def event(n: int, pad: int = 0) -> bytes:
    return b"m\n" + json.dumps({"type": "event", "data": n, "pad": "x" * pad}).encode()


def delivered(inbox: Inbox, topic: str) -> list[tuple[int, t.Any]]:
    """(offset, data) of what ``inbox`` received on ``topic``, in order."""
    found = []
    for payload in inbox.payloads(topic):
        envelope = _history.envelope(payload)
        found.append((_history.offset_of(envelope), json.loads(envelope)["data"]))
    return found


def new_topic(name: str) -> str:
    return f"c:kept.{name}.{time.monotonic_ns()}"


def two_topics(
    make: t.Any, server: BrokerServer, name: str
) -> tuple[t.Any, Inbox, str, str]:
    """A node keeping ``c:kept.*``, and the inbox of another one subscribed
    to two new kept topics."""
    subscriber, inbox = make(server.url)
    publisher, _ = make(server.url)
    a, b = new_topic(f"{name}.a"), new_topic(f"{name}.b")
    keep(subscriber).subscribe(a, b)
    return keep(publisher), inbox, a, b


def test_two_nodes_publishing_at_once_get_contiguous_offsets_everywhere(
    server: BrokerServer, make: t.Any
) -> None:
    nodes = [make(server.url) for _ in range(2)]
    topic = new_topic("two")
    for broker, _ in nodes:
        keep(broker).subscribe(topic)
    per_node = 150

    def publish(n: int) -> None:
        for i in range(per_node):
            nodes[n][0].publish(topic, event(n * 1000 + i))

    in_threads(publish, 2)
    total = 2 * per_node
    for _, inbox in nodes:
        inbox.wait_for(lambda inbox=inbox: len(inbox.payloads(topic)) == total)
    first, second = (delivered(inbox, topic) for _, inbox in nodes)
    assert [offset for offset, _ in first] == list(range(1, total + 1))
    assert first == second  # one order, the same at every node
    for n in range(2):  # each node's own events keep their order
        mine = [data for _, data in first if data // 1000 == n]
        assert mine == [n * 1000 + i for i in range(per_node)]
    position, kept = nodes[1][0].history(topic)
    assert position.offset == total == len(t.cast(list, kept)) + 200


def test_a_deleted_stream_starts_again_with_a_new_epoch(
    server: BrokerServer, make: t.Any
) -> None:
    broker, inbox = make(server.url)
    keep(broker)
    topic = new_topic("deleted")
    for n in range(3):
        broker.publish(topic, event(n))
    before = broker.history(topic)[0]
    assert before.offset == 3
    connection = pika.BlockingConnection(pika.URLParameters(server.url))
    try:
        connection.channel().queue_delete(stream_name("realtime", "realtime", topic))
    finally:
        connection.close()
    broker.publish(topic, event(3))  # returned unroutable, then sent anew
    position, kept = broker.history(topic)
    assert position.offset == 1 and position.epoch != before.epoch
    assert [json.loads(e)["data"] for e in t.cast(list, kept)] == [3]
    assert broker.history(topic, after=3)[1] is None  # beyond the new stream


def test_the_outage_buffer_flushes_in_offset_order_after_what_was_stored(
    own_broker_server: t.Any, make: t.Any
) -> None:
    own = own_broker_server("rabbitmq")
    subscriber, inbox = make(own.url)
    publisher, _ = make(own.url)
    topic = new_topic("outage")
    keep(subscriber).subscribe(topic)
    keep(publisher)
    for n in range(5):
        publisher.publish(topic, event(n))
    inbox.wait_for(lambda: len(inbox.payloads(topic)) == 5)
    before = publisher.history(topic)[0]
    vm = erlang_vm(own)
    os.kill(vm, signal.SIGSTOP)  # unreachable: no confirm comes
    try:
        for n in range(5, 15):  # the first waits for its confirm, then buffers
            publisher.publish(topic, event(n))
    finally:
        os.kill(vm, signal.SIGCONT)
    inbox.wait_for(lambda: len(inbox.payloads(topic)) >= 15, timeout=30)
    # Flushed in order, after what was stored before; a message whose
    # confirm the outage took away may be stored twice (at least once), but
    # offsets stay distinct, contiguous and in publishing order.
    got = delivered(inbox, topic)
    assert [offset for offset, _ in got] == list(range(1, len(got) + 1))
    assert list(dict.fromkeys(data for _, data in got)) == list(range(15))
    position, _ = publisher.history(topic)
    assert position == (len(got), before.epoch)


def test_trimmed_segments_take_the_marker_but_not_the_epoch(
    server: BrokerServer, make: t.Any
) -> None:
    broker, inbox = make(server.url)
    rule = Retention(size=5, ttl=60.0)  # 1 MiB kept, in segments of 512 KiB
    keep(broker, rule)
    topic = new_topic("segments")
    epoch = broker.history(topic, limit=0)[0].epoch
    broker.subscribe(topic)

    def publish(n: int) -> None:
        for i in range(400):
            broker.publish(topic, event(n * 1000 + i, pad=1000))

    in_threads(publish, 8)  # 3.2 MB: several segments, the first ones trimmed
    inbox.wait_for(lambda: len(inbox.payloads(topic)) == 3200)
    offsets = [offset for offset, _ in delivered(inbox, topic)]
    # Contiguous across segments (the stream's own offsets skip one at each).
    assert offsets == list(range(1, 3201))
    last = offsets[-1]
    position, kept = broker.history(topic)
    assert position == (last, epoch)
    assert [_history.offset_of(e) for e in t.cast(list, kept)] == offsets[-5:]
    assert broker.history(topic, after=offsets[-6])[1] == kept
    assert broker.history(topic, after=offsets[0])[1] is None  # past size
    # The marker's segment is gone: the epoch comes from the events.
    connection = pika.BlockingConnection(pika.URLParameters(server.url))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1)
        name = stream_name("realtime", "realtime", topic)
        first: list[int] = []
        seen: list[int] = []

        def take(ch: t.Any, m: t.Any, p: t.Any, b: bytes) -> None:
            first.append(p.headers["x-stream-offset"])
            seen.append(int(p.headers.get("o", -1)))
            ch.basic_ack(m.delivery_tag)

        channel.basic_consume(name, take, arguments={"x-stream-offset": "first"})
        # Read to the last event: a delivery still on its way when the channel
        # closes is rejected by pika, and a stream answers a reject by closing
        # the connection (540, seen in CI).
        deadline = time.monotonic() + 30
        while last not in seen:
            assert time.monotonic() < deadline, seen[-5:]
            connection.process_data_events(0.1)
    finally:
        connection.close()
    assert first[0] > 0


def test_four_nodes_finding_a_stream_empty_at_once_agree_on_its_epoch(
    server: BrokerServer, make: t.Any
) -> None:
    nodes = [keep(make(server.url)[0]) for _ in range(4)]
    topic = new_topic("empty")
    positions: list[t.Any] = [None] * 4

    def look(n: int) -> None:
        positions[n] = nodes[n].history(topic, limit=0)[0]

    in_threads(look, 4)  # one writer marks it: one epoch
    assert {p.offset for p in positions} == {0}
    assert len({p.epoch for p in positions}) == 1
    in_threads(lambda n: nodes[n].publish(topic, event(n)), 4)
    after = [node.history(topic)[0] for node in nodes]
    assert after == [(4, positions[0].epoch)] * 4


def test_a_writer_lost_after_appending_hands_over_without_gap_or_duplicate(
    server: BrokerServer, make: t.Any
) -> None:
    """The active writer appends a batch and dies before acknowledging it:
    the next writer skips what was appended, numbers on from there."""
    writer, _ = make(server.url)
    watcher, inbox = make(server.url)
    publisher, _ = make(server.url)
    topic = new_topic("handover")
    keep(writer).subscribe(topic)  # first to consume the inbox: the writer
    keep(watcher).subscribe(topic)
    keep(publisher)
    append, crashed = writer._writer.append, []

    def append_then_crash(link: t.Any, received: t.Any) -> int:
        taken = append(link, received)
        if not crashed and len(received) > 1:
            crashed.append(len(received))
            raise _support.LinkLost("lost before the acks")
        return t.cast(int, taken)

    writer._writer.append = append_then_crash
    total = 300
    for n in range(total):
        publisher.publish(topic, event(n))
    inbox.wait_for(lambda: len(inbox.payloads(topic)) >= total)
    assert crashed  # the hand-over happened, with appended events unacked
    got = delivered(inbox, topic)
    assert got == [(n + 1, n) for n in range(total)]
    assert publisher.history(topic)[0].offset == total


def test_a_take_over_never_acks_another_topics_events_it_has_not_appended(
    server: BrokerServer, make: t.Any
) -> None:
    """While a writer takes over topic A, events of topic B (which it
    writes already) arrive behind A's: acking A's must not ack B's, or a
    writer lost before appending them loses them (the chaos test's 77
    events missing on one channel)."""
    writer, _ = make(server.url)
    watcher, inbox = make(server.url)
    publisher, _ = make(server.url)
    first, second = new_topic("takeover.a"), new_topic("takeover.b")
    keep(writer).subscribe(first, second)  # first to consume: the writer
    keep(watcher).subscribe(first, second)
    keep(publisher)
    publisher.publish(second, event(0))  # the writer takes B over now
    inbox.wait_for(lambda: len(inbox.payloads(second)) == 1)
    behind = 5
    tails, append, lost = writer._writer._tails.tails, writer._writer.append, []

    def tail_then_more(wanted: list[tuple[str, Retention, str]]) -> t.Any:
        found = tails(wanted)
        if first in found and not lost:
            for n in range(behind):  # B's, then one of A's after them
                publisher.publish(second, event(n + 1))
            publisher.publish(first, event(1))
            link = writer._consumer
            link.wait(lambda: len(link.deliveries) > behind, 5.0)
        return found

    def lose_before_appending(link: t.Any, received: t.Any) -> int:
        if not lost and any(topic == second for topic, _, _ in received):
            if writer._writer.written(first) is not None:
                lost.append(len(received))
                raise _support.LinkLost("lost before appending B's")
        return t.cast(int, append(link, received))

    writer._writer._tails.tails = tail_then_more
    writer._writer.append = lose_before_appending
    publisher.publish(first, event(0))
    inbox.wait_for(lambda: len(inbox.payloads(first)) == 2)
    inbox.wait_for(lambda: len(inbox.payloads(second)) == behind + 1)
    assert lost  # the writer was lost with B's events in hand
    assert delivered(inbox, second) == [(n + 1, n) for n in range(behind + 1)]


def test_a_batch_goes_to_the_inbox_packed_and_to_the_stream_one_by_one(
    server: BrokerServer, make: t.Any
) -> None:
    """The events of one topic in a batch make one inbox message, where the
    topic first comes; the writer appends each with its own offset and id,
    in order."""
    subscriber, inbox = make(server.url)
    publisher, _ = make(server.url)
    first, second = new_topic("pack.a"), new_topic("pack.b")
    plain = f"c:plain.{time.monotonic_ns()}"
    keep(subscriber).subscribe(first, second, plain)
    keep(publisher)
    sizes: list[int] = []
    outgoing = publisher._outgoing

    def counted(link: t.Any, messages: t.Any) -> t.Any:
        made = outgoing(link, messages)
        sizes.append(len(made[0]))
        return made

    publisher._outgoing = counted
    batch = [(first, event(n)) for n in range(3)] + [(plain, b"p0")]
    batch += [(first, event(3)), (second, event(0))]
    batch += [(first, event(n)) for n in range(4, 6)]
    counts = publisher._send_batch(batch)
    assert [count != 0 for count in counts] == [True] * 8  # all accepted
    assert sizes == [3]  # first's 0-5, the plain one, second's 0
    inbox.wait_for(lambda: len(inbox.payloads(first)) == 6)
    assert delivered(inbox, first) == [(n + 1, n) for n in range(6)]
    assert publisher.history(second)[0].offset == 1
    inbox.wait_for(lambda: inbox.payloads(plain) == [b"p0"])


def test_a_link_lost_between_two_topics_packs_sends_no_event_twice(
    server: BrokerServer, make: t.Any
) -> None:
    """[a0, b0, a1] goes out as a's pack (a0, a1), then b0. A connection
    lost once a's pack was confirmed and before b0 was: the outbox is told
    that a0 alone was accepted and sends b0 and a1 again; a1 does not go out
    twice, and each topic keeps its offsets and its order."""
    publisher, inbox, a, b = two_topics(make, server, "lost")
    publisher.publish(b, event(100))  # opens the publishing link
    inbox.wait_for(lambda: len(inbox.payloads(b)) == 1)
    link = publisher._publisher
    real = link.publish
    went: list[int] = []

    def cut_after_one(outgoing: list[t.Any]) -> t.Any:
        went.append(len(outgoing))
        real(outgoing[:1])
        raise _support.LinkLost("cut", 1)

    link.publish = cut_after_one
    batch = [(a, event(0)), (b, event(1)), (a, event(2))]
    batch = [(topic, rabbitmq._Kept(data)) for topic, data in batch]
    with pytest.raises(_support.LinkLost) as lost:
        publisher._send_batch(batch)
    assert went == [2] and lost.value.accepted == 1
    counts = publisher._send_batch(batch[1:])  # as the outbox sends them again
    assert counts == [None, None]
    publisher.publish(a, event(3))  # behind anything a1 sent twice would be
    inbox.wait_for(lambda: len(inbox.payloads(b)) == 2)
    inbox.wait_for(lambda: delivered(inbox, a)[-1:] == [(3, 3)])
    assert delivered(inbox, a) == [(1, 0), (2, 2), (3, 3)]
    assert delivered(inbox, b) == [(1, 100), (2, 1)]


def test_a_link_lost_sending_returned_events_again_counts_the_batch_right(
    server: BrokerServer, make: t.Any
) -> None:
    """Events RabbitMQ returned (their inbox deleted) go again once it is
    declared again. A connection lost then: the outbox is told the batch's
    messages before the first returned one were accepted (it was told the
    count within the returned ones, and sent confirmed events twice), and
    a confirmed event behind it is not sent again. (RabbitMQ's return is
    played by the test: the deleted inbox comes back too soon to return.)"""
    publisher, inbox, a, b = two_topics(make, server, "returned")
    publisher.publish(a, event(0))  # opens the publishing link
    inbox.wait_for(lambda: len(inbox.payloads(a)) == 1)
    link = publisher._publisher
    real, calls = link.publish, []
    returned = inbox_name(publisher._history.name(b))

    def return_b_then_cut(outgoing: list[t.Any]) -> t.Any:
        calls.append([key for _, key, _, _ in outgoing])
        if len(calls) > 1:
            raise _support.LinkLost("cut", 0)
        counts = real(outgoing)
        return [
            0 if key == returned else n for key, n in zip(calls[0], counts, strict=True)
        ]

    link.publish = return_b_then_cut
    batch = [(a, event(1)), (b, event(101)), (a, event(2))]
    batch = [(topic, rabbitmq._Kept(data)) for topic, data in batch]
    with pytest.raises(_support.LinkLost) as lost:
        publisher._send_batch(batch)
    assert calls[1] == [returned]
    assert lost.value.accepted == 1  # a1; b's was not accepted
    assert batch[2][1].confirmed  # a2 was, behind it
    assert publisher._send_batch(batch[1:]) == [None, None]  # as the outbox
    publisher.publish(a, event(3))
    inbox.wait_for(lambda: delivered(inbox, a)[-1:] == [(4, 3)])
    assert delivered(inbox, a) == [(1, 0), (2, 1), (3, 2), (4, 3)]


def test_a_restart_that_kept_the_data_keeps_the_epoch_and_recovers(
    server: BrokerServer, make: t.Any
) -> None:
    """RabbitMQ stopped and started again (an operator's restart: stopped
    cleanly) keeps its streams: a client that had offset 1 recovers 2 and 3,
    published before the restart, and 4, published after it, under the same
    epoch (what ``recovered: true`` needs). A crash (SIGKILL) within a
    second or so of the first stream ever declared on the server loses
    RabbitMQ 3.10's stream coordinator, and every stream with it
    (docs/architecture.md, "RabbitMQ"), so the restart is a clean one."""
    broker, inbox = make(server.url)
    keep(broker).subscribe(topic := new_topic("restart"))
    for n in range(1, 4):
        broker.publish(topic, event(n))
    inbox.wait_for(lambda: len(inbox.payloads(topic)) == 3)
    before = broker.history(topic)[0]
    server.restart(graceful=True)
    wait_until(lambda: broker.connected, timeout=30)
    broker.publish(topic, event(4))
    inbox.wait_for(lambda: len(inbox.payloads(topic)) == 4, timeout=30)
    position, missed = broker.history(topic, after=1)
    assert position == (4, before.epoch)
    assert missed is not None  # recovered: same epoch, nothing trimmed
    assert [json.loads(e)["data"] for e in missed] == [2, 3, 4]
    assert delivered(inbox, topic) == [(n, n) for n in range(1, 5)]
