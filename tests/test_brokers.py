"""Every broker keeps the promises of ``flask_realtime.brokers.base``.

Run against real servers (started by the suite on private ports), from plain
threads: the node calls brokers the same way without gevent.
"""

from __future__ import annotations

import logging
import time
import typing as t

import pytest

from flask_realtime.brokers import Broker, BrokerUnavailable
from tests.brokerclients import (
    TIMEOUT,
    Brokers,
    Inbox,
    count_batches,
    in_threads,
)
from tests.brokerscripts import (
    FORK_SCRIPT,
    run_script,
    script_head,
)
from tests.brokerservers import KINDS, BrokerServer
from tests.servers import free_port


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_broker() -> t.Iterator[t.Callable[..., tuple[Broker, Inbox]]]:
    """``make_broker(kind, url, **REALTIME_settings)``: a broker and its Inbox."""
    brokers = Brokers()
    yield lambda kind, url, **config: brokers.make(url, kind=kind, **config)
    brokers.close()


@pytest.fixture
def server(kind: str, broker_servers: t.Callable[[str], BrokerServer]) -> BrokerServer:
    return broker_servers(kind)


def test_publish_reaches_only_the_nodes_subscribed_to_the_topic(
    kind: str, server: BrokerServer, make_broker: t.Any
) -> None:
    a, a_inbox = make_broker(kind, server.url)
    b, b_inbox = make_broker(kind, server.url)
    publisher, _ = make_broker(kind, server.url)
    a.subscribe("c:news", "c:marker")
    b.subscribe("c:sport", "c:marker")
    publisher.publish("c:news", b"for a")
    publisher.publish("c:marker", b"end")
    a_inbox.wait_for(lambda: b"end" in a_inbox.payloads())
    b_inbox.wait_for(lambda: b"end" in b_inbox.payloads())
    assert a_inbox.payloads() == [b"for a", b"end"]
    # b has the marker published after c:news, and never c:news itself.
    assert b_inbox.payloads() == [b"end"]
    assert [m[0] for m in a_inbox.messages] == ["c:news", "c:marker"]


def test_publish_returns_the_receiver_count_when_the_backend_can_tell(
    kind: str, server: BrokerServer, make_broker: t.Any
) -> None:
    a, a_inbox = make_broker(kind, server.url)
    b, b_inbox = make_broker(kind, server.url)
    publisher, _ = make_broker(kind, server.url)
    a.subscribe("c:counted")
    b.subscribe("c:counted")
    assert publisher.publish("c:counted", b"two") in (2, None)
    # 0 is a promise: nobody subscribes (the control layer answers at once).
    assert publisher.publish("c:nobody", b"none") in (0, None)
    a_inbox.wait_for(lambda: a_inbox.payloads() == [b"two"])
    b_inbox.wait_for(lambda: b_inbox.payloads() == [b"two"])
    b.unsubscribe("c:counted")  # after delivery: _deliver drops what comes later
    assert publisher.connected


def test_the_null_broker_delivers_at_once_and_counts_its_one_receiver() -> None:
    brokers = Brokers("null")
    broker, inbox = brokers.make()
    assert broker.publish("c:x", b"nobody") == 0
    broker.subscribe("c:x")
    assert broker.publish("c:x", b"here") == 1
    assert inbox.messages == [("c:x", b"here")]
    broker.unsubscribe("c:x")
    assert broker.publish("c:x", b"gone") == 0
    assert broker.connected
    brokers.close()


def test_subscription_is_in_place_when_subscribe_returns(
    kind: str, server: BrokerServer, make_broker: t.Any
) -> None:
    subscriber, inbox = make_broker(kind, server.url)
    publisher, _ = make_broker(kind, server.url)
    publisher.publish("c:warmup", b"connect first")
    for n in range(5):
        topic = f"c:fresh-{n}"
        subscriber.subscribe(topic)
        publisher.publish(topic, b"right after")
        inbox.wait_for(lambda topic=topic: inbox.payloads(topic) == [b"right after"])


