"""History and recovery against real servers (null broker), on every
transport: ``since`` on subscribe, ``recovered`` true or false, and the
handover from history to live delivery while the channel is flooded.

One client class per transport, with one interface (``subscribe``,
``events``, ``close``), so that every case runs on WebSocket, SSE and
long-poll alike. The flood is the test app's ``/flood`` view: a publisher
inside the server, as fast as a view can broadcast. The app's history read
takes 40 ms (``tests/apps/history_latency.py``), like a networked broker's
round trip, so events are published while a subscribe reads the history.
"""

from __future__ import annotations

import threading
import time
import typing as t

import pytest
import requests

from tests.conftest import module_server
from tests.http_helpers import app_env, unique
from tests.http_helpers import broadcast as _broadcast
from tests.servers import Server
from tests.test_longpoll import Poller
from tests.test_sse import SSEClient
from tests.wsclient import connect as ws_connect

ENV = app_env(
    REALTIME_HEARTBEAT=5,
    REALTIME_HISTORY={
        "hist.*": {"size": 5, "ttl": 600},
        "race.*": {"size": 10_000, "ttl": 600},
    },
)
server = module_server(
    ("geventwebsocket", "gevent", "flask-run"),
    app="tests.apps.history_latency:app",
    env=ENV,
)

TRANSPORTS = ("websocket", "sse", "longpoll")
Message = dict[str, t.Any]


class Subscriber:
    """One connection of any transport: subscribe (with ``since``), read
    the channel's events in order, close."""

    def __init__(self, server: Server, transport: str) -> None:
        self.transport = transport
        if transport == "websocket":
            self.client: t.Any = ws_connect(server.ws_url)
        elif transport == "sse":
            self.client = SSEClient(server)
        else:
            self.client = Poller(server)
        self._ids = 0

    def subscribe(self, channel: str, since: Message | None = None) -> Message:
        self._ids += 1
        message: Message = {"type": "subscribe", "channel": channel, "id": self._ids}
        if since is not None:
            message["since"] = since
        if self.transport != "websocket":
            [reply] = self.client.request(message)  # the POST's answer
            return t.cast(Message, reply)
        self.client.send_json(message)
        # On a WebSocket the reply comes first, before any recovered event.
        reply = self.client.recv_json()
        assert reply.get("id") == self._ids, reply
        return t.cast(Message, reply)

    def events(self, channel: str, count: int, timeout: float = 10) -> list[Message]:
        def on_channel(message: t.Any) -> bool:
            return message.get("type") == "event" and message.get("channel") == channel

        return [self.client.wait_for(on_channel, timeout) for _ in range(count)]

    def close(self) -> None:
        client = self.client
        if self.transport == "longpoll":  # a goodbye, as browsers send it
            client.session.post(
                client.server.url + "/realtime/close",
                json={"connection_id": client.connection_id, "token": client.token},
                timeout=5,
            )
        else:
            client.close()


def broadcast(server: Server, channel: str, *numbers: int) -> None:
    for n in numbers:
        _broadcast(server, channel, "m", n)


def position(server: Server, channel: str) -> Message:
    """The channel's position, as a new WebSocket subscriber is told it."""
    probe = Subscriber(server, "websocket")
    try:
        reply = probe.subscribe(channel)
    finally:
        probe.close()
    return t.cast(Message, reply["data"]["position"])


def offsets_and_data(events: list[Message]) -> list[tuple[int, t.Any]]:
    return [(e.get("offset"), e["data"]) for e in events]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return t.cast(str, request.param)


def test_recovered_replays_the_missed_events_then_live(
    server: Server, transport: str
) -> None:
    channel = unique("hist")
    start = position(server, channel)
    assert start["offset"] == 0
    broadcast(server, channel, 1, 2, 3, 4)
    client = Subscriber(server, transport)
    try:
        reply = client.subscribe(channel, {**start, "offset": 2})
        assert reply["type"] == "subscribed", reply
        assert reply["data"]["recovered"] is True
        assert reply["data"]["position"] == {**start, "offset": 4}
        broadcast(server, channel, 5)
        # Exactly once and in order: the live event comes right after the replay.
        got = offsets_and_data(client.events(channel, 3))
        assert got == [(3, 3), (4, 4), (5, 5)]
    finally:
        client.close()


