"""node.py through the extension's TestClient: subscriptions, authorizers,
presence, client events, delivery, the rate limit and heartbeats."""

from __future__ import annotations

import json
import logging
import os
import types
import typing as t
import weakref

import pytest
from flask import Flask, current_app, has_app_context

from flask_realtime import (
    Connection,
    Realtime,
    Rejected,
    extension,
    protocol,
    ratelimit,
)
from flask_realtime.connection import Sink
from flask_realtime.testing import TestClient

Factory = t.Callable[..., Realtime]


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("REALTIME_", "REDIS_", "RABBITMQ_")) or key == "NATS_URL":
            monkeypatch.delenv(key)


@pytest.fixture(autouse=True)
def _own_initialised_apps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep this module's apps out of the process-wide set the accessors read."""
    monkeypatch.setattr(extension, "_initialised", weakref.WeakSet())


@pytest.fixture
def make() -> Factory:
    """``make(**config)``: a Realtime on a fresh app with the memory transport.

    The apps are kept until the test ends: the extension only holds them weakly.
    """
    apps: list[Flask] = []

    def factory(**config: t.Any) -> Realtime:
        app = Flask(__name__)
        app.config["REALTIME_TRANSPORTS"] = ["memory"]
        app.config.update(config)
        apps.append(app)
        return Realtime(app)

    return factory


@pytest.fixture
def realtime(make: Factory) -> Realtime:
    return make()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Freeze the rate limiter's clock; tests move it by hand."""
    now = [1000.0]
    monkeypatch.setattr(
        ratelimit, "time", types.SimpleNamespace(monotonic=lambda: now[0])
    )
    return now


def allow(connection: Connection, channel: str) -> bool:
    return True


def error_code(reply: dict[str, t.Any] | None) -> int:
    assert reply is not None and reply["type"] == "error", reply
    return int(reply["data"]["code"])


# -- basics --------------------------------------------------------------------------


def test_connected_is_the_first_message(realtime: Realtime) -> None:
    client = realtime.test_client()
    assert client.connected == {
        "type": "connected",
        "data": {
            "connection_id": client.connection_id,
            "heartbeat": 25,
            "protocol": 1,
        },
    }
    assert client.received == []


def test_connection_ids_are_unique_and_carry_the_node(realtime: Realtime) -> None:
    ids = {realtime.test_client().connection_id for _ in range(50)}
    assert len(ids) == 50
    node_id = realtime.node.id
    assert all(i.startswith(node_id + ".") for i in ids)


def test_ping(realtime: Realtime) -> None:
    client = realtime.test_client()
    assert client.request({"type": "ping", "id": 4}) == {"type": "pong", "id": 4}


def test_malformed_message_gets_400_and_the_connection_stays(
    realtime: Realtime,
) -> None:
    client = realtime.test_client()
    assert error_code(client.request("not json")) == 400
    reply = client.request({"type": "subscribe", "channel": "bad name", "id": 3})
    assert error_code(reply) == 400 and reply is not None and reply["id"] == 3
    assert client.close_code is None
    assert client.ping()["type"] == "pong"


def test_deeply_nested_json_gets_400(realtime: Realtime) -> None:
    client = realtime.test_client()
    assert error_code(client.request("[" * 50_000)) == 400


# -- subscriptions -------------------------------------------------------------------


def test_public_subscribe(realtime: Realtime) -> None:
    client = realtime.test_client()
    reply = client.request({"type": "subscribe", "channel": "news", "id": 1})
    assert reply == {"type": "subscribed", "channel": "news", "id": 1}
    assert realtime.channel("news").subscriber_count == 1
    assert client.connection.channels == {"news"}


def test_private_channel_without_authorizer_is_forbidden(realtime: Realtime) -> None:
    client = realtime.test_client(user_id=1)
    reply = client.request({"type": "subscribe", "channel": "private-chat.5", "id": 1})
    assert error_code(reply) == 403
    assert reply is not None
    assert (reply["id"], reply["channel"]) == (1, "private-chat.5")
    assert client.connection.channels == set()
    assert realtime.channel("private-chat.5").subscriber_count == 0


