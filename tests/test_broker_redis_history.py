"""What only the Redis broker's history does: its keys, several nodes on one
Redis, restarts with and without the data, SCRIPT FLUSH, the outage buffer.

The contract every broker keeps is in tests/test_history_store.py.
"""

from __future__ import annotations

import json
import threading
import time
import typing as t
from pathlib import Path

import pytest
import redis as redis_py

from flask_realtime.brokers import BrokerUnavailable, _history
from flask_realtime.brokers._redis_history import Numbered
from flask_realtime.brokers.interface import Retention
from tests import brokerservers
from tests.brokerclients import (
    Inbox,
    broker_fixtures,
    in_threads,
    wait_until,
)
from tests.brokerscripts import run_script, script_head
from tests.brokerservers import BrokerServer

KEPT = Retention(size=100, ttl=60.0)

make, server = broker_fixtures("redis")


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


def kept(broker: t.Any, topic: str, after: int | None = None) -> list[t.Any]:
    events = broker.history(topic, after=after)[1]
    assert events is not None
    return [json.loads(e)["data"] for e in events]


def pair(
    make: t.Any, server: BrokerServer, name: str, kept_topics: int
) -> tuple[t.Any, Inbox, list[str]]:
    """A publishing node keeping ``c:kept.*``, the inbox of another node
    subscribed to ``kept_topics`` new kept topics and a plain one."""
    subscriber, inbox = make(REALTIME_BROKER_URL=server.url)
    publisher = keep(make(REALTIME_BROKER_URL=server.url)[0])
    stamp = time.monotonic_ns()
    topics = [f"c:kept.{name}.{stamp}.{n}" for n in range(kept_topics)]
    topics.append(f"c:plain.{name}.{stamp}")
    subscriber.subscribe(*topics)
    return publisher, inbox, topics


@pytest.fixture
def own_server(tmp_path: Path) -> t.Iterator[t.Callable[..., BrokerServer]]:
    """``own_server(persistent=False)``: a Redis for this test alone."""
    started: list[BrokerServer] = []

    def start(persistent: bool = False) -> BrokerServer:
        brokerservers.require("redis")
        directory = tmp_path / f"redis-{len(started)}"
        started.append(BrokerServer("redis", directory, persistent=persistent))
        return started[-1].start()

    yield start
    for each in started:
        each.stop()


def test_keys_share_the_topic_as_hash_tag_and_expire(
    server: BrokerServer, make: t.Any
) -> None:
    broker, _ = make(REALTIME_BROKER_URL=f"{server.url}/2")
    keep(broker, Retention(size=3, ttl=30.0))
    topic = f"c:kept.keys.{time.monotonic_ns()}"
    for n in range(5):
        broker.publish(topic, event(n))
    admin = redis_py.Redis(host="127.0.0.1", port=server.port, db=2)
    base = f"flask_realtime:2:{{{topic}}}:"
    assert admin.hgetall(base + "position")[b"offset"] == b"5"
    stored = admin.lrange(base + "events", 0, -1)
    assert [e[13:] for e in stored] == [  # trimmed to size
        _history.envelope(_history.stamp(event(n - 1), n)) for n in (3, 4, 5)
    ]
    assert all(abs(int(e[:13]) / 1000 - time.time()) < 10 for e in stored)
    # Both outlive the last event by the ttl, and by an eighth more at most.
    assert 25_000 < admin.pttl(base + "events") <= 30_000 * 9 // 8
    position_ttl = admin.pttl(base + "position") / 1000
    longest = 30 + _history.POSITION_TTL + 30 / 8
    assert 30 + _history.POSITION_TTL - 5 < position_ttl <= longest
    # Set again, with the slack, once the slack has passed (as if it had).
    admin.pexpire(base + "events", 1_000)
    admin.pexpire(base + "position", 1_000)
    broker.publish(topic, event(5))
    assert admin.pttl(base + "events") > 30_000
    assert admin.pttl(base + "position") / 1000 > 30 + _history.POSITION_TTL
    # A plain topic leaves nothing behind, and reading its history neither.
    broker.publish("c:plain.keys", event(0))
    assert broker.history("c:plain.keys")[1] == []
    assert admin.keys("*c:plain.keys*") == []


