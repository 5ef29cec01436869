"""The Python client over SSE and long-polling, and falling back to them.

One gunicorn server (gevent-websocket's worker) serving the acks app with
history on ``hist.*``. Each HTTP transport subscribes, receives, and sends
an event answered with an ``ack``; a connection cut with an RST through
``tests.cutproxy.CutProxy`` comes back with ``recovered`` true and every
event exactly once, in order. With WebSocket handshakes refused (the proxy
answers them 404, as a proxy without WebSocket support would), a client
that lists every transport falls back to SSE, and a client that was on
WebSocket when the refusal began recovers its channels on SSE.
"""

from __future__ import annotations

import threading
import typing as t

import pytest

from flask_realtime.client import (
    ConnectError,
    ConnectionClosed,
    RealtimeClient,
    ServerError,
)
from flask_realtime.client.recovery import Recovery
from tests.client_recorder import Recorder
from tests.conftest import LiveServerFactory, module_server
from tests.cutproxy import CutProxy
from tests.http_helpers import app_env, broadcast, unique
from tests.servers import Server

ENV = app_env(
    REALTIME_HEARTBEAT=2, REALTIME_HISTORY={"hist.*": {"size": 100, "ttl": 600}}
)
server = module_server(("geventwebsocket",), app="tests.apps.acks:app", env=ENV)

HTTP_TRANSPORTS = ("sse", "longpolling")
ALL = ["websocket", "sse", "longpolling"]


def _client(url: str, transports: t.Sequence[str], **options: t.Any) -> RealtimeClient:
    options.setdefault("params", {"user": "py7"})
    return RealtimeClient(
        url,
        transports=transports,
        reconnect_delay=0.05,
        max_reconnect_delay=0.2,
        connect_timeout=3,
        timeout=5,
        **options,
    )


def publish(server: Server, channel: str, numbers: t.Iterable[int]) -> None:
    for n in numbers:
        broadcast(server, channel, "m", n)


def cut_and_recover(
    server: Server, proxy: CutProxy, client: RealtimeClient, room: Recorder
) -> None:
    """Cut the client off, publish 3..8 meanwhile, let it back: it must
    recover them, then get 9 live, each once and in order."""
    publish(server, room.channel.name, [1, 2])
    assert room.received(2) == [(1, 1), (2, 2)]
    lost = threading.Event()
    client.on("disconnected", lambda data: lost.set())
    proxy.cut()
    assert lost.wait(10), "the client did not notice the cut"
    publish(server, room.channel.name, range(3, 9))
    proxy.restore()
    room.wait(lambda: len(room.replies) == 2)
    assert room.replies[1]["recovered"] is True
    assert room.channel.recovered is True
    publish(server, room.channel.name, [9])
    # A duplicate of the replay would come before the live 9, and show.
    assert room.received(9) == [(n, n) for n in range(1, 10)]


@pytest.fixture
def proxy(server: Server) -> t.Iterator[CutProxy]:
    with CutProxy(server.port) as opened:
        yield opened


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
def test_subscribe_receive_and_send_with_ack(server: Server, transport: str) -> None:
    with _client(server.url, [transport]) as client:
        assert client.transport == transport
        assert client.welcome is not None and "token" in client.welcome
        room = client.subscribe(unique("ack"))
        broadcast(server, room.name, "news", {"n": 1})
        assert room.wait_for("news", timeout=5) == {"n": 1}
        assert room.send("add", [20, 22], wait=True) == {"sum": 42, "user": "py7"}
        room.send("nothing", "x")  # no id: the handler's broadcast comes back
        assert room.wait_for("done", timeout=5) == "x"
        with pytest.raises(ServerError) as refused:  # HTTP 413, no envelope
            room.send("add", "x" * 70_000, wait=True)
        assert refused.value.code == 413
        assert client.ping() < 5  # the connection is still there
        room.unsubscribe()
    assert client.transport is None


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
def test_recovery_after_a_cut(server: Server, proxy: CutProxy, transport: str) -> None:
    client = _client(proxy.url, [transport]).connect()
    try:
        room = Recorder(client, unique("hist"))
        first = client.connection_id
        cut_and_recover(server, proxy, client, room)
        assert client.transport == transport
        assert client.connection_id not in (None, first)
    finally:
        client.disconnect()


