"""What only the RabbitMQ broker does: every REALTIME_RABBITMQ option, its
names on the server, confirms and batching, recovery, forks, and gevent.

The promises every broker keeps are in tests/test_brokers.py. The server is
inspected the way an operator would: ``rabbitmqctl`` and a plain pika client.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
import typing as t
import uuid
from pathlib import Path

import pika
import pytest

from flask_realtime import config as _config
from flask_realtime.brokers import _amqp, create_broker
from flask_realtime.brokers.rabbitmq import routing_key
from flask_realtime.config import ConfigError
from tests.brokerclients import (
    TIMEOUT,
    Inbox,
    broker_fixtures,
    count_batches,
    in_threads,
    round_trip,
    settings_for,
    wait_until,
)
from tests.brokerscripts import (
    run_script,
)
from tests.brokerservers import BrokerServer
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


def settings(url: str | None = None, **config: t.Any) -> _config.Settings:
    return settings_for("rabbitmq", url, **config)


make, server = broker_fixtures("rabbitmq")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ctl(server: BrokerServer, *args: str) -> str:
    """``rabbitmqctl`` against the test server's node."""
    node = f"flask-realtime-{server.port}@localhost"
    done = subprocess.run(
        ["rabbitmqctl", "-n", node, "-q", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def listing(
    server: BrokerServer, what: str, *columns: str, vhost: str | None = None
) -> list:
    where = ["-p", vhost] if vhost else []
    return json.loads(
        ctl(server, what, *where, "--formatter", "json", *columns) or "[]"
    )


def queues(server: BrokerServer, prefix: str, vhost: str = "/") -> list[dict]:
    columns = (
        "name durable auto_delete exclusive consumers messages_ready"
        " messages_unacknowledged"
    ).split()
    found = listing(server, "list_queues", *columns, vhost=vhost)
    return [q for q in found if q["name"].startswith(prefix + ".")]


def add_user(server: BrokerServer, vhost: str = "/") -> tuple[str, str]:
    user, password = unique("user"), "pw-" + uuid.uuid4().hex
    ctl(server, "add_user", user, password)
    ctl(server, "set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    return user, password


@contextlib.contextmanager
def spy(
    server: BrokerServer, exchange: str, topic: str
) -> t.Iterator[t.Callable[[], tuple[t.Any, bytes]]]:
    """A plain pika queue bound to ``topic`` on ``exchange`` (which must
    exist); yields ``get()``, the next message's properties and body."""
    connection = pika.BlockingConnection(pika.URLParameters(server.url))
    try:
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, exchange, routing_key(topic))

        def get() -> tuple[t.Any, bytes]:
            deadline = time.monotonic() + TIMEOUT
            while True:
                method, properties, body = channel.basic_get(queue, auto_ack=True)
                if method is not None:
                    return properties, body
                assert time.monotonic() < deadline, "the spy got nothing"
                connection.sleep(0.02)

        yield get
    finally:
        connection.close()


def raw_publish(server: BrokerServer, exchange: str, topic: str, body: bytes) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(server.url))
    try:
        connection.channel().basic_publish(exchange, routing_key(topic), body)
    finally:
        connection.close()


def erlang_vm(server: BrokerServer) -> int:
    """The pid of the server's Erlang VM (the server runs it as the rabbitmq
    user, in a session of its own)."""
    variable = f"RABBITMQ_NODENAME=flask-realtime-{server.port}@localhost".encode()
    vms = {}
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and b"beam.smp" in (entry / "cmdline").read_bytes()
                and variable in (entry / "environ").read_bytes().split(b"\0")
            ):
                # Its resident pages: a short-lived VM of the same node name
                # (a CLI tool's) is far smaller than the server's.
                vms[int(entry.name)] = int((entry / "statm").read_text().split()[1])
        except OSError:
            continue
    assert vms, f"no Erlang VM for the server on port {server.port}"
    return max(vms, key=vms.__getitem__)