def test_a_size_of_zero_keeps_the_position_and_no_event(
    server: BrokerServer, make: t.Any
) -> None:
    broker = keep(make(REALTIME_BROKER_URL=server.url)[0], Retention(0, 30.0))
    topic = f"c:kept.zero.{time.monotonic_ns()}"
    for n in range(5):
        broker.publish(topic, event(n))
    admin = redis_py.Redis(host="127.0.0.1", port=server.port)
    # Trimmed past size + size/8 + 1: one event at most, never read.
    assert admin.llen(f"flask_realtime:0:{{{topic}}}:events") <= 1
    assert broker.history(topic)[1] == []
    assert broker.history(topic, after=4)[1] is None
    assert broker.history(topic, after=5)[1] == []


def test_two_nodes_publishing_at_once_get_one_sequence_in_order(
    server: BrokerServer, make: t.Any
) -> None:
    nodes = [keep(make(REALTIME_BROKER_URL=server.url)[0]) for _ in range(2)]
    inboxes = [t.cast(Inbox, node._on_message) for node in nodes]
    topic = f"c:kept.two-nodes.{time.monotonic_ns()}"
    for node in nodes:
        node.subscribe(topic)
    per_thread, threads = 100, 4

    def publish(n: int) -> None:
        for i in range(per_thread):
            nodes[n % 2].publish(topic, event(n * 1000 + i))

    in_threads(publish, threads)
    total = per_thread * threads
    for inbox in inboxes:
        inbox.wait_for(lambda inbox=inbox: len(inbox.payloads(topic)) == total)
    seen = [delivered(inbox, topic) for inbox in inboxes]
    assert [offset for offset, _ in seen[0]] == list(range(1, total + 1))
    assert seen[0] == seen[1]  # the same numbering, the same order, on both
    first, second = (node.history(topic) for node in nodes)
    assert first == second
    assert first[0].offset == total


def test_a_second_broker_sees_the_same_epoch_and_position(
    server: BrokerServer, make: t.Any
) -> None:
    one = keep(make(REALTIME_BROKER_URL=server.url)[0])
    topic = f"c:kept.second.{time.monotonic_ns()}"
    empty = one.history(topic, limit=0)[0]
    other = keep(make(REALTIME_BROKER_URL=server.url)[0])
    assert other.history(topic, limit=0)[0] == empty  # fixed by the first read
    other.publish(topic, event(1))
    assert one.history(topic) == other.history(topic)
    assert one.history(topic)[0] == (1, empty.epoch)


def test_a_restart_that_kept_the_data_keeps_the_epoch_and_recovers(
    own_server: t.Any, make: t.Any
) -> None:
    redis = own_server(persistent=True)
    broker, inbox = make(REALTIME_BROKER_URL=redis.url)
    keep(broker)
    topic = "c:kept.persistent"
    broker.subscribe(topic)
    for n in range(1, 4):
        broker.publish(topic, event(n))
    inbox.wait_for(lambda: len(inbox.payloads(topic)) == 3)  # none in flight
    before = broker.history(topic)[0]
    redis.restart()  # SIGKILL: only what the append-only file holds is kept
    wait_until(lambda: broker.connected)
    assert broker.history(topic)[0] == before
    assert kept(broker, topic, after=1) == [2, 3]  # a client at 1 recovers
    broker.publish(topic, event(4))
    inbox.wait_for(lambda: len(inbox.payloads(topic)) == 4)
    assert delivered(inbox, topic) == [(n, n) for n in range(1, 5)]
    assert broker.history(topic)[0] == (4, before.epoch)


