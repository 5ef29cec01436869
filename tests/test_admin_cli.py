"""The admin commands in one process: the null broker, and refused input.

With the null broker a command sees only its own process, and says so; here
that process holds in-process clients, so the numbers are known. On NATS and
RabbitMQ, which count no receivers, nodes in this process answer within the
window. Two gunicorn nodes on Redis are in tests/cluster/test_admin.py.
"""

from __future__ import annotations

import json
import time
import typing as t

import pytest
from click.testing import Result
from flask import Flask

from flask_realtime import Realtime
from flask_realtime.node import control
from tests.brokerservers import BrokerServer
from tests.servers import free_port


def make_app(**config: t.Any) -> tuple[Flask, Realtime]:
    app = Flask("admin_app")
    app.config.update(REALTIME_TRANSPORTS="memory", **config)
    realtime = Realtime(app)
    realtime.authorizer("presence-*")(lambda conn, channel: {"name": conn.user_id})
    return app, realtime


def run(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(args=["realtime", *args])


def test_with_the_null_broker_a_command_sees_its_own_process_and_says_so() -> None:
    app, realtime = make_app()
    with app.app_context():
        ann, bob = realtime.test_client("ann"), realtime.test_client("bob")
    for client, channels in ((ann, ("news", "presence-room")), (bob, ("news",))):
        for channel in channels:
            assert client.subscribe(channel)["type"] == "subscribed"

    result = run(app, "stats", "--json")
    assert result.exit_code == 0, result.output
    assert "only this command's own process is seen" in result.stderr
    stats = json.loads(result.stdout)
    assert (stats["scope"], stats["broker"], stats["counted"]) == (
        "process",
        "null",
        None,
    )
    [node] = stats["nodes"]
    assert node["id"] == realtime.node.id
    assert (node["connections"], node["transports"], node["users"]) == (
        2,
        {"memory": 2},
        2,
    )
    assert stats["top_channels"] == [
        {"name": "news", "subscribers": 2, "nodes": 1},
        {"name": "presence-room", "subscribers": 1, "nodes": 1},
    ]

    result = run(app, "presence", "presence-room")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["USER", "SINCE", "(UTC)", "INFO"]
    assert lines[1].startswith("ann ") and lines[1].endswith('{"name": "ann"}')

    result = run(app, "channels", "pres*", "--json")
    assert json.loads(result.stdout)["channels"] == [
        {"name": "presence-room", "kind": "presence", "subscribers": 1, "nodes": 1}
    ]
    result = run(app, "channels", "nothing-*")
    assert result.exit_code == 0
    assert result.stdout.startswith("No channel matching 'nothing-*' has subscribers")

    result = run(app, "broadcast", "news", "note", '{"n": 1}')
    assert result.exit_code == 0, result.output
    for client in (ann, bob):
        assert client.received[-1] == {
            "type": "event",
            "channel": "news",
            "event": "note",
            "data": {"n": 1},
        }


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["channels", "no spaces"], "is not a channel pattern"),
        (["channels", "x" * 201], "is not a channel pattern"),
        (["presence", "news"], "is not a presence channel"),
        (["presence", "presence/room"], "is not a channel name"),
        (["broadcast", "news", "e", "{text: 1}"], "not JSON: Expecting property"),
        (["broadcast", "news", "e", "NaN"], "NaN is not a JSON number"),
        (["broadcast", "news", "e"], "Missing argument 'JSON'"),
        (["broadcast", "bad name", "e", "1"], "is not a channel name"),
        (["broadcast", "news", "", "1"], "an event name has 1 to 200 characters"),
        (["stats", "--wait", "0"], "Invalid value for '--wait'"),
        (["disconnect"], "give exactly one of --user ID and --connection ID"),
        (["disconnect", "--user", "ann", "--connection", "a.b"], "exactly one of"),
        (["disconnect", "--user", ""], "a user id is not empty"),
        (["disconnect", "--connection", "nodot"], "is not a connection id"),
        (["disconnect", "--user", "ann", "--code", "2000"], "between 3000 and 4999"),
        (["disconnect", "--user", "ann", "--code", "x"], "'x' is not a valid integer"),
    ],
)
def test_bad_input_is_a_usage_error(args: list[str], says: str) -> None:
    app, realtime = make_app()
    with app.app_context():
        client = realtime.test_client("ann")
    client.subscribe("news")
    result = run(app, *args)
    assert result.exit_code == 2, result.output
    assert says in result.stderr
    assert not client.received and client.close_code is None  # nothing was sent