@pytest.mark.parametrize("case", ["epoch", "trimmed", "beyond", "no-history"])
def test_not_recovered(server: Server, transport: str, case: str) -> None:
    channel = unique("plain" if case == "no-history" else "hist")
    start = position(server, channel) if case != "no-history" else {"epoch": "x"}
    broadcast(server, channel, 1, 2, 3, 4, 5, 6, 7)  # size 5: offsets 3..7 kept
    since = {
        "epoch": {"offset": 5, "epoch": start["epoch"] + "x"},
        "trimmed": {**start, "offset": 1},
        "beyond": {**start, "offset": 8},
        "no-history": {"offset": 5, "epoch": "x"},
    }[case]
    client = Subscriber(server, transport)
    try:
        reply = client.subscribe(channel, since)
        assert reply["type"] == "subscribed", reply
        if case == "no-history":
            assert reply["data"] == {"recovered": False}
        else:
            assert reply["data"] == {
                "position": {**start, "offset": 7},
                "recovered": False,
            }
        broadcast(server, channel, 8)
        [event] = client.events(channel, 1)  # nothing replayed before it
        assert event["data"] == 8
        assert event.get("offset") == (None if case == "no-history" else 8)
    finally:
        client.close()


def test_offsets_are_the_same_on_every_transport(server: Server) -> None:
    channel = unique("hist")
    clients = [Subscriber(server, kind) for kind in TRANSPORTS]
    try:
        positions = [c.subscribe(channel)["data"]["position"] for c in clients]
        assert positions[0] == positions[1] == positions[2]
        broadcast(server, channel, 1, 2, 3)
        seen = [offsets_and_data(c.events(channel, 3)) for c in clients]
        assert seen[0] == seen[1] == seen[2] == [(1, 1), (2, 2), (3, 3)]
    finally:
        for client in clients:
            client.close()


def _flood(server: Server, channel: str, count: int, answer: list[t.Any]) -> None:
    response = requests.get(
        f"{server.url}/flood",
        params={"channel": channel, "count": count, "size": 10, "pause": 0.0005},
        timeout=120,
    )
    answer.append(response.status_code)


def test_resubscribing_during_a_flood_gets_every_event_once_in_order(
    server: Server, transport: str
) -> None:
    """A client reconnects again and again while the channel is published to
    as fast as a view can: each resubscribe with ``since`` hands over from
    the history to live delivery without a gap or a duplicate."""
    channel = unique("race")
    count = 1500
    start = position(server, channel)
    answer: list[t.Any] = []
    flood = threading.Thread(target=_flood, args=(server, channel, count, answer))
    flood.start()
    seen: list[Message] = []
    reconnects = 0
    try:
        deadline = time.monotonic() + 90
        while len(seen) < count:
            assert time.monotonic() < deadline, (len(seen), reconnects, seen[-3:])
            client = Subscriber(server, transport)
            try:
                last = seen[-1]["offset"] if seen else 0
                reply = client.subscribe(channel, {**start, "offset": last})
                assert reply["data"]["recovered"] is True, reply
                # Read a while (a burst's worth), then go away mid-stream.
                wanted = min(count - len(seen), 97)
                seen.extend(client.events(channel, wanted, timeout=30))
            finally:
                client.close()
            reconnects += 1
    finally:
        flood.join(120)
    assert answer == [200]
    assert [e["offset"] for e in seen] == list(range(1, count + 1))
    assert [e["data"]["seq"] for e in seen] == list(range(count))
    assert reconnects >= 10


def test_an_sse_stream_subscribed_by_its_query_gets_the_reply_first(
    server: Server,
) -> None:
    channel = unique("hist")
    broadcast(server, channel, 1)
    client = SSEClient(server, channels=[channel])
    try:
        reply = client.next_message()
        assert reply["type"] == "subscribed", reply
        assert reply["data"]["position"]["offset"] == 1
        broadcast(server, channel, 2)
        event = client.wait_for(lambda m: m.get("channel") == channel)
        assert (event["offset"], event["data"]) == (2, 2)
    finally:
        client.close()
