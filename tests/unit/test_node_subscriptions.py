"""The node through the extension's TestClient: the connection's first
messages, subscriptions and authorizers (node/messages.py)."""

from __future__ import annotations

import logging
import typing as t

import pytest
from flask import Flask, has_app_context

from flask_realtime import Connection, Realtime
from tests.unit.conftest import Factory
from tests.unit.node_helpers import error_code

pytestmark = pytest.mark.usefixtures("own_initialised_apps")


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
