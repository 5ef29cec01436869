"""What only the NATS broker does: its URLs, its subjects, its confirmations,
order across subjects, a frozen or dying server, forks, and gevent.

The promises every broker keeps are in tests/test_brokers.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import threading
import time
import typing as t
from pathlib import Path

import nats as nats_py
import pytest

from flask_realtime import config as _config
from flask_realtime.brokers import BrokerUnavailable, create_broker
from flask_realtime.brokers._nats_link import subject as nats_subject
from flask_realtime.config import ConfigError
from tests import brokerservers
from tests.brokerclients import (
    TIMEOUT,
    Inbox,
    broker_fixtures,
    in_threads,
    round_trip,
    settings_for,
)
from tests.brokerscripts import (
    AWAIT_RESTART,
    run_restarting_script,
    script_head,
)
from tests.brokerservers import BrokerServer
from tests.servers import free_port


def settings(**config: t.Any) -> _config.Settings:
    return settings_for("nats", **config)


make, server = broker_fixtures("nats")


class NatsWithOptions(BrokerServer):
    """A nats-server started with extra command-line options (authentication)."""

    def __init__(self, directory: Path, *options: str) -> None:
        super().__init__("nats", directory)
        self.options = list(options)

    def _command(self) -> tuple[list[str], dict[str, str]]:
        command, env = super()._command()
        return command + self.options, env


@pytest.fixture
def nats_with() -> t.Iterator[t.Callable[..., BrokerServer]]:
    started: list[BrokerServer] = []

    def start(directory: Path, *options: str) -> BrokerServer:
        brokerservers.require("nats")
        server = NatsWithOptions(directory, *options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def freeze(server: BrokerServer) -> None:
    """SIGSTOP: the server keeps its sockets but reads and answers nothing."""
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGSTOP)
    # The signal lands a moment later: wait until every thread is stopped.
    tasks = Path(f"/proc/{server.process.pid}/task")
    deadline = time.monotonic() + TIMEOUT
    while not all(
        (task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
        for task in tasks.iterdir()
    ):
        assert time.monotonic() < deadline, "the server did not stop"
        time.sleep(0.01)


def thaw(server: BrokerServer) -> None:
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGCONT)


# -- configuration -------------------------------------------------------------


def test_the_broker_url_wins_over_the_nats_url(
    server: BrokerServer, make: t.Any
) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    broker, inbox = make(REALTIME_BROKER_URL=server.url, REALTIME_NATS_URL=dead)
    broker.subscribe("c:which")
    round_trip(broker, inbox, "c:which", b"the broker URL")


def test_the_nats_url_serves_without_a_broker_url(
    server: BrokerServer, make: t.Any
) -> None:
    broker, inbox = make(REALTIME_BROKER_URL=None, REALTIME_NATS_URL=server.url)
    broker.subscribe("c:which")
    round_trip(broker, inbox, "c:which", b"the NATS URL")


def test_a_comma_separated_list_reaches_the_server_that_answers(
    server: BrokerServer, make: t.Any
) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    host_only = server.url.removeprefix("nats://")  # nats-py's "host:port" form
    for url in (f"{dead}, {server.url}", f"{dead},{host_only}"):
        broker, inbox = make(REALTIME_NATS_URL=url)
        broker.subscribe("c:cluster")
        round_trip(broker, inbox, "c:cluster", url.encode())


@pytest.mark.parametrize(
    "url",
    [
        " , ",
        "http://127.0.0.1:4222",
        "nats://",
        "nats://127.0.0.1:port",
        "nats://user:s3cret-pw@127.0.0.1:99999",
        "redis://user:s3cret-pw@127.0.0.1:6379",
    ],
)
def test_what_is_not_a_nats_url_is_a_config_error_without_its_password(
    url: str,
) -> None:
    with pytest.raises(ConfigError) as raised:
        create_broker(
            settings(REALTIME_NATS_URL="nats://x:1", REALTIME_BROKER_URL=url), print
        )
    assert "s3cret-pw" not in str(raised.value)
    if url.strip(" ,"):
        assert "NATS server URL" in str(raised.value)


def test_user_and_password_from_the_url_and_never_in_the_log(
    nats_with: t.Any, tmp_path: Path, make: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = nats_with(tmp_path / "auth", "--user", "node", "--pass", "s3cret-pw")
    caplog.set_level(logging.INFO, logger="flask_realtime")
    good, inbox = make(
        REALTIME_BROKER_URL=f"nats://node:s3cret-pw@127.0.0.1:{server.port}"
    )
    good.subscribe("c:auth")
    round_trip(good, inbox, "c:auth", b"let in")

    bad, _ = make(REALTIME_BROKER_URL=f"nats://node:wrong-pw@127.0.0.1:{server.port}")
    started = time.monotonic()
    bad.publish("c:auth", b"kept for later")  # buffered: the server refuses us
    assert time.monotonic() - started < 2
    deadline = time.monotonic() + TIMEOUT
    while "Authorization Violation" not in caplog.text:
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.05)
    refused = [
        r.getMessage() for r in caplog.records if "Authorization" in r.getMessage()
    ]
    assert f"nats://node:***@127.0.0.1:{server.port}" in refused[0]
    assert "s3cret-pw" not in caplog.text and "wrong-pw" not in caplog.text
    assert inbox.payloads("c:auth") == [b"let in"]


def test_a_token_url_connects_and_the_token_is_never_shown(
    nats_with: t.Any, tmp_path: Path, make: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = nats_with(tmp_path / "token", "--auth", "t0ken-9d2e")
    caplog.set_level(logging.INFO, logger="flask_realtime")
    broker, inbox = make(
        REALTIME_BROKER_URL=f"nats://t0ken-9d2e@127.0.0.1:{server.port}"
    )
    broker.subscribe("c:token")
    round_trip(broker, inbox, "c:token", b"let in")
    assert f"nats://***@127.0.0.1:{server.port}" in caplog.text
    server.kill()
    deadline = time.monotonic() + TIMEOUT
    while "lost the connection" not in caplog.text:
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.05)
    assert "t0ken-9d2e" not in caplog.text + broker.url


# -- subjects ------------------------------------------------------------------


def test_a_topic_is_one_literal_token_under_the_prefix() -> None:
    topics = [
        "c:chat.room-1",
        "c:chat%2Eroom-1",
        "c:*",
        "c:>",
        "c:a.*.>",
        "c:a b\tc\r\n",
        "u:émile",
        "i:ab12#3",
        "p:presence-room.1",
        "",
        "%",
    ]
    subjects = [nats_subject(topic) for topic in topics]
    assert len(set(subjects)) == len(topics)
    for subject in subjects:
        assert subject.startswith("flask_realtime.t.")
        token = subject.removeprefix("flask_realtime.t.")
        assert token and not set(token) & set(".*> \t\r\n")
    # Characters channel names use stay readable on the server.
    assert nats_subject("c:x_y-z:a=b@c#d") == "flask_realtime.t.c:x_y-z:a=b@c#d"


def test_wildcard_lookalike_topics_match_only_themselves(
    server: BrokerServer, make: t.Any
) -> None:
    subscriber, inbox = make(REALTIME_BROKER_URL=server.url)
    publisher, _ = make(REALTIME_BROKER_URL=server.url)
    subscriber.subscribe("c:*", "c:>", "c:a.*")
    for topic in ("c:a", "c:a.b", "c:b.c.d", "c:a.*", "c:>", "c:*"):
        publisher.publish(topic, topic.encode())
    publisher.publish("c:*", b"end")
    inbox.wait_for(lambda: b"end" in inbox.payloads())
    assert inbox.messages == [
        ("c:a.*", b"c:a.*"),
        ("c:>", b"c:>"),
        ("c:*", b"c:*"),
        ("c:*", b"end"),
    ]


# -- order and confirmation ------------------------------------------------------


def test_messages_on_different_topics_arrive_in_the_servers_order(
    server: BrokerServer, make: t.Any
) -> None:
    """nats-py gives each subscription a task of its own; the node needs one order."""
    subscriber, inbox = make(REALTIME_BROKER_URL=server.url)
    topics = ["c:one", "c:two", "c:three"]
    subscriber.subscribe(*topics)
    sent = [(topics[n % 3], b"%d" % n) for n in range(3000)]

    async def burst() -> None:
        # One connection, no waiting: the messages come back packed together.
        client = await nats_py.connect(server.url)
        for topic, data in sent:
            await client.publish(nats_subject(topic), data)
        await client.flush()
        await client.close()

    # In a thread of its own: the browser tests' Playwright (sync API) leaves
    # an event loop running in the main thread, where asyncio.run refuses.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, burst()).result(timeout=60)
    inbox.wait_for(lambda: len(inbox.messages) == len(sent))
    assert inbox.messages == sent


def test_unsubscribing_a_busy_topic_never_holds_back_the_others(
    server: BrokerServer, make: t.Any
) -> None:
    """Messages of a dropped subscription leave no gap in the server's order."""
    subscriber, inbox = make(REALTIME_BROKER_URL=server.url)
    publisher, _ = make(REALTIME_BROKER_URL=server.url)
    subscriber.subscribe("c:busy", "c:steady")

    def publish_all() -> None:
        for n in range(2000):
            publisher.publish("c:busy", b"%d" % n)
            publisher.publish("c:steady", b"%d" % n)

    publishing = threading.Thread(target=publish_all)
    publishing.start()
    while publishing.is_alive():
        subscriber.unsubscribe("c:busy")
        subscriber.subscribe("c:busy")
    publishing.join()
    publisher.publish("c:steady", b"end")
    inbox.wait_for(lambda: b"end" in inbox.payloads("c:steady"))
    assert inbox.payloads("c:steady") == [b"%d" % n for n in range(2000)] + [b"end"]


