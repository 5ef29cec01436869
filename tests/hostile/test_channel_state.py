"""State of emptied channels is freed, on a live server (DESIGN.md property 9).

Many channels (public, private, presence) fill and empty, through WebSocket,
SSE and long-poll clients; afterwards every registry of the node is empty
again (the app's ``/debug/state`` view counts them) and the server's memory
is back near where it started.
"""

from __future__ import annotations

import json
import typing as t

import pytest
import requests

from tests.brokerservers import BrokerServer
from tests.conftest import LiveServerFactory
from tests.hostile.measure import server_rss, wait_until
from tests.servers import Server
from tests.wsclient import connect

ROUNDS = 20
CHANNELS = 30  # per kind and round
MEMORY_GROWTH = 48 * 1024 * 1024


def _channels(round_: int, user: int) -> list[str]:
    names = []
    for n in range(CHANNELS):
        names.append(f"news.r{round_}.{n}")
        names.append(f"private-r{round_}x{n}.{user}")  # the app admits user N here
        names.append(f"presence-r{round_}.{n}")
    return names


def _over_websocket(server: Server, round_: int, user: int) -> None:
    client = connect(f"{server.ws_url}?user={user}")
    try:
        for name in _channels(round_, user):
            reply = client.subscribe(name)
            assert reply["type"] == "subscribed", reply
        for name in _channels(round_, user)[: CHANNELS // 2]:
            reply = client.unsubscribe(name)
            assert reply["type"] == "unsubscribed", reply
    finally:
        client.close()


def _over_http(server: Server, round_: int, user: int, transport: str) -> None:
    http = requests.Session()
    if transport == "sse":
        response = http.get(
            f"{server.url}/realtime/sse",
            params={"user": str(user)},
            headers={"Accept": "text/event-stream"},
            stream=True,
            timeout=(5, 30),
        )
        assert response.status_code == 200
        # The iterator lives to the end of this call: urllib3 closes a chunked response
        # when the generator reading it is dropped, and the server would see
        # the page leave.
        lines = response.iter_lines(chunk_size=1)
        line = b""
        for line in lines:
            if line.startswith(b"data:"):
                break
        welcome = json.loads(line[5:])
    else:
        response = http.get(
            f"{server.url}/realtime/poll", params={"user": str(user)}, timeout=5
        )
        welcome = response.json()["messages"][0]
    ids = {
        "connection_id": welcome["data"]["connection_id"],
        "token": welcome["data"]["token"],
    }
    try:
        for n, name in enumerate(_channels(round_, user)):
            message = {"type": "subscribe", "channel": name, "id": n}
            sent = http.post(
                f"{server.url}/realtime/send",
                json={**ids, "message": message},
                timeout=5,
            )
            assert sent.status_code == 200, sent.text
            assert sent.json()[0]["type"] == "subscribed", sent.text
    finally:
        closed = http.post(f"{server.url}/realtime/close", json=ids, timeout=5)
        assert closed.status_code == 204, closed.text
        response.close()
        http.close()


def _state(server: Server) -> dict[str, t.Any]:
    return requests.get(f"{server.url}/debug/state", timeout=5).json()


def _idle(state: dict[str, t.Any]) -> bool:
    left = {k: v for k, v in state.items() if v and k != "node_topic"}
    return left == {"interest.topics": state["node_topic"]}


@pytest.mark.parametrize("broker", ["null", "redis"])
@pytest.mark.parametrize("transport", ["websocket", "sse", "longpoll"])
def test_registries_are_empty_after_many_channels_fill_and_empty(
    live_server: LiveServerFactory,
    broker_servers: t.Callable[[str], BrokerServer],
    transport: str,
    broker: str,
) -> None:
    """With a broker, presence replicas and broker topics come and go too."""
    env = broker_servers(broker).app_env if broker != "null" else {}
    # Thousands of subscribes from two users: over any rate limit, which is
    # not what this test is about (tests/test_limits.py is).
    env = {**env, "TESTAPP_REALTIME_RATE_LIMIT": '{"enabled": false}'}
    server = live_server("geventwebsocket", env=env)
    for round_ in range(2):  # warm up: allocator pools, imports, greenlets
        _over_websocket(server, 1000 + round_, 1)
    wait_until(lambda: _idle(_state(server)), 10, "an idle node after warm-up")
    rss_before = server_rss(server)
    for round_ in range(ROUNDS):
        for user in (1, 2):
            if transport == "websocket":
                _over_websocket(server, round_, user)
            else:
                _over_http(server, round_, user, transport)
    # Topics are released about a second after their last subscriber left.
    wait_until(lambda: _idle(_state(server)), 15, "every registry to empty")
    growth = server_rss(server) - rss_before
    channels = ROUNDS * 2 * 3 * CHANNELS
    print(f"{transport}, {broker}: {channels} channels, +{growth} bytes")
    assert growth < MEMORY_GROWTH
