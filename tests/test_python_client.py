"""The Python client (``flask_realtime.client``) against real servers.

Most tests use gunicorn with gevent-websocket's worker and the basic test app;
one runs on ``flask run``; the restart tests start servers on a fixed port so
that the client finds the new server at the old address; one test runs the
client in a subprocess under gevent's monkey patching.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import time
import typing as t
from pathlib import Path

import pytest
import requests

from flask_realtime.client import (
    Channel,
    ConnectError,
    ConnectionClosed,
    NotConnected,
    RealtimeClient,
    RealtimeTimeout,
    ServerError,
    SubscriptionError,
)
from tests import servers
from tests.conftest import LiveServerFactory
from tests.servers import Server

KIND = "geventwebsocket"


@pytest.fixture
def server(live_server: LiveServerFactory) -> Server:
    return live_server(KIND)


def _client(server: Server | str, **options: t.Any) -> RealtimeClient:
    """A client with quick reconnections, for tests; not connected yet."""
    url = server if isinstance(server, str) else server.url
    options.setdefault("reconnect_delay", 0.1)
    options.setdefault("max_reconnect_delay", 0.5)
    options.setdefault("connect_timeout", 2.0)
    options.setdefault("timeout", 5.0)
    return RealtimeClient(url, **options)


def _get(server: Server | str, path: str, **params: t.Any) -> None:
    """Act from the server side (a view of the basic app)."""
    url = server if isinstance(server, str) else server.url
    if "data" in params:
        params["data"] = json.dumps(params["data"])
    response = requests.get(url + path, params=params, timeout=5)
    assert response.status_code == 200, response.text


def _broadcast(server: Server | str, channel: str, event: str, data: t.Any) -> None:
    _get(server, "/broadcast", channel=channel, event=event, data=data)


def _poll(condition: t.Callable[[], t.Any], timeout: float, what: str) -> t.Any:
    """``condition()``'s first truthy value, checked until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


# -- servers on a fixed port, for restarts ---------------------------------------


