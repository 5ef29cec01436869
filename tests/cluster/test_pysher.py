"""pysher (PyPI ``Pysher`` 1.0.8, a Python Pusher client) against two nodes
on a real broker (Redis), with a native client on the other node.

pysher connects to node A; the native client is on node B. A ``broadcast()``
from a view reaches pysher and the native client on a public channel; on a
private channel signed by our ``POST /pusher/auth`` (pysher's
``auth_endpoint``; the app's ``authenticate`` reads the user from its query
string) client events cross both ways; the endpoint refuses another user's
private channel; on a presence channel, one pysher member signed by our
endpoint and one signed by pysher itself (its ``secret``) are in the
cluster-wide member list and seen joining and leaving by the native client.

What pysher does its own way: callbacks get ``data`` as the raw JSON string
Pusher sends; it subscribes with whatever ``socket_id`` it has, so the test
waits for ``pusher:connection_established``; it binds a channel's callbacks
only after sending the subscription, so
``pusher_internal:subscription_succeeded`` can arrive before anything listens
(see ``wait_subscribed``); and for presence it sends its own ``user_data`` as
``channel_data``, not the endpoint's answer, so with an ``auth_endpoint`` its
``user_data`` must be exactly what the app's authorizer makes of the user
(anything else is refused as an invalid signature, as Pusher would).
"""

from __future__ import annotations

import json
import queue
import time
import typing as t

import pysher
import pytest
import requests

from tests.brokerservers import BrokerServer
from tests.cluster.test_pusher_js import native_event
from tests.servers import Server
from tests.wsclient import connect

KEY, SECRET = "app-key", "app-secret"
ENV = {
    "TESTAPP_REALTIME_PUSHER": json.dumps(
        {"app_id": "1", "key": KEY, "secret": SECRET}
    ),
}
DEADLINE = 10.0


class Received:
    """Channel callbacks of pysher's thread, collected for the test."""

    def __init__(self) -> None:
        self.items: queue.Queue[tuple[str, t.Any]] = queue.Queue()

    def callback(self, name: str) -> t.Callable[[t.Any], None]:
        def note(data: t.Any) -> None:
            self.items.put((name, data))

        return note

    def wait(self, name: str) -> t.Any:
        """The data of the next callback ``name`` (others before it are
        dropped), within the deadline."""
        deadline = time.monotonic() + DEADLINE
        while True:
            remaining = deadline - time.monotonic()
            try:
                got, data = self.items.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                raise AssertionError(
                    f"pysher got no {name!r} in {DEADLINE} s"
                ) from None
            if got == name:
                return data


def client(server: Server, **options: t.Any) -> pysher.Pusher:
    """A connected pysher client of ``server``."""
    pusher = pysher.Pusher(
        KEY,
        secure=False,
        custom_host="127.0.0.1",
        port=server.port,
        reconnect_interval=1,
        **options,
    )
    pusher.connect()
    deadline = time.monotonic() + DEADLINE
    while pusher.connection.state != "connected":
        assert time.monotonic() < deadline, "pysher did not connect"
        time.sleep(0.01)
    return pusher


def wait_subscribed(server: Server, channel: str) -> None:
    """Until ``server`` (pysher's node) has its subscriber on ``channel``.

    Not pysher's ``pusher_internal:subscription_succeeded``: pysher creates
    the channel object, where callbacks are bound, only after sending the
    subscription, so a fast answer finds no channel and is dropped. The node
    counts a subscriber once its broker interest is in place."""
    deadline = time.monotonic() + DEADLINE
    url = f"{server.url}/presence"
    while True:
        answer = requests.get(url, params={"channel": channel}, timeout=5).json()
        if answer["subscriber_count"] == 1:
            return
        assert time.monotonic() < deadline, f"pysher not subscribed to {channel}"
        time.sleep(0.02)