@pytest.mark.parametrize("loss", ["restart", "flushall"])
def test_lost_data_gives_a_new_epoch_and_a_new_stream(
    own_server: t.Any, make: t.Any, loss: str
) -> None:
    redis = own_server(persistent=False)
    broker, inbox = make(REALTIME_BROKER_URL=redis.url)
    keep(broker)
    topic = "c:kept.lost"
    broker.subscribe(topic)
    for n in range(1, 4):
        broker.publish(topic, event(n))
    inbox.wait_for(lambda: len(inbox.payloads(topic)) == 3)  # none in flight
    before = broker.history(topic)[0]
    if loss == "restart":
        redis.restart()
        wait_until(lambda: broker.connected)
    else:
        redis_py.Redis(host="127.0.0.1", port=redis.port).flushall()
    after = broker.history(topic)[0]
    assert after.offset == 0 and after.epoch != before.epoch
    assert broker.history(topic, after=3)[1] is None  # a client at 3: not recovered
    broker.publish(topic, event(4))
    inbox.wait_for(lambda: len(inbox.payloads(topic)) == 4)
    assert delivered(inbox, topic)[-1] == (1, 4)
    assert broker.history(topic)[0] == (1, after.epoch)


def test_a_script_flush_loses_nothing_and_duplicates_nothing(
    own_server: t.Any, make: t.Any
) -> None:
    redis = own_server()
    admin = redis_py.Redis(host="127.0.0.1", port=redis.port)
    subscriber, inbox = make(REALTIME_BROKER_URL=redis.url)
    publisher = keep(make(REALTIME_BROKER_URL=redis.url)[0])
    subscriber.subscribe("c:kept.flush", "c:plain.flush")
    publisher.publish("c:kept.flush", event(0))
    publisher.history("c:kept.flush")
    admin.script_flush()
    mixed = ["c:plain.flush", "c:kept.flush"]
    # A batch that mixes kept and plain topics, after the scripts are gone.
    in_threads(lambda n: publisher.publish(mixed[n % 2], event(n)), 8)
    wait_until(lambda: len(inbox.payloads()) == 9)
    assert [o for o, _ in delivered(inbox, "c:kept.flush")] == [1, 2, 3, 4, 5]
    assert sorted(d for _, d in delivered(inbox, "c:kept.flush")) == [0, 1, 3, 5, 7]
    plain = [json.loads(p[2:])["data"] for p in inbox.payloads("c:plain.flush")]
    assert sorted(plain) == [0, 2, 4, 6]
    admin.script_flush()
    assert publisher.history("c:kept.flush")[0].offset == 5


def test_a_batch_sent_again_after_its_answer_was_lost_is_stored_once(
    server: BrokerServer, make: t.Any
) -> None:
    """A link that drops after Redis ran a batch, before its answer came,
    leaves the outbox to send the batch again, with newer messages behind
    it: what was stored is skipped (0 receivers), the rest stored, once."""
    publisher, inbox, (one, two, plain) = pair(make, server, "again", 2)
    sent = [Numbered(event(n)) for n in range(4)]
    batch = [(one, sent[0]), (two, sent[1]), (plain, event(9)), (one, sent[2])]
    assert publisher._send_batch(batch) == [1, 1, 1, 1]
    again = [(one, sent[0]), (two, sent[1]), (one, sent[2]), (two, sent[3])]
    assert publisher._send_batch(again) == [0, 0, 0, 1]
    inbox.wait_for(lambda: len(inbox.payloads()) == 5)
    assert delivered(inbox, one) == [(1, 0), (2, 2)]
    assert delivered(inbox, two) == [(1, 1), (2, 3)]
    assert kept(publisher, one) == [0, 2] and kept(publisher, two) == [1, 3]
    # Another process (a new serial count) is not taken for a resend.
    other = keep(make(REALTIME_BROKER_URL=server.url)[0])
    assert other._send_batch([(one, Numbered(event(4)))]) == [1]
    assert kept(publisher, one, after=2) == [4]