def test_authorizer_decorator_allows_and_denies(realtime: Realtime) -> None:
    calls: list[tuple[t.Any, str, bool]] = []

    @realtime.authorizer("private-chat.*")
    def can_join(connection: Connection, channel: str) -> bool:
        calls.append((connection, channel, has_app_context()))
        return connection.user_id == 1

    assert can_join.__name__ == "can_join"  # the decorator returns the function
    alice = realtime.test_client(user_id=1)
    bob = realtime.test_client(user_id=2)
    assert alice.subscribe("private-chat.5")["type"] == "subscribed"
    assert error_code(bob.subscribe("private-chat.5")) == 403
    assert calls == [
        (alice.connection, "private-chat.5", True),
        (bob.connection, "private-chat.5", True),
    ]
    assert realtime.channel("private-chat.5").subscriber_count == 1


def test_authorizer_registered_before_init_app() -> None:
    realtime = Realtime()

    @realtime.authorizer("private-*")
    def only_one(connection: Connection, channel: str) -> bool:
        return connection.user_id == 1

    app = Flask(__name__)
    realtime.init_app(app)
    assert realtime.test_client(user_id=1).subscribe("private-x")["type"] == (
        "subscribed"
    )
    assert error_code(realtime.test_client(user_id=2).subscribe("private-x")) == 403


def test_authorizers_from_config(make: Factory) -> None:
    def own_inbox(connection: Connection, channel: str) -> bool:
        return channel == f"user.{connection.user_id}"

    realtime = make(REALTIME_AUTHORIZERS={"user.*": own_inbox})
    five = realtime.test_client(user_id=5)
    assert realtime.channel("user.5").kind == "private"
    assert five.subscribe("user.5")["type"] == "subscribed"
    assert error_code(five.subscribe("user.6")) == 403
    assert error_code(realtime.test_client().subscribe("user.5")) == 403
    # a channel no pattern covers stays public
    assert five.subscribe("users")["type"] == "subscribed"


def test_authorizer_that_raises_denies_and_is_logged(
    realtime: Realtime, caplog: pytest.LogCaptureFixture
) -> None:
    class Boom(Exception):
        pass

    @realtime.authorizer("private-*")
    def broken(connection: Connection, channel: str) -> bool:
        raise Boom("database down")

    client = realtime.test_client(user_id=1)
    with caplog.at_level(logging.ERROR, logger="flask_realtime"):
        assert error_code(client.subscribe("private-chat.1")) == 403
    records = [r for r in caplog.records if r.exc_info and r.exc_info[0] is Boom]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert "private-chat.1" in records[0].getMessage()
    assert client.close_code is None


@pytest.mark.parametrize("result", [False, None, 0, ""])
def test_falsy_authorizer_result_denies(realtime: Realtime, result: t.Any) -> None:
    realtime.authorizer("private-*")(lambda connection, channel: result)
    assert error_code(realtime.test_client(user_id=1).subscribe("private-a")) == 403


def test_unsubscribe(realtime: Realtime) -> None:
    client = realtime.test_client()
    client.subscribe("news")
    reply = client.request({"type": "unsubscribe", "channel": "news", "id": 9})
    assert reply == {"type": "unsubscribed", "channel": "news", "id": 9}
    assert realtime.channel("news").subscriber_count == 0
    realtime.broadcast("news", "headline", 1)
    assert client.received == []


def test_unsubscribe_when_not_subscribed_is_404(realtime: Realtime) -> None:
    client = realtime.test_client()
    reply = client.request({"type": "unsubscribe", "channel": "news", "id": 2})
    assert error_code(reply) == 404
    assert reply is not None and reply["id"] == 2 and reply["channel"] == "news"


def test_resubscribe_is_idempotent(realtime: Realtime) -> None:
    calls = []

    @realtime.authorizer("private-*")
    def counted(connection: Connection, channel: str) -> bool:
        calls.append(channel)
        return True

    client = realtime.test_client(user_id=1)
    first = client.request({"type": "subscribe", "channel": "private-a", "id": 1})
    second = client.request({"type": "subscribe", "channel": "private-a", "id": 2})
    assert first == {"type": "subscribed", "channel": "private-a", "id": 1}
    assert second == {"type": "subscribed", "channel": "private-a", "id": 2}
    assert realtime.channel("private-a").subscriber_count == 1
    realtime.broadcast("private-a", "e", 1)
    assert client.events() == [("e", 1)]  # once, not twice
    assert calls == ["private-a"]


