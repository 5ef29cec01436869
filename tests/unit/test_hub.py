"""hub.py: the node's local registry of connections, users and channels."""

from __future__ import annotations

import pytest

from flask_realtime.connection import Connection, Outbound, Sink, user_key
from flask_realtime.hub import Hub


class FakeSink(Sink):
    def __init__(self) -> None:
        self.pushed: list[bytes] = []
        self.closed: list[int] = []

    def write(self, nbytes: int) -> None:
        self.pushed.append(self.conn.take())

    def close(self, code: int, reason: str = "") -> None:
        self.closed.append(code)

    def tick(self, now: float, heartbeat: float) -> None:
        pass


def make(connection_id: str, user_id: object = None) -> Connection:
    return Connection(connection_id, "test", FakeSink(), user_id=user_id)


def sink(conn: Connection) -> FakeSink:
    assert isinstance(conn.sink, FakeSink)
    return conn.sink


@pytest.fixture
def hub() -> Hub:
    return Hub()


# -- connections and users ----------------------------------------------------------


def test_user_key_compares_by_value() -> None:
    assert user_key(5) == user_key("5") == "5"
    assert user_key(None) is None


def test_add_and_remove(hub: Hub) -> None:
    a = make("a")
    assert hub.add(a) is False  # anonymous: no user to be first of
    assert len(hub) == 1
    assert hub.connections == {"a": a}
    assert hub.all() == [a]
    assert hub.remove(a) == ([], False)
    assert len(hub) == 0
    assert hub.all() == []


def test_removing_twice_is_harmless(hub: Hub) -> None:
    a = make("a", 1)
    hub.add(a)
    assert hub.remove(a) == ([], True)
    assert hub.remove(a) == ([], False)


def test_users_compare_by_value(hub: Hub) -> None:
    int_conn = make("a", 5)
    str_conn = make("b", "5")
    other = make("c", 6)
    assert hub.add(int_conn) is True  # the user's first connection here
    assert hub.add(str_conn) is False  # same user: 5 == "5"
    assert hub.add(other) is True
    assert set(hub.user_connections("5")) == {int_conn, str_conn}
    assert hub.user_connections("6") == (other,)
    assert hub.has_user("5")
    assert sorted(hub.users()) == ["5", "6"]


def test_removal_reports_the_last_connection_of_a_user(hub: Hub) -> None:
    a, b = make("a", 5), make("b", "5")
    hub.add(a)
    hub.add(b)
    assert hub.remove(a) == ([], False)
    assert hub.has_user("5")
    assert hub.user_connections("5") == (b,)
    assert hub.remove(b) == ([], True)
    assert not hub.has_user("5")
    assert hub.users() == []
    assert hub.user_connections("5") == ()


def test_anonymous_connections_are_never_a_users_last(hub: Hub) -> None:
    a = make("a")
    hub.add(a)
    hub.subscribe(a, "news")
    assert hub.remove(a) == (["news"], False)
    assert hub.users() == []


# -- channels --------------------------------------------------------------------


def test_subscribe_reports_the_first_subscriber(hub: Hub) -> None:
    a, b = make("a"), make("b")
    hub.add(a)
    hub.add(b)
    assert hub.subscribe(a, "news") is True
    assert hub.subscribe(b, "news") is False
    assert hub.subscribe(a, "news") is False  # again: not first
    assert hub.subscriber_count("news") == 2
    assert a.channels == {"news"}
    assert hub.channels() == ["news"]


def test_unsubscribe_reports_the_last_subscriber(hub: Hub) -> None:
    a, b = make("a"), make("b")
    hub.subscribe(a, "news")
    hub.subscribe(b, "news")
    assert hub.unsubscribe(a, "news") is False
    assert hub.subscriber_count("news") == 1
    assert a.channels == set()
    assert hub.unsubscribe(b, "news") is True
    assert hub.subscriber_count("news") == 0
    assert hub.channels() == []


def test_unsubscribing_from_an_unknown_channel_is_not_a_last(hub: Hub) -> None:
    a = make("a")
    assert hub.unsubscribe(a, "nothing") is False