def wait_until_stopped(pid: int, timeout: float = 5.0) -> None:
    """Until ``pid`` is in the stopped state (``T`` in /proc/<pid>/stat)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.01)


# -- names --------------------------------------------------------------------


def test_routing_keys_are_literal_words_that_never_collide() -> None:
    topics = [
        "c:chat.room-1_x:y=z@a#b",
        "c:chat.#",
        "c:chat.*",
        "c:#",
        "c:*",
        "c:chat%2E#",  # what an escaped "c:chat.#" must not become
        "c:chat%2E%23",
        "u:ünïcode.user",
        "i:ab12#3",
        "p:presence-room.1",
        "u:" + "x" * 300,
        "u:" + "x" * 299 + "y",
        "u:" + "é" * 100,  # 100 characters, 203 bytes: still literal
    ]
    keys = [routing_key(topic) for topic in topics]
    assert len(set(keys)) == len(topics)
    for key in keys:
        # One word of the topic exchange, and no wildcard anywhere in it.
        assert not {".", "*", "#"} & set(key)
        assert len(key.encode()) <= 255
    assert routing_key("c:plain-name") == "c:plain-name"
    assert routing_key("u:" + "é" * 100).startswith("u:")
    assert routing_key("u:" + "x" * 300).startswith("%H")


def test_topics_that_look_like_patterns_reach_only_their_own_subscriber(
    server: BrokerServer, make: t.Any
) -> None:
    topics = ["c:a.b", "c:a.*", "c:a.#", "c:#", "c:*", "c:a%2Eb", "u:" + "z" * 300]
    inboxes = {}
    for topic in topics:
        broker, inboxes[topic] = make(server.url)
        broker.subscribe(topic, "c:marker")
    publisher, _ = make(server.url)
    for topic in topics:
        publisher.publish(topic, topic.encode())
    publisher.publish("c:marker", b"end")
    for topic, inbox in inboxes.items():
        inbox.wait_for(lambda inbox=inbox: b"end" in inbox.payloads())
        assert [(m[0], m[1]) for m in inbox.messages] == [
            (topic, topic.encode()),
            ("c:marker", b"end"),
        ]


# -- connection options -------------------------------------------------------


def test_host_and_port_from_the_dict_without_a_url(
    server: BrokerServer, make: t.Any
) -> None:
    broker, inbox = make(
        None, REALTIME_RABBITMQ={"host": "127.0.0.1", "port": server.port}
    )
    broker.subscribe("c:dict")
    round_trip(broker, inbox, "c:dict", b"via host and port")


def test_the_url_overrides_the_dict(server: BrokerServer, make: t.Any) -> None:
    nothing_there = free_port()
    broker, inbox = make(
        server.url,
        REALTIME_RABBITMQ={
            "host": "192.0.2.1",
            "port": nothing_there,
            "user": "nobody",
            "password": "wrong",
            "vhost": "/no-such-vhost",
        },
    )
    broker.subscribe("c:url")
    round_trip(broker, inbox, "c:url", b"the URL won")


@pytest.mark.parametrize("how", ["dict", "url"])
def test_user_password_and_vhost(server: BrokerServer, make: t.Any, how: str) -> None:
    vhost = unique("vhost")
    ctl(server, "add_vhost", vhost)
    user, password = add_user(server, vhost)
    prefix = unique("q")
    options = {"queue_prefix": prefix}
    if how == "dict":
        options.update(
            host="127.0.0.1",
            port=server.port,
            user=user,
            password=password,
            vhost=vhost,
        )
        url = None
    else:
        url = f"amqp://{user}:{password}@127.0.0.1:{server.port}/{vhost}"
    broker, inbox = make(url, REALTIME_RABBITMQ=options)
    broker.subscribe("c:in-vhost")
    round_trip(broker, inbox, "c:in-vhost", b"hello")
    # The queue lives in that vhost, and the connections are that user's.
    assert len(queues(server, prefix, vhost=vhost)) == 1
    assert queues(server, prefix) == []
    connections = listing(server, "list_connections", "user", "vhost")
    assert {(c["user"], c["vhost"]) for c in connections if c["user"] == user} == {
        (user, vhost)
    }


def test_a_refused_login_is_logged_without_the_password(
    server: BrokerServer, make: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    user, _ = add_user(server)
    caplog.set_level(logging.INFO, logger="flask_realtime")
    secret = "wrong-" + uuid.uuid4().hex
    broker, _ = make(
        None,
        REALTIME_RABBITMQ={
            "host": "127.0.0.1",
            "port": server.port,
            "user": user,
            "password": secret,
        },
    )
    started = time.monotonic()
    broker.subscribe("c:refused")  # recorded: the login failed
    broker.publish("c:refused", b"buffered")
    assert time.monotonic() - started < 3
    # pika logs the refusal too (as ERROR): wait for the broker's own line.
    wait_until(
        lambda: any(
            r.name == "flask_realtime" and "ACCESS_REFUSED" in r.getMessage()
            for r in caplog.records
        )
    )
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all("rabbitmq" in r.getMessage() for r in warnings)
    assert f"{user}:***@127.0.0.1:{server.port}" in caplog.text
    assert secret not in caplog.text


def test_a_url_of_another_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="amqp://"):
        create_broker(settings("redis://127.0.0.1:6379"), Inbox())


# -- exchange -----------------------------------------------------------------


def test_the_default_exchange_is_a_durable_topic_exchange_named_realtime(
    server: BrokerServer, make: t.Any
) -> None:
    broker, inbox = make(server.url)
    broker.subscribe("c:default-exchange")
    exchanges = {
        e["name"]: e
        for e in listing(server, "list_exchanges", "name", "type", "durable")
    }
    assert exchanges["realtime"]["type"] == "topic"
    assert exchanges["realtime"]["durable"] is True
    with spy(server, "realtime", "c:default-exchange") as get:
        broker.publish("c:default-exchange", b"through realtime")
        assert get()[1] == b"through realtime"


@pytest.mark.parametrize("exchange_type", ["topic", "direct"])
def test_exchange_and_exchange_type(
    server: BrokerServer, make: t.Any, exchange_type: str
) -> None:
    exchange = unique(f"rt-{exchange_type}")
    options = {"exchange": exchange, "exchange_type": exchange_type}
    responder, inbox = make(server.url, REALTIME_RABBITMQ=options)
    requester, _ = make(server.url, REALTIME_RABBITMQ=options)
    other, other_inbox = make(server.url)  # the default exchange: apart
    responder.subscribe("c:room.1", "c:room.#x", "n:responder")
    other.subscribe("c:room.1")
    exchanges = {
        e["name"]: e["type"] for e in listing(server, "list_exchanges", "name", "type")
    }
    assert exchanges[exchange] == exchange_type
    for topic in ("c:room.#", "c:room.*", "c:#", "c:room"):
        requester.publish(topic, b"must not match")
    requester.publish("c:room.1", b"exact")
    requester.publish("c:room.#x", b"exact too")
    inbox.wait_for(lambda: len(inbox.messages) == 2)
    assert inbox.payloads() == [b"exact", b"exact too"]
    # Routed: RabbitMQ cannot say to how many; returned as unroutable: none.
    assert requester.publish("n:responder", b"ping") is None
    assert requester.publish("n:nobody", b"ping") == 0
    inbox.wait_for(lambda: inbox.payloads("n:responder") == [b"ping"])
    with spy(server, exchange, "c:room.1") as get:
        requester.publish("c:room.1", b"on the named exchange")
        assert get()[1] == b"on the named exchange"
    assert other_inbox.messages == []


@pytest.mark.parametrize("exchange_type", ["fanout", "headers", "x-consistent-hash"])
def test_exchange_types_that_cannot_route_by_topic_are_refused(
    exchange_type: str,
) -> None:
    config = {"exchange_type": exchange_type}
    with pytest.raises(ConfigError, match="exchange_type"):
        create_broker(settings(REALTIME_RABBITMQ=config), Inbox())


@pytest.mark.parametrize(
    "option",
    [{"exchange": ""}, {"prefetch_count": 70000}, {"queue_prefix": "amq.mine"}],
)
def test_unusable_names_and_numbers_are_config_errors(option: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(option))):
        create_broker(settings(REALTIME_RABBITMQ=option), Inbox())


# -- the node's queue ---------------------------------------------------------


def test_the_default_queue_is_exclusive_auto_delete_and_transient(
    server: BrokerServer, make: t.Any
) -> None:
    prefix = unique("q")
    broker, inbox = make(server.url, REALTIME_RABBITMQ={"queue_prefix": prefix})
    broker.subscribe("c:flags")
    [queue] = queues(server, prefix)
    assert (queue["durable"], queue["auto_delete"], queue["exclusive"]) == (
        False,
        True,
        True,
    )
    broker.close()
    assert queues(server, prefix) == []


def own_user_options(
    server: BrokerServer, **rabbitmq: t.Any
) -> tuple[str, dict[str, t.Any]]:
    """A new user, and ``REALTIME_RABBITMQ`` that connects as it (with the
    other ``rabbitmq`` options): its connections can be closed without
    touching the other tests'."""
    user, password = add_user(server)
    options = {
        "host": "127.0.0.1",
        "port": server.port,
        "user": user,
        "password": password,
        **rabbitmq,
    }
    return user, options