class PortServers:
    """Start gunicorn servers on a chosen port (the same one again after a
    restart, or two at once with SO_REUSEPORT); stopped at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Server] = []

    def start(self, port: int, *, reuse_port: bool = False) -> Server:
        argv = servers.command(KIND, servers.DEFAULT_APP, port)
        if reuse_port:
            argv.append("--reuse-port")
        log_path = self.log_dir / f"port-{port}-{len(self.started) + 1}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                argv,
                cwd=servers.ROOT,
                env=servers.child_environment(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(KIND, port, process, log_path, argv)
        self.started.append(server)
        server.wait_ready()  # gunicorn retries a bind that is still busy
        return server

    def stop_all(self) -> None:
        for server in reversed(self.started):
            server.discard()  # SIGKILL ends a SIGSTOPped one as well


@pytest.fixture
def port_servers(tmp_path: Path) -> t.Iterator[PortServers]:
    started = PortServers(tmp_path)
    yield started
    started.stop_all()


def _kill(server: Server) -> None:
    """Kill without a goodbye: no close frame, as when a machine dies."""
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)


# -- channels and messages -------------------------------------------------------


def test_subscribe_and_receive_a_broadcast(server: Server) -> None:
    received: queue.Queue[t.Any] = queue.Queue()
    with _client(server) as client:  # http:// is mapped to ws://
        assert client.connected
        assert client.connection_id
        assert client.welcome is not None and client.welcome["protocol"] == 1
        news = client.subscribe("news")
        assert news.state == "subscribed"
        assert client.subscribe("news") is news  # a second subscribe: same channel
        news.on("headline", received.put)

        _broadcast(server, "news", "headline", {"title": "Hi"})

        assert news.wait_for("headline", timeout=5) == {"title": "Hi"}
        assert received.get(timeout=5) == {"title": "Hi"}
        assert client.ping() > 0

        news.unsubscribe()
        assert client.channel("news") is None
        other = client.subscribe("marker")
        _broadcast(server, "news", "headline", "after unsubscribe")
        _broadcast(server, "marker", "done", None)
        assert other.wait_for("done", timeout=5) is None
        assert received.empty()
    assert not client.connected
    assert client.closed is not None and client.closed.code == 1000


def test_refused_private_subscription_raises_with_the_code(server: Server) -> None:
    with _client(server, params={"user": "5"}) as client:
        with pytest.raises(SubscriptionError) as refused:
            client.subscribe("private-room.6")
        assert refused.value.code == 403
        assert refused.value.channel == "private-room.6"
        assert "403" in str(refused.value)
        assert client.channel("private-room.6") is None

        own = client.subscribe("private-room.5")  # the connection still works
        _broadcast(server, "private-room.5", "secret", 42)
        assert own.wait_for("secret", timeout=5) == 42


def test_presence_members_join_and_leave(server: Server) -> None:
    with _client(server, params={"user": "1", "name": "Ann"}) as ann:
        ann_room = ann.subscribe("presence-room.1")
        assert [(m["user_id"], m["user_info"]) for m in ann_room.members] == [
            ("1", {"name": "Ann"})
        ]
        with _client(server, params={"user": "2", "name": "Bob"}) as bob:
            bob_room = bob.subscribe("presence-room.1")
            assert sorted(m["user_id"] for m in bob_room.members) == ["1", "2"]
            joined = ann_room.wait_for("presence.join", timeout=5)
            assert joined["user_id"] == "2"
            assert joined["user_info"] == {"name": "Bob"}
            assert sorted(m["user_id"] for m in ann_room.members) == ["1", "2"]
        left = ann_room.wait_for("presence.leave", timeout=5)
        assert left["user_id"] == "2"
        assert [m["user_id"] for m in ann_room.members] == ["1"]


def test_channel_send_goes_through_the_echo_handler(server: Server) -> None:
    with _client(server, params={"user": "7"}) as client:
        chat = client.subscribe("chat.lobby")
        chat.send("echo", {"text": "hello"})
        assert chat.wait_for("echo", timeout=5) == {
            "from": "7",
            "data": {"text": "hello"},
        }


@contextlib.contextmanager
def _two_in(
    server: Server, channel: str, ann_id: str, bob_id: str
) -> t.Iterator[tuple[RealtimeClient, Channel, Channel]]:
    """Ann and Bob subscribed to ``channel``: Ann's client, her channel, his."""
    with (
        _client(server, params={"user": ann_id}) as ann,
        _client(server, params={"user": bob_id}) as bob,
    ):
        yield ann, ann.subscribe(channel), bob.subscribe(channel)


def test_client_events_relay_on_presence_and_refusals_arrive_as_errors(
    server: Server,
) -> None:
    errors: queue.Queue[t.Any] = queue.Queue()
    with _two_in(server, "presence-room.2", "1", "2") as (ann, ann_room, bob_room):
        ann_room.send("client-typing", {"typing": True})
        assert bob_room.wait_for("client-typing", timeout=5) == {"typing": True}

        # Relayed to the *other* subscribers only.
        _broadcast(server, "presence-room.2", "marker", None)
        ann_room.wait_for("marker", timeout=5)
        with pytest.raises(RealtimeTimeout):
            ann_room.wait_for("client-typing", timeout=0)

        # Without a handler and without the client- prefix: refused.
        ann.on("error", errors.put)
        ann_room.send("typing", {"typing": True})
        assert ann_room.wait_for("error", timeout=5)["code"] == 403
        refusal = errors.get(timeout=5)
        assert refusal["code"] == 403
        assert refusal["channel"] == "presence-room.2"