def test_snapshots_follow_changes(hub: Hub) -> None:
    a, b = make("a"), make("b")
    assert hub.subscribers("news") == ()
    hub.subscribe(a, "news")
    assert hub.subscribers("news") == (a,)
    hub.subscribe(b, "news")
    assert hub.subscribers("news") == (a, b)
    hub.unsubscribe(a, "news")
    assert hub.subscribers("news") == (b,)
    hub.add(b)
    hub.remove(b)
    assert hub.subscribers("news") == ()


def test_a_snapshot_in_use_is_not_changed_underneath(hub: Hub) -> None:
    a, b = make("a"), make("b")
    hub.subscribe(a, "news")
    hub.subscribe(b, "news")
    snapshot = hub.subscribers("news")
    hub.unsubscribe(a, "news")
    assert snapshot == (a, b)
    assert hub.subscribers("news") == (b,)


def test_removal_returns_the_channels_left(hub: Hub) -> None:
    a, b = make("a", 1), make("b", 2)
    hub.add(a)
    hub.add(b)
    hub.subscribe(a, "news")
    hub.subscribe(a, "sport")
    hub.subscribe(b, "news")
    left, last = hub.remove(a)
    assert sorted(left) == ["news", "sport"]
    assert last is True
    assert hub.subscribers("news") == (b,)
    assert hub.subscriber_count("sport") == 0
    assert hub.channels() == ["news"]


# -- delivery --------------------------------------------------------------------


def test_deliver_channel_reaches_subscribers_only(hub: Hub) -> None:
    a, b, c = make("a"), make("b"), make("c")
    for conn in (a, b, c):
        hub.add(conn)
    hub.subscribe(a, "news")
    hub.subscribe(b, "news")
    hub.subscribe(c, "sport")
    message = Outbound(b'{"type":"event"}')
    assert hub.deliver_channel("news", message) == 2
    # encode once: every subscriber gets the very same object
    assert sink(a).pushed == [message.json] and sink(a).pushed[0] is message.json
    assert sink(b).pushed[0] is message.json
    assert sink(c).pushed == []


def test_deliver_channel_with_exclude(hub: Hub) -> None:
    a, b = make("a"), make("b")
    hub.subscribe(a, "news")
    hub.subscribe(b, "news")
    message = Outbound(b"{}")
    assert hub.deliver_channel("news", message, exclude="a") == 1
    assert sink(a).pushed == []
    assert sink(b).pushed == [message.json]


def test_deliver_channel_without_subscribers(hub: Hub) -> None:
    assert hub.deliver_channel("nobody", Outbound(b"{}")) == 0


def test_deliver_user_reaches_every_connection_of_the_user(hub: Hub) -> None:
    a, b, c, anon = make("a", 5), make("b", "5"), make("c", 6), make("d")
    for conn in (a, b, c, anon):
        hub.add(conn)
    message = Outbound(b"{}")
    assert hub.deliver_user("5", message) == 2
    assert sink(a).pushed == [message.json]
    assert sink(b).pushed == [message.json]
    assert sink(c).pushed == []
    assert sink(anon).pushed == []
    assert hub.deliver_user("7", message) == 0


def test_deliver_connection(hub: Hub) -> None:
    a, b = make("a"), make("b")
    hub.add(a)
    hub.add(b)
    message = Outbound(b"{}")
    assert hub.deliver_connection("b", message) == 1
    assert sink(a).pushed == []
    assert sink(b).pushed == [message.json]
    assert hub.deliver_connection("missing", message) == 0
    hub.remove(b)
    assert hub.deliver_connection("b", message) == 0


def test_outbound_frames_once() -> None:
    message = Outbound(b'{"type":"pong"}')
    frame = message.ws_frame
    assert frame == b"\x81\x0f" + b'{"type":"pong"}'
    assert message.ws_frame is frame


def test_a_closed_connection_is_not_subscribed(hub: Hub) -> None:
    # It closed while its subscribe waited for the broker: the hub may have
    # forgotten it already, and nothing would remove the subscription again.
    conn = make("a")
    hub.add(conn)
    conn.closed = True
    hub.remove(conn)
    assert hub.subscribe(conn, "news") is False
    assert conn.channels == set()
    assert hub.subscriber_count("news") == 0
    assert hub.channels() == []