def test_max_subscriptions(make: Factory) -> None:
    realtime = make(REALTIME_MAX_SUBSCRIPTIONS=2)
    client = realtime.test_client()
    assert client.subscribe("a")["type"] == "subscribed"
    assert client.subscribe("b")["type"] == "subscribed"
    reply = client.subscribe("c")
    assert error_code(reply) == 403
    assert reply["channel"] == "c"
    assert realtime.channel("c").subscriber_count == 0
    # subscribing again to one it has is still fine
    assert client.subscribe("a")["type"] == "subscribed"
    # after leaving one, there is room again
    client.unsubscribe("a")
    assert client.subscribe("c")["type"] == "subscribed"
    # the limit is per connection
    assert realtime.test_client().subscribe("d")["type"] == "subscribed"


# -- presence --------------------------------------------------------------------


@pytest.fixture
def presence(realtime: Realtime) -> Realtime:
    """Presence channels open to everyone, with user_info from the authorizer."""

    @realtime.authorizer("presence-*")
    def member(connection: Connection, channel: str) -> dict[str, t.Any]:
        return {"name": f"user{connection.user_id}"}

    return realtime


def test_presence_needs_an_authenticated_user(presence: Realtime) -> None:
    reply = presence.test_client().subscribe("presence-room.1")
    assert error_code(reply) == 401
    assert presence.channel("presence-room.1").subscriber_count == 0


def test_presence_members_with_user_info_from_the_authorizer(
    presence: Realtime,
) -> None:
    alice = presence.test_client(user_id=1, user_info={"name": "ignored"})
    reply = alice.request({"type": "subscribe", "channel": "presence-room.1", "id": 1})
    assert reply == {
        "type": "subscribed",
        "channel": "presence-room.1",
        "id": 1,
        "data": {
            "members": [
                {
                    "user_id": 1,
                    "user_info": {"name": "user1"},
                    "connected_at": alice.connection.connected_at,
                }
            ]
        },
    }
    bob = presence.test_client(user_id=2)
    members = bob.subscribe("presence-room.1")["data"]["members"]
    assert sorted((m["user_id"], m["user_info"]["name"]) for m in members) == [
        (1, "user1"),
        (2, "user2"),
    ]


def test_presence_user_info_from_the_connection_when_authorizer_says_true(
    realtime: Realtime,
) -> None:
    realtime.authorizer("presence-*")(allow)
    client = realtime.test_client(user_id=7, user_info={"name": "Seven"})
    members = client.subscribe("presence-a")["data"]["members"]
    assert [(m["user_id"], m["user_info"]) for m in members] == [(7, {"name": "Seven"})]


def test_presence_authorizer_returning_an_empty_dict_admits(
    realtime: Realtime,
) -> None:
    # "may return a dict: the member's user_info" -- an empty one included.
    realtime.authorizer("presence-*")(lambda connection, channel: {})
    reply = realtime.test_client(user_id=1).subscribe("presence-a")
    assert reply["type"] == "subscribed"
    assert reply["data"]["members"][0]["user_info"] == {}


def test_presence_join_once_per_user(presence: Realtime) -> None:
    observer = presence.test_client(user_id=9)
    observer.subscribe("presence-room.1")
    first = presence.test_client(user_id=5)
    second = presence.test_client(user_id="5")  # the same user, by value

    first.subscribe("presence-room.1")
    assert observer.get_received() == [
        {
            "type": "event",
            "channel": "presence-room.1",
            "event": "presence.join",
            "data": {"user_id": 5, "user_info": {"name": "user5"}},
        }
    ]
    assert first.received == []  # no join about oneself

    members = second.subscribe("presence-room.1")["data"]["members"]
    assert observer.received == []  # no second join for the same user
    assert first.received == []
    assert sorted(str(m["user_id"]) for m in members) == ["5", "9"]
    assert len(presence.channel("presence-room.1").get_presence_data()) == 2
    assert presence.channel("presence-room.1").subscriber_count == 3