def test_a_batch_stores_each_topic_once_and_answers_in_its_own_order(
    own_server: t.Any, make: t.Any
) -> None:
    """A batch's kept messages to one topic are stored in one go where the
    topic first comes (one HINCRBY a topic, not one a message), each topic
    in its order; the answers come back in the batch's order."""
    redis = own_server()
    subscriber, inbox = make(REALTIME_BROKER_URL=redis.url)
    publisher = keep(make(REALTIME_BROKER_URL=redis.url)[0])
    a, b, plain = "c:kept.group.a", "c:kept.group.b", "c:plain.group"
    subscriber.subscribe(a, plain)  # b has no subscriber: 0 receivers
    admin = redis_py.Redis(host="127.0.0.1", port=redis.port)
    topics = [a, b, a, plain, b, a]
    batch = [(topic, Numbered(event(n))) for n, topic in enumerate(topics)]
    admin.config_resetstat()
    assert publisher._send_batch(batch) == [1, 0, 1, 1, 0, 1]
    assert admin.info("commandstats")["cmdstat_hincrby"]["calls"] == 2
    inbox.wait_for(lambda: len(inbox.payloads()) == 4)
    assert delivered(inbox, a) == [(1, 0), (2, 2), (3, 5)]
    assert kept(publisher, b) == [1, 4]
    assert inbox.payloads(plain) == [event(3)]


def test_a_topic_whose_keys_hold_another_type_fails_alone(
    server: BrokerServer, make: t.Any
) -> None:
    """Keys clobbered by someone else (another type under the name) fail
    that topic's messages, and nothing else of their batch; a list that is
    not one gives its offsets back, so the topic's offsets stay contiguous."""
    publisher, inbox, (good, bad, plain) = pair(make, server, "type", 2)
    admin = redis_py.Redis(host="127.0.0.1", port=server.port)
    position, events = (
        f"flask_realtime:0:{{{bad}}}:{key}" for key in ("position", "events")
    )

    def batch(first: int) -> list[t.Any]:
        topics = (good, bad, plain, good)
        return [(topic, Numbered(event(first + n))) for n, topic in enumerate(topics)]

    admin.set(position, "not a hash")
    counts = publisher._send_batch(batch(0))
    assert counts[0::2] == [1, 1] and counts[3] == 1
    assert isinstance(counts[1], redis_py.ResponseError)
    admin.delete(position)
    assert publisher._send_batch([(bad, Numbered(event(4)))]) == [1]
    admin.delete(events)
    admin.set(events, "not a list")
    counts = publisher._send_batch(batch(10))
    assert isinstance(counts[1], redis_py.ResponseError)
    assert counts[0] == counts[2] == counts[3] == 1
    assert int(admin.hget(position, "offset")) == 1  # given back
    admin.delete(events)
    assert publisher._send_batch([(bad, Numbered(event(20)))]) == [1]
    inbox.wait_for(lambda: len(inbox.payloads()) == 8)
    assert delivered(inbox, good) == [(1, 0), (2, 3), (3, 10), (4, 13)]
    assert delivered(inbox, bad) == [(1, 4), (2, 20)]
    assert len(inbox.payloads(plain)) == 2


def test_the_outage_buffer_takes_offsets_in_publish_order(
    own_server: t.Any, make: t.Any
) -> None:
    redis = own_server(persistent=True)
    broker, inbox = make(REALTIME_BROKER_URL=redis.url)
    keep(broker)
    topic = "c:kept.outage"
    broker.subscribe(topic, "c:plain.outage")
    broker.publish(topic, event(0))
    # A message in flight when Redis dies is lost to the subscriber (kept
    # in history, for the node to recover): this test is about the buffer.
    inbox.wait_for(lambda: len(inbox.payloads()) == 1)
    redis.kill()
    wait_until(lambda: not broker.connected)
    for n in range(1, 21):  # kept and plain, interleaved, all buffered
        assert broker.publish(topic if n % 3 else "c:plain.outage", event(n)) is None
    redis.start()
    wait_until(lambda: len(inbox.payloads()) == 21)
    published = [n for n in range(21) if n % 3 or n == 0]
    assert delivered(inbox, topic) == list(enumerate(published, 1))
    plain = [json.loads(p[2:])["data"] for p in inbox.payloads("c:plain.outage")]
    assert plain == [n for n in range(1, 21) if n % 3 == 0]
    assert kept(broker, topic, after=0) == published