def test_client_events_say_who_sent_them(server: Server) -> None:
    received: queue.Queue[tuple[t.Any, dict[str, t.Any]]] = queue.Queue()
    plain: queue.Queue[t.Any] = queue.Queue()
    with _two_in(server, "presence-room.31", "31", "32") as (_, ann_room, bob_room):
        bob_room.on(
            "client-typing",
            lambda data, envelope: received.put((data, envelope)),
            envelope=True,
        )
        bob_room.on("client-typing", plain.put)
        ann_room.send("client-typing", {"typing": True})
        data, envelope = received.get(timeout=5)
        assert data == {"typing": True}
        assert envelope["user_id"] == "31"
        assert envelope["channel"] == "presence-room.31"
        assert envelope["event"] == "client-typing"
        assert plain.get(timeout=5) == {"typing": True}  # fn(data) stays the default
        claimed = bob_room.wait_for("client-typing", timeout=5, envelope=True)
        assert claimed["user_id"] == "31" and claimed["data"] == {"typing": True}


def test_direct_messages_reach_client_handlers(server: Server) -> None:
    notes: queue.Queue[t.Any] = queue.Queue()
    with _client(server, params={"user": "9"}) as client:
        client.on("notification.new", notes.put)
        _get(server, "/send_to_user", user="9", event="notification.new", data=[1])
        assert notes.get(timeout=5) == [1]
        assert client.wait_for("notification.new", timeout=5) == [1]

        _get(
            server,
            "/send",
            connection_id=client.connection_id,
            event="just.you",
            data={"ok": True},
        )
        assert client.wait_for("just.you", timeout=5) == {"ok": True}


def test_the_python_client_on_flask_run(live_server: LiveServerFactory) -> None:
    server = live_server("flask-run")
    with _client(server, params={"user": "4"}) as client:
        room = client.subscribe("presence-room.4")
        assert [m["user_id"] for m in room.members] == ["4"]
        _broadcast(server, "presence-room.4", "hello", "there")
        assert room.wait_for("hello", timeout=5) == "there"
        assert client.ping() > 0


# -- refusals and reconnection ---------------------------------------------------


def test_authentication_refusal_raises_and_is_not_retried(server: Server) -> None:
    handshakes = []

    def params() -> dict[str, str]:
        handshakes.append(1)
        return {"deny": "1"}

    client = _client(server, params=params)
    with pytest.raises(ConnectionClosed) as refused:
        client.connect()
    assert refused.value.code == 4001
    assert "4001" in str(refused.value)
    assert not client.connected
    assert handshakes == [1]
    assert client.reconnect_attempts == 0
    with pytest.raises(NotConnected):
        client.subscribe("news")


def test_unreachable_server_raises_connect_error() -> None:
    client = _client(f"ws://127.0.0.1:{servers.free_port()}")
    with pytest.raises(ConnectError):
        client.connect()


def test_refusal_on_reconnect_stops_reconnecting(
    live_server: LiveServerFactory,
) -> None:
    """4129 (rate limit abuse) reconnects with backoff; the reconnection is
    refused with 4001; then the client stops for good."""
    server = live_server(
        KIND,
        env={
            "TESTAPP_REALTIME_RATE_LIMIT": json.dumps(
                {"messages_per_minute": 1, "close_after": 3}
            )
        },
    )
    handshakes: list[int] = []

    def params() -> dict[str, str]:
        handshakes.append(1)
        return {"user": "1"} if len(handshakes) == 1 else {"deny": "1"}

    client = _client(server, params=params).connect()
    try:
        room = client.subscribe("presence-room.3")  # the only allowed message
        for _ in range(10):
            try:
                room.send("client-spam", None)
            except NotConnected:
                break
        first = client.wait_for("disconnected", timeout=5)
        assert first["code"] == 4129
        assert first["reconnect"] is True
        assert client.wait_for("reconnecting", timeout=5)["delay"] > 0  # backoff
        final = client.wait_for("disconnected", timeout=10)
        assert final == {
            "code": 4001,
            "reason": "authentication failed",
            "reconnect": False,
        }
        with pytest.raises(ConnectionClosed) as closed:
            client.wait_for("reconnecting", timeout=5)  # no further attempt
        assert closed.value.code == 4001
        assert client.closed is not None and client.closed.code == 4001
        assert client.reconnect_attempts == 1
        assert len(handshakes) == 2
        with pytest.raises(NotConnected):
            room.send("client-spam", None)
    finally:
        client.disconnect()


