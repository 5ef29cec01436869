"""``flask realtime stats|channels|presence|broadcast|disconnect`` on a cluster.

Two gunicorn instances of one worker each (two nodes, so every number is
known) on a real broker, with clients on WebSocket, SSE and long polling.
The commands run as an operator runs them, ``flask --app ... realtime ...``
in a process of their own that serves nothing and asks the nodes over the
broker; to keep the test short, most run through click's runner in the
test's process instead (which serves nothing either).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import typing as t

from click.testing import Result

from tests.brokerservers import BrokerServer
from tests.cluster.conftest import Cluster
from tests.cluster.test_cluster import node_of, ws
from tests.http_helpers import unique
from tests.servers import ROOT, child_environment
from tests.test_admin_cli import make_app, run
from tests.test_longpoll import Poller
from tests.test_server_api import closed_code
from tests.test_sse import SSEClient

# A Redis database of the test's own: Redis's publish/subscribe is one
# namespace per server, and the broker prefixes its topics with the database,
# so a node another test left behind on the session's server is not counted.
OWN_DB = 13


def flask_realtime(
    env: dict[str, str], *args: str, expect: int = 0
) -> subprocess.CompletedProcess[str]:
    """``flask --app tests.apps.basic:app realtime ARGS``, configured by ``env``."""
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "tests.apps.basic:app"]
        + ["realtime", *args],
        cwd=ROOT,
        env=child_environment(env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == expect, result.stderr
    return result


def as_json(env: dict[str, str], *args: str) -> t.Any:
    return json.loads(flask_realtime(env, *args, "--json").stdout)


def test_the_commands_see_and_reach_every_node_on_every_transport(
    broker_servers: t.Callable[[str], BrokerServer],
    start_cluster: t.Callable[..., Cluster],
) -> None:
    broker = broker_servers("redis")
    env = {**broker.app_env, "TESTAPP_REALTIME_BROKER_URL": f"{broker.url}/{OWN_DB}"}
    cluster = start_cluster(broker, workers=1, env=env)
    # Most commands run here, through click's runner, on an app of the
    # test's own (a process that serves nothing, as the command's is).
    asker, realtime = make_app(
        REALTIME_BROKER="redis", REALTIME_BROKER_URL=f"{broker.url}/{OWN_DB}"
    )

    def cli(*args: str) -> Result:
        result = run(asker, *args)
        assert result.exit_code == 0, result.output
        return result

    first, second = cluster.instances
    news, chat, room = unique("news"), unique("chat"), unique("presence-room")
    ann = ws(first, "ann", "Ann")
    anonymous = ws(first)
    for client, channels in ((ann, (news, room)), (anonymous, (news,))):
        for channel in channels:
            assert client.subscribe(channel)["type"] == "subscribed"
    cy = Poller(second, user="cy")
    with SSEClient(second, channels=[news, chat], user="bob", name="Bob") as bob:
        assert bob.subscribe(room)["type"] == "subscribed"
        assert cy.subscribe(news)["type"] == "subscribed"
        node_a, node_b = node_of(ann), node_of(bob)  # type: ignore[arg-type]

        stats = as_json(env, "stats")
        assert (stats["scope"], stats["broker"]) == ("cluster", "redis")
        assert stats["counted"] == len(stats["nodes"]) and stats["missing"] == 0
        nodes = {node["id"]: node for node in stats["nodes"]}
        assert nodes.keys() == {node_a, node_b}
        assert nodes[node_a] | {"pid": 0, "host": ""} == {
            "id": node_a,
            "host": "",
            "pid": 0,
            "app": "tests.apps.basic",
            "broker": "redis",
            "broker_connected": True,
            "connections": 2,
            "transports": {"websocket": 2},
            "users": 1,
            "channels": 2,
            "subscriptions": 3,
            "shutting_down": False,
        }
        b = nodes[node_b]
        assert (b["connections"], b["users"], b["channels"], b["subscriptions"]) == (
            2,
            2,
            3,
            4,
        )
        assert b["transports"] == {"sse": 1, "longpolling": 1}
        assert (stats["connections"], stats["subscriptions"]) == (4, 7)
        assert stats["channels"] == 3
        assert stats["top_channels"] == [
            {"name": news, "subscribers": 4, "nodes": 2},
            {"name": room, "subscribers": 2, "nodes": 2},
            {"name": chat, "subscribers": 1, "nodes": 1},
        ]

        readable = cli("stats").stdout
        assert (
            "2 nodes answered of 2 counted; 4 connections, 3 channels, 7 subscriptions"
            in readable
        )
        assert any(line.split() == [news, "4", "2"] for line in readable.splitlines())

        listed = json.loads(cli("channels", "chat.*", "--json").stdout)
        assert listed["channels"] == [
            {"name": chat, "kind": "public", "subscribers": 1, "nodes": 1}
        ]
        table = cli("channels").stdout.splitlines()
        assert table[0].split() == ["CHANNEL", "KIND", "SUBSCRIBERS", "NODES"]
        assert [room, "presence", "2", "2"] in [line.split() for line in table]

        members = json.loads(cli("presence", room, "--json").stdout)["members"]
        assert sorted((m["user_id"], m["user_info"]["name"]) for m in members) == [
            ("ann", "Ann"),
            ("bob", "Bob"),
        ]

        sent = flask_realtime(env, "broadcast", news, "hello", '{"x": [1, "é"]}')
        assert sent.stdout.strip() == f"Sent 'hello' to '{news}'."
        for client in (ann, anonymous, bob, cy):
            event = client.wait_event("hello", news, timeout=10)
            assert event["data"] == {"x": [1, "é"]}

        # Every connection of a user on every node, then one connection by
        # its id (a long poll's, on the other node than the command's pick).
        ann_too = ws(second, "ann", "Ann")
        closed = as_json(env, "disconnect", "--user", "ann")
        assert (closed["connections"], closed["nodes"], closed["code"]) == (2, 2, 4000)
        assert closed_code(ann, 10) == 4000 and closed_code(ann_too, 10) == 4000
        one = cli("disconnect", "--connection", cy.connection_id)
        assert (
            one.stdout == f"Closing connection {cy.connection_id!r} with code 4000.\n"
        )
        assert closed_code(cy, 10) is None  # a poll carries no code: 404 once gone
        assert anonymous.ping()["type"] == "pong"
        assert bob.request({"type": "ping", "id": 7}) == [{"type": "pong", "id": 7}]

        # A node the broker counts but that cannot answer (frozen) is
        # reported missing, and the others still are.
        os.kill(nodes[node_b]["pid"], signal.SIGSTOP)
        try:
            frozen = cli("stats", "--json", "--wait", "0.5")
        finally:
            os.kill(nodes[node_b]["pid"], signal.SIGCONT)
        partial = json.loads(frozen.stdout)
        assert [n["id"] for n in partial["nodes"]] == [node_a]
        assert (partial["counted"], partial["missing"]) == (2, 1)
        assert "1 node counted by the broker did not answer" in frozen.stderr
    anonymous.close()
    with asker.app_context():
        realtime.node.broker.close()