def test_unsubscribe_stops_delivery(
    kind: str, server: BrokerServer, make_broker: t.Any
) -> None:
    subscriber, inbox = make_broker(kind, server.url)
    publisher, _ = make_broker(kind, server.url)
    subscriber.subscribe("c:temp", "c:marker")
    publisher.publish("c:temp", b"1")
    inbox.wait_for(lambda: inbox.payloads("c:temp") == [b"1"])
    subscriber.unsubscribe("c:temp")
    publisher.publish("c:temp", b"2")
    publisher.publish("c:marker", b"end")
    inbox.wait_for(lambda: inbox.payloads("c:marker") == [b"end"])
    assert inbox.payloads("c:temp") == [b"1"]


def test_one_publisher_arrives_in_order_and_once(
    kind: str, server: BrokerServer, make_broker: t.Any
) -> None:
    subscriber, inbox = make_broker(kind, server.url)
    publisher, _ = make_broker(kind, server.url)
    subscriber.subscribe("c:ordered")
    sent = [b"%d" % n for n in range(2000)]
    for data in sent:
        publisher.publish("c:ordered", data)
    inbox.wait_for(lambda: len(inbox.payloads()) >= len(sent))
    assert inbox.payloads() == sent


@pytest.mark.parametrize(("kind", "rounds"), [("redis", 1000), ("nats", 500)])
def test_a_returned_publish_is_ahead_of_any_later_one_from_another_connection(
    kind: str, rounds: int, server: BrokerServer, make_broker: t.Any
) -> None:
    subscriber, inbox = make_broker(kind, server.url)
    first, _ = make_broker(kind, server.url)
    second, _ = make_broker(kind, server.url)
    subscriber.subscribe("c:turns")
    sent = []
    for n in range(rounds):
        for publisher, name in ((first, b"a"), (second, b"b")):
            publisher.publish("c:turns", name + b"%d" % n)
            sent.append(name + b"%d" % n)
    inbox.wait_for(lambda: len(inbox.payloads()) == len(sent))
    assert inbox.payloads() == sent


def test_every_channel_name_character_and_any_bytes_survive(
    kind: str, server: BrokerServer, make_broker: t.Any
) -> None:
    subscriber, inbox = make_broker(kind, server.url)
    publisher, _ = make_broker(kind, server.url)
    # Channel names allow [A-Za-z0-9._-:=@#]; '#' and '.' mean something
    # to RabbitMQ's topic exchange and NATS subjects.
    odd = "c:chat.room-1_x:y=z@a#b"
    wildcard_lookalike = "c:chat.#"
    subscriber.subscribe(odd)
    data = bytes(range(256)) + b"\n\x00\r\n"
    publisher.publish(wildcard_lookalike, b"must not match")
    publisher.publish("c:chat.room-1_x:y=z@a#c", b"must not match either")
    publisher.publish(odd, data)
    inbox.wait_for(lambda: bool(inbox.messages))
    subscriber.subscribe("c:marker")
    publisher.publish("c:marker", b"end")
    inbox.wait_for(lambda: b"end" in inbox.payloads())
    assert inbox.messages[0][:2] == (odd, data)
    assert inbox.payloads() == [data, b"end"]


def test_inside_on_message_subscribe_does_not_wait_and_publish_works(
    kind: str, server: BrokerServer, make_broker: t.Any
) -> None:
    publisher, inbox = make_broker(kind, server.url)
    outcome: dict[str, t.Any] = {}
    holder: list[t.Any] = []

    def callback(topic: str, data: bytes) -> None:
        broker = holder[0]
        if topic == "c:trigger":
            started = time.monotonic()
            broker.subscribe("c:dynamic")  # only the reader could confirm it
            outcome["subscribe took"] = time.monotonic() - started
            outcome["published"] = broker.publish("c:echo", b"from the reader")
        inbox(topic, data)

    brokers = Brokers(kind)
    broker, _ = brokers.make(server.url, on_message=callback)
    holder.append(broker)
    try:
        broker.subscribe("c:trigger", "c:echo")
        publisher.publish("c:trigger", b"go")
        inbox.wait_for(lambda: inbox.payloads("c:echo") == [b"from the reader"])
        assert outcome["subscribe took"] < 1
        assert outcome["published"] in (1, None)
        # The subscription made there is in place shortly after.
        deadline = time.monotonic() + TIMEOUT
        while not inbox.payloads("c:dynamic"):
            assert time.monotonic() < deadline
            publisher.publish("c:dynamic", b"reached")
            time.sleep(0.05)
    finally:
        brokers.close()