def test_presence_leave_only_when_the_last_connection_leaves(
    presence: Realtime,
) -> None:
    observer = presence.test_client(user_id=9)
    observer.subscribe("presence-room.1")
    first = presence.test_client(user_id=5)
    second = presence.test_client(user_id="5")
    first.subscribe("presence-room.1")
    second.subscribe("presence-room.1")
    observer.received.clear()

    first.unsubscribe("presence-room.1")
    assert observer.received == []
    users = [
        m["user_id"] for m in presence.channel("presence-room.1").get_presence_data()
    ]
    assert sorted(map(str, users)) == ["5", "9"]

    second.unsubscribe("presence-room.1")
    assert [(e, str(d["user_id"])) for e, d in observer.events()] == [
        ("presence.leave", "5")
    ]
    users = [
        m["user_id"] for m in presence.channel("presence-room.1").get_presence_data()
    ]
    assert users == [9]


def test_presence_leave_carries_the_user_id_the_join_announced(
    presence: Realtime,
) -> None:
    observer = presence.test_client(user_id=9)
    observer.subscribe("presence-room.1")
    first = presence.test_client(user_id=5)
    second = presence.test_client(user_id="5")
    first.subscribe("presence-room.1")
    second.subscribe("presence-room.1")
    first.disconnect()
    second.disconnect()
    (join, leave) = observer.get_received()
    # a client removes the member it was told about: same id, same JSON type
    assert join["data"]["user_id"] == 5
    assert leave == {
        "type": "event",
        "channel": "presence-room.1",
        "event": "presence.leave",
        "data": {"user_id": 5},
    }


def test_presence_leave_on_disconnect(presence: Realtime) -> None:
    observer = presence.test_client(user_id=9)
    observer.subscribe("presence-room.1")
    leaver = presence.test_client(user_id=5)
    leaver.subscribe("presence-room.1")
    observer.received.clear()

    leaver.disconnect()
    assert observer.get_received() == [
        {
            "type": "event",
            "channel": "presence-room.1",
            "event": "presence.leave",
            "data": {"user_id": 5},
        }
    ]
    channel = presence.channel("presence-room.1")
    assert [m["user_id"] for m in channel.get_presence_data()] == [9]
    assert channel.subscriber_count == 1


def test_get_presence_data_and_subscriber_count(presence: Realtime) -> None:
    channel = presence.channel("presence-room.1")
    assert channel.kind == "presence"
    assert channel.get_presence_data() == []
    assert channel.subscriber_count == 0
    alice = presence.test_client(user_id=1)
    alice.subscribe("presence-room.1")
    presence.test_client(user_id=1).subscribe("presence-room.1")
    assert channel.subscriber_count == 2
    assert channel.get_presence_data() == [
        {
            "user_id": 1,
            "user_info": {"name": "user1"},
            "connected_at": alice.connection.connected_at,
        }
    ]


# -- client events ---------------------------------------------------------------


def test_handler_gets_connection_channel_and_data_in_the_app_context(
    realtime: Realtime,
) -> None:
    app = realtime.node.app
    calls: list[tuple[t.Any, ...]] = []

    @realtime.on("msg", channel="chat.*")
    def on_msg(connection: Connection, channel: str, data: t.Any) -> None:
        calls.append((connection, channel, data, current_app._get_current_object()))

    assert on_msg.__name__ == "on_msg"
    client = realtime.test_client(user_id=1)
    client.subscribe("chat.room.1")
    assert client.emit("chat.room.1", "msg", {"text": "hi"}) is None
    assert calls == [(client.connection, "chat.room.1", {"text": "hi"}, app)]


def test_handler_is_chosen_by_channel_pattern(realtime: Realtime) -> None:
    calls = []
    realtime.on("msg", channel="chat.*")(lambda c, ch, d: calls.append(ch))
    client = realtime.test_client()
    client.subscribe("news")
    assert error_code(client.emit("news", "msg", 1)) == 403
    assert calls == []


def test_handler_may_rebroadcast(realtime: Realtime) -> None:
    @realtime.on("message.sent", channel="chat.room.*")
    def relay(connection: Connection, channel: str, data: t.Any) -> None:
        realtime.broadcast(channel, "message.sent", {"text": str(data["text"])[:5]})

    sender = realtime.test_client()
    other = realtime.test_client()
    sender.subscribe("chat.room.1")
    other.subscribe("chat.room.1")
    assert sender.emit("chat.room.1", "message.sent", {"text": "hello world"}) is None
    assert other.events() == [("message.sent", {"text": "hello"})]
    assert sender.events() == [("message.sent", {"text": "hello"})]


