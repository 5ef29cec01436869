"""Webhooks in Pusher's format from real servers: two gunicorn nodes on one
Redis, native clients on both, and two real receivers at once, one in our
format and one in Pusher's that checks every request with the official
``pusher`` library's ``validate_webhook`` (as a Pusher handler would).
Both receivers must hear the same events, each once, in the same order."""

from __future__ import annotations

import json
import threading
import typing as t

import pusher
import pytest

from tests.brokerservers import BrokerServer
from tests.conftest import LiveServerFactory
from tests.webhook_receiver import Receiver
from tests.wsclient import connect

APP = {"app_id": "1", "key": "app-key", "secret": "app-secret"}
SECRET = "native-webhook-secret"


class PusherReceiver(Receiver):
    """The test receiver, but checking requests as Pusher's library does."""

    def __init__(self) -> None:
        super().__init__(SECRET)
        self.library = pusher.Pusher(
            app_id=APP["app_id"], key=APP["key"], secret=APP["secret"]
        )
        self.keys: list[str] = []

    def _take(self, body: bytes, headers: t.Any) -> int:
        with self._lock:
            self.requests += 1
            key = headers.get("X-Pusher-Key", "")
            self.keys.append(key)
            payload = self.library.validate_webhook(
                key, headers.get("X-Pusher-Signature", ""), body
            )
            if payload is None:
                self.bad_signatures += 1
                return 401
            self.batches.append(payload)
            return 200


@pytest.fixture
def receivers() -> t.Iterator[tuple[Receiver, PusherReceiver]]:
    native, pusher_format = Receiver(SECRET), PusherReceiver()
    yield native, pusher_format
    native.close()
    pusher_format.close()


def test_pusher_handlers_hear_the_cluster_as_pusher_tells_it(
    live_server: LiveServerFactory,
    broker_servers: t.Callable[[str], BrokerServer],
    receivers: tuple[Receiver, PusherReceiver],
) -> None:
    native, pusher_format = receivers
    hooks = {
        "urls": [native.url, {"url": pusher_format.url, "format": "pusher"}],
        "secret": SECRET,
        "batch_window": 0.02,
    }
    env = {
        **broker_servers("redis").app_env,
        "TESTAPP_REALTIME_PUSHER": json.dumps(APP),
        "TESTAPP_REALTIME_WEBHOOKS": json.dumps(hooks),
    }
    # Both nodes at once: each start waits for its server to be healthy.
    nodes: list[t.Any] = [None, None]
    starts = [
        threading.Thread(
            target=lambda i=i: nodes.__setitem__(
                i, live_server("geventwebsocket", env=env)
            )
        )
        for i in range(2)
    ]
    for start in starts:
        start.start()
    for start in starts:
        start.join()
    first, second = nodes
    room, own = "presence-room.7", "private-room.ann"

    ann = connect(f"{first.ws_url}?user=ann&name=Ann")
    assert ann.subscribe(room)["type"] == "subscribed"
    assert ann.subscribe(own)["type"] == "subscribed"
    pusher_format.wait_for(lambda e: len(e) >= 3)
    bob = connect(f"{second.ws_url}?user=bob&name=Bob")
    assert bob.subscribe(room)["type"] == "subscribed"
    pusher_format.wait_for(lambda e: len(e) >= 4)
    bob.send_json(
        {"type": "event", "channel": room, "event": "client-typing", "data": {"x": 1}}
    )
    ann.send_json(
        {"type": "event", "channel": own, "event": "client-note", "data": "plain"}
    )
    pusher_format.wait_for(lambda e: len(e) >= 6)
    ann.close()
    pusher_format.wait_for(lambda e: len(e) >= 8)
    bob.close()
    got = pusher_format.wait_for(lambda e: len(e) >= 10)

    in_order = [(e["name"], e["channel"], e.get("user_id")) for e in got]
    assert in_order[:4] == [
        ("channel_occupied", room, None),
        ("member_added", room, "ann"),
        ("channel_occupied", own, None),
        ("member_added", room, "bob"),
    ]
    typing, note = sorted(got[4:6], key=lambda e: e["channel"])
    assert typing == {
        "name": "client_event",
        "channel": room,
        "event": "client-typing",
        "data": '{"x":1}',
        "socket_id": bob.connection_id,
        "user_id": "bob",
    }
    assert note == {
        "name": "client_event",
        "channel": own,
        "event": "client-note",
        "data": "plain",
        "socket_id": ann.connection_id,
    }
    assert sorted(in_order[6:8]) == [
        ("channel_vacated", own, None),
        ("member_removed", room, "ann"),
    ]
    assert in_order[8:] == [
        ("member_removed", room, "bob"),
        ("channel_vacated", room, None),
    ]
    assert pusher_format.bad_signatures == 0
    assert set(pusher_format.keys) == {"app-key"}
    # The native receiver heard the same events, in its own names.
    mine = native.wait_for(lambda e: len(e) >= 10)
    names = {"occupied": "channel_occupied", "vacated": "channel_vacated"}
    assert [
        names.get(e["name"].partition(".")[2], e["name"].replace(".", "_"))
        for e in mine
    ] == [e["name"] for e in got]
    assert native.bad_signatures == 0
