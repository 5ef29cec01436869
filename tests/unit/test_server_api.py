"""Lifecycle hooks, server-side subscriptions, disconnect and ``exclude``,
in one process (null broker, the in-process test client).

The same behaviour against real servers, on every transport and across
nodes, is in tests/test_server_api.py and tests/cluster/test_server_api.py.
"""

from __future__ import annotations

import time
import typing as t

import pytest
from flask import Flask, current_app, g

from flask_realtime import (
    ConnectionRefused,
    DisconnectReason,
    Realtime,
    Rejected,
    socket_id,
)
from flask_realtime.testing import TestClient


def wait_until(check: t.Callable[[], t.Any], timeout: float = 3.0) -> t.Any:
    """Poll ``check`` until it is truthy (commands run in a thread)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.config.update(REALTIME_TRANSPORTS=["memory"], REALTIME_BROKER="null")
    return app


@pytest.fixture
def realtime(app: Flask) -> Realtime:
    realtime = Realtime(app)

    @realtime.authorizer("private-*")
    def nobody(connection: t.Any, channel: str) -> bool:
        return False

    @realtime.authorizer("presence-*")
    def member(connection: t.Any, channel: str) -> t.Any:
        return {"name": f"user {connection.user_id}"}

    return realtime


def messages(client: TestClient, kind: str) -> list[dict[str, t.Any]]:
    return [m for m in client.received if m["type"] == kind]


def test_on_connect_runs_in_the_app_context_after_connected(
    app: Flask, realtime: Realtime
) -> None:
    seen = []

    @realtime.on_connect
    def hello(connection: t.Any) -> None:
        g.touched = True  # an app context is pushed
        seen.append((connection.id, connection.user_id))
        realtime.send(connection.id, "welcome", {"user": connection.user_id})

    with app.app_context():
        client = realtime.test_client(user_id=7)
    assert client.connected["type"] == "connected"
    assert seen == [(client.connection_id, 7)]
    wait_until(lambda: client.events())
    assert client.events() == [("welcome", {"user": 7})]


@pytest.mark.parametrize(
    ("raised", "code", "reason"),
    [
        (ConnectionRefused("banned", code=4403), 4403, "banned"),
        (Rejected("not today"), 4003, "not today"),
        (False, 4003, "refused"),
        (RuntimeError("bug"), 1011, "internal error"),
    ],
)
def test_on_connect_refuses(
    app: Flask, realtime: Realtime, raised: t.Any, code: int, reason: str
) -> None:
    gone = []

    @realtime.on_connect
    def refuse(connection: t.Any) -> t.Any:
        if raised is False:
            return False
        raise raised

    realtime.on_disconnect(lambda conn, why: gone.append(why))
    with pytest.raises(ConnectionRefused) as info:
        realtime.test_client(user_id=1)
    assert (info.value.code, info.value.reason) == (code, reason)
    # Forgotten, and never "connected" for the app: no on_disconnect.
    assert realtime.node.state_sizes()["hub.connections"] == 0
    assert realtime.node.state_sizes()["hub.users"] == 0
    assert gone == []


def test_connection_refused_checks_its_code() -> None:
    with pytest.raises(ValueError):
        ConnectionRefused("x", code=1000)
    with pytest.raises(TypeError):
        ConnectionRefused("x", code="4003")  # type: ignore[arg-type]


def test_on_disconnect_once_with_the_reason(app: Flask, realtime: Realtime) -> None:
    gone: list[tuple[str, DisconnectReason, str]] = []

    @realtime.on_disconnect
    def bye(connection: t.Any, reason: DisconnectReason) -> None:
        gone.append((connection.id, reason, current_app.name))  # in the app context

    a = realtime.test_client(user_id=1)
    b = realtime.test_client(user_id=2)
    a.disconnect()
    a.disconnect()
    b.connection.close(4100, "too slow")
    realtime.node.disconnect(b.connection)  # a second report changes nothing
    assert gone == [
        (a.connection_id, DisconnectReason(1000, "closed by the client"), app.name),
        (b.connection_id, DisconnectReason(4100, "too slow"), app.name),
    ]


def test_on_disconnect_at_shutdown_and_when_lost(
    app: Flask, realtime: Realtime
) -> None:
    gone: list[DisconnectReason] = []
    realtime.on_disconnect(lambda conn, why: gone.append(why))
    lost = realtime.test_client()
    lost.connection.closing = True  # the peer vanished: no close was made
    realtime.node.disconnect(lost.connection)
    realtime.test_client()
    realtime.node.shutdown()
    assert gone == [
        DisconnectReason(1006, "connection lost"),
        DisconnectReason(4200, "server shutting down"),
    ]


def test_an_on_disconnect_that_raises_is_logged(
    app: Flask, realtime: Realtime, caplog: pytest.LogCaptureFixture
) -> None:
    @realtime.on_disconnect
    def broken(connection: t.Any, reason: t.Any) -> None:
        raise RuntimeError("oops")

    realtime.test_client().disconnect()
    assert "on_disconnect raised" in caplog.text


def test_subscribe_a_user_everywhere_without_asking_the_authorizer(
    app: Flask, realtime: Realtime
) -> None:
    a, b = realtime.test_client(user_id=5), realtime.test_client(user_id=5)
    other = realtime.test_client(user_id=6)
    with app.app_context():
        realtime.subscribe("private-team", user_id="5")  # 5 and "5": one user
    for client in (a, b):
        wait_until(lambda c=client: messages(c, "subscribed"))
        assert messages(client, "subscribed") == [
            {"type": "subscribed", "channel": "private-team"}
        ]
        assert "private-team" in client.connection.channels
    assert other.received == []
    realtime.broadcast("private-team", "hello", 1)
    assert a.events("private-team") == [("hello", 1)]

    with app.app_context():
        realtime.unsubscribe("private-team", connection_id=a.connection_id)
    wait_until(lambda: messages(a, "unsubscribed"))
    assert messages(a, "unsubscribed") == [
        {"type": "unsubscribed", "channel": "private-team"}
    ]
    assert "private-team" not in a.connection.channels
    assert "private-team" in b.connection.channels


def test_server_subscribe_to_presence_announces_the_member(
    app: Flask, realtime: Realtime
) -> None:
    watcher = realtime.test_client(user_id=1)
    watcher.subscribe("presence-room")
    joiner = realtime.test_client(user_id=2)
    realtime.channel("presence-room").subscribe(connection_id=joiner.connection_id)
    wait_until(lambda: watcher.events("presence-room"))
    assert watcher.events("presence-room") == [
        ("presence.join", {"user_id": 2, "user_info": {"name": "user 2"}})
    ]
    (reply,) = wait_until(lambda: messages(joiner, "subscribed"))
    assert "id" not in reply
    assert [m["user_id"] for m in reply["data"]["members"]] == [1, 2]

    realtime.channel("presence-room").unsubscribe(user_id=2)
    wait_until(lambda: len(watcher.events("presence-room")) == 2)
    assert watcher.events("presence-room")[1] == ("presence.leave", {"user_id": 2})


def test_subscribe_of_an_anonymous_connection_to_presence_is_an_error(
    app: Flask, realtime: Realtime
) -> None:
    anonymous = realtime.test_client()
    realtime.subscribe("presence-room", connection_id=anonymous.connection_id)
    (error,) = wait_until(lambda: messages(anonymous, "error"))
    assert error["data"]["code"] == 401
    assert error["channel"] == "presence-room" and "id" not in error


def test_subscribe_from_on_connect(app: Flask, realtime: Realtime) -> None:
    @realtime.on_connect
    def join(connection: t.Any) -> None:
        realtime.subscribe("news", connection_id=connection.id)

    client = realtime.test_client()
    wait_until(lambda: messages(client, "subscribed"))
    assert client.connection.channels == {"news"}


def test_disconnect_a_user_everywhere(app: Flask, realtime: Realtime) -> None:
    gone: list[tuple[t.Any, DisconnectReason]] = []
    realtime.on_disconnect(lambda conn, why: gone.append((conn.user_id, why)))
    a, b = realtime.test_client(user_id=5), realtime.test_client(user_id=5)
    stays = realtime.test_client(user_id=6)
    realtime.disconnect(user_id=5)
    wait_until(lambda: len(gone) == 2)
    assert (a.close_code, b.close_code, stays.close_code) == (4000, 4000, None)
    assert gone == [(5, DisconnectReason(4000, "disconnected by the server"))] * 2
    realtime.disconnect(connection_id=stays.connection_id, code=4200)
    wait_until(lambda: stays.close_code)
    assert stays.close_code == 4200


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, TypeError),
        ({"user_id": 1, "connection_id": "a.b"}, TypeError),
        ({"user_id": 1, "code": 1006}, ValueError),
        ({"user_id": 1, "code": "4000"}, TypeError),
    ],
)
def test_disconnect_checks_its_arguments(
    realtime: Realtime, kwargs: dict[str, t.Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        realtime.disconnect(**kwargs)


def test_subscribe_checks_the_channel(realtime: Realtime) -> None:
    with pytest.raises(ValueError):
        realtime.subscribe("no spaces", user_id=1)


def test_broadcast_excludes_one_connection(app: Flask, realtime: Realtime) -> None:
    sender, other = realtime.test_client(), realtime.test_client()
    for client in (sender, other):
        client.subscribe("news")
    with app.test_request_context(headers={"X-Socket-ID": sender.connection_id}):
        assert socket_id() == realtime.socket_id() == sender.connection_id
        realtime.broadcast("news", "posted", 1, exclude=socket_id())
    realtime.channel("news").broadcast("posted", 2, exclude=other.connection_id)
    realtime.broadcast("news", "posted", 3, exclude="")
    assert sender.events("news") == [("posted", 2), ("posted", 3)]
    assert other.events("news") == [("posted", 1), ("posted", 3)]
    with pytest.raises(ValueError):
        realtime.broadcast("news", "posted", exclude="x\ny")


@pytest.mark.parametrize("header", [None, "", "not an id", "abc.def\x00"])
def test_socket_id_without_a_valid_header(app: Flask, header: str | None) -> None:
    headers = {} if header is None else {"X-Socket-ID": header}
    with app.test_request_context(headers=headers):
        assert socket_id() is None
    assert socket_id() is None  # outside a request


def test_a_hook_may_give_commands_while_a_command_runs(
    app: Flask, realtime: Realtime
) -> None:
    """disconnect() runs on_disconnect, which unsubscribes someone else."""

    @realtime.on_disconnect
    def bye(connection: t.Any, reason: t.Any) -> None:
        if connection.user_id == 1:
            realtime.unsubscribe("news", user_id=2)

    leaving, staying = realtime.test_client(user_id=1), realtime.test_client(user_id=2)
    staying.subscribe("news")
    realtime.disconnect(user_id=1)
    wait_until(lambda: messages(staying, "unsubscribed"))
    assert leaving.close_code == 4000 and staying.connection.channels == set()
