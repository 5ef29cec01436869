"""protocol.py: parsing client messages and building server envelopes
(PROTOCOL.md, "Envelope", "Server → client" and "Client → server")."""

from __future__ import annotations

import json
import typing as t

import pytest

from flask_realtime import protocol
from flask_realtime.protocol import ClientMessage, ProtocolError


def parse_error(raw: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        protocol.parse(raw)
    return info.value


def decode(data: bytes) -> t.Any:
    assert isinstance(data, bytes)
    return json.loads(data)


# -- parse: bad input ------------------------------------------------------------

NO_ID = None

BAD_MESSAGES = [
    # not JSON at all
    pytest.param("not json", NO_ID, id="invalid-json"),
    pytest.param("", NO_ID, id="empty-string"),
    pytest.param('{"type": "ping"', NO_ID, id="truncated-json"),
    pytest.param(b"\xff\xfe{}", NO_ID, id="invalid-utf8-bytes"),
    pytest.param("[" * 50_000, NO_ID, id="deeply-nested-array"),
    pytest.param('{"a":' * 50_000, NO_ID, id="deeply-nested-object"),
    # JSON, but not an object
    pytest.param("[]", NO_ID, id="array"),
    pytest.param('[{"type": "ping", "id": 1}]', NO_ID, id="array-of-message"),
    pytest.param('"x"', NO_ID, id="string"),
    pytest.param("5", NO_ID, id="number"),
    pytest.param("null", NO_ID, id="null"),
    pytest.param("true", NO_ID, id="bool"),
    # type
    pytest.param('{"id": 1}', 1, id="missing-type"),
    pytest.param('{"type": 5, "id": 1}', 1, id="numeric-type"),
    pytest.param('{"type": null, "id": "r"}', "r", id="null-type"),
    pytest.param('{"type": ["ping"], "id": 2}', 2, id="list-type"),
    pytest.param('{"type": "publish", "id": "a"}', "a", id="unknown-type"),
    pytest.param('{"type": "PING", "id": 3}', 3, id="type-is-case-sensitive"),
    pytest.param('{"type": "connected", "id": 3}', 3, id="server-type-from-client"),
    # channel
    pytest.param('{"type": "subscribe", "id": 1}', 1, id="subscribe-no-channel"),
    pytest.param('{"type": "unsubscribe", "id": 1}', 1, id="unsubscribe-no-channel"),
    pytest.param('{"type": "event", "event": "e", "id": 1}', 1, id="event-no-channel"),
    pytest.param('{"type": "subscribe", "channel": 5, "id": 1}', 1, id="int-channel"),
    pytest.param(
        '{"type": "subscribe", "channel": null, "id": 1}', 1, id="null-channel"
    ),
    pytest.param(
        '{"type": "subscribe", "channel": ["a"], "id": 1}', 1, id="list-channel"
    ),
    pytest.param('{"type": "subscribe", "channel": "", "id": 7}', 7, id="empty-name"),
    pytest.param(
        json.dumps({"type": "subscribe", "channel": "a" * 201, "id": 7}),
        7,
        id="201-char-name",
    ),
    pytest.param(
        '{"type": "subscribe", "channel": "chat room", "id": 7}', 7, id="space"
    ),
    pytest.param('{"type": "subscribe", "channel": "chat/1", "id": 7}', 7, id="slash"),
    pytest.param(
        '{"type": "subscribe", "channel": "caf\\u00e9", "id": 7}', 7, id="unicode"
    ),
    pytest.param(
        '{"type": "subscribe", "channel": "chat\\n", "id": 7}', 7, id="newline"
    ),
    pytest.param('{"type": "subscribe", "channel": "a*", "id": 7}', 7, id="star"),
    pytest.param(
        '{"type": "event", "channel": "chat 1", "event": "e", "id": 7}',
        7,
        id="event-bad-channel",
    ),
    # event
    pytest.param(
        '{"type": "event", "channel": "c", "data": 1, "id": 8}', 8, id="missing-event"
    ),
    pytest.param(
        '{"type": "event", "channel": "c", "event": "", "id": 8}', 8, id="empty-event"
    ),
    pytest.param(
        '{"type": "event", "channel": "c", "event": 5, "id": 8}', 8, id="int-event"
    ),
    pytest.param(
        '{"type": "event", "channel": "c", "event": null, "id": 8}',
        8,
        id="null-event",
    ),
    pytest.param(
        json.dumps({"type": "event", "channel": "c", "event": "e" * 201, "id": 8}),
        8,
        id="201-char-event",
    ),
    # id of the wrong type: refused, and not echoed
    pytest.param('{"type": "ping", "id": [1]}', NO_ID, id="list-id"),
    pytest.param('{"type": "ping", "id": true}', NO_ID, id="true-id"),
    pytest.param('{"type": "ping", "id": false}', NO_ID, id="false-id"),
    pytest.param('{"type": "ping", "id": {"n": 1}}', NO_ID, id="object-id"),
    pytest.param('{"type": "ping", "id": 1.5}', NO_ID, id="float-id"),
    pytest.param(
        '{"type": "subscribe", "channel": "c", "id": [1]}', NO_ID, id="id-sub"
    ),
]


@pytest.mark.parametrize(("raw", "expected_id"), BAD_MESSAGES)
def test_parse_refuses_bad_input_with_400(raw: str | bytes, expected_id: t.Any) -> None:
    exc = parse_error(raw)
    assert exc.code == 400
    assert exc.request_id == expected_id
    envelope = decode(exc.envelope())
    assert envelope["type"] == "error"
    assert envelope["data"]["code"] == 400
    assert isinstance(envelope["data"]["message"], str) and envelope["data"]["message"]
    if expected_id is None:
        assert "id" not in envelope
    else:
        assert envelope["id"] == expected_id


def test_parse_error_for_a_bad_event_names_the_channel() -> None:
    exc = parse_error('{"type": "event", "channel": "chat.1", "event": "", "id": 1}')
    assert exc.channel == "chat.1"
    assert decode(exc.envelope())["channel"] == "chat.1"


def test_parse_error_for_an_unknown_type_mentions_it() -> None:
    exc = parse_error('{"type": "publish"}')
    assert "publish" in exc.message


# -- parse: good input -------------------------------------------------------------


def test_parse_ping_without_id() -> None:
    assert protocol.parse('{"type": "ping"}') == ClientMessage(
        "ping", None, None, None, None
    )


@pytest.mark.parametrize("request_id", [0, 4, -1, "abc", ""])
def test_parse_keeps_string_and_integer_ids(request_id: t.Any) -> None:
    message = protocol.parse(json.dumps({"type": "ping", "id": request_id}))
    assert message.id == request_id


@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe"])
def test_parse_subscribe_and_unsubscribe(kind: str) -> None:
    raw = json.dumps({"type": kind, "channel": "presence-room.1", "id": 1})
    assert protocol.parse(raw) == ClientMessage(kind, 1, "presence-room.1", None, None)


def test_parse_event_with_data_from_bytes() -> None:
    raw = json.dumps(
        {"type": "event", "channel": "c", "event": "e", "data": {"x": [1]}, "id": 3}
    ).encode()
    assert protocol.parse(raw) == ClientMessage("event", 3, "c", "e", {"x": [1]})


def test_parse_event_without_data_has_none() -> None:
    message = protocol.parse('{"type": "event", "channel": "c", "event": "e"}')
    assert message.data is None
    assert message.id is None


def test_parse_accepts_200_character_names() -> None:
    name = "a" * 200
    message = protocol.parse(json.dumps({"type": "subscribe", "channel": name}))
    assert message.channel == name


# -- builders --------------------------------------------------------------------


def test_connected_without_token() -> None:
    assert decode(protocol.connected("n1.abc", 25)) == {
        "type": "connected",
        "data": {"connection_id": "n1.abc", "heartbeat": 25, "protocol": 1},
    }


def test_connected_with_token() -> None:
    assert decode(protocol.connected("n1.abc", 25, "s3cret")) == {
        "type": "connected",
        "data": {
            "connection_id": "n1.abc",
            "heartbeat": 25,
            "protocol": 1,
            "token": "s3cret",
        },
    }


def test_broadcast_event() -> None:
    data = {"user": "John", "text": "Hello!"}
    assert decode(protocol.event("chat.room.1", "message.sent", data)) == {
        "type": "event",
        "channel": "chat.room.1",
        "event": "message.sent",
        "data": data,
    }


def test_direct_event_has_no_channel_key() -> None:
    envelope = decode(protocol.event(None, "notification.new", {"title": "Hi"}))
    assert envelope == {
        "type": "event",
        "event": "notification.new",
        "data": {"title": "Hi"},
    }
    assert "channel" not in envelope


def test_subscribed_reply() -> None:
    assert decode(protocol.subscribed("news", 1)) == {
        "type": "subscribed",
        "channel": "news",
        "id": 1,
    }


def test_subscribed_reply_without_id() -> None:
    assert decode(protocol.subscribed("news", None)) == {
        "type": "subscribed",
        "channel": "news",
    }


def test_subscribed_reply_with_members() -> None:
    members = [
        {"user_id": 1, "user_info": {"name": "John"}, "connected_at": 1764230400}
    ]
    assert decode(protocol.subscribed("presence-room.1", 1, {"members": members})) == {
        "type": "subscribed",
        "channel": "presence-room.1",
        "id": 1,
        "data": {"members": members},
    }


def test_unsubscribed_reply() -> None:
    assert decode(protocol.unsubscribed("news", 2)) == {
        "type": "unsubscribed",
        "channel": "news",
        "id": 2,
    }


def test_pong() -> None:
    assert decode(protocol.pong(4)) == {"type": "pong", "id": 4}
    assert decode(protocol.pong("x")) == {"type": "pong", "id": "x"}
    assert decode(protocol.pong(None)) == {"type": "pong"}


def test_error_with_id_and_channel() -> None:
    envelope = protocol.error(403, "forbidden", request_id=1, channel="private-chat.5")
    assert decode(envelope) == {
        "type": "error",
        "id": 1,
        "channel": "private-chat.5",
        "data": {"code": 403, "message": "forbidden"},
    }


def test_error_without_id_or_channel() -> None:
    assert decode(protocol.error(400, "invalid JSON")) == {
        "type": "error",
        "data": {"code": 400, "message": "invalid JSON"},
    }


def test_error_with_retry_after() -> None:
    envelope = protocol.error(429, "rate limit exceeded", request_id=9, retry_after=1.5)
    assert decode(envelope) == {
        "type": "error",
        "id": 9,
        "data": {"code": 429, "message": "rate limit exceeded", "retry_after": 1.5},
    }


def test_protocol_error_envelope_carries_everything() -> None:
    exc = ProtocolError(429, "slow down", request_id="r", channel="c", retry_after=2)
    assert decode(exc.envelope()) == {
        "type": "error",
        "id": "r",
        "channel": "c",
        "data": {"code": 429, "message": "slow down", "retry_after": 2},
    }


def test_encode_is_compact_utf8() -> None:
    data = protocol.encode({"type": "event", "data": {"text": "héllo"}})
    assert data == '{"type":"event","data":{"text":"héllo"}}'.encode()
