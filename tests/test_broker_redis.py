"""What only the Redis broker does: its options, its names on the server,
pipelining, recovery of either connection, forks, and gevent.

The promises every broker keeps are in tests/test_brokers.py.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
import typing as t
from pathlib import Path

import pytest
import redis as redis_py

from flask_realtime import config as _config
from flask_realtime.brokers import create_broker
from flask_realtime.brokers import redis as redis_broker
from flask_realtime.config import ConfigError
from tests import brokerservers
from tests.brokerclients import (
    ROOT,
    TIMEOUT,
    broker_fixtures,
    in_threads,
    round_trip,
    settings_for,
    wait_until,
)
from tests.brokerscripts import (
    AWAIT_RESTART,
    run_restarting_script,
    run_script,
    script_argv,
    script_env,
    script_head,
)
from tests.brokerservers import BrokerServer
from tests.servers import free_port

PASSWORD = "pw-7f3a9c"


def settings(**config: t.Any) -> _config.Settings:
    return settings_for("redis", **config)


make, server = broker_fixtures("redis")


def admin(port: int, **options: t.Any) -> redis_py.Redis:
    return redis_py.Redis(host="127.0.0.1", port=port, **options)


def our_clients(client: redis_py.Redis) -> list[dict[str, t.Any]]:
    return [c for c in client.client_list() if c["name"].startswith("flask_realtime")]


# -- configuration -----------------------------------------------------------


def test_the_url_database_is_selected_and_keeps_deployments_apart(
    server: BrokerServer, make: t.Any
) -> None:
    on0, inbox0 = make(REALTIME_BROKER_URL=f"{server.url}/0")
    on3, inbox3 = make(REALTIME_BROKER_URL=f"{server.url}/3")
    publisher3, _ = make(REALTIME_BROKER_URL=f"{server.url}/3")
    on0.subscribe("c:room")
    on3.subscribe("c:room")
    # Redis pub/sub itself ignores the database; the broker must not.
    on0.publish("c:room", b"for db 0")
    publisher3.publish("c:room", b"for db 3")
    inbox0.wait_for(lambda: inbox0.payloads() == [b"for db 0"])
    inbox3.wait_for(lambda: inbox3.payloads() == [b"for db 3"])
    round_trip(publisher3, inbox3, "c:room", b"marker")
    assert inbox0.payloads() == [b"for db 0"]
    assert inbox3.payloads() == [b"for db 3", b"marker"]
    databases = {(c["name"], c["db"]) for c in our_clients(admin(server.port))}
    assert ("flask_realtime-sub", "3") in databases
    assert ("flask_realtime-pub", "3") in databases


def test_the_redis_dict_gives_host_port_and_db_without_a_url(
    server: BrokerServer, make: t.Any
) -> None:
    options = {"host": "127.0.0.1", "port": server.port, "db": 5}
    subscriber, inbox = make(REALTIME_REDIS=options)
    publisher, _ = make(REALTIME_REDIS=options)
    subscriber.subscribe("c:dict")
    round_trip(publisher, inbox, "c:dict", b"via the dict")
    names = {(c["name"], c["db"]) for c in our_clients(admin(server.port))}
    assert ("flask_realtime-sub", "5") in names


def test_the_url_wins_over_the_redis_dict(server: BrokerServer, make: t.Any) -> None:
    nowhere = {"host": "127.0.0.1", "port": free_port()}
    subscriber, inbox = make(REALTIME_BROKER_URL=server.url, REALTIME_REDIS=nowhere)
    subscriber.subscribe("c:url")
    round_trip(subscriber, inbox, "c:url", b"via the url")


def test_a_unix_socket_url(tmp_path: Path, make: t.Any) -> None:
    brokerservers.require("redis")
    path = tmp_path / "redis.sock"
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(path)]
        + ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(path.exists)
        subscriber, inbox = make(REALTIME_BROKER_URL=f"unix://{path}?db=2")
        subscriber.subscribe("c:local")
        round_trip(subscriber, inbox, "c:local", b"over a unix socket")
        client = redis_py.Redis(unix_socket_path=str(path))
        assert {c["db"] for c in our_clients(client)} == {"2"}
    finally:
        process.kill()
        process.wait()


def test_a_url_of_another_scheme_is_a_config_error_without_its_password() -> None:
    with pytest.raises(ConfigError) as raised:
        create_broker(
            settings(REALTIME_BROKER_URL="amqp://user:s3cret@127.0.0.1/"),
            lambda *a: None,
        )
    assert "REALTIME_BROKER_URL" in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_password_from_the_dict_the_url_and_the_environment(
    own_broker_server: t.Any, make: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = own_broker_server("redis")
    admin(server.port).config_set("requirepass", PASSWORD)
    authorised = admin(server.port, password=PASSWORD)

    with_dict, inbox = make(
        REALTIME_REDIS={"host": "127.0.0.1", "port": server.port, "password": PASSWORD}
    )
    with_dict.subscribe("c:secret")
    round_trip(with_dict, inbox, "c:secret", b"dict")

    with_url, inbox = make(
        REALTIME_BROKER_URL=f"redis://:{PASSWORD}@127.0.0.1:{server.port}"
    )
    with_url.subscribe("c:secret")
    round_trip(with_url, inbox, "c:secret", b"url")

    # The seed's REDIS_* variables, through the config's environment fallbacks.
    environ = {
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(server.port),
        "REDIS_PASSWORD": PASSWORD,
        "REDIS_DB": "4",
    }
    with_env, inbox = make(**_config.environment_defaults(environ))
    with_env.subscribe("c:secret")
    round_trip(with_env, inbox, "c:secret", b"environment")
    assert "4" in {c["db"] for c in our_clients(authorised)}

    # A wrong password: the caller is not held up, the log names the server
    # and never the password, and the broker connects once the server agrees.
    caplog.set_level(logging.INFO, logger="flask_realtime")
    caplog.clear()
    wrong = "not-" + PASSWORD
    late, inbox = make(REALTIME_BROKER_URL=f"redis://:{wrong}@127.0.0.1:{server.port}")
    started = time.monotonic()
    late.subscribe("c:secret")
    late.publish("c:secret", b"buffered while refused")
    assert time.monotonic() - started < 2
    where = f"redis://:***@127.0.0.1:{server.port}"
    wait_until(lambda: f"cannot connect to the redis broker at {where}" in caplog.text)
    assert wrong not in caplog.text and PASSWORD not in caplog.text
    authorised.config_set("requirepass", wrong)
    inbox.wait_for(lambda: inbox.payloads() == [b"buffered while refused"], timeout=30)


# -- names on the server -----------------------------------------------------


def test_topics_are_exact_channel_names_never_patterns(
    server: BrokerServer, make: t.Any
) -> None:
    subscriber, inbox = make(REALTIME_BROKER_URL=server.url)
    publisher, _ = make(REALTIME_BROKER_URL=server.url)
    watcher = admin(server.port).pubsub()
    watcher.psubscribe("flask_realtime:*")
    assert watcher.get_message(timeout=TIMEOUT)["type"] == "psubscribe"
    subscriber.subscribe("c:room.*", "c:room.?", "c:room.[ab]")
    for topic in ("c:room.1", "c:room.x", "c:room.a"):
        publisher.publish(topic, b"must not match")
    round_trip(publisher, inbox, "c:room.*", b"exact")
    assert inbox.payloads() == [b"exact"]
    # Operators see the topics under one documented prefix.
    seen = []
    deadline = time.monotonic() + TIMEOUT
    while len(seen) < 4 and time.monotonic() < deadline:
        message = watcher.get_message(timeout=0.5)
        if message and message["type"] == "pmessage":
            seen.append(message["channel"])
    watcher.close()
    assert seen == [
        b"flask_realtime:0:c:room.1",
        b"flask_realtime:0:c:room.x",
        b"flask_realtime:0:c:room.a",
        b"flask_realtime:0:c:room.*",
    ]


# -- publishing ----------------------------------------------------------------


# -- either connection can fail on its own --------------------------------------


def kill_clients(port: int, name: str) -> int:
    client = admin(port)
    killed = 0
    for info in our_clients(client):
        if info["name"] == name:
            killed += client.client_kill_filter(_id=info["id"])
    return killed


@pytest.mark.parametrize("reader", ["idle", "busy"])
def test_a_killed_publishing_connection_loses_nothing(
    own_broker_server: t.Any, make: t.Any, reader: str
) -> None:
    server = own_broker_server("redis")
    subscriber, inbox = make(REALTIME_BROKER_URL=server.url)
    publisher, noise_inbox = make(REALTIME_BROKER_URL=server.url)
    subscriber.subscribe("c:steady")
    round_trip(publisher, inbox, "c:steady", b"0")
    stop = threading.Event()
    if reader == "busy":
        # The publisher's own reader never waits long enough to time out.
        noisy, _ = make(REALTIME_BROKER_URL=server.url)
        publisher.subscribe("c:noise")

        def make_noise() -> None:
            while not stop.wait(0.02):
                noisy.publish("c:noise", b"noise")

        threading.Thread(target=make_noise, daemon=True).start()
        noise_inbox.wait_for(lambda: bool(noise_inbox.payloads("c:noise")))
    try:
        assert kill_clients(server.port, "flask_realtime-pub") >= 1
        for n in range(1, 6):
            publisher.publish("c:steady", b"%d" % n)
        # Nothing publishes on c:steady after these: the reader flushes them.
        inbox.wait_for(lambda: len(inbox.payloads()) >= 6)
    finally:
        stop.set()
    assert inbox.payloads() == [b"%d" % n for n in range(6)]


def test_a_killed_subscribed_connection_is_restored_with_its_topics(
    own_broker_server: t.Any, make: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = own_broker_server("redis")
    caplog.set_level(logging.INFO, logger="flask_realtime")
    broker, inbox = make(REALTIME_BROKER_URL=server.url)
    publisher, _ = make(REALTIME_BROKER_URL=server.url)
    broker.subscribe("c:one", "c:two")
    round_trip(publisher, inbox, "c:one", b"before")
    assert kill_clients(server.port, "flask_realtime-sub") == 2  # both brokers'
    deadline = time.monotonic() + TIMEOUT
    n = 0
    while not inbox.payloads("c:two"):
        assert time.monotonic() < deadline
        n += 1
        publisher.publish("c:two", b"after %d" % n)
        time.sleep(0.05)
    assert "lost the connection to the redis broker" in caplog.text


def test_a_silent_subscribed_connection_is_pinged_then_replaced(
    own_broker_server: t.Any, make: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = own_broker_server("redis")
    monkeypatch.setattr(redis_broker, "_TICK", 0.05)
    monkeypatch.setattr(redis_broker, "_PING_AFTER", 0.2)
    monkeypatch.setattr(redis_broker, "_DEAD_AFTER", 0.6)
    broker, inbox = make(REALTIME_BROKER_URL=server.url)
    broker.subscribe("c:quiet")
    client = admin(server.port)

    def sub_ids() -> set[str]:
        return {
            c["id"] for c in our_clients(client) if c["name"] == "flask_realtime-sub"
        }

    before = sub_ids()
    assert len(before) == 1
    time.sleep(1.5)  # several PING intervals, each answered: the connection stays
    assert sub_ids() == before
    client.execute_command("CLIENT", "PAUSE", 1500, "ALL")
    wait_until(lambda: not (sub_ids() & before))
    round_trip(broker, inbox, "c:quiet", b"on a new connection")


def test_an_idle_connection_with_no_subscription_stays_up(
    own_broker_server: t.Any, make: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publish-only process: the PING of its idle reading connection is
    answered with a plain PONG (no subscription), which is not a failure."""
    server = own_broker_server("redis")
    monkeypatch.setattr(redis_broker, "_TICK", 0.05)
    monkeypatch.setattr(redis_broker, "_PING_AFTER", 0.2)
    broker, inbox = make(REALTIME_BROKER_URL=server.url)
    broker.publish("c:nobody", b"x")
    links = broker.links
    time.sleep(1.0)  # several PING intervals, each answered
    assert broker.connected
    assert broker.links == links