def test_an_exclusive_queue_is_replaced_after_a_lost_connection(
    server: BrokerServer, make: t.Any
) -> None:
    prefix = unique("q")
    user, options = own_user_options(server, queue_prefix=prefix)
    broker, inbox = make(None, REALTIME_RABBITMQ=options)
    publisher, _ = make(server.url)
    broker.subscribe("c:replaced")
    [before] = queues(server, prefix)
    ctl(server, "close_all_user_connections", user, "test")
    # The queue went with its connection; a new one took the subscriptions.
    wait_until(
        lambda: (
            [q["name"] for q in queues(server, prefix)] not in ([], [before["name"]])
        )
    )
    deadline = time.monotonic() + TIMEOUT
    n = 0
    while not inbox.payloads("c:replaced"):  # bound once the reader is back
        assert time.monotonic() < deadline, "not re-subscribed"
        n += 1
        publisher.publish("c:replaced", b"%d" % n)
        inbox.wait_for(lambda: True, timeout=0.1)
    assert len(queues(server, prefix)) == 1


def test_a_queue_that_outlives_its_connection_keeps_what_came_meanwhile(
    server: BrokerServer, make: t.Any
) -> None:
    prefix = unique("kept")
    user, options = own_user_options(
        server,
        queue_prefix=prefix,
        queue_durable=True,
        queue_exclusive=False,
        queue_auto_delete=False,
    )
    broker, inbox = make(None, REALTIME_RABBITMQ=options)
    broker.subscribe("c:kept", "c:dropped")
    round_trip(broker, inbox, "c:kept", b"1")
    [queue] = queues(server, prefix)
    assert (queue["durable"], queue["auto_delete"], queue["exclusive"]) == (
        True,
        False,
        False,
    )
    # Keep the node away: no permissions, connections closed.
    ctl(server, "clear_permissions", "-p", "/", user)
    ctl(server, "close_all_user_connections", user, "test")
    wait_until(lambda: queues(server, prefix)[0]["consumers"] == 0)
    broker.unsubscribe("c:dropped")  # recorded while away
    raw_publish(server, "realtime", "c:kept", b"2")
    [queue] = queues(server, prefix)
    assert queue["messages_ready"] == 1  # held for the node
    ctl(server, "set_permissions", "-p", "/", user, ".*", ".*", ".*")
    inbox.wait_for(lambda: inbox.payloads() == [b"1", b"2"], timeout=20)
    assert [q["name"] for q in queues(server, prefix)] == [queue["name"]]
    # The queue kept its bindings; the one given up meanwhile is gone.
    bindings = listing(
        server,
        "list_bindings",
        "source_name",
        "destination_name",
        "routing_key",
        vhost="/",
    )
    assert sorted(
        b["routing_key"]
        for b in bindings
        if b["destination_name"] == queue["name"] and b["source_name"] == "realtime"
    ) == [routing_key("c:kept")]
    broker.close()
    # Its name dies with the broker, so close() deletes it.
    assert queues(server, prefix) == []