def test_falls_back_to_sse_when_websocket_is_refused(
    server: Server, proxy: CutProxy
) -> None:
    proxy.refuse_websocket = True
    with _client(proxy.url, ALL) as client:
        assert client.transport == "sse"
        room = client.subscribe(unique("ack"))
        assert room.send("add", [1, 2], wait=True) == {"sum": 3, "user": "py7"}


def test_recovers_across_a_fallback(server: Server, proxy: CutProxy) -> None:
    """On WebSocket, cut off; meanwhile WebSocket becomes refused: the
    client comes back on SSE and its channel recovers what it missed."""
    client = _client(proxy.url, ALL).connect()
    try:
        assert client.transport == "websocket"
        room = Recorder(client, unique("hist"))
        proxy.refuse_websocket = True
        cut_and_recover(server, proxy, client, room)
        assert client.transport == "sse"
    finally:
        client.disconnect()


def test_falls_back_to_longpolling_when_sse_is_disabled(
    live_server: LiveServerFactory,
) -> None:
    """The server's 404 for a disabled transport: the next one is tried."""
    only_polls = live_server(
        "cli", env=app_env(REALTIME_TRANSPORTS=["websocket", "longpolling"])
    )
    with _client(only_polls.url, ["sse", "longpolling"]) as client:
        assert client.transport == "longpolling"
        assert client.subscribe(unique("news")).state == "subscribed"
    with pytest.raises(ConnectError) as refused:
        _client(only_polls.url, ["sse"]).connect()
    assert refused.value.status == 404


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
def test_authentication_refusal_is_final(server: Server, transport: str) -> None:
    """A 401 is WebSocket's 4001: the client stops (and would try no
    other transport), where a ConnectError would let it go on."""
    client = _client(server.url, [transport], params={"deny": "1"})
    with pytest.raises(ConnectionClosed) as refused:
        client.connect()
    assert refused.value.code == 4001
    assert client.transport is None


def test_unknown_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="carrier-pigeon"):
        RealtimeClient("http://127.0.0.1:1", transports=["websocket", "carrier-pigeon"])


def test_events_before_the_reply_wait_for_it() -> None:
    """Over HTTP, events can come before the subscribe reply: a new epoch's
    offsets are held until the reply, then not taken for duplicates."""
    recovery = Recovery()
    recovery.since()
    recovery.on_reply({"position": {"offset": 5, "epoch": "a"}})
    assert recovery.accept({"offset": 6})
    assert recovery.since() == {"offset": 6, "epoch": "a"}
    early = [{"offset": n} for n in (1, 2)]  # the new epoch's, before the reply
    assert all(recovery.hold(message) for message in early)
    assert not recovery.on_reply({"position": {"offset": 0, "epoch": "b"}})
    assert [m["offset"] for m in recovery.take_held() if recovery.accept(m)] == [1, 2]
    assert not recovery.hold({"offset": 3})  # no reply awaited any more


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
def test_disconnect_says_goodbye(server: Server, transport: str) -> None:
    """``POST /close``: the other members learn at once that the client left
    (without it a long-poll connection lingers until it expires)."""
    name = unique("presence-room")
    with _client(server.url, ["websocket"], params={"user": "bob"}) as bob:
        room = bob.subscribe(name)
        ann = _client(server.url, [transport], params={"user": "ann"}).connect()
        ann.subscribe(name)
        assert room.wait_for("presence.join", timeout=5)["user_id"] == "ann"
        ann.disconnect()
        assert room.wait_for("presence.leave", timeout=3) == {"user_id": "ann"}