def test_reconnects_and_resubscribes_after_the_server_restarts(
    kind: str, own_broker_server: t.Any, make_broker: t.Any
) -> None:
    server = own_broker_server(kind)
    subscriber, inbox = make_broker(kind, server.url)
    publisher, _ = make_broker(kind, server.url)
    subscriber.subscribe("c:survivor")
    publisher.publish("c:survivor", b"before")
    inbox.wait_for(lambda: inbox.payloads() == [b"before"])
    server.restart()
    # The subscriber re-subscribes on its own; keep publishing until the
    # message published after its return arrives.
    deadline = time.monotonic() + 30
    n = 0
    while not any(p.startswith(b"after") for p in inbox.payloads()):
        assert time.monotonic() < deadline, inbox.messages
        n += 1
        publisher.publish("c:survivor", b"after %d" % n)
        inbox.wait_for(lambda: True, timeout=0.2)
        time.sleep(0.2)
    assert inbox.payloads()[0] == b"before"


def test_publishing_while_the_server_is_down_is_buffered_and_sent_on_reconnect(
    kind: str, own_broker_server: t.Any, make_broker: t.Any
) -> None:
    server = own_broker_server(kind)
    broker, inbox = make_broker(kind, server.url)
    broker.subscribe("c:buffered")
    broker.publish("c:buffered", b"0")
    inbox.wait_for(lambda: inbox.payloads() == [b"0"])
    server.kill()
    for n in range(1, 6):
        started = time.monotonic()
        broker.publish("c:buffered", b"%d" % n)
        assert time.monotonic() - started < 2, "publish hung while the broker is down"
    server.start()
    # Re-subscribing comes before flushing, so the node gets its own messages.
    inbox.wait_for(lambda: len(inbox.payloads()) >= 6, timeout=30)
    assert inbox.payloads() == [b"%d" % n for n in range(6)]


def test_buffered_messages_go_out_in_order_before_those_published_after_reconnecting(
    kind: str, own_broker_server: t.Any, make_broker: t.Any
) -> None:
    server = own_broker_server(kind)
    broker, inbox = make_broker(kind, server.url)
    broker.subscribe("c:order")
    for n in range(3):
        broker.publish("c:order", b"%d" % n)
    inbox.wait_for(lambda: len(inbox.payloads()) == 3)
    server.kill()
    deadline = time.monotonic() + TIMEOUT
    while broker.connected:  # the reader notices the outage
        assert time.monotonic() < deadline, "still connected to a dead server"
        time.sleep(0.02)
    for n in range(3, 8):
        assert broker.publish("c:order", b"%d" % n) is None  # buffered
    server.start()
    # Some of these are buffered behind the others while the broker
    # reconnects, the rest go out once it is back: never ahead of the buffer.
    sent = [b"%d" % n for n in range(20)]
    for data in sent[8:]:
        broker.publish("c:order", data)
        time.sleep(0.05)
    inbox.wait_for(lambda: len(inbox.payloads()) >= len(sent), timeout=30)
    assert inbox.payloads() == sent
    assert broker.connected


def test_concurrent_publishing_threads_share_batches_and_keep_their_order(
    kind: str, server: BrokerServer, make_broker: t.Any
) -> None:
    subscriber, inbox = make_broker(kind, server.url)
    publisher, _ = make_broker(kind, server.url)
    subscriber.subscribe("c:many")
    publisher.publish("c:warmup", b"connect first")
    batches = count_batches(publisher)
    threads, each = 16, 300

    def publish_all(n: int) -> None:
        for i in range(each):
            publisher.publish("c:many", b"%d:%d" % (n, i))

    in_threads(publish_all, threads)
    inbox.wait_for(lambda: len(inbox.payloads()) == threads * each)
    for n in range(threads):
        mine = [p for p in inbox.payloads() if p.startswith(b"%d:" % n)]
        assert mine == [b"%d:%d" % (n, i) for i in range(each)]
    assert sum(batches) == threads * each
    assert len(batches) < threads * each / 2, "publishes rarely shared a batch"


