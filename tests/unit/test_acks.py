"""Acknowledged client events in the node (node/messages.py): an event with
an ``id`` is answered with an ``ack`` carrying the handler's value, a
refusal with an ``error`` carrying the rejection's code, and an event
without an ``id`` with nothing (PROTOCOL.md, "Acknowledged client events")."""

from __future__ import annotations

import json
import logging
import typing as t

import pytest

from flask_realtime import Connection, Realtime, Rejected, protocol
from flask_realtime.testing import TestClient
from tests.unit.node_helpers import allow

pytestmark = pytest.mark.usefixtures("own_initialised_apps")


def event(channel: str, name: str, data: t.Any, id: t.Any = None) -> dict[str, t.Any]:
    message = {"type": "event", "channel": channel, "event": name, "data": data}
    if id is not None:
        message["id"] = id
    return message


def subscribed(realtime: Realtime, channel: str = "chat") -> TestClient:
    client = realtime.test_client(user_id=1)
    client.subscribe(channel)
    return client


def test_the_handlers_value_answers_the_events_id(realtime: Realtime) -> None:
    @realtime.on("add")
    def add(connection: Connection, channel: str, data: t.Any) -> t.Any:
        return {"sum": data[0] + data[1], "by": connection.user_id}

    client = subscribed(realtime)
    reply = client.request(event("chat", "add", [2, 3], id="a-7"))
    assert reply == {
        "type": "ack",
        "id": "a-7",
        "channel": "chat",
        "data": {"sum": 5, "by": 1},
    }
    assert client.received == []  # the answer comes once, as the reply


def test_a_handler_returning_none_is_acked_without_data(realtime: Realtime) -> None:
    realtime.on("msg")(lambda connection, channel, data: None)
    client = subscribed(realtime)
    assert client.request(event("chat", "msg", 1, id=9)) == {
        "type": "ack",
        "id": 9,
        "channel": "chat",
    }
    assert client.emit("chat", "msg", 1) is None  # the test client's shorthand


def test_an_event_without_an_id_gets_no_reply(realtime: Realtime) -> None:
    calls = []
    realtime.on("msg")(lambda connection, channel, data: calls.append(data) or "ok")
    client = subscribed(realtime)
    assert client.request(event("chat", "msg", 1)) is None
    assert calls == [1]
    assert client.received == []


@pytest.mark.parametrize("channel", ["private-chat.1", "presence-room.1"])
def test_a_relayed_client_event_with_an_id_is_acked_once_published(
    realtime: Realtime, channel: str
) -> None:
    realtime.authorizer("private-*")(allow)
    realtime.authorizer("presence-*")(allow)
    sender, other = subscribed(realtime, channel), realtime.test_client(user_id=2)
    other.subscribe(channel)
    other.received.clear()
    reply = sender.request(event(channel, "client-typing", True, id=4))
    assert reply == {"type": "ack", "id": 4, "channel": channel}
    assert other.events(channel) == [("client-typing", True)]


def test_rejected_answers_with_its_code_and_message(realtime: Realtime) -> None:
    @realtime.on("msg")
    def refuse(connection: Connection, channel: str, data: t.Any) -> None:
        if not data:
            raise Rejected("say something", code=422)
        raise Rejected()

    client = subscribed(realtime)
    assert client.request(event("chat", "msg", "", id=5)) == {
        "type": "error",
        "id": 5,
        "channel": "chat",
        "data": {"code": 422, "message": "say something"},
    }
    default = client.request(event("chat", "msg", "x", id=6))
    assert default is not None
    assert default["data"] == {"code": 403, "message": "event refused"}
    # Without an id the refusal is still told, as before acks.
    unnamed = client.request(event("chat", "msg", ""))
    assert unnamed == {
        "type": "error",
        "channel": "chat",
        "data": {"code": 422, "message": "say something"},
    }


@pytest.mark.parametrize("code", [200, 399, 500, 600, "403", True])
def test_rejected_takes_a_client_error_code_only(code: t.Any) -> None:
    with pytest.raises(ValueError, match="400 to 499"):
        Rejected("no", code=code)


def test_rejected_is_one_class_under_its_public_names() -> None:
    from flask_realtime import errors, node

    assert Rejected is errors.Rejected is node.Rejected


@pytest.mark.parametrize(
    "value", [{1, 2}, object(), float("nan"), {"text": "\ud800"}], ids=repr
)
def test_a_value_that_is_not_json_is_a_500_and_logged_and_nothing_else_breaks(
    realtime: Realtime, value: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    sent = []

    @realtime.on("msg")
    def answer(connection: Connection, channel: str, data: t.Any) -> t.Any:
        realtime.broadcast(channel, "done", data)  # its work is done ...
        sent.append(data)
        return value  # ... but its answer cannot be sent

    realtime.on("fine")(lambda connection, channel, data: data)
    client, other = subscribed(realtime), subscribed(realtime)
    with caplog.at_level(logging.ERROR, logger="flask_realtime"):
        reply = client.request(event("chat", "msg", 1, id=3))
    assert reply is not None and reply["type"] == "error" and reply["id"] == 3
    assert reply["data"]["code"] == protocol.INTERNAL_ERROR == 500
    assert [r for r in caplog.records if "not JSON" in r.getMessage()]
    assert other.events("chat") == [("done", 1)]
    # Without an id the value is never encoded: no reply, nothing logged.
    caplog.clear()
    assert client.request(event("chat", "msg", 2)) is None
    assert not caplog.records
    # The connection and the others carry on.
    assert client.close_code is None and other.close_code is None
    assert client.request(event("chat", "fine", [1], id=4)) == {
        "type": "ack",
        "id": 4,
        "channel": "chat",
        "data": [1],
    }
    assert sent == [1, 2]


def test_a_handler_that_raises_answers_500_with_the_id(
    realtime: Realtime, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(connection: Connection, channel: str, data: t.Any) -> t.Any:
        raise KeyError("secret detail")

    realtime.on("msg")(broken)
    client = subscribed(realtime)
    with caplog.at_level(logging.ERROR, logger="flask_realtime"):
        reply = client.request(event("chat", "msg", 1, id="x"))
    assert reply == {
        "type": "error",
        "id": "x",
        "channel": "chat",
        "data": {"code": 500, "message": "the event handler failed"},
    }
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)
    assert client.ping()["type"] == "pong"


def test_the_first_matching_handler_answers_alone(realtime: Realtime) -> None:
    calls = []

    @realtime.on("msg", channel="chat.*")
    def specific(connection: Connection, channel: str, data: t.Any) -> str:
        calls.append("specific")
        return "specific"

    @realtime.on("msg")
    def general(connection: Connection, channel: str, data: t.Any) -> str:
        calls.append("general")
        return "general"

    client = subscribed(realtime, "chat.1")
    client.subscribe("news")
    assert client.request(event("chat.1", "msg", 1, id=1))["data"] == "specific"
    assert client.request(event("news", "msg", 1, id=2))["data"] == "general"
    assert calls == ["specific", "general"]


def test_false_still_refuses_with_403(realtime: Realtime) -> None:
    realtime.on("msg")(lambda connection, channel, data: False)
    client = subscribed(realtime)
    reply = client.request(event("chat", "msg", 1, id=1))
    assert reply is not None and reply["type"] == "error"
    assert reply["data"]["code"] == 403


def test_ack_envelope_is_compact_json() -> None:
    assert json.loads(protocol.ack("c", 3, {"a": 1})) == {
        "type": "ack",
        "id": 3,
        "channel": "c",
        "data": {"a": 1},
    }
    assert protocol.ack("c", "x") == b'{"type":"ack","id":"x","channel":"c"}'
