"""The node through the extension's TestClient: client events and their
handlers, and the rate limit (node/messages.py)."""

from __future__ import annotations

import logging
import typing as t

import pytest
from flask import current_app

from flask_realtime import Connection, Realtime, Rejected, protocol
from tests.unit.conftest import Factory
from tests.unit.node_helpers import allow, error_code

pytestmark = pytest.mark.usefixtures("own_initialised_apps")


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


@pytest.mark.parametrize("result", [True, 0, "", {}])
def test_handler_returning_anything_else_accepts_and_answers_with_it(
    realtime: Realtime, result: t.Any
) -> None:
    realtime.on("msg")(lambda connection, channel, data: result)
    client = realtime.test_client()
    client.subscribe("chat")
    reply = client.emit("chat", "msg", 1)
    assert reply == {"type": "ack", "id": 2, "channel": "chat", "data": result}


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
            "user_id": 1,  # the sender, as the server knows it
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