def test_an_unreachable_broker_fails_with_its_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(control, "GATHER_CONNECT", 0.3)
    port = free_port()  # nothing listens there
    app, realtime = make_app(
        REALTIME_BROKER="redis", REALTIME_BROKER_URL=f"redis://127.0.0.1:{port}/0"
    )
    try:
        for args in (["stats"], ["broadcast", "news", "note", "1"]):
            result = run(app, *args)
            assert result.exit_code == 1, result.output
            assert (
                f"Error: the redis broker at redis://127.0.0.1:{port}/0 is unreachable"
                in result.stderr
            )
    finally:
        with app.app_context():
            realtime.node.broker.close()


def test_disconnect_closes_every_connection_of_a_user() -> None:
    app, realtime = make_app()
    with app.app_context():
        tabs = [realtime.test_client("ann") for _ in range(2)]
        other = realtime.test_client("bob")
    result = run(app, "disconnect", "--user", "ann")
    assert result.exit_code == 0, result.output
    assert (
        result.stdout
        == "Closing 2 connections of user 'ann' (on 1 node) with code 4000.\n"
    )
    deadline = time.monotonic() + 5
    while any(tab.close_code is None for tab in tabs):  # closed by another thread
        assert time.monotonic() < deadline, "not closed"
        time.sleep(0.01)
    assert [tab.close_code for tab in tabs] == [4000, 4000]
    result = run(
        app,
        "disconnect",
        "--connection",
        other.connection.id,
        "--code",
        "4201",
        "--json",
    )
    assert json.loads(result.stdout) == {
        "scope": "process",
        "user_id": None,
        "connection_id": other.connection.id,
        "code": 4201,
        "connections": 1,
        "nodes": 1,
        "missing": 0,
    }
    while other.close_code is None:
        assert time.monotonic() < deadline + 5, "not closed"
        time.sleep(0.01)
    assert other.close_code == 4201
    result = run(app, "disconnect", "--user", "ann")
    assert result.stdout.startswith(
        "User 'ann' has no open connection (1 node answered)"
    )


@pytest.mark.parametrize("kind", ["nats", "rabbitmq"])
def test_without_a_receiver_count_the_window_collects_every_node(
    kind: str, broker_servers: t.Callable[[str], BrokerServer]
) -> None:
    """Two nodes (apps in this process, each with its own broker link) and a
    third app that only asks: NATS and RabbitMQ count no receivers."""
    url = broker_servers(kind).url
    apps = [make_app(REALTIME_BROKER=kind, REALTIME_BROKER_URL=url) for _ in range(3)]
    (one, first), (two, second), (asker, _) = apps
    try:
        with one.app_context():
            first.test_client("ann").subscribe("news")
        with two.app_context():
            for user in ("bob", "cy"):
                second.test_client(user).subscribe("news")
        result = run(asker, "stats", "--json", "--wait", "0.5")
        assert result.exit_code == 0, result.output
        stats = json.loads(result.stdout)
        assert (stats["scope"], stats["counted"], stats["missing"]) == (
            "cluster",
            None,
            0,
        )
        # (Nodes other tests left on the session's server may answer too.)
        connections = {n["id"]: n["connections"] for n in stats["nodes"]}
        assert connections[first.node.id] == 1 and connections[second.node.id] == 2
        assert {"name": "news", "subscribers": 3, "nodes": 2} in stats["top_channels"]
    finally:
        for app, realtime in apps:
            with app.app_context():
                realtime.node.broker.close()
