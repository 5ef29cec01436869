"""Acknowledged client events against a real cluster, on every transport.

One server for the module: gunicorn with two gevent-websocket workers on
Redis, serving ``tests.apps.acks:app``, so that a ``POST /realtime/send``
of an SSE or long-poll connection often lands on the worker that does not
hold the connection and is forwarded (the ack comes back through the
broker). The wire first (WebSocket frames, ``POST /send`` answers), then
the Python client, which speaks WebSocket.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import typing as t
import uuid
from pathlib import Path

import pytest
import requests

from flask_realtime.client import (
    RealtimeClient,
    RealtimeTimeout,
    ServerError,
)
from tests import servers
from tests.http_helpers import open_poll
from tests.servers import Server
from tests.test_sse import SSEClient
from tests.test_sse_clients import install_node_clients
from tests.wsclient import Client
from tests.wsclient import connect as ws_connect

if t.TYPE_CHECKING:
    from tests.brokerservers import BrokerServer

APP = "tests.apps.acks:app"
TRANSPORTS = ("websocket", "sse", "longpolling")
NODE_TEST = Path(__file__).resolve().parent / "node" / "acks.test.mjs"

_ids = itertools.count(1)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    broker_servers: t.Callable[[str], BrokerServer],
) -> t.Iterator[Server]:
    started = servers.start(
        "geventwebsocket",
        tmp_path_factory.mktemp("acks"),
        app=APP,
        env=broker_servers("redis").app_env,
        workers=2,
    )
    yield started
    started.discard()


def channel() -> str:
    return f"ack.{uuid.uuid4().hex[:8]}"


class Sender:
    """One connection on one transport, seen as what a client event gets back."""

    def __init__(self, server: Server, transport: str, user: str) -> None:
        self.server = server
        self.transport = transport
        self.ws: Client | None = None
        self.sse: SSEClient | None = None
        if transport == "websocket":
            self.ws = ws_connect(f"{server.ws_url}?user={user}")
        elif transport == "sse":
            self.sse = SSEClient(server, user=user)
            self.ids = {
                "connection_id": self.sse.connection_id,
                "token": self.sse.token,
            }
        else:
            poll = open_poll(server, user=user)
            self.ids = {"connection_id": poll["connection_id"], "token": poll["token"]}

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.sse is not None:
            self.sse.close()

    def send(self, message: dict[str, t.Any]) -> list[dict[str, t.Any]]:
        """What answers ``message``: the WebSocket reply carrying its id (a
        ping's ``pong`` after it proves there is none for an event without
        one), or the ``POST /send`` answer."""
        if self.ws is None:
            response = requests.post(
                self.server.url + "/realtime/send",
                json={**self.ids, "message": message},
                timeout=10,
            )
            assert response.status_code == 200, response.text
            return response.json()
        if "id" in message:
            return [self.ws.request(message)]
        self.ws.send_json(message)
        self.ws.skipped.clear()
        self.ws.ping(id="after")
        return [m for m in self.ws.skipped if m.get("type") in ("ack", "error")]

    def subscribe(self, name: str) -> None:
        [reply] = self.send({"type": "subscribe", "channel": name, "id": next(_ids)})
        assert reply["type"] == "subscribed", reply


@pytest.fixture(params=TRANSPORTS)
def sender(server: Server, request: pytest.FixtureRequest) -> t.Iterator[Sender]:
    opened = Sender(server, request.param, user=f"u{next(_ids)}")
    yield opened
    opened.close()


def event(name: str, data: t.Any, *, on: str, id: t.Any = None) -> dict[str, t.Any]:
    message = {"type": "event", "channel": on, "event": name, "data": data}
    if id is not None:
        message["id"] = id
    return message


# -- the wire -------------------------------------------------------------------------


def test_a_handlers_value_answers_the_event(sender: Sender) -> None:
    name = channel()
    sender.subscribe(name)
    for n in range(3):  # a few, so that some POSTs are forwarded between workers
        answer = sender.send(event("add", [n, 2], on=name, id=f"a{n}"))
        assert answer == [
            {
                "type": "ack",
                "id": f"a{n}",
                "channel": name,
                "data": {"sum": n + 2, "user": answer[0]["data"]["user"]},
            }
        ]
        assert answer[0]["data"]["user"].startswith("u")


def test_none_is_acked_without_data_and_no_id_gets_no_reply(sender: Sender) -> None:
    name = channel()
    sender.subscribe(name)
    assert sender.send(event("nothing", 1, on=name, id=7)) == [
        {"type": "ack", "id": 7, "channel": name}
    ]
    assert sender.send(event("nothing", 2, on=name)) == []
    assert sender.send(event("add", [1, 1], on=name)) == []


def test_a_rejection_answers_with_its_code(sender: Sender) -> None:
    name = channel()
    sender.subscribe(name)
    refusal = {"message": "that room is full", "code": 409}
    assert sender.send(event("refuse", refusal, on=name, id="r")) == [
        {
            "type": "error",
            "id": "r",
            "channel": name,
            "data": {"code": 409, "message": "that room is full"},
        }
    ]


@pytest.mark.parametrize("what", ["not-json", "boom"])
def test_a_failing_handler_answers_500_and_the_connection_goes_on(
    sender: Sender, what: str
) -> None:
    name = channel()
    sender.subscribe(name)
    [reply] = sender.send(event(what, None, on=name, id=3))
    assert reply["type"] == "error" and reply["id"] == 3
    assert reply["data"]["code"] == 500
    assert sender.send(event("add", [2, 2], on=name, id=4))[0]["data"]["sum"] == 4


def test_a_relayed_client_event_is_acked(server: Server, sender: Sender) -> None:
    name = f"presence-{channel()}"
    other = ws_connect(f"{server.ws_url}?user=other{next(_ids)}")
    try:
        assert other.subscribe(name)["type"] == "subscribed"
        sender.subscribe(name)
        assert sender.send(event("client-wave", "hi", on=name, id="w")) == [
            {"type": "ack", "id": "w", "channel": name}
        ]
        assert other.wait_event("client-wave", name)["data"] == "hi"
    finally:
        other.close()


# -- the Python client ----------------------------------------------------------------


def python_client(server: Server, user: str) -> RealtimeClient:
    return RealtimeClient(server.url, params={"user": user}, timeout=5.0).connect()


def test_python_client_send_with_wait_returns_the_value_or_raises(
    server: Server,
) -> None:
    with python_client(server, "py1") as client:
        room = client.subscribe(channel())
        assert room.send("add", [20, 22], wait=True) == {"sum": 42, "user": "py1"}
        assert room.send("nothing", "x", wait=True) is None
        assert room.wait_for("done", timeout=5) == "x"  # done before the ack
        with pytest.raises(ServerError) as refused:
            room.send("refuse", {"message": "no", "code": 422}, wait=True)
        assert (refused.value.code, refused.value.message) == (422, "no")
        assert refused.value.channel == room.name
        with pytest.raises(ServerError) as failed:
            room.send("boom", None, wait=True)
        assert failed.value.code == 500
        # Without wait, as before: nothing back, a refusal as an error event.
        assert room.send("refuse", {"message": "later", "code": 400}) is None
        assert room.wait_for("error", timeout=5)["code"] == 400
        assert client.ping() > 0


def test_python_client_send_times_out_and_the_late_ack_is_dropped(
    server: Server,
) -> None:
    with python_client(server, "py2") as client:
        room = client.subscribe(channel())
        with pytest.raises(RealtimeTimeout):
            room.send("slow", 0.5, wait=True, timeout=0.1)
        # The late ack finds nobody waiting; the next answers are the right ones.
        assert room.send("slow", 0, wait=True) == "late"
        assert room.send("add", [1, 2], wait=True)["sum"] == 3


# -- the JavaScript client in Node ----------------------------------------------------


def node_command() -> list[str]:
    """``node``, with the flag that gives Node 20 its WebSocket (later
    versions have it without)."""
    node = shutil.which("node")
    assert node, "node is needed for this test (.ci/run installs nodejs)"
    probe = [node, "--experimental-websocket", "-e", "0"]
    if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
        return probe[:2]
    return [node]


def test_js_client_send_in_node_on_every_transport(server: Server) -> None:
    install_node_clients()
    result = subprocess.run(
        [*node_command(), "--test", str(NODE_TEST)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "ACK_SERVER_URL": server.url},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout and "# pass 7" in result.stdout, result.stdout
