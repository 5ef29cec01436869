"""Webhooks across a real cluster: two nodes on Redis, clients on WebSocket,
SSE and long-polling, a real HTTP receiver that checks every signature.

Each step waits for the events it should cause before the next, so each
event's count and order are checked as they come; a marker channel at the
end shows that nothing else (a duplicate from the other node) was on its way.
"""

from __future__ import annotations

import json
import time
import typing as t

import pytest
import requests

from tests.brokerservers import BrokerServer
from tests.cluster.conftest import Cluster
from tests.servers import Server
from tests.test_longpoll import Poller
from tests.test_sse import SSEClient
from tests.webhook_receiver import Receiver
from tests.wsclient import connect

SECRET = "cluster-webhook-secret"


@pytest.fixture
def receiver() -> t.Iterator[Receiver]:
    r = Receiver(SECRET)
    yield r
    r.close()


def webhook_env(receiver: Receiver, **options: t.Any) -> dict[str, str]:
    config = {"urls": [receiver.url], "secret": SECRET, "batch_window": 0.02}
    config.update(options)
    return {"TESTAPP_REALTIME_WEBHOOKS": json.dumps(config)}


def of(channel: str) -> t.Callable[[list[dict[str, t.Any]]], list[tuple]]:
    def pick(events: list[dict[str, t.Any]]) -> list[tuple]:
        return [
            (e["name"], e.get("user_id"))
            for e in events
            if e["channel"] == channel and e["name"] != "client.event"
        ]

    return pick


def test_each_event_once_in_order_across_nodes_and_transports(
    broker_servers: t.Callable[[str], BrokerServer],
    start_cluster: t.Callable[..., Cluster],
    receiver: Receiver,
) -> None:
    cluster = start_cluster(
        broker_servers("redis"), instances=2, workers=1, env=webhook_env(receiver)
    )
    a, b = cluster.instances
    room, news, marker = "presence-room.1", "news.1", "marker.1"
    in_room = of(room)

    def expect(channel_events: t.Callable, wanted: list[tuple]) -> None:
        got = receiver.wait_for(lambda e: len(channel_events(e)) >= len(wanted))
        assert channel_events(got) == wanted

    # A WebSocket on node A, then SSE and long-poll on node B.
    ann_ws = connect(a.ws_url + "?user=1&name=Ann")
    assert ann_ws.subscribe(room)["type"] == "subscribed"
    expect(in_room, [("channel.occupied", None), ("member.added", "1")])
    bob_sse = SSEClient(b, user="2", name="Bob")
    assert bob_sse.subscribe(room)["type"] == "subscribed"
    expect(
        in_room,
        [("channel.occupied", None), ("member.added", "1"), ("member.added", "2")],
    )
    ann_poll = Poller(b, user="1", name="Ann")
    assert ann_poll.subscribe(room)["type"] == "subscribed"  # Ann again: no event

    # A client event, sent once by the node that received it.
    bob_sse.request(
        {"type": "event", "channel": room, "event": "client-typing", "data": {"x": 1}}
    )
    got = receiver.wait_for(lambda e: any(x["name"] == "client.event" for x in e))
    [typing] = [e for e in got if e["name"] == "client.event"]
    assert typing == {
        "name": "client.event",
        "channel": room,
        "event": "client-typing",
        "data": {"x": 1},
        "user_id": "2",
        "connection_id": bob_sse.connection_id,
    }

    # Ann leaves on A but is still here through B; then for good; then Bob.
    ann_ws.unsubscribe(room)
    ann_poll.request({"type": "unsubscribe", "channel": room, "id": 9})
    expect(in_room, [*in_room(got), ("member.removed", "1")])
    bob_sse.close()
    final = [
        ("channel.occupied", None),
        ("member.added", "1"),
        ("member.added", "2"),
        ("member.removed", "1"),
        ("member.removed", "2"),
        ("channel.vacated", None),
    ]
    expect(in_room, final)

    # A public channel with a subscriber on each node: occupied and vacated once.
    other = connect(b.ws_url)
    for client in (ann_ws, other):
        assert client.subscribe(news)["type"] == "subscribed"
    ann_ws.close()
    other.unsubscribe(news)
    expect(of(news), [("channel.occupied", None), ("channel.vacated", None)])

    # Anything still on its way would come before the marker's events.
    other.subscribe(marker)
    other.unsubscribe(marker)
    got = receiver.wait_for(lambda e: len(of(marker)(e)) >= 2)
    assert in_room(got) == final
    assert of(news)(got) == [("channel.occupied", None), ("channel.vacated", None)]
    assert [e["name"] for e in got].count("client.event") == 1
    assert receiver.bad_signatures == 0
    other.close()
    ann_poll.session.close()

    # The leader (A, the older node) stops: B sends from then on.
    a.stop()
    after = connect(b.ws_url)
    after.subscribe("after.1")
    got = receiver.wait_for(lambda e: len(of("after.1")(e)) >= 1)
    assert of("after.1")(got) == [("channel.occupied", None)]
    after.close()


def test_a_hung_receiver_does_not_delay_deliveries(
    live_server: t.Callable[..., Server], receiver: Receiver
) -> None:
    env = webhook_env(receiver, timeout=30)  # the POST waits for the release
    server = live_server("geventwebsocket", env=env)
    receiver.hang()
    client = connect(server.ws_url + "?user=5")
    client.subscribe("news.hung")  # its channel.occupied POST now hangs
    deadline = time.monotonic() + 5
    while receiver.arrived == 0:
        assert time.monotonic() < deadline, "no webhook POST started"
        time.sleep(0.01)
    latencies = []
    for n in range(20):
        # Each subscribe causes another webhook event, queued behind the hang.
        client.subscribe(f"more.{n}")
        started = time.monotonic()
        response = requests.get(
            server.url + "/broadcast",
            params={"channel": "news.hung", "event": "tick", "data": str(n)},
            timeout=5,
        )
        assert response.status_code == 200
        assert client.wait_event("tick", "news.hung")["data"] == n
        latencies.append(time.monotonic() - started)
    # About 10 ms here; a POST in the way would cost its 30 s timeout.
    assert max(latencies) < 1.0, latencies
    receiver.release()
    got = receiver.wait_for(lambda e: len(e) >= 21)
    assert [e["channel"] for e in got] == [
        "news.hung",
        *(f"more.{n}" for n in range(20)),
    ]
    client.close()
