"""The test harness end to end: every server kind serves the basic app, a
client connects and subscribes, and a broadcast from a view reaches it."""

from __future__ import annotations

import json
import signal

import requests

from tests import wsclient
from tests.servers import Server


def test_broadcast_reaches_subscriber(any_server: Server) -> None:
    with wsclient.connect(any_server.ws_url) as client:
        assert client.connection_id
        assert client.welcome is not None
        assert client.welcome["data"]["protocol"] == 1

        reply = client.subscribe("news", id=1)
        assert reply == {"type": "subscribed", "channel": "news", "id": 1}

        response = requests.get(
            any_server.url + "/broadcast",
            params={"channel": "news", "event": "headline", "data": json.dumps([1])},
            timeout=5,
        )
        assert response.status_code == 200
        assert response.json() == {"ok": True}

        message = client.recv_json()
        assert message == {
            "type": "event",
            "channel": "news",
            "event": "headline",
            "data": [1],
        }


def test_stop_ends_server(live_server) -> None:
    server = live_server("geventwebsocket")
    assert server.health() == 200
    server.signal(signal.SIGTERM)
    assert server.stop() == 0
    assert server.health(timeout=1) is None
    assert "Booting worker" in server.log()


def test_discard_kills_the_server_at_once(live_server) -> None:
    server = live_server("geventwebsocket")
    assert server.health() == 200
    assert server.discard() == -signal.SIGKILL
    assert server.health(timeout=1) is None
    assert server.discard() == -signal.SIGKILL  # again, as a teardown may
