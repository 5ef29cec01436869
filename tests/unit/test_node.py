"""The node through the extension's TestClient: server-side delivery,
shutdown, the timer's ticks and opening connections."""

from __future__ import annotations

import json
import typing as t

import pytest

from flask_realtime import Connection, Realtime
from flask_realtime.connection import Sink
from flask_realtime.testing import TestClient
from tests.unit.conftest import Factory

pytestmark = pytest.mark.usefixtures("own_initialised_apps")


# -- server-side delivery -----------------------------------------------------------


def test_broadcast_reaches_subscribers_only(realtime: Realtime) -> None:
    a, b, c = realtime.test_client(), realtime.test_client(), realtime.test_client()
    a.subscribe("news")
    b.subscribe("sport")
    realtime.broadcast("news", "headline", {"title": "Hello"})
    assert a.get_received() == [
        {
            "type": "event",
            "channel": "news",
            "event": "headline",
            "data": {"title": "Hello"},
        }
    ]
    assert b.received == []
    assert c.received == []


def test_send_to_user_reaches_every_connection_of_the_user(realtime: Realtime) -> None:
    str_five = realtime.test_client(user_id="5")
    int_five = realtime.test_client(user_id=5)
    six = realtime.test_client(user_id=6)
    anonymous = realtime.test_client()
    realtime.send_to_user(5, "notification.new", {"title": "New Message"})
    expected = {
        "type": "event",
        "event": "notification.new",
        "data": {"title": "New Message"},
    }
    assert str_five.get_received() == [expected]
    assert int_five.get_received() == [expected]
    assert six.received == []
    assert anonymous.received == []
    realtime.send_to_user("5", "again", None)
    assert len(int_five.get_received()) == 1


def test_send_to_a_user_who_left(realtime: Realtime) -> None:
    gone = realtime.test_client(user_id=5)
    gone.disconnect()
    realtime.send_to_user(5, "notification.new", 1)
    assert gone.received == []


def test_send_to_user_none_is_refused(realtime: Realtime) -> None:
    with pytest.raises(ValueError):
        realtime.send_to_user(None, "e", 1)


def test_send_reaches_one_connection(realtime: Realtime) -> None:
    target = realtime.test_client(user_id=1)
    same_user = realtime.test_client(user_id=1)
    other = realtime.test_client()
    realtime.send(target.connection_id, "private.message", {"text": "Welcome"})
    assert target.get_received() == [
        {"type": "event", "event": "private.message", "data": {"text": "Welcome"}}
    ]
    assert same_user.received == []
    assert other.received == []
    realtime.send("nonexistent.id", "private.message", 1)
    realtime.send(realtime.node.id + ".missing", "private.message", 1)
    assert target.received == [] and other.received == []


def test_disconnected_clients_receive_nothing(realtime: Realtime) -> None:
    client = realtime.test_client(user_id=1)
    client.subscribe("news")
    connection_id = client.connection_id
    client.disconnect()
    assert client.close_code == 1000
    realtime.broadcast("news", "e", 1)
    realtime.send(connection_id, "e", 1)
    realtime.send_to_user(1, "e", 1)
    assert client.received == []
    assert realtime.channel("news").subscriber_count == 0
    assert len(realtime.node.hub) == 0


def test_shutdown_closes_every_connection_with_4200(realtime: Realtime) -> None:
    clients = [realtime.test_client() for _ in range(3)]
    realtime.node.shutdown()
    assert [c.close_code for c in clients] == [4200, 4200, 4200]
    assert len(realtime.node.hub) == 0


# -- heartbeats ------------------------------------------------------------------------


class TickingSink(Sink):
    def __init__(self) -> None:
        self.pushed: list[dict[str, t.Any]] = []
        self.ticks: list[tuple[Connection, float, float]] = []
        self.closed: list[int] = []

    def write(self, nbytes: int) -> None:
        self.pushed.append(json.loads(self.conn.take()))

    def close(self, code: int, reason: str = "") -> None:
        self.closed.append(code)

    def tick(self, now: float, heartbeat: float) -> None:
        self.ticks.append((self.conn, now, heartbeat))


def test_tick_calls_each_sinks_tick(make: Factory) -> None:
    # A long heartbeat keeps the node's own timer out of the way.
    realtime = make(REALTIME_HEARTBEAT=3600)
    node = realtime.node
    first, second = TickingSink(), TickingSink()
    conn1 = node.open("fake", first)
    conn2 = node.open("fake", second, user_id=1)
    plain = realtime.test_client()  # its sink's tick() does nothing

    node.tick(100.0)
    assert first.ticks == [(conn1, 100.0, 3600)]
    assert second.ticks == [(conn2, 100.0, 3600)]
    node.tick(200.0)
    assert [now for _, now, _ in first.ticks] == [100.0, 200.0]

    node.disconnect(conn1)
    node.tick(300.0)
    assert [now for _, now, _ in first.ticks] == [100.0, 200.0]
    assert [now for _, now, _ in second.ticks] == [100.0, 200.0, 300.0]
    assert plain.close_code is None


def test_open_sends_connected_to_the_sink(make: Factory) -> None:
    realtime = make(REALTIME_HEARTBEAT=10)
    sink = TickingSink()
    conn = realtime.node.open("fake", sink, user_id=3, user_info={"n": 1})
    assert sink.pushed == [
        {
            "type": "connected",
            "data": {"connection_id": conn.id, "heartbeat": 10, "protocol": 1},
        }
    ]
    assert (conn.user_id, conn.user_info, conn.transport) == (3, {"n": 1}, "fake")


def test_open_with_token(realtime: Realtime) -> None:
    sink = TickingSink()
    conn = realtime.node.open("sse", sink, with_token=True)
    assert conn.token and len(conn.token) >= 20
    assert sink.pushed[0]["data"]["token"] == conn.token
    other = realtime.node.open("sse", TickingSink(), with_token=True)
    assert other.token != conn.token


def test_test_client_is_a_context_manager(realtime: Realtime) -> None:
    with realtime.test_client(user_id=1) as client:
        assert isinstance(client, TestClient)
        client.subscribe("news")
        assert realtime.channel("news").subscriber_count == 1
    assert client.close_code == 1000
    assert realtime.channel("news").subscriber_count == 0