def test_concurrent_publishers_share_confirmations_and_keep_their_order(
    server: BrokerServer, make: t.Any
) -> None:
    subscriber, inbox = make(REALTIME_BROKER_URL=server.url)
    publisher, _ = make(REALTIME_BROKER_URL=server.url)
    subscriber.subscribe("c:crowd")
    publisher.publish("c:crowd", b"warm-up")
    markers_before = publisher._unconfirmed.last

    def publish_many(n: int) -> None:
        for i in range(300):
            publisher.publish("c:crowd", b"%d:%d" % (n, i))

    in_threads(publish_many, 20)
    inbox.wait_for(lambda: len(inbox.payloads()) == 1 + 20 * 300)
    for n in range(20):
        mine = [d for d in inbox.payloads() if d.startswith(b"%d:" % n)]
        assert mine == [b"%d:%d" % (n, i) for i in range(300)]
    # One marker (one round trip) answers every publisher of a batch.
    assert publisher._unconfirmed.last - markers_before < 20 * 300 * 0.8


def test_publish_counts_zero_exactly_for_the_topics_nobody_subscribes_to(
    server: BrokerServer, make: t.Any
) -> None:
    """The server's "503" for each such message of a batch, before its marker."""
    subscriber, _ = make(REALTIME_BROKER_URL=server.url)
    publisher, _ = make(REALTIME_BROKER_URL=server.url)
    subscriber.subscribe("c:here")
    assert publisher.publish("c:nobody", b"x") == 0
    assert publisher.publish("c:here", b"x") is None
    counts: dict[str, list[int | None]] = {"c:here": [], "c:nobody": []}

    def publish_many(topic: str) -> None:
        for _ in range(200):
            counts[topic].append(publisher.publish(topic, b"x"))

    threads = [
        threading.Thread(target=publish_many, args=(topic,))
        for topic in ("c:here", "c:nobody") * 4
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts == {"c:here": [None] * 800, "c:nobody": [0] * 800}


def test_on_message_runs_on_one_reader_thread_one_call_at_a_time(
    server: BrokerServer, make: t.Any
) -> None:
    calls: list[tuple[int, int]] = []
    running = [0]
    lock = threading.Lock()

    def on_message(topic: str, data: bytes) -> None:
        with lock:
            running[0] += 1
            calls.append((threading.get_ident(), running[0]))
        time.sleep(0.0005)  # slow-ish, as a node may be
        with lock:
            running[0] -= 1

    subscriber = create_broker(settings(REALTIME_BROKER_URL=server.url), on_message)
    publishers = [make(REALTIME_BROKER_URL=server.url)[0] for _ in range(4)]
    try:
        subscriber.subscribe("c:a", "c:b")
        workers = [
            threading.Thread(
                target=lambda p=p: [
                    p.publish(("c:a", "c:b")[i % 2], b"x") for i in range(100)
                ]
            )
            for p in publishers
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        deadline = time.monotonic() + TIMEOUT
        while len(calls) < 400:
            assert time.monotonic() < deadline, len(calls)
            time.sleep(0.02)
        assert {thread for thread, _ in calls} != {threading.get_ident()}
        assert len({thread for thread, _ in calls}) == 1
        assert max(depth for _, depth in calls) == 1
    finally:
        subscriber.close()


def test_inside_on_message_a_subscription_is_in_place_when_it_returns(
    server: BrokerServer, make: t.Any
) -> None:
    """The loop, not the reader, confirms: the reader may wait for it."""
    publisher, _ = make(REALTIME_BROKER_URL=server.url)
    inbox = Inbox()

    def callback(topic: str, data: bytes) -> None:
        if topic == "c:trigger":
            broker.subscribe("c:dynamic")
            publisher.publish("c:dynamic", b"right after")
        inbox(topic, data)

    broker = create_broker(settings(REALTIME_BROKER_URL=server.url), callback)
    try:
        broker.subscribe("c:trigger")
        publisher.publish("c:trigger", b"go")
        inbox.wait_for(lambda: bool(inbox.payloads("c:dynamic")))
        assert inbox.payloads() == [b"go", b"right after"]
    finally:
        broker.close()


def test_an_oversized_message_is_refused_and_the_next_goes_through(
    server: BrokerServer, make: t.Any
) -> None:
    broker, inbox = make(REALTIME_BROKER_URL=server.url)
    broker.subscribe("c:big")
    with pytest.raises(ValueError, match="max_payload"):
        broker.publish("c:big", b"x" * (2 * 1024 * 1024))
    round_trip(broker, inbox, "c:big", b"small")
    assert inbox.payloads() == [b"small"]


# -- a server that stops answering ----------------------------------------------


def test_a_frozen_server_delays_a_publish_about_a_second_then_gets_it_once(
    own_broker_server: t.Any, make: t.Any
) -> None:
    server = own_broker_server("nats")
    subscriber, inbox = make(REALTIME_BROKER_URL=server.url)
    publisher, _ = make(REALTIME_BROKER_URL=server.url)
    subscriber.subscribe("c:frozen")
    round_trip(publisher, inbox, "c:frozen", b"before")
    freeze(server)
    try:
        started = time.monotonic()
        publisher.publish("c:frozen", b"while frozen")
        took = time.monotonic() - started
        assert 0.9 < took < 2.5, took  # waited for the confirmation, then gave up
    finally:
        thaw(server)
    round_trip(publisher, inbox, "c:frozen", b"after")
    assert inbox.payloads() == [b"before", b"while frozen", b"after"]


def test_a_publish_lost_with_its_connection_is_sent_again_after_reconnecting(
    own_broker_server: t.Any, make: t.Any
) -> None:
    server = own_broker_server("nats")
    broker, inbox = make(REALTIME_BROKER_URL=server.url)
    broker.subscribe("c:lost")
    round_trip(broker, inbox, "c:lost", b"before")
    freeze(server)
    broker.publish("c:lost", b"taken by a dying server")  # returns unconfirmed
    server.kill()  # the frozen server dies without reading it
    server.start()
    round_trip(broker, inbox, "c:lost", b"after")
    assert inbox.payloads() == [b"before", b"taken by a dying server", b"after"]


# -- life cycle ----------------------------------------------------------------


def test_close_is_idempotent_and_ends_the_reader_and_the_loop(
    server: BrokerServer,
) -> None:
    before = set(threading.enumerate())
    inbox = Inbox()
    broker = create_broker(settings(REALTIME_BROKER_URL=server.url), inbox)
    inbox.broker = broker
    broker.subscribe("c:short")
    round_trip(broker, inbox, "c:short", b"hello")
    assert len(set(threading.enumerate()) - before) >= 2  # the loop and the reader
    loop = broker._loop
    broker.close()
    broker.close()
    with pytest.raises(BrokerUnavailable, match="closed"):
        broker.publish("c:short", b"too late")
    deadline = time.monotonic() + TIMEOUT
    while set(threading.enumerate()) - before or not loop.finished:
        assert time.monotonic() < deadline, set(threading.enumerate()) - before
        time.sleep(0.02)
    assert broker._loop is None and loop.loop.is_closed()


def test_an_unused_broker_closes_without_connecting() -> None:
    before = set(threading.enumerate())
    broker = create_broker(settings(REALTIME_NATS_URL="nats://127.0.0.1:1"), print)
    broker.close()
    assert set(threading.enumerate()) == before


# -- other processes: fork and gevent ---------------------------------------------


SCRIPT_HEAD = script_head("nats")


GEVENT_SCRIPT = """
    import asyncio
    import gevent
    from flask_realtime import _runtime
    assert _runtime.gevent_active()
    # A host name: the loop's thread resolves it without gevent's resolver.
    sys.argv[1] = sys.argv[1].replace("127.0.0.1", "localhost")

    got = []
    readers = set()
    def on_message(topic, data):
        readers.add(gevent.getcurrent())
        gevent.sleep(0)  # cooperative code (a client's socket write) is safe here
        got.append((topic, data))

    broker = create_broker(settings(), on_message)
    publisher = create_broker(settings(), lambda *a: None)
    broker.subscribe("c:room", "n:me")
    ticks = []
    def tick():
        while True:
            ticks.append(1)
            gevent.sleep(0.005)
    ticker = gevent.spawn(tick)

    def publish_many(n):
        for i in range(200):
            publisher.publish("c:room", b"%d:%d" % (n, i))

    workers = [gevent.spawn(publish_many, n) for n in range(50)]
    gevent.joinall(workers, raise_error=True)
    wait_for(lambda: len([d for t, d in got if t == "c:room"]) == 50 * 200)
    for n in range(50):
        mine = [d for t, d in got if d.startswith(b"%d:" % n)]
        assert mine == [b"%d:%d" % (n, i) for i in range(200)]
    assert publisher.publish("n:me", b"?") is None
    assert publisher.publish("n:nobody", b"?") == 0
    # The hub ran other greenlets all along: waiting for NATS never blocks it.
    assert len(ticks) > 5, len(ticks)
    # One reader: a greenlet of this hub, not the caller.
    assert len(readers) == 1
    (reader,) = readers
    assert isinstance(reader, gevent.Greenlet) and reader is not gevent.getcurrent()
    # The loop is not "running" for the greenlets: their asyncio still works.
    async def other_asyncio():
        await asyncio.sleep(0)
        return "mine"
    assert asyncio.run(other_asyncio()) == "mine"
    print("concurrent ok", flush=True)
"""
# Then the test restarts the server (AWAIT_RESTART), and:
AFTER_RESTART = """
    loops = [broker._loop, publisher._loop]
    broker.close()
    publisher.close()
    ticker.kill()
    wait_for(lambda: all(loop.finished for loop in loops))
    print("reconnect ok", flush=True)
"""


def test_under_gevent_everything_is_cooperative(own_broker_server: t.Any) -> None:
    server = own_broker_server("nats")
    code = SCRIPT_HEAD.format(patch="from gevent import monkey; monkey.patch_all()")
    lines = run_restarting_script(
        code + GEVENT_SCRIPT + AWAIT_RESTART + AFTER_RESTART, server
    )
    assert lines == ["concurrent ok", "restart please", "reconnect ok"]
