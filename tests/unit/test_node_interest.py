"""Interest management through the node: channels, users and presence
topics follow the node's local subscribers (node/interest.py)."""

from __future__ import annotations

import time

import pytest

from flask_realtime import BrokerUnavailable, Realtime
from tests.unit.conftest import Factory

pytestmark = pytest.mark.usefixtures("own_initialised_apps")


@pytest.fixture
def realtime(make: Factory, monkeypatch: pytest.MonkeyPatch) -> Realtime:
    realtime = make()
    # The test runs the delayed re-checks itself.
    monkeypatch.setattr(realtime.node.interest, "_start", lambda func: None)
    return realtime


@pytest.fixture
def calls(realtime: Realtime, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The node's broker (un)subscriptions, in order."""
    recorded: list[tuple[str, str]] = []
    broker = realtime.node.broker
    subscribe, unsubscribe = broker.subscribe, broker.unsubscribe

    def record_subscribe(*topics: str) -> None:
        subscribe(*topics)
        recorded.extend(("subscribe", topic) for topic in topics)

    def record_unsubscribe(*topics: str) -> None:
        unsubscribe(*topics)
        recorded.extend(("unsubscribe", topic) for topic in topics)

    monkeypatch.setattr(broker, "subscribe", record_subscribe)
    monkeypatch.setattr(broker, "unsubscribe", record_unsubscribe)
    return recorded


def later(realtime: Realtime) -> list[str]:
    """Run the delayed unsubscribes as if their delay had passed."""
    return realtime.node.interest.run_due(time.monotonic() + 60)


def test_node_subscribes_a_channel_for_its_first_subscriber(
    realtime: Realtime, calls: list[tuple[str, str]]
) -> None:
    a, b = realtime.test_client(), realtime.test_client()
    assert a.subscribe("news")["type"] == "subscribed"
    assert b.subscribe("news")["type"] == "subscribed"
    assert [c for c in calls if c[1].startswith("c:")] == [("subscribe", "c:news")]


def test_node_answers_503_and_keeps_nothing_when_the_broker_subscribe_fails(
    realtime: Realtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = realtime.test_client()
    real = realtime.node.broker.subscribe

    def down(*topics: str) -> None:
        raise BrokerUnavailable("the broker is down")

    monkeypatch.setattr(realtime.node.broker, "subscribe", down)
    reply = client.subscribe("news")
    assert reply["type"] == "error" and reply["data"]["code"] == 503
    assert client.connection.channels == set()
    assert realtime.channel("news").subscriber_count == 0
    realtime.broadcast("news", "lost", 1)
    assert client.received == []
    monkeypatch.setattr(realtime.node.broker, "subscribe", real)
    assert client.subscribe("news")["type"] == "subscribed"
    realtime.broadcast("news", "kept", 2)
    assert client.events() == [("kept", 2)]


def test_node_open_refused_by_the_broker_leaves_no_connection(
    realtime: Realtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    realtime.test_client()  # the node topic is subscribed by now

    def down(*topics: str) -> None:
        raise BrokerUnavailable("the broker is down")

    monkeypatch.setattr(realtime.node.broker, "subscribe", down)
    with pytest.raises(BrokerUnavailable):
        realtime.test_client(user_id=5)
    assert len(realtime.node.hub) == 1
    assert not realtime.node.hub.has_user("5")


def test_node_unsubscribes_a_channel_after_the_delay_without_flapping(
    realtime: Realtime, calls: list[tuple[str, str]]
) -> None:
    client = realtime.test_client()
    calls.clear()  # the node topic's
    client.subscribe("news")
    client.unsubscribe("news")
    client.subscribe("news")  # back before the delay passed
    client.unsubscribe("news")
    assert calls == [("subscribe", "c:news")]
    client.subscribe("news")
    assert later(realtime) == []  # the re-check finds a subscriber
    client.unsubscribe("news")
    assert later(realtime) == ["c:news"]
    assert calls == [("subscribe", "c:news"), ("unsubscribe", "c:news")]


def test_node_follows_users_and_keeps_its_node_topic(
    realtime: Realtime, calls: list[tuple[str, str]]
) -> None:
    first = realtime.test_client(user_id=5)
    second = realtime.test_client(user_id="5")
    node_topic = "n:" + realtime.node.id
    assert calls == [("subscribe", node_topic), ("subscribe", "u:5")]
    first.disconnect()
    assert later(realtime) == []
    second.disconnect()
    assert later(realtime) == ["u:5"]
    assert realtime.node.interest.is_subscribed(node_topic)


def test_node_drops_a_presence_replica_with_its_topic(
    realtime: Realtime,
) -> None:
    node = realtime.node
    node.clustered = True  # presence topics are followed only in a cluster
    node.control.request = lambda topic, data, timeout: None  # type: ignore[method-assign]
    realtime.authorizer("presence-*")(lambda connection, channel: True)
    client = realtime.test_client(user_id=1)
    client.subscribe("presence-room")
    assert node.interest.is_subscribed("p:presence-room")
    client.unsubscribe("presence-room")
    assert node.presence.has_replica("presence-room")  # until the delay passed
    assert sorted(later(realtime)) == ["c:presence-room", "p:presence-room"]
    assert not node.presence.has_replica("presence-room")


def test_a_connection_closed_while_the_broker_subscribes_leaves_no_trace(
    realtime: Realtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    realtime.authorizer("presence-*")(lambda connection, channel: True)
    client = realtime.test_client(user_id=1)
    real = realtime.node.broker.subscribe

    def close_meanwhile(*topics: str) -> None:
        client.disconnect()  # the socket went away during the round trip
        real(*topics)

    monkeypatch.setattr(realtime.node.broker, "subscribe", close_meanwhile)
    client.request({"type": "subscribe", "channel": "presence-mine", "id": 1})
    assert realtime.channel("presence-mine").subscriber_count == 0
    assert realtime.channel("presence-mine").get_presence_data() == []
    # Nothing holds the topics the subscribe made: they go after the delay.
    assert sorted(later(realtime)) == ["c:presence-mine", "u:1"]