def test_queue_prefix_names_the_queue(server: BrokerServer, make: t.Any) -> None:
    prefix = unique("my-prefix")
    broker, _ = make(server.url, REALTIME_RABBITMQ={"queue_prefix": prefix})
    broker.subscribe("c:named")
    [queue] = queues(server, prefix)
    assert queue["name"].startswith(f"{prefix}.")
    assert f".{os.getpid()}." in queue["name"]


# -- messages -----------------------------------------------------------------


@pytest.mark.parametrize("persistent", [True, False])
def test_persistent_messages_sets_the_delivery_mode(
    server: BrokerServer, make: t.Any, persistent: bool
) -> None:
    broker, _ = make(server.url, REALTIME_RABBITMQ={"persistent_messages": persistent})
    broker.publish("c:warmup", b"declares the exchange")
    with spy(server, "realtime", "c:persistence") as get:
        broker.publish("c:persistence", b"body")
        properties, body = get()
    assert body == b"body"
    assert properties.delivery_mode == (2 if persistent else 1)


def test_prefetch_count_bounds_the_unacknowledged_deliveries(
    server: BrokerServer, make: t.Any
) -> None:
    prefix = unique("q")
    release = threading.Event()
    held = Inbox()

    def slow(topic: str, data: bytes) -> None:
        held(topic, data)
        release.wait(TIMEOUT)

    options = {"prefetch_count": 2, "queue_prefix": prefix}
    broker, _ = make(server.url, slow, REALTIME_RABBITMQ=options)
    publisher, _ = make(server.url)
    broker.subscribe("c:slow")
    for n in range(10):
        publisher.publish("c:slow", b"%d" % n)
    held.wait_for(lambda: bool(held.messages))

    def counts() -> tuple[int, int]:
        [queue] = queues(server, prefix)
        return queue["messages_unacknowledged"], queue["messages_ready"]

    wait_until(lambda: counts() == (2, 8))
    release.set()
    held.wait_for(lambda: len(held.messages) == 10)
    assert held.payloads() == [b"%d" % n for n in range(10)]
    wait_until(lambda: counts() == (0, 0))