def test_pysher_and_a_native_client_across_two_nodes(
    live_server: t.Any, broker_servers: t.Callable[[str], BrokerServer]
) -> None:
    broker = broker_servers("redis")
    env = {**broker.app_env, **ENV}
    a, b = (live_server("geventwebsocket", env=env) for _ in range(2))
    native = connect(f"{b.ws_url}?user=5&name=Nat")
    for channel in ("py-orders", "private-py.5", "presence-py"):
        assert native.subscribe(channel)["type"] == "subscribed"
    received = Received()
    signed_by_us = client(a, auth_endpoint=f"{a.url}/pusher/auth?user=5&name=Py")
    # pysher sends its own user_data as channel_data, so for a presence
    # channel signed by our endpoint it must be, to the byte, the JSON the
    # endpoint signs: the authorizer's user_info under the user's id.
    member = {"user_id": "7", "user_info": {"name": "Eve"}}
    eve = client(
        a, auth_endpoint=f"{a.url}/pusher/auth?user=7&name=Eve", user_data=member
    )
    own = {"user_id": "8", "user_info": {"name": "Sec"}}
    signed_by_itself = client(a, secret=SECRET, user_data=own)
    try:
        # Public: a broadcast() from a view.
        orders = signed_by_us.subscribe("py-orders")
        orders.bind("OrderShipped", received.callback("shipped"))
        wait_subscribed(a, "py-orders")
        params = {"channel": "py-orders", "event": "OrderShipped", "data": '{"id":7}'}
        response = requests.get(f"{a.url}/broadcast", params=params, timeout=5)
        assert response.status_code == 200
        assert json.loads(received.wait("shipped")) == {"id": 7}
        assert native_event(native, "py-orders", "OrderShipped")["data"] == {"id": 7}

        # Private, signed by POST /pusher/auth: client events both ways.
        room = signed_by_us.subscribe("private-py.5")
        room.bind("client-native", received.callback("native"))
        wait_subscribed(a, "private-py.5")
        room.trigger("client-typing", {"n": 1})
        typing = native_event(native, "private-py.5", "client-typing")
        assert typing["data"] == {"n": 1}
        native.send_json(
            {
                "type": "event",
                "channel": "private-py.5",
                "event": "client-native",
                "data": {"from": "Nat"},
            }
        )
        assert json.loads(received.wait("native")) == {"from": "Nat"}

        # private-py.6 is user 6's: our endpoint answers 403, which pysher
        # raises as an AssertionError of its own.
        with pytest.raises(AssertionError, match="Failed to get auth token"):
            signed_by_us.subscribe("private-py.6")

        # Presence: one member signed by our endpoint, one by pysher with
        # the secret; the member list is cluster-wide.
        eve.subscribe("presence-py")
        joined = native_event(native, "presence-py", "presence.join")
        assert joined["data"] == {"user_id": "7", "user_info": {"name": "Eve"}}
        signed_by_itself.subscribe("presence-py")
        joined = native_event(native, "presence-py", "presence.join")
        assert joined["data"] == {"user_id": "8", "user_info": {"name": "Sec"}}
        members = requests.get(
            f"{b.url}/presence", params={"channel": "presence-py"}, timeout=5
        ).json()["members"]
        assert sorted(m["user_id"] for m in members) == ["5", "7", "8"]
        # pysher's disconnect closes the socket at once but may wait out its
        # join timeout for its thread; the node sees the close either way.
        signed_by_itself.disconnect(timeout=0.2)
        left = native_event(native, "presence-py", "presence.leave")
        assert left["data"] == {"user_id": "8"}

        # Still delivering after all that, across nodes too.
        params["data"] = '{"id":8}'
        requests.get(f"{b.url}/broadcast", params=params, timeout=5)
        assert json.loads(received.wait("shipped")) == {"id": 8}
    finally:
        signed_by_us.disconnect(timeout=0.2)
        eve.disconnect(timeout=0.2)
        signed_by_itself.disconnect(timeout=0.2)
        native.close()