# -- forks -------------------------------------------------------------------------


SCRIPT_HEAD = script_head("redis")


GEVENT_SCRIPT = """
    import gevent
    from flask_realtime import _runtime
    assert _runtime.gevent_active()

    got = []
    readers = set()
    def on_message(topic, data):
        readers.add(gevent.getcurrent())
        got.append((topic, data))

    broker = create_broker(settings(), on_message)
    publisher = create_broker(settings(), lambda *a: None)
    broker.subscribe("c:room")

    def publish_many(n):
        for i in range(200):
            publisher.publish("c:room", b"%d:%d" % (n, i))

    def subscribe_and_publish(n):
        broker.subscribe("c:new-%d" % n)
        return publisher.publish("c:new-%d" % n, b"new %d" % n)

    # 50 greenlets publishing at once, while others subscribe.
    workers = [gevent.spawn(publish_many, n) for n in range(50)]
    subs = [gevent.spawn(subscribe_and_publish, n) for n in range(10)]
    gevent.joinall(workers + subs, raise_error=True)
    assert [s.value for s in subs] == [1] * 10
    wait_for(lambda: len([t for t, d in got if t.startswith("c:new-")]) == 10)
    wait_for(lambda: len([d for t, d in got if t == "c:room"]) == 50 * 200)
    for n in range(50):
        mine = [d for t, d in got if d.startswith(b"%d:" % n)]
        assert mine == [b"%d:%d" % (n, i) for i in range(200)]
    assert publisher.publish("n:nobody", b"?") == 0
    # One reader, and a greenlet of this thread's hub, not a thread of its own.
    assert len(readers) == 1
    (reader,) = readers
    assert isinstance(reader, gevent.Greenlet) and reader is not gevent.getcurrent()
    print("concurrent ok", flush=True)
"""
# Then the test restarts the server (AWAIT_RESTART), and:
AFTER_RESTART = """
    assert publisher.publish("c:room", b"again") == 1
    broker.close()
    publisher.close()
    print("reconnect ok", flush=True)
"""