def test_reconnects_and_resubscribes_after_a_restart_on_the_same_port(
    port_servers: PortServers,
) -> None:
    port = servers.free_port()
    first = port_servers.start(port)
    with _client(first, params={"user": "1", "name": "Ann"}) as client:
        news = client.subscribe("news")
        room = client.subscribe("presence-room.9")
        old_id = client.connection_id

        _kill(first)
        lost = client.wait_for("disconnected", timeout=5)
        assert lost["code"] == 1006
        assert lost["reconnect"] is True
        with pytest.raises(NotConnected):
            news.send("client-x", None)

        second = port_servers.start(port)
        welcome = client.wait_for("connected", timeout=15)
        assert welcome["connection_id"] == client.connection_id != old_id
        assert news.wait_for("subscribed", timeout=5) is None
        assert room.wait_for("subscribed", timeout=5)["members"][0]["user_id"] == "1"
        assert [m["user_id"] for m in room.members] == ["1"]

        _broadcast(second, "news", "headline", "after the restart")
        assert news.wait_for("headline", timeout=5) == "after the restart"


def test_sigterm_closes_with_4200_and_the_client_reconnects_at_once(
    port_servers: PortServers,
) -> None:
    """A second server shares the port (SO_REUSEPORT), as a new node behind a
    load balancer would; the first one's SIGTERM sends the client there."""
    port = servers.free_port()
    old = port_servers.start(port, reuse_port=True)
    client = _client(old, reconnect_delay=0.2, max_reconnect_delay=0.5).connect()
    try:
        news = client.subscribe("news")
        port_servers.start(port, reuse_port=True)

        old.signal(signal.SIGTERM)
        closed = client.wait_for("disconnected", timeout=5)
        assert closed["code"] == 4200
        assert closed["reconnect"] is True
        assert client.wait_for("reconnecting", timeout=5) == {
            "attempt": 1,
            "delay": 0.0,
        }
        assert client.wait_for("connected", timeout=10)["connection_id"]
        old.process.wait(timeout=15)

        # Only the new server listens now; an attempt that reached the old
        # one while it wound down has been retried there meanwhile.
        def delivered() -> bool:
            _broadcast(old.url, "news", "headline", "new server")
            try:
                return news.wait_for("headline", timeout=0.5) == "new server"
            except RealtimeTimeout:
                return False

        _poll(delivered, 15, "a broadcast through the new server")
    finally:
        client.disconnect()


def test_a_frozen_server_is_detected_by_ping_and_the_client_reconnects(
    server: Server,
) -> None:
    client = _client(server, ping_interval=0.2, heartbeat_timeout=0.5)
    client.connect()
    try:
        news = client.subscribe("news")
        os.killpg(server.process.pid, signal.SIGSTOP)
        try:
            lost = client.wait_for("disconnected", timeout=5)
        finally:
            os.killpg(server.process.pid, signal.SIGCONT)
        assert lost["code"] == 1006
        assert "ping" in lost["reason"]
        assert lost["reconnect"] is True
        client.wait_for("connected", timeout=15)
        news.wait_for("subscribed", timeout=5)
        _broadcast(server, "news", "headline", "back")
        assert news.wait_for("headline", timeout=5) == "back"
    finally:
        client.disconnect()


def test_blocking_calls_from_a_callback_are_refused(server: Server) -> None:
    outcomes: queue.Queue[t.Any] = queue.Queue()

    def on_event(data: t.Any) -> None:
        for blocking in (client.ping, lambda: client.wait_for("x", timeout=1)):
            try:
                blocking()
            except RuntimeError as exc:
                outcomes.put(str(exc))
        outcomes.put(client.subscribe("from.callback", wait=False).name)

    with _client(server) as client:
        client.subscribe("news").on("go", on_event)
        _broadcast(server, "news", "go", None)
        assert "ping() would wait for the reader" in outcomes.get(timeout=5)
        assert "wait_for() would wait for the reader" in outcomes.get(timeout=5)
        assert outcomes.get(timeout=5) == "from.callback"
        later = client.channel("from.callback")
        assert later is not None
        assert later.wait_for("subscribed", timeout=5) is None


