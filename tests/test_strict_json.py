"""Strict JSON both ways (RFC 8259 in UTF-8), on every server kind.

``NaN``, ``Infinity``, ``-Infinity``, numbers out of a double's range, lone
surrogates (``"\\ud800"`` escaped) and bytes that are not UTF-8 in a client's
input get the protocol's 400 and are never relayed: a ``NaN`` relayed to a
long-poll client broke the whole batch in the browser (``JSON.parse``), and a
lone surrogate gave a traceback over WebSocket and an HTML 500 on
``POST /realtime/send``. ``broadcast()`` refuses such data in its caller.
"""

from __future__ import annotations

import json
import typing as t
import uuid

import pytest
import requests
from flask import Flask

from flask_realtime import Realtime, protocol
from tests.conftest import module_server
from tests.http_helpers import assert_json_error, open_poll
from tests.servers import Server
from tests.wsclient import Client
from tests.wsclient import connect as ws_connect

SEND_PATH = "/realtime/send"

# Client events as raw JSON text, each with something strict JSON refuses.
NOT_STRICT = [
    pytest.param('{"n": NaN}', id="NaN"),
    pytest.param('{"n": Infinity}', id="Infinity"),
    pytest.param('{"n": -Infinity}', id="-Infinity"),
    pytest.param('{"n": 1e400}', id="out-of-range"),
    pytest.param('{"text": "\\ud800"}', id="lone-high-surrogate"),
    pytest.param('{"text": "a\\udc00b"}', id="lone-low-surrogate"),
    pytest.param('{"\\ud83d": 1}', id="lone-surrogate-key"),
]


server = module_server()


def client_event(data_json: str, channel: str, event: str = "client-note") -> str:
    """A client event whose ``data`` is ``data_json``, as the client sends it."""
    return (
        f'{{"type":"event","channel":"{channel}","event":"{event}",'
        f'"id":"bad","data":{data_json}}}'
    )


def private_channel(user: str) -> str:
    """A channel of the test app that admits only ``user`` (tests/apps/basic.py)."""
    return f"private-room.{uuid.uuid4().hex[:8]}.{user}"


def listener(server: Server, user: str, channel: str) -> Client:
    client = ws_connect(f"{server.ws_url}?user={user}")
    assert client.subscribe(channel)["type"] == "subscribed"
    return client


def assert_only_the_marker_arrives(client: Client, channel: str) -> None:
    """The next client event ``client`` gets is the marker sent after the bad
    ones: nothing of them was relayed."""
    message = client.wait_for(
        lambda m: m.get("type") == "event" and m.get("channel") == channel
    )
    assert message["event"] == "client-marker", message


# -- WebSocket -------------------------------------------------------------------


@pytest.mark.parametrize("data_json", NOT_STRICT)
def test_websocket_input_that_is_not_strict_json_gets_400(
    server: Server, data_json: str
) -> None:
    user = uuid.uuid4().hex[:8]
    channel = private_channel(user)
    with (
        listener(server, user, channel) as other,
        listener(server, user, channel) as sender,
    ):
        sender.send_text(client_event(data_json, channel))
        reply = sender.wait_for(lambda m: m.get("type") == "error")
        assert reply["data"]["code"] == 400, reply
        assert reply.get("id") == "bad", reply
        assert "invalid JSON" in reply["data"]["message"], reply
        # The connection is unharmed, and nothing was relayed.
        assert sender.ping(id="after")["type"] == "pong"
        sender.send_json(
            {"type": "event", "channel": channel, "event": "client-marker", "data": 1}
        )
        assert_only_the_marker_arrives(other, channel)


# -- POST /realtime/send (SSE and long-poll) -------------------------------------------


class Poll:
    """A long-poll connection of ``user``, subscribed to ``channel``."""

    def __init__(self, server: Server, user: str, channel: str) -> None:
        self.url = server.url + SEND_PATH
        poll = open_poll(server, user=user)
        self.ids = {"connection_id": poll["connection_id"], "token": poll["token"]}
        reply = self.send_message({"type": "subscribe", "channel": channel})
        assert reply.status_code == 200 and reply.json()[0]["type"] == "subscribed"

    def send_message(self, message: dict[str, t.Any]) -> requests.Response:
        return requests.post(self.url, json={**self.ids, "message": message}, timeout=5)

    def send_raw(self, message_json: bytes) -> requests.Response:
        body = b'{"connection_id":"%s","token":"%s","message":%s}' % (
            self.ids["connection_id"].encode(),
            self.ids["token"].encode(),
            message_json,
        )
        return requests.post(
            self.url,
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=5,
        )


@pytest.mark.parametrize("data_json", NOT_STRICT)
def test_send_input_that_is_not_strict_json_gets_400_json(
    server: Server, data_json: str
) -> None:
    user = uuid.uuid4().hex[:8]
    channel = private_channel(user)
    with listener(server, user, channel) as other:
        poll = Poll(server, user, channel)
        response = poll.send_raw(client_event(data_json, channel).encode())
        assert_json_error(response, 400)
        assert "strict JSON" in response.json()["error"]["message"]
        marker = poll.send_message(
            {"type": "event", "channel": channel, "event": "client-marker", "data": 1}
        )
        assert marker.status_code == 200, marker.text
        assert_only_the_marker_arrives(other, channel)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"connection_id": "\xff\xfe", "message": {}}', id="latin-1"),
        pytest.param(
            b'{"connection_id": "a", "message": {"x": "\xed\xa0\x80"}}',
            id="utf8-encoded-surrogate",
        ),
        pytest.param('{"connection_id": "a"}'.encode("utf-16"), id="utf-16"),
    ],
)
def test_send_body_that_is_not_utf8_gets_400_json(server: Server, body: bytes) -> None:
    response = requests.post(
        server.url + SEND_PATH,
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert_json_error(response, 400)


# -- what the server sends -----------------------------------------------------


@pytest.fixture
def realtime() -> Realtime:
    app = Flask(__name__)
    app.config["REALTIME_TRANSPORTS"] = ["memory"]
    return Realtime(app)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(float("nan"), id="NaN"),
        pytest.param(float("inf"), id="Infinity"),
        pytest.param({"x": [float("-inf")]}, id="nested--Infinity"),
        pytest.param("\ud800", id="lone-surrogate"),
        pytest.param({"\udc00": 1}, id="lone-surrogate-key"),
    ],
)
def test_broadcast_refuses_what_strict_json_cannot_carry(
    realtime: Realtime, data: t.Any
) -> None:
    with realtime.node.app.app_context():
        for send in (
            lambda: realtime.broadcast("news", "e", data),
            lambda: realtime.send_to_user(5, "e", data),
            lambda: realtime.send("node.conn", "e", data),
        ):
            with pytest.raises(ValueError, match="not strict JSON"):
                send()


def test_broadcast_refuses_what_json_has_no_type_for(realtime: Realtime) -> None:
    with realtime.node.app.app_context():
        with pytest.raises(TypeError, match="not JSON serializable"):
            realtime.broadcast("news", "e", {1, 2})


def test_strict_json_keeps_what_is_valid() -> None:
    text = '{"a": "\\ud83d\\ude00 \\u00e9", "b": [1.5, -0.0, 1e308], "c": null}'
    value = protocol.loads(text)
    assert value == {"a": "\U0001f600 \u00e9", "b": [1.5, -0.0, 1e308], "c": None}
    assert json.loads(protocol.encode(value)) == value
