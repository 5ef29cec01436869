"""What only the NATS broker's history does: its JetStream streams, several
nodes on one server, restarts with and without the data, the outage buffer.

The contract every broker keeps is in tests/test_history_store.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import shutil
import time
import types
import typing as t
from pathlib import Path

import nats as nats_py
import pytest
from nats.js import api

from flask_realtime.brokers import BrokerUnavailable, _history
from flask_realtime.brokers._nats_history import (
    _PACK_BYTES,
    history_subject,
    stream_name,
)
from flask_realtime.brokers._nats_link import PACK, live_message, subject
from flask_realtime.brokers.interface import Retention
from flask_realtime.connection import Outbound
from flask_realtime.node import continuity
from tests import brokerservers
from tests.brokerclients import Inbox, broker_fixtures, in_threads, wait_until
from tests.brokerservers import BrokerServer

KEPT = Retention(size=100, ttl=60.0)

make, server = broker_fixtures("nats")


def keep(broker: t.Any, rule: Retention = KEPT) -> t.Any:
    broker.retention = lambda topic: rule if topic.startswith("c:kept") else None
    return broker


def event(n: int) -> bytes:
    return b"m\n" + json.dumps({"type": "event", "data": n}).encode()


def delivered(inbox: Inbox, topic: str) -> list[tuple[int, t.Any]]:
    """(offset, data) of what ``inbox`` received on ``topic``, in order."""
    found = []
    for payload in inbox.payloads(topic):
        envelope = _history.envelope(payload)
        found.append((_history.offset_of(envelope), json.loads(envelope)["data"]))
    return found


def once(found: list[t.Any]) -> list[t.Any]:
    """``found`` without repeats: a live message the server had not yet
    confirmed when the link dropped is sent again on the next (at least
    once; a node's follower drops the second by its offset)."""
    kept: list[t.Any] = []
    for each in found:
        if each not in kept:
            kept.append(each)
    return kept


def kept(broker: t.Any, topic: str, after: int | None = None) -> list[t.Any]:
    events = broker.history(topic, after=after)[1]
    assert events is not None
    return [json.loads(e)["data"] for e in events]


def jetstream(url: str, call: t.Callable[[t.Any], t.Awaitable[t.Any]]) -> t.Any:
    """``call(js)`` on a connection of its own: what the server holds."""

    async def run() -> t.Any:
        nc = await nats_py.connect(url)
        try:
            return await call(nc.jetstream())
        finally:
            await nc.close()

    # In a thread of its own: the browser tests' Playwright (sync API) leaves
    # an event loop running in the main thread, where asyncio.run refuses.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result(timeout=60)


@pytest.fixture
def own_server(tmp_path: Path) -> t.Iterator[t.Callable[[], BrokerServer]]:
    """``own_server()``: a nats-server for this test alone."""
    started: list[BrokerServer] = []

    def start() -> BrokerServer:
        brokerservers.require("nats")
        directory = tmp_path / f"nats-{len(started)}"
        started.append(BrokerServer("nats", directory))
        return started[-1].start()

    yield start
    for each in started:
        each.stop()


def test_a_rule_is_a_stream_with_per_subject_limits_delivered_once_stored(
    server: BrokerServer, make: t.Any
) -> None:
    rule = Retention(size=3, ttl=30.0)
    broker, inbox = make(REALTIME_BROKER_URL=server.url)
    keep(broker, rule)
    topic = f"c:kept.layout {time.monotonic_ns()}"  # a space: escaped
    broker.subscribe(topic)
    assert broker.history(topic)[0].offset == 0  # the epoch mark: not delivered
    for n in range(5):
        broker.publish(topic, event(n))
    inbox.wait_for(lambda: len(inbox.payloads(topic)) == 5)
    assert [o for o, _ in delivered(inbox, topic)] == [1, 2, 3, 4, 5]
    name, subject = stream_name(rule), history_subject(topic, rule)

    async def look(js: t.Any) -> t.Any:
        info = await js.stream_info(name, subjects_filter=subject)
        return info, await js.get_last_msg(name, subject)

    info, last = jetstream(server.url, look)
    assert info.config.max_msgs_per_subject == 3
    assert info.config.max_age == 30.0 + _history.POSITION_TTL
    assert info.state.subjects == {subject: 3}  # trimmed to size
    assert last.data == _history.stamp(event(4), 5)
    epoch = broker.history(topic)[0].epoch  # at the head of the message id
    assert last.headers["Nats-Msg-Id"].startswith(epoch + ".")
    # A plain topic is not stored, and reading its history neither.
    broker.publish("c:plain.layout", event(0))
    assert broker.history("c:plain.layout")[1] == []


def test_two_nodes_publishing_at_once_get_one_sequence_in_order(
    server: BrokerServer, make: t.Any
) -> None:
    nodes = [keep(make(REALTIME_BROKER_URL=server.url)[0]) for _ in range(2)]
    inboxes = [t.cast(Inbox, node._on_message) for node in nodes]
    topics = [f"c:kept.two-nodes.{n}.{time.monotonic_ns()}" for n in range(2)]
    for node in nodes:
        node.subscribe(*topics)
    # A link orders a topic's live messages from the first it received on
    # (whether one stored before that one is still on its way, it cannot
    # know: the node's follower reads such a hole from the history).
    for topic in topics:
        nodes[0].publish(topic, event(-1))
    for inbox in inboxes:
        for topic in topics:
            inbox.wait_for(lambda inbox=inbox, topic=topic: inbox.payloads(topic))
    per_thread, threads = 100, 8

    def publish(n: int) -> None:
        # Both nodes, both topics: batches conflict on one topic and break
        # each other's chains on the stream.
        for i in range(per_thread):
            nodes[n % 2].publish(topics[(n // 2) % 2], event(n * 1000 + i))

    in_threads(publish, threads)
    total = per_thread * threads // 2 + 1
    for inbox in inboxes:
        for topic in topics:
            inbox.wait_for(
                lambda inbox=inbox, topic=topic: len(inbox.payloads(topic)) == total
            )
    for topic in topics:
        seen = [delivered(inbox, topic) for inbox in inboxes]
        assert [offset for offset, _ in seen[0]] == list(range(1, total + 1))
        assert seen[0] == seen[1]  # the same numbering, the same order, on both
        for n in range(threads):  # each thread's events keep their order
            mine = [d for _, d in seen[0] if d // 1000 == n]
            assert mine == sorted(mine)
        assert nodes[0].history(topic) == nodes[1].history(topic)
        assert nodes[0].history(topic)[0].offset == total


def test_a_stream_an_earlier_release_made_republishing_is_left_alone(
    server: BrokerServer, make: t.Any
) -> None:
    """Live messages are the publisher's: a stream that republished them
    too would deliver every event twice, and nats-server lets no update take
    republishing away, so the streams have new names."""
    rule = Retention(size=4, ttl=41.0)  # a stream of its own
    earlier = api.StreamConfig(
        name="flask_realtime_h_4_41000",
        subjects=["flask_realtime.h.4_41000.*"],
        max_msgs_per_subject=4,
        republish=api.RePublish(
            src="flask_realtime.h.4_41000.*", dest="flask_realtime.t.{{wildcard(1)}}"
        ),
    )

    async def make_stream(js: t.Any) -> t.Any:
        return await js.add_stream(earlier)

    jetstream(server.url, make_stream)
    broker = keep(make(REALTIME_BROKER_URL=server.url)[0], rule)
    other, inbox = make(REALTIME_BROKER_URL=server.url)
    topic, after = (f"c:kept.republished.{n}.{time.monotonic_ns()}" for n in range(2))
    other.subscribe(topic, after)
    for n in range(3):
        broker.publish(topic, event(n))

    async def look(js: t.Any) -> t.Any:
        return [
            await js.stream_info(name)
            for name in (stream_name(rule), "flask_realtime_h_4_41000")
        ]

    ours, theirs = jetstream(server.url, look)
    assert ours.config.republish is None and ours.state.messages == 3
    assert theirs.state.messages == 0
    broker.publish(after, event(3))  # its live message comes after theirs
    inbox.wait_for(lambda: len(inbox.payloads(after)) == 1)
    assert delivered(inbox, topic) == [(1, 0), (2, 1), (3, 2)]


def test_a_lost_live_message_is_read_from_the_history_when_the_next_comes(
    server: BrokerServer, make: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored event whose live message never came (its publisher was
    killed between the two, say): the next one shows the node's follower
    the hole, which it reads from the history."""
    publisher = keep(make(REALTIME_BROKER_URL=server.url)[0])
    receiver, inbox = make(REALTIME_BROKER_URL=server.url)
    keep(receiver)
    name = f"kept.lost.{time.monotonic_ns()}"
    topic = "c:" + name  # the node's name for the channel's topic
    receiver.subscribe(topic)
    publisher.history(topic)  # connected, the epoch marked
    link = publisher._link
    send_live = link.deliver

    async def lose_once(messages: t.Any) -> None:
        link.deliver = send_live  # the next ones go

    link.deliver = lose_once
    publisher.publish(topic, event(1))
    publisher.publish(topic, event(2))
    inbox.wait_for(lambda: len(inbox.payloads(topic)) == 1)
    assert delivered(inbox, topic) == [(2, 2)]
    spawned: list[t.Any] = []
    monkeypatch.setattr(continuity, "spawn", lambda f, *a: spawned.append((f, a)))
    offsets: list[int | None] = []
    hub = types.SimpleNamespace(
        deliver_channel=lambda n, message, exclude=None: offsets.append(
            _history.offset_of(message.json)
        )
    )
    follower = continuity.Continuity(
        t.cast(t.Any, types.SimpleNamespace(broker=receiver, hub=hub))
    )
    follower.seed(name, receiver.history(topic, after=0)[0]._replace(offset=0))
    for payload in inbox.payloads(topic):
        follower.deliver(name, Outbound(_history.envelope(payload)), None)
    while spawned:  # the fill, here
        func, args = spawned.pop(0)
        func(*args)
    assert offsets == [1, 2]


def test_a_batchs_events_of_a_topic_are_stored_as_one_pack_and_read_one_by_one(
    server: BrokerServer, make: t.Any
) -> None:
    rule = Retention(size=3, ttl=30.0)
    broker = keep(make(REALTIME_BROKER_URL=server.url)[0], rule)
    other, inbox = make(REALTIME_BROKER_URL=server.url)
    keep(other, rule)
    topic, second = (f"c:kept.pack.{n}.{time.monotonic_ns()}" for n in range(2))
    other.subscribe(topic, second)
    broker.history(topic)  # the stream, and the topic's epoch mark
    plain = "c:plain.pack"
    batch = [(topic, 1), (second, 2), (topic, 3), (topic, 4), (plain, 5), (topic, 6)]
    assert broker._send_batch([(tp, event(n)) for tp, n in batch]) == [None] * 6
    inbox.wait_for(lambda: len(inbox.payloads()) == 5)
    assert delivered(inbox, topic) == [(1, 1), (2, 3), (3, 4), (4, 6)]
    assert delivered(inbox, second) == [(1, 2)]
    name, subject = stream_name(rule), history_subject(topic, rule)

    async def stored(js: t.Any) -> t.Any:
        return (await js.stream_info(name, subjects_filter=subject)).state.subjects

    assert jetstream(server.url, stored) == {subject: 2}  # the mark and one pack
    # Reads give the size newest events, whatever the packs hold.
    assert broker.history(topic)[0].offset == 4
    assert kept(broker, topic) == kept(other, topic) == [3, 4, 6]
    assert kept(other, topic, after=2) == [4, 6]
    assert broker.history(topic, after=0)[1] is None  # 4 missed: more than 3
    # A pack holds some KiB at most: more go in several, in order.
    pad = "x" * (_PACK_BYTES // 2 - 100)
    large = [b"m\n" + json.dumps({"data": n, "pad": pad}).encode() for n in (7, 8, 9)]
    assert broker._send_batch([(topic, data) for data in large]) == [None] * 3
    inbox.wait_for(lambda: len(inbox.payloads(topic)) == 7)
    assert [o for o, _ in delivered(inbox, topic)] == list(range(1, 8))

    async def last_two(js: t.Any) -> t.Any:
        last = await js.get_last_msg(name, subject)
        return await js.get_msg(name, last.seq - 1), last

    packed, alone = jetstream(server.url, last_two)
    assert packed.data == _history.stamp(large[0], 5) + _history.stamp(large[1], 6)
    assert alone.data == _history.stamp(large[2], 7) and PACK not in alone.headers
    assert kept(other, topic, after=4) == [7, 8, 9]
    last = _history.envelope(_history.stamp(large[2], 7))
    assert other.history(topic, limit=1) == (broker.history(topic)[0], [last])


def test_a_malformed_live_message_is_dropped_and_delivery_goes_on(
    server: BrokerServer, make: t.Any
) -> None:
    broker, inbox = make(REALTIME_BROKER_URL=server.url)
    topic, other = (f"c:kept.malformed.{n}.{time.monotonic_ns()}" for n in range(2))
    broker.subscribe(topic, other)

    async def send() -> None:
        nc = await nats_py.connect(server.url)
        try:
            await nc.publish(subject(topic), b"\x00junk")
            await nc.publish(subject(topic), live_message("E", 1, 0, "x", b"junk"))
            await nc.publish(subject(topic), live_message("E", 2, 1, "5", b"junk"))
            await nc.publish(subject(other), live_message("E", 3, 0, "2,3", b"after"))
        finally:
            await nc.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, send()).result(timeout=60)
    # Not held up behind the malformed one, which nobody receives.
    inbox.wait_for(lambda: len(inbox.payloads()) == 2)
    assert inbox.messages == [(other, b"af"), (other, b"ter")]
    # A plain payload that starts like a live message is not one.
    publisher = make(REALTIME_BROKER_URL=server.url)[0]
    for data in (b"\x00", b"\x00\x00", b"\x00E 1 0 1\nx"):
        publisher.publish(topic, data)
    inbox.wait_for(lambda: len(inbox.payloads()) == 5)
    assert inbox.payloads(topic) == [b"\x00", b"\x00\x00", b"\x00E 1 0 1\nx"]


def test_a_pack_of_unknown_fate_is_sent_again_as_it_was_and_stored_once(
    server: BrokerServer, make: t.Any
) -> None:
    rule = Retention(size=5, ttl=33.0)  # a stream of its own: no other writer
    broker = keep(make(REALTIME_BROKER_URL=server.url)[0], rule)
    other, inbox = make(REALTIME_BROKER_URL=server.url)
    keep(other, rule)
    first, second = (f"c:kept.fate.{n}.{time.monotonic_ns()}" for n in range(2))
    other.subscribe(first, second)
    broker.history(first)
    broker.history(second)
    # A stale sequence for the second topic: its pack, the round's last of
    # the stream (the only one acknowledged), is refused, which says
    # nothing of the first topic's pack before it: that one was stored,
    # and is sent again as it was; JetStream answers "duplicate".
    last = broker._history._last
    last[second] = last[second]._replace(seq=last[second].seq + 1000)
    batch = [(first, 1), (first, 2), (second, 3), (second, 4)]
    assert broker._send_batch([(tp, event(n)) for tp, n in batch]) == [None] * 4
    inbox.wait_for(lambda: len(inbox.payloads()) == 4)
    assert delivered(inbox, first) == [(1, 1), (2, 2)]
    assert delivered(inbox, second) == [(1, 3), (2, 4)]
    subjects = [history_subject(topic, rule) for topic in (first, second)]

    async def stored(js: t.Any) -> t.Any:
        info = await js.stream_info(stream_name(rule), subjects_filter=">")
        return [info.state.subjects[subject] for subject in subjects]

    assert jetstream(server.url, stored) == [2, 2]  # each: its mark, one pack
    assert kept(other, first) == [1, 2] and kept(other, second) == [3, 4]


def test_an_epoch_stored_in_a_header_by_an_earlier_release_is_kept(
    server: BrokerServer, make: t.Any
) -> None:
    topic = f"c:kept.earlier.{time.monotonic_ns()}"
    keep(make(REALTIME_BROKER_URL=server.url)[0]).history(topic)  # the stream
    headers = {"Flask-Realtime-Epoch": "earlier", "Nats-Msg-Id": "old-1"}

    async def store(js: t.Any) -> t.Any:
        subject = history_subject(topic, KEPT)
        return await js.publish(subject, _history.stamp(event(7), 7), headers=headers)

    jetstream(server.url, store)
    broker = keep(make(REALTIME_BROKER_URL=server.url)[0])
    assert broker.history(topic)[0] == (7, "earlier")
    broker.publish(topic, event(8))
    position, events = broker.history(topic, after=6)
    assert position == (8, "earlier")
    assert [json.loads(e)["data"] for e in events] == [7, 8]


def test_reads_at_one_position_share_a_fetch(server: BrokerServer, make: t.Any) -> None:
    broker = keep(make(REALTIME_BROKER_URL=server.url)[0])
    topic = f"c:kept.storm.{time.monotonic_ns()}"
    for n in range(10):
        broker.publish(topic, event(n))
    history = broker._history
    fetches: list[int] = []
    fetch = history._fetch

    async def counted(*args: t.Any) -> t.Any:
        fetches.append(args[-1])  # how many it asked for
        return await fetch(*args)

    history._fetch = counted
    answers: list[t.Any] = [None] * 20

    def recover(n: int) -> None:  # a recovery storm: all missed 5, or 3
        answers[n] = kept(broker, topic, after=5 if n % 2 else 7)

    in_threads(recover, 20)
    assert answers == [[5, 6, 7, 8, 9] if n % 2 else [7, 8, 9] for n in range(20)]
    assert len(fetches) <= 2 and 5 in fetches  # not one per read
    broker.publish(topic, event(10))  # a new position: a fetch of its own
    assert kept(broker, topic, after=9) == [9, 10]
    assert len(fetches) <= 3 and fetches[-1] == 2


def test_a_restart_that_kept_the_data_keeps_the_epoch_and_recovers(
    own_server: t.Any, make: t.Any
) -> None:
    nats = own_server()
    broker, inbox = make(REALTIME_BROKER_URL=nats.url)
    keep(broker)
    topic = "c:kept.persistent"
    broker.subscribe(topic)
    for n in range(1, 4):
        broker.publish(topic, event(n))
    inbox.wait_for(lambda: len(inbox.payloads(topic)) == 3)
    before = broker.history(topic)[0]
    nats.restart()  # SIGKILL: JetStream's files stay
    wait_until(lambda: broker.connected)
    assert broker.history(topic)[0] == before
    assert kept(broker, topic, after=1) == [2, 3]  # a client at 1 recovers
    broker.publish(topic, event(4))
    inbox.wait_for(lambda: len(once(inbox.payloads(topic))) == 4)
    assert once(delivered(inbox, topic)) == [(n, n) for n in range(1, 5)]
    assert broker.history(topic)[0] == (4, before.epoch)


def test_lost_data_gives_a_new_epoch_and_a_new_stream(
    own_server: t.Any, make: t.Any
) -> None:
    nats = own_server()
    broker, inbox = make(REALTIME_BROKER_URL=nats.url)
    keep(broker)
    topic = "c:kept.lost"
    broker.subscribe(topic)
    for n in range(1, 4):
        broker.publish(topic, event(n))
    inbox.wait_for(lambda: len(inbox.payloads(topic)) == 3)
    before = broker.history(topic)[0]
    nats.kill()
    shutil.rmtree(nats.directory / "jetstream")
    nats.start()
    wait_until(lambda: broker.connected)
    broker.publish(topic, event(4))  # the stream is made again
    inbox.wait_for(lambda: len(once(inbox.payloads(topic))) == 4)
    assert once(delivered(inbox, topic))[-1] == (1, 4)
    after = broker.history(topic)[0]
    assert after.offset == 1 and after.epoch != before.epoch
    assert broker.history(topic, after=3)[1] is None  # a client at 3: not recovered
    # A node that read before the loss and never published learns it too.
    other = keep(make(REALTIME_BROKER_URL=nats.url)[0])
    assert other.history(topic)[0] == after


def test_the_outage_buffer_takes_offsets_in_publish_order(
    own_server: t.Any, make: t.Any
) -> None:
    nats = own_server()
    broker, inbox = make(REALTIME_BROKER_URL=nats.url)
    keep(broker)
    topic = "c:kept.outage"
    broker.subscribe(topic, "c:plain.outage")
    broker.publish(topic, event(0))
    inbox.wait_for(lambda: len(inbox.payloads()) == 1)
    nats.kill()
    wait_until(lambda: not broker.connected)
    for n in range(1, 21):  # kept and plain, interleaved, all buffered
        assert broker.publish(topic if n % 3 else "c:plain.outage", event(n)) is None
    nats.start()
    wait_until(lambda: len(once(inbox.payloads())) == 21)
    published = [n for n in range(21) if n % 3 or n == 0]
    assert once(delivered(inbox, topic)) == list(enumerate(published, 1))
    plain = [json.loads(p[2:])["data"] for p in inbox.payloads("c:plain.outage")]
    assert plain == [3, 6, 9, 12, 15, 18]
    assert kept(broker, topic, after=0) == published


def test_reading_while_nats_is_down_raises_broker_unavailable(
    own_server: t.Any, make: t.Any
) -> None:
    nats = own_server()
    broker = keep(make(REALTIME_BROKER_URL=nats.url)[0])
    broker.history("c:kept.down")
    nats.kill()
    wait_until(lambda: not broker.connected)
    with pytest.raises(BrokerUnavailable):
        broker.history("c:kept.down")
    nats.start()
    wait_until(lambda: broker.connected)
    assert broker.history("c:kept.down")[0].offset == 0


def test_events_past_the_ttl_are_left_out_by_the_servers_clock(
    server: BrokerServer, make: t.Any
) -> None:
    broker = keep(make(REALTIME_BROKER_URL=server.url)[0], Retention(10, 1.0))
    topic = f"c:kept.age.{time.monotonic_ns()}"
    for n in range(3):
        broker.publish(topic, event(n))
    assert kept(broker, topic) == [0, 1, 2]
    wait_until(lambda: broker.history(topic)[1] == [], timeout=10.0)
    broker.publish(topic, event(3))
    assert broker.history(topic)[0].offset == 4
    assert kept(broker, topic) == [3]
    assert kept(broker, topic, after=3) == [3]
    assert kept(broker, topic, after=4) == []
    assert broker.history(topic, after=2)[1] is None  # offset 3 is too old
