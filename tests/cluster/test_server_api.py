"""Server-side control across nodes on a real broker (Redis): two nodes
(two gunicorn instances of one gevent-websocket worker each), and a
process that serves nothing (a script, a Celery task) giving commands.

``realtime.subscribe(user_id=...)`` reaches the user's connections on every
node, presence joins follow on every node, ``exclude`` holds across nodes,
``realtime.disconnect(user_id=...)`` closes the user's every connection,
and a node that shuts down calls ``on_disconnect`` for its connections.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
import requests

from tests import servers
from tests.brokerservers import BrokerServer
from tests.servers import Server
from tests.test_longpoll import Poller
from tests.test_server_api import kind_is, new_user, wait_for_calls
from tests.test_sse import SSEClient
from tests.wsclient import Client, connect

APP = "tests.apps.server_api:app"


@pytest.fixture
def nodes(
    live_server: t.Any,
    broker_servers: t.Callable[[str], BrokerServer],
    tmp_path: Path,
) -> tuple[BrokerServer, Path, list[Server]]:
    broker = broker_servers("redis")
    log = tmp_path / "hooks.log"
    env = {**broker.app_env, "HOOKS_LOG": str(log)}
    started = [live_server("geventwebsocket", app=APP, env=env) for _ in range(2)]
    return broker, log, started


def script(broker: BrokerServer, code: str) -> None:
    """Run ``code`` in a process that serves nothing, ``realtime`` at hand."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from tests.apps.server_api import app, realtime\n"
            f"with app.app_context():\n    {code}\n",
        ],
        env=servers.child_environment(broker.app_env),
        cwd=servers.ROOT,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]


def ws(server: Server, user: str) -> Client:
    return connect(f"{server.ws_url}?user={user}")


def node_of(client: Client) -> str:
    return str(client.connection_id).partition(".")[0]


def test_commands_from_a_script_reach_every_node_and_shutdown_hooks(
    nodes: tuple[BrokerServer, Path, list[Server]],
) -> None:
    broker, log, (first, second) = nodes
    user, watcher_user = new_user(), new_user()
    channel = f"presence-team.{user}"
    mine = [ws(first, user), ws(second, user)]
    assert node_of(mine[0]) != node_of(mine[1])
    watchers = [ws(first, watcher_user), ws(second, watcher_user)]
    for watcher in watchers:
        assert watcher.subscribe(channel)["type"] == "subscribed"

    script(broker, f"realtime.subscribe({channel!r}, user_id={user!r})")
    for client in mine:
        reply = client.wait_for(kind_is("subscribed"))
        assert "id" not in reply and reply["channel"] == channel
        members = sorted(m["user_id"] for m in reply["data"]["members"])
        assert members == sorted([user, watcher_user])
    for watcher in watchers:  # one join per user, on every node
        join = watcher.wait_event("presence.join", channel)
        assert join["data"]["user_id"] == user

    # exclude: a view on the second node excludes a connection of the first.
    response = requests.post(
        f"{second.url}/api/post",
        params={"channel": channel, "event": "said"},
        json="hi",
        headers={"X-Socket-ID": mine[0].connection_id},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    requests.get(
        f"{first.url}/broadcast",
        params={"channel": channel, "event": "said", "data": '"again"'},
        timeout=5,
    ).raise_for_status()
    for client in (mine[1], *watchers):
        assert client.wait_event("said", channel)["data"] == "hi"
        assert client.wait_event("said", channel)["data"] == "again"
    assert mine[0].wait_event("said", channel)["data"] == "again"
    assert not [m for m in mine[0].skipped if m.get("event") == "said"]

    # Unsubscribed everywhere: presence leaves once per user.
    # (From a view on one node: the same commands as from the script.)
    requests.get(
        f"{first.url}/api/unsubscribe",
        params={"channel": channel, "user": user},
        timeout=5,
    ).raise_for_status()
    for client in mine:
        assert client.wait_for(kind_is("unsubscribed")) == {
            "type": "unsubscribed",
            "channel": channel,
        }
    for watcher in watchers:
        leave = watcher.wait_event("presence.leave", channel)
        assert leave["data"] == {"user_id": user}

    # Logged out of every tab, on every node.
    requests.get(
        f"{second.url}/api/disconnect", params={"user": user}, timeout=5
    ).raise_for_status()
    assert [client.expect_close() for client in mine] == [4000, 4000]
    calls = wait_for_calls(user, 4, str(log))
    gone = [(c["id"], c["code"]) for c in calls if c["hook"] == "disconnect"]
    assert sorted(gone) == sorted((c.connection_id, 4000) for c in mine)

    # The first node shuts down: on_disconnect for its connections (4200),
    # whatever their transport.
    stream_user, poll_user = new_user(), new_user()
    stream, poller = SSEClient(first, user=stream_user), Poller(first, user=poll_user)
    first.signal(signal.SIGTERM)
    assert watchers[0].expect_close() == 4200
    watchers[0].close()
    for who, client in (
        (watcher_user, watchers[0]),
        (stream_user, stream),
        (poll_user, poller),
    ):
        calls = wait_for_calls(who, 3 if who == watcher_user else 2, str(log))
        assert [
            (c["hook"], c["id"], c.get("code"), c.get("reason")) for c in calls[-1:]
        ] == [("disconnect", client.connection_id, 4200, "server shutting down")]
    stream.close()
    assert watchers[1].ping()["type"] == "pong"
    watchers[1].close()