def test_reading_while_redis_is_down_raises_broker_unavailable(
    own_server: t.Any, make: t.Any
) -> None:
    redis = own_server()
    broker = keep(make(REALTIME_BROKER_URL=redis.url)[0])
    broker.history("c:kept.down")
    redis.kill()
    wait_until(lambda: not broker.connected)
    with pytest.raises(BrokerUnavailable):
        broker.history("c:kept.down")
    redis.start()
    wait_until(lambda: broker.connected)
    assert broker.history("c:kept.down")[0].offset == 0


def test_a_killed_reading_connection_is_replaced_within_the_call(
    server: BrokerServer, make: t.Any
) -> None:
    broker = keep(make(REALTIME_BROKER_URL=server.url)[0])
    topic = f"c:kept.killed.{time.monotonic_ns()}"
    broker.publish(topic, event(1))
    assert kept(broker, topic) == [1]
    admin = redis_py.Redis(host="127.0.0.1", port=server.port)
    readers = [c for c in admin.client_list() if c["name"] == "flask_realtime-history"]
    assert readers
    for reader in readers:
        admin.client_kill_filter(_id=reader["id"])
    assert kept(broker, topic) == [1]


def test_reads_and_publishes_from_many_threads_at_once(
    server: BrokerServer, make: t.Any
) -> None:
    broker = keep(make(REALTIME_BROKER_URL=server.url)[0])
    topic = f"c:kept.threads.{time.monotonic_ns()}"
    errors: list[BaseException] = []
    stop = threading.Event()

    def read(n: int) -> None:
        try:
            while not stop.is_set():
                position, events = broker.history(topic, limit=10)
                assert events is not None
                first = position.offset - len(events) + 1
                offsets = [_history.offset_of(e) for e in events]
                assert offsets == list(range(first, position.offset + 1))
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=read, args=(n,)) for n in range(4)]
    for reader in readers:
        reader.start()
    try:
        in_threads(lambda n: [broker.publish(topic, event(i)) for i in range(100)], 4)
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert errors == []
    assert broker.history(topic)[0].offset == 400


BUSY_KEPT_SCRIPT = """
    import gevent
    from flask_realtime.brokers.interface import Retention
    from tests.brokerclients import count_batches

    got = []
    broker = create_broker(settings(), lambda topic, data: got.append(data))
    rule = Retention(100, 60.0)
    broker.retention = lambda topic: rule if topic.startswith("c:kept") else None
    topic = "c:kept.busy.%d" % time.monotonic_ns()
    broker.subscribe(topic, "c:plain.busy")
    broker.publish(topic, b'm\\n{"warm":1}')
    pipelines = count_batches(broker)

    def publisher(n):
        for i in range(300):
            name = topic if (n + i) % 4 else "c:plain.busy"
            broker.publish(name, b'm\\n{"n":%d}' % i)

    gevent.joinall([gevent.spawn(publisher, n) for n in range(50)], raise_error=True)
    wait_for(lambda: len(got) == 50 * 300 + 1)
    print(sum(pipelines), len(pipelines), broker.history(topic, limit=0)[0].offset)
"""


def test_under_gevent_kept_and_plain_broadcasts_share_pipelines(
    server: BrokerServer,
) -> None:
    code = script_head("redis").format(
        patch="from gevent import monkey; monkey.patch_all()"
    )
    out = run_script(code + BUSY_KEPT_SCRIPT, server.url, timeout=60)
    sent, pipelines, offset = map(int, out.split())
    assert sent == 50 * 300
    assert offset == 1 + sum(1 for n in range(50) for i in range(300) if (n + i) % 4)
    assert pipelines <= sent / 10, f"{sent} messages took {pipelines} round trips"