def test_concurrent_publishers_share_confirmed_batches_in_order(
    server: BrokerServer, make: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscriber, inbox = make(server.url)
    publisher, _ = make(server.url)
    subscriber.subscribe("c:batched")
    publisher.publish("c:warmup", b"connect first")
    batches = count_batches(publisher)
    waits: list[int] = []  # messages per wait for confirms
    wait_for_confirms = _amqp.Link._publish_chunk

    def counting(link: t.Any, chunk: list) -> t.Any:
        waits.append(len(chunk))
        return wait_for_confirms(link, chunk)

    monkeypatch.setattr(_amqp.Link, "_publish_chunk", counting)
    threads, per_thread = 8, 200

    def publish(k: int) -> None:
        for n in range(per_thread):
            publisher.publish("c:batched", b"%d:%d" % (k, n))

    in_threads(publish, threads)
    inbox.wait_for(lambda: len(inbox.messages) == threads * per_thread)
    for k in range(threads):
        mine = [p for p in inbox.payloads() if p.startswith(b"%d:" % k)]
        assert mine == [b"%d:%d" % (k, n) for n in range(per_thread)]
    assert sum(batches) == threads * per_thread
    assert max(batches) > 1  # several publishers' messages in one round trip
    assert waits == batches  # and one wait for the confirms of each batch


def test_on_message_may_subscribe_publish_and_close(
    server: BrokerServer, make: t.Any
) -> None:
    inbox = Inbox()
    closed = threading.Event()

    def on_message(topic: str, data: bytes) -> None:
        inbox(topic, data)
        if data == b"subscribe":
            broker.subscribe("c:second")  # in place before publish goes out
            broker.publish("c:second", b"from on_message")
        elif data == b"close":
            broker.close()
            closed.set()

    broker, _ = make(server.url, on_message)
    broker.subscribe("c:first")
    broker.publish("c:first", b"subscribe")
    inbox.wait_for(lambda: b"from on_message" in inbox.payloads("c:second"))
    broker.publish("c:first", b"close")
    assert closed.wait(TIMEOUT)
    broker.close()  # again: nothing happens


# -- failures -----------------------------------------------------------------


def test_a_node_gets_back_what_it_published_while_the_server_closed_it(
    server: BrokerServer, make: t.Any
) -> None:
    user, options = own_user_options(server)
    broker, inbox = make(None, REALTIME_RABBITMQ=options)
    broker.subscribe("c:forced")
    round_trip(broker, inbox, "c:forced", b"0")
    ctl(server, "close_all_user_connections", user, "test")
    for n in range(1, 20):
        broker.publish("c:forced", b"%d" % n)
    # Buffered or sent, then flushed only once the node had re-subscribed.
    inbox.wait_for(lambda: len(set(inbox.payloads())) == 20, timeout=20)
    # In order; a message whose confirm the closing connection took away is
    # sent again (at least once), never lost or reordered.
    first_seen = list(dict.fromkeys(inbox.payloads()))
    assert first_seen == [b"%d" % n for n in range(20)]


def test_a_frozen_server_never_holds_publish_longer_than_two_seconds(
    own_broker_server: t.Any, make: t.Any
) -> None:
    server = own_broker_server("rabbitmq")
    broker, inbox = make(server.url)
    broker.subscribe("c:frozen")
    round_trip(broker, inbox, "c:frozen", b"0")
    # The link is up and nothing is buffered: the publish below has to wait.
    assert broker.connected and broker.buffered == 0
    vm = erlang_vm(server)
    os.kill(vm, signal.SIGSTOP)
    try:
        wait_until_stopped(vm)
        started = time.monotonic()
        broker.publish("c:frozen", b"1")
        # It waited for a confirm that never came, then buffered the message.
        assert 1.0 < time.monotonic() - started < 2
        for n in (2, 3):
            started = time.monotonic()
            broker.publish("c:frozen", b"%d" % n)  # behind it in the buffer
            assert time.monotonic() - started < 0.5
    finally:
        os.kill(vm, signal.SIGCONT)
    inbox.wait_for(lambda: len(set(inbox.payloads())) == 4, timeout=30)
    assert list(dict.fromkeys(inbox.payloads())) == [b"0", b"1", b"2", b"3"]


# -- processes and greenlets --------------------------------------------------

_FORK = """
    import copy, os, sys, threading, time
    from flask_realtime import config
    from flask_realtime.brokers import create_broker

    values = copy.deepcopy(config.DEFAULTS)
    values.update(REALTIME_BROKER="rabbitmq", REALTIME_BROKER_URL=sys.argv[1])
    got = []
    broker = create_broker(config.load(values), lambda t, d: got.append(d))

    def wait_for(data):
        deadline = time.monotonic() + 10
        while data not in got:
            assert time.monotonic() < deadline, (data, got)
            time.sleep(0.01)

    broker.subscribe("c:parent")
    broker.publish("c:parent", b"before")
    wait_for(b"before")
    pid = os.fork()
    if pid == 0:
        # The child connects anew, with the subscription it inherited.
        got.clear()
        broker.subscribe("c:child")
        broker.publish("c:child", b"child's")
        broker.publish("c:parent", b"from the child")
        wait_for(b"child's")
        wait_for(b"from the child")
        broker.close()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
    # The parent's connections were neither used nor closed by the child.
    wait_for(b"from the child")
    broker.publish("c:parent", b"after")
    wait_for(b"after")
    assert b"child's" not in got
    print("ok", threading.active_count())
"""


def test_a_forked_child_connects_anew_and_leaves_the_parent_alone(
    server: BrokerServer,
) -> None:
    assert run_script(_FORK, server.url).startswith("ok")


_GEVENT_FORK = """
    from gevent import monkey; monkey.patch_all()
    import copy, os, sys, time
    import gevent
    from flask_realtime import config
    from flask_realtime.brokers import create_broker

    values = copy.deepcopy(config.DEFAULTS)
    values.update(REALTIME_BROKER="rabbitmq", REALTIME_BROKER_URL=sys.argv[1])
    got = []
    broker = create_broker(config.load(values), lambda t, d: got.append(d))
    broker.subscribe("c:shared")
    broker.publish("c:shared", b"before")
    while b"before" not in got:
        gevent.sleep(0.01)
    pid = os.fork()
    if pid == 0:
        # The parent's reader greenlet came along: it must not read the
        # socket both processes hold while the parent receives on it.
        got.clear()
        gevent.sleep(1.5)
        os._exit(3 if got else 0)
    publisher = create_broker(config.load(values), lambda *a: None)
    for n in range(50):
        publisher.publish("c:shared", b"%d" % n)
        gevent.sleep(0.02)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, "the child received the parent's messages"
    deadline = time.monotonic() + 10
    while len(got) < 51:
        assert time.monotonic() < deadline, got
        gevent.sleep(0.01)
    assert got == [b"before"] + [b"%d" % n for n in range(50)]
    print("ok")
"""


def test_under_gevent_a_forked_child_never_reads_the_parents_socket(
    server: BrokerServer,
) -> None:
    assert run_script(_GEVENT_FORK, server.url).strip() == "ok"


_GEVENT_SMOKE = """
    from gevent import monkey; monkey.patch_all()
    import copy, subprocess, sys, time
    import gevent
    from flask_realtime import config
    from flask_realtime._runtime import gevent_active
    from flask_realtime.brokers import create_broker

    url, node, user, password = sys.argv[1:5]
    assert gevent_active()
    values = copy.deepcopy(config.DEFAULTS)
    values.update(
        REALTIME_BROKER="rabbitmq",
        REALTIME_RABBITMQ={
            "port": int(url.rsplit(":", 1)[1]), "user": user, "password": password
        },
    )
    got = []

    def on_message(topic, data):
        got.append((topic, data))

    responder = create_broker(config.load(values), on_message)
    requester = create_broker(config.load(values), lambda *a: None)

    def until(predicate, timeout=15):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, got
            gevent.sleep(0.01)

    # Fifty greenlets subscribe and publish at once.
    topics = ["c:g%d" % n for n in range(50)]
    subscribing = [gevent.spawn(responder.subscribe, tp) for tp in topics]
    gevent.joinall(subscribing, raise_error=True)
    gevent.joinall(
        [gevent.spawn(requester.publish, tp, tp.encode()) for tp in topics],
        raise_error=True,
    )
    until(lambda: len(got) == 50)
    assert sorted(d for _, d in got) == sorted(tp.encode() for tp in topics)
    # Greenlets subscribe and publish to what they subscribed, at once:
    # routed (None, RabbitMQ cannot say to how many), or returned (0).
    def subscribe_and_publish(n):
        responder.subscribe("n:r%d" % n)
        return requester.publish("n:r%d" % n, b"q%d" % n)

    asking = [gevent.spawn(subscribe_and_publish, n) for n in range(10)]
    gevent.joinall(asking, raise_error=True)
    assert [g.value for g in asking] == [None] * 10
    until(lambda: len([t for t, _ in got if t.startswith("n:r")]) == 10)
    assert requester.publish("n:nobody", b"?") == 0
    # The server drops every connection of ours: both brokers come back.
    subprocess.run(
        ["rabbitmqctl", "-n", node, "-q", "close_all_user_connections", user, "test"],
        check=True, capture_output=True,
    )
    n = 0
    while not any(d.startswith(b"again") for _, d in got):
        n += 1
        requester.publish("c:g0", b"again %d" % n)
        until(lambda: True)
        gevent.sleep(0.05)
        assert n < 200, got
    assert requester.publish("n:r0", b"after") is None
    assert requester.publish("n:nobody", b"after") == 0
    until(lambda: ("n:r0", b"after") in got)
    responder.close()
    requester.close()
    print("ok")
"""


def test_under_gevent_subscribe_publish_count_and_reconnect(
    server: BrokerServer,
) -> None:
    user, password = add_user(server)
    node = f"flask-realtime-{server.port}@localhost"
    out = run_script(_GEVENT_SMOKE, server.url, node, user, password)
    assert out.strip() == "ok"