def test_handler_raising_rejected_gives_403(realtime: Realtime) -> None:
    @realtime.on("msg")
    def refuse(connection: Connection, channel: str, data: t.Any) -> None:
        raise Rejected("no spam")

    client = realtime.test_client()
    client.subscribe("chat")
    reply = client.emit("chat", "msg", 1)
    assert reply is not None
    assert reply["data"] == {"code": 403, "message": "no spam"}
    assert reply["channel"] == "chat"
    assert isinstance(reply["id"], int)


def test_handler_returning_false_gives_403(realtime: Realtime) -> None:
    realtime.on("msg")(lambda connection, channel, data: False)
    client = realtime.test_client()
    client.subscribe("chat")
    assert error_code(client.emit("chat", "msg", 1)) == 403


@pytest.mark.parametrize("result", [None, True, 0, "", {}])
def test_handler_returning_anything_else_accepts(
    realtime: Realtime, result: t.Any
) -> None:
    realtime.on("msg")(lambda connection, channel, data: result)
    client = realtime.test_client()
    client.subscribe("chat")
    assert client.emit("chat", "msg", 1) is None


def test_handler_raising_gives_500_and_is_logged(
    realtime: Realtime, caplog: pytest.LogCaptureFixture
) -> None:
    class Oops(Exception):
        pass

    @realtime.on("msg")
    def broken(connection: Connection, channel: str, data: t.Any) -> None:
        raise Oops("bug in the app")

    client = realtime.test_client()
    client.subscribe("chat")
    with caplog.at_level(logging.ERROR, logger="flask_realtime"):
        reply = client.emit("chat", "msg", 1)
    assert error_code(reply) == 500
    assert reply is not None and "bug in the app" not in reply["data"]["message"]
    records = [r for r in caplog.records if r.exc_info and r.exc_info[0] is Oops]
    assert len(records) == 1 and records[0].levelno == logging.ERROR
    assert client.close_code is None
    assert client.ping()["type"] == "pong"


@pytest.mark.parametrize("channel", ["private-chat.1", "presence-room.1"])
def test_client_event_relayed_to_the_other_subscribers_only(
    realtime: Realtime, channel: str
) -> None:
    realtime.authorizer("private-*")(allow)
    realtime.authorizer("presence-*")(allow)
    sender = realtime.test_client(user_id=1)
    other = realtime.test_client(user_id=2)
    outsider = realtime.test_client(user_id=3)
    sender.subscribe(channel)
    other.subscribe(channel)
    sender.received.clear()
    other.received.clear()

    assert sender.emit(channel, "client-typing", {"who": 1}) is None
    assert other.get_received() == [
        {
            "type": "event",
            "channel": channel,
            "event": "client-typing",
            "data": {"who": 1},
        }
    ]
    assert sender.received == []
    assert outsider.received == []


def test_client_event_on_an_authorizer_pattern_channel_is_relayed(
    make: Factory,
) -> None:
    realtime = make(REALTIME_AUTHORIZERS={"team.*": allow})
    a, b = realtime.test_client(user_id=1), realtime.test_client(user_id=2)
    a.subscribe("team.red")
    b.subscribe("team.red")
    assert a.emit("team.red", "client-move", 3) is None
    assert b.events() == [("client-move", 3)]


def test_client_event_on_a_public_channel_is_forbidden(realtime: Realtime) -> None:
    sender, other = realtime.test_client(), realtime.test_client()
    sender.subscribe("news")
    other.subscribe("news")
    assert error_code(sender.emit("news", "client-typing", 1)) == 403
    assert other.received == []


def test_non_client_event_on_private_without_handler_is_forbidden(
    realtime: Realtime,
) -> None:
    realtime.authorizer("private-*")(allow)
    sender, other = realtime.test_client(user_id=1), realtime.test_client(user_id=2)
    sender.subscribe("private-chat.1")
    other.subscribe("private-chat.1")
    assert error_code(sender.emit("private-chat.1", "message.sent", 1)) == 403
    assert other.received == []


