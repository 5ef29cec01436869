"""Lifecycle hooks, server-side subscriptions, disconnect and ``exclude``
against real servers: every server kind, every transport.

The app is ``tests.apps.server_api``: its hooks append to a log file that
the tests read; its views call ``realtime.subscribe()`` and the rest as an
application's views would. Across nodes on a real broker: tests/cluster/
test_server_api.py.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import typing as t
import uuid

import pytest
import requests

from tests import wsclient
from tests.conftest import module_server
from tests.servers import Server
from tests.test_longpoll import POLL_PATH, Poller
from tests.test_sse import SSE_PATH, SSEClient, StreamEnded

APP = "tests.apps.server_api:app"
#: Where the app's hooks write (one file for the module's servers: each
#: test's users are its own).
HOOKS_LOG = os.path.join(tempfile.gettempdir(), f"hooks-{uuid.uuid4().hex}.log")
ENV = {
    "HOOKS_LOG": HOOKS_LOG,
    "TESTAPP_REALTIME_LONGPOLL_TIMEOUT": "1",
    "TESTAPP_REALTIME_HEARTBEAT": "2",
}
TRANSPORTS = ("websocket", "sse", "longpolling")

server = module_server(app=APP, env=ENV)


def hook_calls(user: str, path: str = HOOKS_LOG) -> list[dict[str, t.Any]]:
    """What the hooks logged for ``user``, in order."""
    try:
        with open(path) as log:
            entries = [json.loads(line) for line in log if line.strip()]
    except FileNotFoundError:
        return []
    return [e for e in entries if e["user"] == user]


def wait_for_calls(
    user: str, count: int, path: str = HOOKS_LOG, timeout: float = 5
) -> list[dict[str, t.Any]]:
    deadline = time.monotonic() + timeout
    while True:
        calls = hook_calls(user, path)
        if len(calls) >= count or time.monotonic() > deadline:
            return calls
        time.sleep(0.02)


def new_user() -> str:
    return f"u{uuid.uuid4().hex[:10]}"


class Opened(t.Protocol):
    connection_id: t.Any
    skipped: list[t.Any]

    def wait_for(
        self, predicate: t.Callable[[t.Any], bool], timeout: float = 5
    ) -> t.Any: ...


def open_client(server: Server, transport: str, **query: str) -> t.Any:
    """A connection on ``transport`` (the test suites' own clients)."""
    if transport == "websocket":
        url = server.ws_url + "?" + "&".join(f"{k}={v}" for k, v in query.items())
        return wsclient.connect(url)
    if transport == "sse":
        return SSEClient(server, **query)
    return Poller(server, **query)


def close_client(client: t.Any) -> None:
    if isinstance(client, Poller):
        client.session.post(
            client.server.url + "/realtime/close",
            json={"connection_id": client.connection_id, "token": client.token},
            timeout=5,
        )
    else:
        client.close()


def closed_code(client: t.Any, timeout: float = 5) -> int | None:
    """Wait for the server to end the connection: the WebSocket close code,
    None for a stream or a poll (which carry none)."""
    if isinstance(client, wsclient.Client):
        return client.expect_close(timeout)
    deadline = time.monotonic() + timeout
    if isinstance(client, SSEClient):
        with pytest.raises(StreamEnded):
            while True:
                client.next_block(max(0.0, deadline - time.monotonic()))
        return None
    while time.monotonic() < deadline:
        response = client.get()
        if response.status_code == 404:
            return None
        client.cursor = response.json()["cursor"]
    raise AssertionError("the poll connection is still open")


def kind_is(kind: str) -> t.Callable[[t.Any], bool]:
    def matches(message: t.Any) -> bool:
        return isinstance(message, dict) and message.get("type") == kind

    matches.__name__ = kind
    return matches


def get(server: Server, path: str, **params: t.Any) -> None:
    response = requests.get(server.url + path, params=params, timeout=5)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hooks_and_server_side_control(server: Server, transport: str) -> None:
    """on_connect, subscribe by user (both connections), exclude by
    X-Socket-ID, unsubscribe one, disconnect the user: on_disconnect once each."""
    user = new_user()
    channel = f"private-room.{user}.x"  # no authorizer admits it: server-side only
    a = open_client(server, transport, user=user)
    b = open_client(server, transport, user=user)
    try:
        connects = wait_for_calls(user, 2)
        assert sorted(c["id"] for c in connects) == sorted(
            [a.connection_id, b.connection_id]
        )
        assert {c["transport"] for c in connects} == {transport}
        assert {c["app"] for c in connects} == {"tests.apps.basic"}

        get(server, "/api/subscribe", channel=channel, user=user)
        for client in (a, b):
            reply = client.wait_for(kind_is("subscribed"))
            assert reply == {"type": "subscribed", "channel": channel}

        response = requests.post(
            f"{server.url}/api/post",
            params={"channel": channel, "event": "said"},
            json={"n": 1},
            headers={"X-Socket-ID": a.connection_id},
            timeout=5,
        )
        assert response.json()["excluded"] == a.connection_id
        get(server, "/broadcast", channel=channel, event="said", data='{"n": 2}')
        assert b.wait_event("said", channel)["data"] == {"n": 1}
        assert b.wait_event("said", channel)["data"] == {"n": 2}
        # The excluded sender gets the next one, and never the first.
        assert a.wait_event("said", channel)["data"] == {"n": 2}
        assert not [m for m in a.skipped if m.get("event") == "said"]

        get(server, "/api/unsubscribe", channel=channel, connection_id=a.connection_id)
        reply = a.wait_for(kind_is("unsubscribed"))
        assert reply == {"type": "unsubscribed", "channel": channel}
        get(server, "/broadcast", channel=channel, event="said", data='{"n": 3}')
        assert b.wait_event("said", channel)["data"] == {"n": 3}

        get(server, "/api/disconnect", user=user)
        codes = [closed_code(a), closed_code(b)]
        if transport == "websocket":
            assert codes == [4000, 4000]
        gone = [c for c in wait_for_calls(user, 4) if c["hook"] == "disconnect"]
        assert sorted((c["id"], c["code"]) for c in gone) == sorted(
            [(a.connection_id, 4000), (b.connection_id, 4000)]
        )
        assert {c["reason"] for c in gone} == {"disconnected by the server"}
        # A was not in the channel when it was told about 3, nor after.
        assert not [m for m in a.skipped if m.get("data") == {"n": 3}]
    finally:
        close_client(a)
        close_client(b)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_on_disconnect_when_the_client_closes(server: Server, transport: str) -> None:
    user = new_user()
    client = open_client(server, transport, user=user)
    wait_for_calls(user, 1)
    close_client(client)
    calls = wait_for_calls(user, 2)
    assert [c["hook"] for c in calls] == ["connect", "disconnect"]
    expected = {"websocket": 1000, "longpolling": 1000, "sse": None}[transport]
    if expected is not None:
        assert calls[1]["code"] == expected
    else:  # the stream's socket ends: the going-away close, or a lost peer
        assert calls[1]["code"] in (1001, 1006), calls[1]
    assert calls[1]["id"] == client.connection_id


def test_on_connect_refuses_a_websocket_with_its_code(server: Server) -> None:
    with pytest.raises(wsclient.ConnectionClosed) as refused:
        wsclient.connect(server.ws_url + "?user=refuse")
    assert refused.value.code == 4403
    with pytest.raises(wsclient.ConnectionClosed) as failed:
        wsclient.connect(server.ws_url + "?user=boom")
    assert failed.value.code == 1011


@pytest.mark.parametrize("path", [SSE_PATH, POLL_PATH])
def test_on_connect_refuses_http_transports_with_403(server: Server, path: str) -> None:
    response = requests.get(
        server.url + path, params={"user": "refuse"}, timeout=5, stream=True
    )
    assert response.status_code == 403, response.text
    assert response.json()["error"] == {"code": 403, "message": "not welcome here"}
    health = requests.get(server.url + "/realtime/health", timeout=5).json()
    assert health["status"] == "ok"


def test_the_python_client_follows_server_side_subscriptions(server: Server) -> None:
    from flask_realtime.client import RealtimeClient

    user = new_user()
    channel = f"news.{user}"
    with RealtimeClient(server.url, params={"user": user}) as client:
        assert client.socket_id_headers() == {"X-Socket-ID": client.connection_id}
        get(server, "/api/subscribe", channel=channel, user=user)
        made = client.wait_for("subscribed", timeout=5)
        assert made is client.channel(channel)
        made.wait_for("subscribed", timeout=5)
        response = requests.post(
            f"{server.url}/api/post",
            params={"channel": channel, "event": "said"},
            json=1,
            headers=client.socket_id_headers(),
            timeout=5,
        )
        assert response.status_code == 200, response.text
        get(server, "/broadcast", channel=channel, event="said", data="2")
        assert made.wait_for("said", timeout=5) == 2  # 1 excluded this client
        get(server, "/api/unsubscribe", channel=channel, user=user)
        assert client.wait_for("unsubscribed", timeout=5) is made
        assert made.state == "unsubscribed" and client.channel(channel) is None