BATCHING_SCRIPT = """
    import gevent
    from tests.brokerclients import count_batches

    got = []
    subscriber = create_broker(settings(), lambda topic, data: got.append(data))
    subscriber.subscribe("c:room")
    publisher = create_broker(settings(), lambda *a: None)
    publisher.publish("c:warm", b"up")
    batches = count_batches(publisher)

    def publish_many(n):
        for i in range(200):
            publisher.publish("c:room", b"%d:%d" % (n, i))

    gevent.joinall([gevent.spawn(publish_many, n) for n in range(50)], raise_error=True)
    wait_for(lambda: len(got) == 50 * 200)
    for n in range(50):
        mine = [d for d in got if d.startswith(b"%d:" % n)]
        assert mine == [b"%d:%d" % (n, i) for i in range(200)]
    print(sum(batches), len(batches), flush=True)
"""


def test_publishing_greenlets_share_batches(kind: str, server: BrokerServer) -> None:
    # Greenlets queue only while the leader yields: a broker that answers
    # before the leader's read would yield must not fall into one message
    # per round trip.
    patch = "from gevent import monkey; monkey.patch_all()"
    out = run_script(
        script_head(kind).format(patch=patch) + BATCHING_SCRIPT, server.url
    )
    sent, batches = map(int, out.split())
    assert sent == 50 * 200
    assert batches <= sent / 10, f"{sent} messages took {batches} batches"


def test_a_full_outage_buffer_raises_a_clear_error(
    kind: str, own_broker_server: t.Any, make_broker: t.Any
) -> None:
    server = own_broker_server(kind)
    broker, inbox = make_broker(kind, server.url, REALTIME_BROKER_BUFFER=3)
    broker.subscribe("c:x")
    broker.publish("c:x", b"up")
    inbox.wait_for(lambda: inbox.payloads() == [b"up"])
    server.kill()
    with pytest.raises(BrokerUnavailable) as raised:
        # A few may still be taken by the dead socket before the broker
        # notices; the buffer's bound is what stops the rest.
        for n in range(3 + 20):
            broker.publish("c:x", b"%d" % n)
            time.sleep(0.01)
    message = str(raised.value)
    assert kind in message and f"127.0.0.1:{server.port}" in message
    assert "REALTIME_BROKER_BUFFER" in message


def _url(kind: str, port: int, credentials: str = "") -> str:
    scheme = {"redis": "redis", "rabbitmq": "amqp", "nats": "nats"}[kind]
    return f"{scheme}://{credentials}127.0.0.1:{port}"


def test_unreachable_at_start_logs_the_url_without_its_password(
    kind: str, make_broker: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    caplog.set_level(logging.INFO, logger="flask_realtime")
    broker, _ = make_broker(kind, _url(kind, port, "user:s3cret-pw@"))
    started = time.monotonic()
    broker.subscribe("c:later")
    broker.publish("c:later", b"queued while unreachable")
    assert time.monotonic() - started < 2, "the broker blocked its caller"
    deadline = time.monotonic() + 10
    while f"127.0.0.1:{port}" not in caplog.text:
        assert time.monotonic() < deadline, "no log line names the broker URL"
        time.sleep(0.05)
    assert kind in caplog.text.lower()
    assert "s3cret-pw" not in caplog.text


def test_unreachable_at_start_retries_until_the_server_comes(
    kind: str, make_broker: t.Any, tmp_path: t.Any
) -> None:
    port = free_port()
    broker, inbox = make_broker(kind, _url(kind, port))
    broker.subscribe("c:later")
    broker.publish("c:later", b"queued while unreachable")
    time.sleep(0.5)  # let it fail to connect at least once
    server = BrokerServer(kind, tmp_path / kind, port).start()
    try:
        inbox.wait_for(
            lambda: inbox.payloads() == [b"queued while unreachable"], timeout=30
        )
        broker.publish("c:later", b"connected")
        inbox.wait_for(lambda: inbox.payloads()[-1:] == [b"connected"])
    finally:
        server.stop()


@pytest.mark.parametrize("world", ["threads", "gevent"])
def test_a_forked_child_connects_anew_and_leaves_the_parent_alone(
    kind: str, server: BrokerServer, world: str
) -> None:
    # gunicorn --preload and Celery's prefork pool fork after the app, and so
    # its broker, exist.
    patch = "from gevent import monkey; monkey.patch_all()" if world == "gevent" else ""
    code = script_head(kind).format(patch=patch) + FORK_SCRIPT
    out = run_script(code, server.url)
    assert "child: has its own messages" in out
    assert "parent: all 200" in out
