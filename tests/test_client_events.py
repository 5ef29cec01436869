"""Client events say who sent them, and cannot pass for the server's own.

A relayed ``client-`` event carries the sender's ``user_id`` as the server
knows it (whatever the client wrote), as Pusher does on presence channels.
A client event named like a message the server sends (``presence.*``,
``connected``, ``subscribed``, ``error``, ...) is refused with 403 before any
handler runs. On WebSocket and through ``POST /realtime/send``, on every
server kind.
"""

from __future__ import annotations

import typing as t
import uuid

import pytest
import requests

from tests.apps.relay import SERVER_NAMES
from tests.conftest import module_server
from tests.http_helpers import open_poll
from tests.servers import Server
from tests.wsclient import Client
from tests.wsclient import connect as ws_connect

APP = "tests.apps.relay:app"


server = module_server(app=APP)


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


def ws_user(server: Server, user: str, channel: str) -> Client:
    client = ws_connect(f"{server.ws_url}?user={user}&name={user}")
    assert client.subscribe(channel)["type"] == "subscribed"
    return client


class PollUser:
    """A long-poll connection of ``user``: client messages by POST /send."""

    def __init__(self, server: Server, user: str) -> None:
        self.url = server.url + "/realtime/send"
        poll = open_poll(server, user=user)
        self.ids = {"connection_id": poll["connection_id"], "token": poll["token"]}

    def send(self, message: dict[str, t.Any]) -> list[dict[str, t.Any]]:
        response = requests.post(
            self.url, json={**self.ids, "message": message}, timeout=5
        )
        assert response.status_code == 200, response.text
        return response.json()


def next_channel_event(client: Client, channel: str) -> dict[str, t.Any]:
    return client.wait_for(
        lambda m: (
            m.get("type") == "event"
            and m.get("channel") == channel
            and not m["event"].startswith("presence.")
        )
    )


# -- the sender's user_id -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["presence", "private"])
def test_websocket_client_event_carries_the_senders_user_id(
    server: Server, kind: str
) -> None:
    sender_id = uuid.uuid4().hex[:8]
    if kind == "presence":
        channel, other_id = unique("presence-room"), uuid.uuid4().hex[:8]
    else:  # the test app's private-room.<x>.<user> admits that user only
        channel, other_id = f"{unique('private-room')}.{sender_id}", sender_id
    with (
        ws_user(server, other_id, channel) as other,
        ws_user(server, sender_id, channel) as sender,
    ):
        # A field the client adds itself is not what the others get.
        sender.send_json(
            {
                "type": "event",
                "channel": channel,
                "event": "client-typing",
                "data": {"on": True},
                "user_id": "someone-else",
            }
        )
        event = next_channel_event(other, channel)
        assert event == {
            "type": "event",
            "channel": channel,
            "event": "client-typing",
            "data": {"on": True},
            "user_id": sender_id,
        }


def test_send_client_event_carries_the_senders_user_id(server: Server) -> None:
    channel = unique("presence-room")
    sender_id, other_id = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
    with ws_user(server, other_id, channel) as other:
        sender = PollUser(server, sender_id)
        assert sender.send({"type": "subscribe", "channel": channel})[0]["type"] == (
            "subscribed"
        )
        assert (
            sender.send(
                {
                    "type": "event",
                    "channel": channel,
                    "event": "client-typing",
                    "data": 1,
                    "user_id": other_id,
                }
            )
            == []
        )
        event = next_channel_event(other, channel)
        assert event["event"] == "client-typing" and event["user_id"] == sender_id


# -- names the server uses -----------------------------------------------------------


@pytest.mark.parametrize("name", SERVER_NAMES)
def test_websocket_client_event_with_a_server_name_is_refused(
    server: Server, name: str
) -> None:
    channel = unique("relay")
    with (
        ws_user(server, "a", channel) as other,
        ws_user(server, "b", channel) as sender,
    ):
        reply = sender.request(
            {"type": "event", "channel": channel, "event": name, "data": 1}
        )
        assert reply["type"] == "error" and reply["data"]["code"] == 403, reply
        assert reply["channel"] == channel
        # Nothing went out: the next event the other sees is a later broadcast.
        requests.get(
            f"{server.url}/broadcast",
            params={"channel": channel, "event": "marker", "data": "1"},
            timeout=5,
        ).raise_for_status()
        assert next_channel_event(other, channel)["event"] == "marker"


@pytest.mark.parametrize("name", ["presence.join", "connected", "error"])
def test_send_client_event_with_a_server_name_is_refused(
    server: Server, name: str
) -> None:
    channel = unique("relay")
    sender = PollUser(server, "b")
    sender.send({"type": "subscribe", "channel": channel})
    [reply] = sender.send(
        {"type": "event", "channel": channel, "event": name, "data": 1, "id": 7}
    )
    assert reply["type"] == "error" and reply["data"]["code"] == 403, reply
    assert reply["id"] == 7
