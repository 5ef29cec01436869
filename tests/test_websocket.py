"""The WebSocket transport against real servers, one of each kind.

Every test here runs once per server kind (gunicorn with gevent-websocket's
worker, ``gunicorn -k gevent``, ``flask realtime serve``, ``flask run``),
with a real WebSocket client.
"""

from __future__ import annotations

import json
import socket
import typing as t
import urllib.parse

import pytest
import requests
import websocket

from tests import servers
from tests.servers import Server
from tests.wsclient import Client, ConnectionClosed, connect


@pytest.fixture(scope="module", params=servers.KINDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> t.Iterator[Server]:
    started = servers.start(request.param, tmp_path_factory.mktemp(request.param))
    yield started
    started.stop()


def _client(server: Server, **query: str) -> Client:
    url = server.ws_url
    if query:
        url += "?" + urllib.parse.urlencode(query)
    return connect(url)


def _broadcast(server: Server, channel: str, event: str, data: t.Any) -> None:
    response = requests.get(
        f"{server.url}/broadcast",
        params={"channel": channel, "event": event, "data": json.dumps(data)},
        timeout=5,
    )
    assert response.status_code == 200, response.text


def _assert_still_working(server: Server, client: Client) -> None:
    """The connection answers pings and gets broadcasts; so does a new one."""
    assert client.ping(id="alive")["type"] == "pong"
    channel = f"check.{id(client)}"
    assert client.subscribe(channel)["type"] == "subscribed"
    with _client(server) as other:
        assert other.subscribe(channel)["type"] == "subscribed"
        _broadcast(server, channel, "still.here", {"ok": True})
        for c in (client, other):
            assert c.wait_event("still.here", channel)["data"] == {"ok": True}


def test_connected_is_the_first_message(server: Server) -> None:
    with _client(server) as a, _client(server) as b:
        welcome = a.welcome
        assert welcome["type"] == "connected"
        assert welcome["data"]["protocol"] == 1
        assert welcome["data"]["heartbeat"] == 25
        assert "token" not in welcome["data"]
        assert a.connection_id != b.connection_id


def test_broadcast_reaches_every_subscriber_and_nobody_else(server: Server) -> None:
    with _client(server) as a, _client(server) as b, _client(server) as outsider:
        assert a.subscribe("news")["type"] == "subscribed"
        assert b.subscribe("news", id=7) == {
            "type": "subscribed",
            "channel": "news",
            "id": 7,
        }
        assert outsider.subscribe("sport")["type"] == "subscribed"
        _broadcast(server, "news", "headline", {"title": "Hi"})
        for c in (a, b):
            assert c.wait_event("headline") == {
                "type": "event",
                "channel": "news",
                "event": "headline",
                "data": {"title": "Hi"},
            }
        _broadcast(server, "sport", "score", 1)
        assert outsider.wait_event("score")["channel"] == "sport"
        assert not [m for m in outsider.skipped if m.get("event") == "headline"]


def test_unsubscribe_stops_delivery(server: Server) -> None:
    with _client(server) as a:
        a.subscribe("weather")
        assert a.unsubscribe("weather", id="u1") == {
            "type": "unsubscribed",
            "channel": "weather",
            "id": "u1",
        }
        a.subscribe("marker")
        _broadcast(server, "weather", "rain", None)
        _broadcast(server, "marker", "done", None)
        a.wait_event("done")
        assert not [m for m in a.skipped if m.get("event") == "rain"]


# -- bad input: the error, and nothing else harmed ------------------------------

BAD_MESSAGES = {
    "invalid_json": ("{not json", 400),
    "non_object_json": ("[1, 2, 3]", 400),
    "json_string": ('"subscribe"', 400),
    "unknown_type": ('{"type": "teleport", "id": 1}', 400),
    "missing_type": ('{"channel": "news", "id": 1}', 400),
    "type_not_string": ('{"type": 5, "id": 1}', 400),
    "missing_channel": ('{"type": "subscribe", "id": 1}', 400),
    "channel_not_string": ('{"type": "subscribe", "channel": 5, "id": 1}', 400),
    "channel_with_space": ('{"type": "subscribe", "channel": "a b", "id": 1}', 400),
    "channel_too_long": (json.dumps({"type": "subscribe", "channel": "a" * 201}), 400),
    "empty_channel": ('{"type": "subscribe", "channel": "", "id": 1}', 400),
    "event_missing_name": ('{"type": "event", "channel": "news", "id": 1}', 400),
    "event_name_not_string": (
        '{"type": "event", "channel": "news", "event": 3, "id": 1}',
        400,
    ),
    "id_wrong_type": ('{"type": "ping", "id": [1]}', 400),
    "unsubscribe_not_subscribed": (
        '{"type": "unsubscribe", "channel": "never", "id": 1}',
        404,
    ),
    "event_not_subscribed": (
        '{"type": "event", "channel": "chat.1", "event": "echo", "id": 1}',
        404,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MESSAGES))
def test_bad_message_gets_an_error_and_harms_nothing(server: Server, case: str) -> None:
    text, code = BAD_MESSAGES[case]
    with _client(server) as client:
        client.send_text(text)
        error = client.wait_for(lambda m: m.get("type") == "error")
        assert error["data"]["code"] == code
        assert isinstance(error["data"]["message"], str) and error["data"]["message"]
        _assert_still_working(server, client)


def test_binary_frame_gets_400_and_harms_nothing(server: Server) -> None:
    with _client(server) as client:
        client.send_binary(b"\x00\x01binary")
        error = client.wait_for(lambda m: m.get("type") == "error")
        assert error["data"]["code"] == 400
        _assert_still_working(server, client)


def test_oversize_message_gets_413_then_close_1009(server: Server) -> None:
    with _client(server) as bystander, _client(server) as client:
        bystander.subscribe("calm")
        client.send_text(json.dumps({"type": "ping", "pad": "x" * (64 * 1024)}))
        error = client.wait_for(lambda m: m.get("type") == "error")
        assert error["data"]["code"] == 413
        assert client.expect_close() == 1009
        _broadcast(server, "calm", "fine", 1)
        assert bystander.wait_event("fine")["data"] == 1
        _assert_still_working(server, bystander)


def test_malformed_handshake_key_gets_400_json(server: Server) -> None:
    response = requests.get(
        server.ws_url.replace("ws://", "http://"),
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "not base64!",
            "Sec-WebSocket-Version": "13",
        },
        timeout=5,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 400
    with _client(server) as client:
        _assert_still_working(server, client)


def test_plain_http_request_to_the_websocket_path_gets_400_json(server: Server) -> None:
    response = requests.get(server.ws_url.replace("ws://", "http://"), timeout=5)
    assert response.status_code == 400
    assert "upgrade" in response.json()["error"]["message"].lower()


def test_framing_violation_closes_only_that_connection(server: Server) -> None:
    with _client(server) as bystander, _client(server) as client:
        # An unmasked client frame breaks RFC 6455: close 1002.
        client.ws.sock.sendall(b"\x81\x02hi")
        assert client.expect_close() == 1002
        _assert_still_working(server, bystander)


# -- authentication, origins, channels ------------------------------------------


def test_refused_authentication_closes_with_4001(server: Server) -> None:
    with pytest.raises(ConnectionClosed) as closed:
        _client(server, deny="1")
    assert closed.value.code == 4001


def test_foreign_origin_is_refused_before_the_upgrade(server: Server) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(server.ws_url, origin="http://evil.example")
    assert refused.value.status_code == 403
    same = connect(server.ws_url, origin=server.url)
    same.close()


def test_private_channel_needs_the_authorizer(server: Server) -> None:
    with _client(server, user="5") as five, _client(server, user="6") as six:
        assert five.subscribe("private-room.5")["type"] == "subscribed"
        refused = six.subscribe("private-room.5")
        assert refused["type"] == "error" and refused["data"]["code"] == 403
        # No authorizer matches the "private." form here: denied by default.
        refused = five.subscribe("private.room.5")
        assert refused["data"]["code"] == 403
    with _client(server) as anonymous:
        assert anonymous.subscribe("private-room.5")["data"]["code"] == 403


def test_presence_members_join_and_leave(server: Server) -> None:
    channel = "presence-lobby"
    with _client(server, user="1", name="Ann") as ann:
        reply = ann.subscribe(channel)
        assert [m["user_id"] for m in reply["data"]["members"]] == ["1"]
        assert reply["data"]["members"][0]["user_info"] == {"name": "Ann"}
        assert isinstance(reply["data"]["members"][0]["connected_at"], int)

        bob = _client(server, user="2", name="Bob")
        members = bob.subscribe(channel)["data"]["members"]
        assert sorted(m["user_id"] for m in members) == ["1", "2"]
        join = ann.wait_event("presence.join", channel)
        assert join["data"] == {"user_id": "2", "user_info": {"name": "Bob"}}

        # A second connection of the same user joins nobody new.
        bob_again = _client(server, user="2", name="Bob")
        bob_again.subscribe(channel)
        bob.close()
        with pytest.raises(AssertionError):
            ann.wait_event("presence.leave", channel, timeout=0.5)
        # The last one drops its TCP connection without a goodbye: still a leave.
        bob_again.ws.sock.shutdown(socket.SHUT_RDWR)
        bob_again.ws.sock.close()
        leave = ann.wait_event("presence.leave", channel)
        assert leave["data"] == {"user_id": "2"}
        assert not [m for m in ann.skipped if m.get("event") == "presence.join"]
        presence = requests.get(
            f"{server.url}/presence", params={"channel": channel}, timeout=5
        ).json()
        assert [m["user_id"] for m in presence["members"]] == ["1"]
        assert presence["subscriber_count"] == 1


def test_presence_needs_a_user(server: Server) -> None:
    with _client(server) as anonymous:
        assert anonymous.subscribe("presence-lobby")["data"]["code"] == 401


# -- client events ---------------------------------------------------------------


def test_client_event_goes_through_its_handler(server: Server) -> None:
    with _client(server, user="3") as a, _client(server) as b:
        a.subscribe("chat.9")
        b.subscribe("chat.9")
        a.send_json(
            {"type": "event", "channel": "chat.9", "event": "echo", "data": "hi"}
        )
        for c in (a, b):
            assert c.wait_event("echo", "chat.9")["data"] == {"from": "3", "data": "hi"}


def test_client_prefixed_events_relay_on_private_channels_only(server: Server) -> None:
    with _client(server, user="1", name="A") as a, _client(server, user="2") as b:
        a.subscribe("presence-typing")
        b.subscribe("presence-typing")
        a.send_json(
            {"type": "event", "channel": "presence-typing", "event": "client-typing"}
        )
        assert b.wait_event("client-typing", "presence-typing")["data"] is None
        a.ping()  # a pong after the relay: the sender did not get its own event
        assert not [m for m in a.skipped if m.get("event") == "client-typing"]

        a.subscribe("public.room")
        refused = a.request(
            {"type": "event", "channel": "public.room", "event": "client-typing"}
        )
        assert refused["data"]["code"] == 403


# -- direct messages ---------------------------------------------------------------


def test_send_to_user_reaches_all_their_connections(server: Server) -> None:
    with (
        _client(server, user="5") as first,
        _client(server, user="5") as second,
        _client(server, user="6") as other,
    ):
        requests.get(
            f"{server.url}/send_to_user",
            params={"user": "5", "event": "note", "data": '{"n": 1}'},
            timeout=5,
        ).raise_for_status()
        for c in (first, second):
            assert c.wait_event("note") == {
                "type": "event",
                "event": "note",
                "data": {"n": 1},
            }
        other.ping()
        assert not [m for m in other.skipped if m.get("event") == "note"]


def test_send_reaches_one_connection(server: Server) -> None:
    with _client(server) as target, _client(server) as other:
        requests.get(
            f"{server.url}/send",
            params={"connection_id": target.connection_id, "event": "hello"},
            timeout=5,
        ).raise_for_status()
        requests.get(
            f"{server.url}/send",
            params={"connection_id": "nobody.nothing", "event": "hello"},
            timeout=5,
        ).raise_for_status()
        assert "channel" not in target.wait_event("hello")
        other.ping()
        assert not [m for m in other.skipped if m.get("event") == "hello"]