def test_server_errors_of_requests_raise(server: Server) -> None:
    with _client(server) as client:
        with pytest.raises(SubscriptionError) as bad_name:
            client.subscribe("no spaces allowed")
        assert bad_name.value.code == 400
        with pytest.raises(SubscriptionError) as anonymous:
            client.subscribe("presence-room.1")
        assert anonymous.value.code == 401
        assert isinstance(anonymous.value, ServerError)
        assert "authenticated" in anonymous.value.message


# -- under gevent's monkey patching ------------------------------------------------

GEVENT_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import json
    import sys
    import urllib.parse
    import urllib.request

    import gevent
    from gevent.monkey import get_original

    from flask_realtime.client import RealtimeClient

    real_ident = get_original("threading", "get_ident")
    url = sys.argv[1]
    main_thread = real_ident()
    main_greenlet = gevent.getcurrent()
    where = []


    def on_headline(data):
        # The reader is another greenlet on the main OS thread.
        where.append(
            real_ident() == main_thread and gevent.getcurrent() is not main_greenlet
        )


    def get(path, **params):
        query = urllib.parse.urlencode(params)
        urllib.request.urlopen(f"{url}{path}?{query}", timeout=5).read()


    with RealtimeClient(url, params={"user": "3", "name": "Cy"}) as client:
        news = client.subscribe("news")
        news.on("headline", on_headline)
        room = client.subscribe("presence-room.3")
        get("/broadcast", channel="news", event="headline", data=json.dumps({"n": 1}))
        get("/send_to_user", user="3", event="direct", data=json.dumps("hi"))
        result = {
            "headline": news.wait_for("headline", timeout=5),
            "direct": client.wait_for("direct", timeout=5),
            "members": [m["user_id"] for m in room.members],
            "pong": client.ping() > 0,
            "reader_is_a_greenlet": where == [True],
            "patched": monkey.is_module_patched("threading"),
        }
    print("RESULT " + json.dumps(result))
    """
)


def test_the_client_under_gevent_monkey_patching(
    server: Server, tmp_path: Path
) -> None:
    script = tmp_path / "gevent_client.py"
    script.write_text(GEVENT_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), server.url],
        cwd=servers.ROOT,
        env=servers.child_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout + done.stderr
    assert json.loads(lines[-1][len("RESULT ") :]) == {
        "headline": {"n": 1},
        "direct": "hi",
        "members": ["3"],
        "pong": True,
        "reader_is_a_greenlet": True,
        "patched": True,
    }


@pytest.mark.slow
def test_this_module_passes_under_gevent_monkey_patching(tmp_path: Path) -> None:
    """Every test above again, in a process patched before anything else."""
    runner = (
        "from gevent import monkey\n"
        "monkey.patch_all()\n"
        "import sys\n"
        "import pytest\n"
        "sys.exit(pytest.main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            runner,
            __file__,
            "-q",
            "-p",
            "no:cacheprovider",
            # Every test but this one, which would start the run again.
            "-k",
            "not test_this_module_passes_under_gevent_monkey_patching",
            "--basetemp",
            str(tmp_path / "patched"),
        ],
        cwd=servers.ROOT,
        env=servers.child_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    assert " passed" in done.stdout


def test_the_client_package_imports_nothing_of_the_server() -> None:
    """The client shares the protocol's constants and nothing else of the
    server side (node, brokers, transports, extension)."""
    import flask_realtime.client

    allowed = {"flask_realtime.protocol", "flask_realtime._ws_frames"}
    package = Path(flask_realtime.client.__file__).parent
    outside = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                continue  # a sibling in the client package
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                names = (
                    [f"flask_realtime.{node.module}"]
                    if node.module
                    else [f"flask_realtime.{alias.name}" for alias in node.names]
                )
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            outside += [
                f"{path.name}: {name}"
                for name in names
                if name.split(".")[0] == "flask_realtime" and name not in allowed
            ]
    assert package.name == "client" and len(list(package.glob("*.py"))) > 1
    assert outside == []
