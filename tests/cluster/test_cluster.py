"""Cluster semantics, the same for every broker (issue 4, DESIGN.md 3-5, 7).

Two gunicorn instances of two gevent-websocket workers each share a real
broker server; clients and requests land on whichever worker the kernel
picks, so every test crosses nodes.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
import typing as t

import requests

from tests.cluster.conftest import Cluster
from tests.servers import Server
from tests.test_sse import SSEClient
from tests.wsclient import Client, WSTimeout, connect

_names = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}-{time.monotonic_ns() % 100000}"


def ws(server: Server, user: t.Any = None, name: str | None = None) -> Client:
    query = []
    if user is not None:
        query.append(f"user={user}")
    if name is not None:
        query.append(f"name={name}")
    return connect(server.ws_url + ("?" + "&".join(query) if query else ""))


def get(server: Server, path: str, **params: t.Any) -> t.Any:
    response = requests.get(server.url + path, params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def clients_on_every_node(cluster: Cluster, per_instance: int = 6) -> list[Client]:
    """At least ``per_instance`` connections per instance, on every worker.

    Which worker accepts a connection is the kernel's choice, and one busy
    worker can leave all of a few to the other: connect more until every
    worker holds one (a bounded number of tries).
    """
    clients: list[Client] = []
    for server in cluster.instances:
        mine = [ws(server) for _ in range(per_instance)]
        while len({node_of(c) for c in mine}) < server.workers and len(mine) < 60:
            mine.append(ws(server))
        assert len({node_of(c) for c in mine}) == server.workers, (
            f"{len(mine)} connections to {server} all reached one worker"
        )
        clients += mine
    return clients


def node_of(client: Client) -> str:
    assert client.connection_id is not None
    return client.connection_id.partition(".")[0]


def test_a_broadcast_reaches_every_subscriber_once_and_in_order(
    cluster: Cluster,
) -> None:
    channel = unique("news.")
    clients = clients_on_every_node(cluster)
    assert len({node_of(c) for c in clients}) >= 3, "clients did not spread"
    for client in clients:
        assert client.subscribe(channel)["type"] == "subscribed"
    count = 50
    # One publisher (a request on one worker) publishes a sequence...
    get(cluster.instances[0], "/flood", channel=channel, count=count, size=10)
    # ...and a process that serves nothing publishes one more after it.
    cluster.publish_only(["broadcast", channel, "done", {"from": "script"}])
    for client in clients:
        seqs = []
        while True:
            message = client.wait_for(lambda m: m.get("type") == "event", timeout=10)
            if message["event"] == "done":
                break
            seqs.append(message["data"]["seq"])
        assert seqs == list(range(count)), node_of(client)
    # Once: nothing more arrives after the last one.
    for client in clients:
        assert client.ping()["type"] == "pong"
        assert not [m for m in client.skipped if m.get("type") == "event"]


def test_send_to_user_reaches_all_of_the_users_connections(cluster: Cluster) -> None:
    user = unique("u")
    mine = [ws(server, user) for server in cluster.instances for _ in range(3)]
    other = ws(cluster.instances[0], unique("other"))
    assert len({node_of(c) for c in mine}) >= 2
    get(cluster.instances[1], "/send_to_user", user=user, event="note", data="1")
    cluster.publish_only(["send_to_user", user, "note", 2])
    for client in mine:
        first = client.wait_event("note")
        second = client.wait_event("note")
        assert (first["data"], second["data"]) == (1, 2)
        assert first.get("channel") is None
    assert other.ping()["type"] == "pong"
    assert not [m for m in other.skipped if m.get("type") == "event"]


def test_send_reaches_one_connection_wherever_it_lives(cluster: Cluster) -> None:
    clients = clients_on_every_node(cluster, per_instance=3)
    for n, client in enumerate(clients):
        # Through the other instance than the one holding the connection.
        via = cluster.instances[n % 2]
        get(
            via,
            "/send",
            connection_id=client.connection_id,
            event="direct",
            data=json.dumps(n),
        )
    for n, client in enumerate(clients):
        assert client.wait_event("direct")["data"] == n
        assert client.ping()["type"] == "pong"
        assert not [m for m in client.skipped if m.get("type") == "event"]


def _presence_clients(cluster: Cluster, channel: str) -> tuple[Client, Client]:
    """Ann on one instance and Bob on the other, both in ``channel``."""
    ann = ws(cluster.instances[0], "ann", "Ann")
    bob = ws(cluster.instances[1], "bob", "Bob")
    reply = ann.subscribe(channel)
    assert [m["user_id"] for m in reply["data"]["members"]] == ["ann"]
    reply = bob.subscribe(channel)
    known = {m["user_id"] for m in reply["data"]["members"]}
    if known != {"ann", "bob"}:
        # The sync did not answer in time (a loaded host): the subscribe
        # replied with what was known, and Ann's node's refresh fills in.
        assert known == {"bob"}, known
        join = bob.wait_event("presence.join", channel, timeout=10)
        assert join["data"] == {"user_id": "ann", "user_info": {"name": "Ann"}}
    join = ann.wait_event("presence.join", channel)
    assert join["data"] == {"user_id": "bob", "user_info": {"name": "Bob"}}
    return ann, bob


def test_presence_is_cluster_wide_and_events_come_once_per_user(
    cluster: Cluster,
) -> None:
    channel = unique("presence-room.")
    ann, bob = _presence_clients(cluster, channel)
    # Bob again, on every worker: no second join for anyone.
    more_bobs = [ws(server, "bob", "Bob") for server in cluster.instances * 3]
    for extra in more_bobs:
        assert extra.subscribe(channel)["type"] == "subscribed"
    for server in cluster.instances:
        members = get(server, "/presence", channel=channel)["members"]
        assert sorted(m["user_id"] for m in members) == ["ann", "bob"]
    [from_script] = cluster.publish_only(["presence", channel])
    assert sorted(m["user_id"] for m in from_script) == ["ann", "bob"]
    assert {m["user_id"]: m["user_info"] for m in from_script} == {
        "ann": {"name": "Ann"},
        "bob": {"name": "Bob"},
    }
    # All but one of Bob's connections go: Bob stays.
    bob.close()
    for extra in more_bobs[:-1]:
        extra.close()
    assert ann.ping()["type"] == "pong"
    # The last goes: one leave.
    more_bobs[-1].close()
    leave = ann.wait_event("presence.leave", channel, timeout=10)
    assert leave["data"] == {"user_id": "bob"}
    assert ann.ping()["type"] == "pong"
    events = [m for m in ann.skipped if m.get("type") == "event"]
    assert events == [], events
    for server in cluster.instances:
        members = get(server, "/presence", channel=channel)["members"]
        assert [m["user_id"] for m in members] == ["ann"]


def test_a_killed_node_has_its_members_leave_within_15_seconds(
    cluster: Cluster,
) -> None:
    channel = unique("presence-room.")
    ann, bob = _presence_clients(cluster, channel)
    victim = cluster.instances[1]
    # No goodbye: SIGKILL the arbiter and both workers at once.
    os.killpg(victim.process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    leave = ann.wait_event("presence.leave", channel, timeout=20)
    elapsed = time.monotonic() - killed_at
    assert leave["data"] == {"user_id": "bob"}
    assert elapsed <= 15, f"presence.leave came {elapsed:.1f} s after the kill"
    members = get(cluster.instances[0], "/presence", channel=channel)["members"]
    assert [m["user_id"] for m in members] == ["ann"]


def test_clients_stay_connected_through_a_broker_restart(
    broker_kind: str, own_broker_server: t.Any, start_cluster: t.Any
) -> None:
    broker = own_broker_server(broker_kind)
    cluster = start_cluster(broker)
    channel = unique("news.")
    clients = clients_on_every_node(cluster, per_instance=3)
    for client in clients:
        client.subscribe(channel)
    get(cluster.instances[0], "/broadcast", channel=channel, event="before")
    for client in clients:
        client.wait_event("before")
    broker.restart()
    # Each node reconnects and re-subscribes by itself; publish until the
    # nodes are back, then every client gets what follows.
    deadline = time.monotonic() + 60
    n = 0
    while True:
        n += 1
        get(cluster.instances[n % 2], "/broadcast", channel=channel, event="probe")
        try:
            clients[0].wait_event("probe", timeout=0.5)
            break
        except WSTimeout:
            assert time.monotonic() < deadline, "no delivery after the restart"
    # Every node is back once a broadcast published now reaches everyone.
    marker = unique("after-")
    deadline = time.monotonic() + 30
    for client in clients:
        while True:
            get(cluster.instances[0], "/broadcast", channel=channel, event=marker)
            try:
                client.wait_event(marker, timeout=1)
                break
            except WSTimeout:
                assert time.monotonic() < deadline, node_of(client)
        assert client.close_code is None


def test_a_node_receives_no_traffic_of_channels_its_clients_do_not_want(
    broker_kind: str, broker_servers: t.Any, start_cluster: t.Any
) -> None:
    # One worker per instance, so each instance is exactly one node.
    cluster = start_cluster(broker_servers(broker_kind), workers=1)
    a, b = cluster.instances
    wanted_here, wanted_there = unique("here."), unique("there.")
    on_a = ws(a)
    on_b = ws(b)
    on_a.subscribe(wanted_here)
    on_b.subscribe(wanted_there)
    before_b = get(b, "/realtime/health")["broker_messages"]["channel"]
    get(b, "/flood", channel=wanted_here, count=20, size=10)
    get(a, "/flood", channel=wanted_there, count=3, size=10)
    for _ in range(20):
        on_a.wait_event("flood")
    for _ in range(3):
        on_b.wait_event("flood")
    after_b = get(b, "/realtime/health")["broker_messages"]["channel"]
    after_a = get(a, "/realtime/health")["broker_messages"]["channel"]
    # b published the 20 but received only the 3 its client wanted.
    assert after_b - before_b == 3
    assert after_a >= 20


def test_sse_requests_may_land_on_any_node(cluster: Cluster) -> None:
    a, b = cluster.instances
    channel = unique("news.")
    streams = [SSEClient(server) for server in cluster.instances * 2]
    for n, stream in enumerate(streams):
        # Post through the other instance (and whichever worker): forwarded.
        stream.server = cluster.instances[(n + 1) % 2]
        assert stream.subscribe(channel)["type"] == "subscribed"
        replies = stream.request({"type": "ping", "id": "p"})
        assert replies[0]["type"] == "pong"
    get(a, "/broadcast", channel=channel, event="hello", data='"all"')
    for stream in streams:
        assert stream.wait_event("hello")["data"] == "all"
    # A wrong token is refused by the owner, wherever the request lands.
    response = streams[0].post({"type": "ping"}, token="not-the-token")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == 403
    for stream in streams:
        stream.close()


def test_long_polls_may_land_on_any_node(cluster: Cluster) -> None:
    a, b = cluster.instances
    channel = unique("news.")
    # Client timeouts above the server's for a forwarded request (10 s): a
    # request that gets no answer shows as the server's 504, not a hang.
    opened = requests.get(a.url + "/realtime/poll", timeout=30).json()
    welcome = opened["messages"][0]["data"]
    conn_id, token = welcome["connection_id"], welcome["token"]
    cursor = opened["cursor"]
    send = requests.post(
        b.url + "/realtime/send",
        json={
            "connection_id": conn_id,
            "token": token,
            "message": {"type": "subscribe", "channel": channel, "id": 1},
        },
        timeout=30,
    )
    assert send.status_code == 200, send.text
    assert send.json()[0]["type"] == "subscribed"
    received: list[int] = []
    for n in range(6):
        get(cluster.instances[n % 2], "/broadcast", channel=channel, event="m", data=n)
        server = cluster.instances[(n + 1) % 2]
        deadline = time.monotonic() + 10
        while len(received) <= n:
            assert time.monotonic() < deadline
            response = requests.get(
                server.url + "/realtime/poll",
                params={"connection_id": conn_id, "token": token, "cursor": cursor},
                timeout=40,
            )
            assert response.status_code == 200, response.text
            body = response.json()
            cursor = body["cursor"]
            received += [m["data"] for m in body["messages"] if m.get("event") == "m"]
    assert received == list(range(6))
    # A made-up connection on a node that does not exist: 404 at once.
    response = requests.get(
        b.url + "/realtime/poll",
        params={"connection_id": "nosuchnode.x", "token": token, "cursor": 0},
        timeout=10,
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == 404


def test_workers_forked_from_a_preloaded_app_are_nodes_of_their_own(
    broker_kind: str, broker_servers: t.Any, live_server: t.Any
) -> None:
    # --preload runs init_app in the arbiter, before the workers fork.
    broker = broker_servers(broker_kind)
    server = live_server(
        "geventwebsocket",
        env=broker.app_env,
        workers=2,
        gunicorn_options=["--preload"],
    )
    # Which worker accepts is up to the kernel: connect until both have some.
    clients = [ws(server) for _ in range(8)]
    while len({node_of(c) for c in clients}) < 2:
        assert len(clients) < 200, "every connection landed on one node id"
        clients.append(ws(server))
    channel = unique("news.")
    for client in clients:
        client.subscribe(channel)
    get(server, "/broadcast", channel=channel, event="hello", data='"all"')
    for n, client in enumerate(clients):
        assert client.wait_event("hello")["data"] == "all"
        get(server, "/send", connection_id=client.connection_id, event="own", data=n)
    for n, client in enumerate(clients):
        assert client.wait_event("own")["data"] == n
        assert client.ping()["type"] == "pong"
        assert not [m for m in client.skipped if m.get("type") == "event"]