def test_under_gevent_everything_is_cooperative(own_broker_server: t.Any) -> None:
    server = own_broker_server("redis")
    code = SCRIPT_HEAD.format(patch="from gevent import monkey; monkey.patch_all()")
    lines = run_restarting_script(
        code + GEVENT_SCRIPT + AWAIT_RESTART + AFTER_RESTART, server
    )
    assert lines == ["concurrent ok", "restart please", "reconnect ok"]


STARVE_SCRIPT = """
    import gevent

    received = [0]
    def on_message(topic, data):
        received[0] += 1
        started = time.perf_counter()
        while time.perf_counter() - started < 0.00005:
            pass  # a node's delivery work, some 50 us a message

    broker = create_broker(settings(), on_message)
    broker.subscribe("c:flood")
    gaps = []
    def ticker():
        last = time.perf_counter()
        while received[0] < int(sys.argv[2]):
            gevent.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
    ticking = gevent.spawn(ticker)
    print("ready", flush=True)
    ticking.join(timeout=60)
    print("received", received[0], "longest gap", max(gaps), flush=True)
"""


def test_under_gevent_a_backlog_does_not_starve_the_other_greenlets(
    server: BrokerServer, make: t.Any
) -> None:
    messages = 20000
    code = SCRIPT_HEAD.format(patch="from gevent import monkey; monkey.patch_all()")
    process = subprocess.Popen(
        script_argv(code + STARVE_SCRIPT, server.url, str(messages)),
        stdout=subprocess.PIPE,
        text=True,
        env=script_env(),
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        publisher, _ = make(REALTIME_BROKER_URL=server.url)

        def flood(n: int) -> None:
            for i in range(messages // 8):
                publisher.publish("c:flood", b"%d:%d" % (n, i))

        in_threads(flood, 8)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    words = out.split()
    assert words[:2] == ["received", str(messages)], out
    # Delivering the backlog takes about a second; the ticker keeps going
    # (some 20 ms gaps; without the broker's pauses, the whole backlog).
    assert float(words[-1]) < 0.5, out


BUSY_PUBLISHERS_SCRIPT = """
    import gevent
    from flask import Flask
    from flask_realtime import Realtime
    from tests.brokerclients import count_batches

    app = Flask(__name__)
    app.config.update(REALTIME_BROKER="redis", REALTIME_BROKER_URL=sys.argv[1])
    realtime = Realtime(app)
    realtime.broadcast("warm", "up", None)
    pipelines = count_batches(realtime.node.broker)

    def publisher():
        for n in range(600):
            realtime.broadcast("busy", "m", {"n": n})

    gevent.joinall([gevent.spawn(publisher) for _ in range(50)], raise_error=True)
    print(sum(pipelines), len(pipelines), flush=True)
"""


def test_under_gevent_broadcasting_greenlets_share_pipelines(
    server: BrokerServer,
) -> None:
    # Redis may answer before the leader's read would yield: a leader that
    # never yields sends one message per round trip, however many wait. (It
    # fell into that about every other run: 21,000 round trips for 30,000.)
    code = SCRIPT_HEAD.format(patch="from gevent import monkey; monkey.patch_all()")
    out = run_script(code + BUSY_PUBLISHERS_SCRIPT, server.url, timeout=60)
    sent, pipelines = map(int, out.split())
    assert sent == 50 * 600
    assert pipelines <= sent / 10, f"{sent} messages took {pipelines} round trips"
