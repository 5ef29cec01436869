"""Connection limits, refused before the upgrade with a JSON status, counted
across transports and released when a connection closes; and the per-user
rate limit across a user's connections."""

from __future__ import annotations

import json
import time
import typing as t

import pytest
import requests
import websocket

from tests.conftest import LiveServerFactory
from tests.hostile.measure import wait_until
from tests.http_helpers import app_env, assert_json_error
from tests.servers import Server
from tests.wsclient import WSTimeout, connect

SSE = "/realtime/sse"
POLL = "/realtime/poll"


def _ws_refusal(server: Server) -> tuple[int, dict[str, t.Any]]:
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(server.ws_url)
    error = refused.value
    return error.status_code, json.loads(error.resp_body)


def _open_sse(server: Server) -> requests.Response:
    response = requests.get(server.url + SSE, stream=True, timeout=5)
    assert response.status_code == 200, response.text
    return response


def _open_poll(server: Server) -> dict[str, t.Any]:
    response = requests.get(server.url + POLL, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def _connections(server: Server) -> int:
    return int(
        requests.get(server.url + "/realtime/health", timeout=5).json()["connections"]
    )


@pytest.mark.parametrize("kind", ["geventwebsocket", "gevent", "flask-run"])
def test_per_address_limit_counts_every_transport_and_is_released(
    live_server: LiveServerFactory, kind: str
) -> None:
    # ``flask run`` notices a client gone from an SSE stream only when it
    # writes the stream's keepalive: every half heartbeat, at most 10 s. A
    # 6 s heartbeat makes that 3 s, well before the silent WebSockets here
    # would be closed (two heartbeats).
    server = live_server(
        kind, env=app_env(REALTIME_MAX_CONNECTIONS_PER_IP=3, REALTIME_HEARTBEAT=6)
    )
    ws = connect(server.ws_url)
    stream = _open_sse(server)
    poll = _open_poll(server)

    status, body = _ws_refusal(server)
    assert status == 429 and body["error"]["code"] == 429
    assert "127.0.0.1" in body["error"]["message"]
    assert_json_error(requests.get(server.url + SSE, timeout=5), 429)
    assert_json_error(requests.get(server.url + POLL, timeout=5), 429)

    # Closing one frees its slot: open, close, open again.
    ws.close()
    wait_until(lambda: _connections(server) == 2, 10, "the WebSocket to be released")
    again = connect(server.ws_url)
    stream.close()
    wait_until(lambda: _connections(server) == 2, 10, "the SSE stream to be released")
    _open_sse(server).close()
    # A long-poll connection is released by its POST /close.
    connected = poll["messages"][0]["data"]
    closed = requests.post(
        server.url + "/realtime/close",
        json={"connection_id": connected["connection_id"], "token": connected["token"]},
        timeout=5,
    )
    assert closed.status_code == 204, closed.text
    wait_until(lambda: _connections(server) <= 1, 10, "the long poll to be released")
    _open_poll(server)
    again.close()


def test_node_limit_answers_503_before_the_upgrade(
    live_server: LiveServerFactory,
) -> None:
    server = live_server("geventwebsocket", env=app_env(REALTIME_MAX_CONNECTIONS=2))
    first = connect(server.ws_url)
    _open_poll(server)
    status, body = _ws_refusal(server)
    assert status == 503 and "full" in body["error"]["message"]
    assert_json_error(requests.get(server.url + SSE, timeout=5), 503)
    first.close()
    wait_until(lambda: _connections(server) == 1, 10, "the slot to be released")
    connect(server.ws_url).close()


def test_per_user_rate_limit_spans_the_users_connections(
    live_server: LiveServerFactory,
) -> None:
    """Ten connections of one user, each within its own limit of 60, send 30
    events each: the user's 40 per minute let through about 40 in all."""
    server = live_server(
        "geventwebsocket",
        env=app_env(
            REALTIME_RATE_LIMIT={
                "messages_per_minute": 60,
                "user_messages_per_minute": 40,
            }
        ),
    )
    channel = "private-room.5"
    clients = [connect(server.ws_url + "?user=5") for _ in range(10)]
    for client in clients:
        assert client.subscribe(channel)["type"] == "subscribed"
    for number, client in enumerate(clients):
        for n in range(30):
            data = {"client": number, "n": n}
            client.send_json(
                {"type": "event", "channel": channel, "event": "client-x"}
                | {"data": data, "id": n}
            )
    # Each event is either refused, with a 429 to its sender carrying its id,
    # or relayed to the nine other connections: read until every one of the
    # 300 is accounted for (not until the connections stay quiet a while).
    refused: set[tuple[int, int]] = set()
    relayed: set[tuple[int, int]] = set()
    deadline = time.monotonic() + 30
    while len(refused | relayed) < 300:
        assert time.monotonic() < deadline, (len(refused), len(relayed))
        for number, client in enumerate(clients):
            try:
                message = client.recv_json(timeout=0.02)
            except WSTimeout:
                continue
            if message.get("type") == "error" and message["data"]["code"] == 429:
                refused.add((number, message["id"]))
            elif message.get("event") == "client-x":
                relayed.add((message["data"]["client"], message["data"]["n"]))
    assert not refused & relayed
    accepted = 300 - len(refused)
    # The subscribes took 10 tokens of the user's 40.
    assert accepted <= 40, (accepted, len(refused))
    assert accepted >= 20, (accepted, len(refused))
    for client in clients:
        client.close()