def test_event_on_a_channel_not_subscribed_is_404(realtime: Realtime) -> None:
    called = []
    realtime.on("msg")(lambda c, ch, d: called.append(d))
    realtime.authorizer("private-*")(allow)
    sender, member = realtime.test_client(user_id=1), realtime.test_client(user_id=2)
    member.subscribe("private-chat.1")
    reply = sender.emit("private-chat.1", "client-typing", 1)
    assert error_code(reply) == 404
    assert error_code(sender.emit("chat", "msg", 1)) == 404
    assert member.received == []
    assert called == []


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


# -- rate limit ----------------------------------------------------------------------


def test_rate_limit_refuses_then_closes(make: Factory, clock: list[float]) -> None:
    realtime = make(
        REALTIME_RATE_LIMIT={
            "enabled": True,
            "messages_per_minute": 5,
            "close_after": 3,
        }
    )
    client = realtime.test_client()
    for _ in range(5):
        assert client.ping()["type"] == "pong"

    refused = client.request({"type": "ping", "id": 6})
    assert error_code(refused) == 429
    assert refused is not None and refused["data"]["retry_after"] > 0
    assert refused["data"]["retry_after"] == pytest.approx(12.0)
    assert client.close_code is None

    assert error_code(client.request({"type": "ping"})) == 429
    assert client.close_code is None
    assert error_code(client.request({"type": "ping"})) == 429  # third in a row
    assert client.close_code == protocol.CLOSE_RATE_LIMIT_ABUSE == 4129
    assert len(realtime.node.hub) == 0
    with pytest.raises(RuntimeError):
        client.ping()


def test_rate_limit_counts_every_kind_of_message(
    make: Factory, clock: list[float]
) -> None:
    realtime = make(REALTIME_RATE_LIMIT={"messages_per_minute": 3})
    client = realtime.test_client()
    client.subscribe("news")
    client.request("not json")
    client.ping()
    assert error_code(client.request({"type": "subscribe", "channel": "x"})) == 429


def test_rate_limit_refills_and_a_success_resets_the_strikes(
    make: Factory, clock: list[float]
) -> None:
    realtime = make(REALTIME_RATE_LIMIT={"messages_per_minute": 5, "close_after": 3})
    client = realtime.test_client()
    for _ in range(5):
        client.ping()
    assert error_code(client.request({"type": "ping"})) == 429
    assert error_code(client.request({"type": "ping"})) == 429
    clock[0] += 12.0  # one token back at 5/min
    assert client.ping()["type"] == "pong"
    assert error_code(client.request({"type": "ping"})) == 429
    assert error_code(client.request({"type": "ping"})) == 429
    assert client.close_code is None  # the run of refusals started again


def test_rate_limit_is_per_connection(make: Factory, clock: list[float]) -> None:
    realtime = make(REALTIME_RATE_LIMIT={"messages_per_minute": 2})
    first, second = realtime.test_client(user_id=1), realtime.test_client(user_id=1)
    first.ping()
    first.ping()
    assert error_code(first.request({"type": "ping"})) == 429
    assert second.ping()["type"] == "pong"


def test_disabled_rate_limit_never_refuses(make: Factory, clock: list[float]) -> None:
    realtime = make(
        REALTIME_RATE_LIMIT={
            "enabled": False,
            "messages_per_minute": 1,
            "close_after": 1,
        }
    )
    client = realtime.test_client()
    replies = [client.request({"type": "ping", "id": i}) for i in range(100)]
    assert replies == [{"type": "pong", "id": i} for i in range(100)]
    assert client.close_code is None


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


def test_client_event_relay_with_the_broker_out_of_reach_is_a_503_error(
    make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_realtime import BrokerUnavailable

    realtime = make(REALTIME_AUTHORIZERS={"team.*": allow})
    a, b = realtime.test_client(user_id=1), realtime.test_client(user_id=2)
    a.subscribe("team.red")
    b.subscribe("team.red")

    def unavailable(topic: str, data: bytes) -> None:
        raise BrokerUnavailable("the broker is down and its buffer full")

    monkeypatch.setattr(realtime.node.broker, "publish", unavailable)
    reply = a.emit("team.red", "client-move", 3)
    assert error_code(reply) == 503
    assert b.events() == []
    monkeypatch.undo()
    assert a.emit("team.red", "client-move", 4) is None
    assert b.events() == [("client-move", 4)]
