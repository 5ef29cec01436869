"""State of emptied channels is freed: every registry that keeps
per-channel, per-user or per-connection state is empty once its clients
left (hub, presence, interest, pressure; DESIGN.md property 9)."""

from __future__ import annotations

import time

import pytest

from flask_realtime import BrokerUnavailable, Realtime
from tests.unit.conftest import Factory

pytestmark = pytest.mark.usefixtures("own_initialised_apps")


@pytest.fixture(params=[False, True], ids=["single", "clustered"])
def realtime(
    make: Factory, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Realtime:
    realtime = make()
    node = realtime.node
    monkeypatch.setattr(node.interest, "_start", lambda func: None)
    if request.param:
        node.clustered = True  # presence topics and replicas, as in a cluster
        monkeypatch.setattr(node.control, "request", lambda topic, data, t: None)
    realtime.authorizer("private-*")(lambda connection, channel: True)
    realtime.authorizer("presence-*")(lambda connection, channel: True)
    return realtime


def idle(realtime: Realtime) -> dict[str, int]:
    """The registries once the delayed unsubscribes ran, node topic aside."""
    realtime.node.interest.run_due(time.monotonic() + 60)
    sizes = realtime.node.state_sizes()
    sizes["interest.topics"] -= realtime.node.interest.is_subscribed(
        f"n:{realtime.node.id}"
    )
    return {k: v for k, v in sizes.items() if v}


@pytest.mark.parametrize("leave", ["unsubscribe", "disconnect"])
def test_registries_are_empty_after_many_channels_fill_and_empty(
    realtime: Realtime, leave: str
) -> None:
    for round_ in range(50):
        clients = [realtime.test_client(user_id=u) for u in (1, 2, None)]
        for kind in ("news", "private-chat", "presence-room"):
            name = f"{kind}.{round_}"
            for client in clients:
                if kind != "presence-room" or client.connection.user_id:
                    assert client.subscribe(name)["type"] == "subscribed"
            realtime.broadcast(name, "hello", round_)
        for client in clients:
            if leave == "unsubscribe":
                for name in list(client.connection.channels):
                    client.unsubscribe(name)
            client.disconnect()
    assert idle(realtime) == {}


def test_a_presence_leave_after_the_last_subscriber_keeps_no_hub_entry(
    realtime: Realtime,
) -> None:
    """The leave is delivered to the channel's (now no) local subscribers:
    that delivery must not leave a snapshot of an empty channel behind."""
    for n in range(100):
        client = realtime.test_client(user_id=n)
        client.subscribe(f"presence-room.{n}")
        client.disconnect()
    assert realtime.node.hub.sizes()["snapshots"] == 0
    assert idle(realtime) == {}


def test_a_replica_whose_topic_the_broker_refused_is_dropped(
    realtime: Realtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = realtime.node
    client = realtime.test_client(user_id=1)
    real = node.broker.subscribe

    def refuse_presence(*topics: str) -> None:
        if any(topic.startswith("p:") for topic in topics):
            raise BrokerUnavailable("the broker is down")
        real(*topics)

    monkeypatch.setattr(node.broker, "subscribe", refuse_presence)
    reply = client.subscribe("presence-room")
    if node.clustered:
        assert reply["data"]["code"] == 503
    client.disconnect()
    assert idle(realtime) == {}


def test_presence_news_after_the_replica_was_dropped_keeps_nothing(
    realtime: Realtime,
) -> None:
    node = realtime.node
    node.presence_sync.on_message(
        "presence-gone",
        b'{"node":"other","op":"state","members":[{"user_id":7}]}',
    )
    node.presence_sync.on_message(
        "presence-gone", b'{"node":"other","op":"join","member":{"user_id":8}}'
    )
    assert idle(realtime) == {}
