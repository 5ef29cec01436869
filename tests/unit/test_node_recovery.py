"""History on the node, in one process (null broker, memory transport):
REALTIME_HISTORY's errors, since, the subscribed reply, the handover from
history to live delivery, and Channel.history / position."""

from __future__ import annotations

import contextlib
import typing as t

import pytest

from flask_realtime import ConfigError, Realtime, protocol
from flask_realtime.brokers import BrokerUnavailable
from flask_realtime.connection import Outbound
from flask_realtime.node.recovery import Recovering
from flask_realtime.testing import TestClient

from .conftest import Factory
from .node_helpers import allow

HISTORY = {
    "chat.*": {"size": 5, "ttl": 600},
    "private-chat.*": {"size": 100, "ttl": 600},
    "presence-chat.*": {"size": 100, "ttl": 600},
}


@pytest.fixture
def rt(make: Factory) -> Realtime:
    realtime = make(REALTIME_HISTORY=HISTORY)
    realtime.authorizer("private-*")(allow)
    realtime.authorizer("presence-*")(allow)
    return realtime


def offsets(client: TestClient, channel: str) -> list[int | None]:
    return [m.get("offset") for m in client.get_received(channel)]


def since(reply: dict[str, t.Any], offset: int | None = None) -> dict[str, t.Any]:
    position = reply["data"]["position"]
    if offset is not None:
        position = {**position, "offset": offset}
    return dict(position)


# -- configuration --------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "names"),
    [
        ([], "REALTIME_HISTORY"),
        ({"chat.*": 100}, 'REALTIME_HISTORY["chat.*"]'),
        ({"chat.*": {"size": 100}}, 'REALTIME_HISTORY["chat.*"]["ttl"]'),
        ({"chat.*": {"size": 0, "ttl": 1}}, 'REALTIME_HISTORY["chat.*"]["size"]'),
        ({"chat.*": {"size": 10_001, "ttl": 1}}, '["chat.*"]["size"]'),
        ({"chat.*": {"size": True, "ttl": 1}}, '["chat.*"]["size"]'),
        ({"chat.*": {"size": "5", "ttl": 1}}, '["chat.*"]["size"]'),
        ({"chat.*": {"size": 5, "ttl": 0}}, 'REALTIME_HISTORY["chat.*"]["ttl"]'),
        ({"chat.*": {"size": 5, "ttl": float("nan")}}, '["chat.*"]["ttl"]'),
        ({"chat.*": {"size": 5, "ttl": 1, "max": 3}}, "unknown option(s) ['max']"),
        ({"": {"size": 5, "ttl": 1}}, "REALTIME_HISTORY: each key"),
    ],
)
def test_bad_history_config_names_the_key(
    make: Factory, history: t.Any, names: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        make(REALTIME_HISTORY=history)
    assert names in str(raised.value)


def test_first_matching_pattern_wins(make: Factory) -> None:
    rt = make(
        REALTIME_HISTORY={"a.b.*": {"size": 2, "ttl": 5}, "a.*": {"size": 9, "ttl": 1}}
    )
    rules = rt.node.rules
    assert rules.retention("a.b.c") == (2, 5.0)
    assert rules.retention("a.c") == (9, 1.0)
    assert rules.retention("b") is None
    retention = rt.node.broker.retention
    assert retention("c:a.c") == (9, 1.0)
    assert retention("u:a.c") is None and retention("p:a.c") is None


# -- the subscribed reply ---------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [5, "x", [], {"offset": -1, "epoch": "e"}, {"offset": 1}, {"epoch": "e"},
            {"offset": 1.5, "epoch": "e"}, {"offset": True, "epoch": "e"},
            {"offset": 1, "epoch": 7}],
)  # fmt: skip
def test_a_bad_since_is_a_400_naming_since(rt: Realtime, bad: t.Any) -> None:
    with rt.test_client() as client:
        reply = client.request(
            {"type": "subscribe", "channel": "chat.1", "id": 1, "since": bad}
        )
        assert reply is not None and reply["type"] == "error", reply
        assert reply["data"]["code"] == 400 and "since" in reply["data"]["message"]
        assert "chat.1" not in client.connection.channels


def test_reply_carries_the_position_and_events_their_offsets(rt: Realtime) -> None:
    with rt.test_client() as client:
        reply = client.subscribe("chat.1")
        position = reply["data"]["position"]
        assert position["offset"] == 0 and isinstance(position["epoch"], str)
        assert "recovered" not in reply["data"]
        for n in range(3):
            rt.broadcast("chat.1", "m", n)
        assert offsets(client, "chat.1") == [1, 2, 3]
        assert rt.channel("chat.1").position == {**position, "offset": 3}


def test_a_channel_without_history_has_no_position_and_never_recovers(
    rt: Realtime,
) -> None:
    with rt.test_client() as client:
        assert "data" not in client.subscribe("news")
        reply = client.subscribe("other", since={"offset": 0, "epoch": "e"})
        assert reply["data"] == {"recovered": False}
        rt.broadcast("other", "m", 1)
        assert offsets(client, "other") == [None]


def test_recovery_replays_what_was_missed_then_goes_live(rt: Realtime) -> None:
    with rt.test_client() as first:
        start = first.subscribe("chat.1")
    for n in range(4):
        rt.broadcast("chat.1", "m", n)
    with rt.test_client() as client:
        reply = client.subscribe("chat.1", since=since(start, 2))
        assert reply["data"]["recovered"] is True
        assert reply["data"]["position"] == since(start, 4)
        rt.broadcast("chat.1", "m", 4)
        received = client.get_received("chat.1")
        assert [(m["offset"], m["data"]) for m in received] == [(3, 2), (4, 3), (5, 4)]


@pytest.mark.parametrize("case", ["epoch", "trimmed", "beyond"])
def test_not_recovered(rt: Realtime, case: str) -> None:
    with rt.test_client() as first:
        start = first.subscribe("chat.1")
    for n in range(8):  # size 5: offsets 4..8 kept
        rt.broadcast("chat.1", "m", n)
    asked = {
        "epoch": {"offset": 6, "epoch": start["data"]["position"]["epoch"] + "x"},
        "trimmed": since(start, 2),
        "beyond": since(start, 9),
    }[case]
    with rt.test_client() as client:
        reply = client.subscribe("chat.1", since=asked)
        assert reply["data"] == {"position": since(start, 8), "recovered": False}
        rt.broadcast("chat.1", "m", 8)
        assert offsets(client, "chat.1") == [9]


def test_recovered_with_nothing_missed(rt: Realtime) -> None:
    with rt.test_client() as first:
        start = first.subscribe("chat.1")
        rt.broadcast("chat.1", "m", 0)
    with rt.test_client() as client:
        reply = client.subscribe("chat.1", since=since(start, 1))
        assert reply["data"]["recovered"] is True
        assert offsets(client, "chat.1") == []


def test_subscribing_again_on_the_same_connection_recovers_nothing(
    rt: Realtime,
) -> None:
    with rt.test_client() as client:
        start = client.subscribe("chat.1")
        rt.broadcast("chat.1", "m", 0)
        again = client.subscribe("chat.1", since=since(start, 0))
        assert again["type"] == "subscribed" and "data" not in again
        assert offsets(client, "chat.1") == [1]


# -- the handover -------------------------------------------------------------------


def _publishing_during_history_read(
    rt: Realtime, monkeypatch: pytest.MonkeyPatch, before: int, after: int
) -> None:
    """The broker's history read, with broadcasts delivered around it: as a
    networked broker's reader would while the node waits for the read."""
    broker = rt.node.broker
    read = broker.history

    def history(topic: str, **kwargs: t.Any) -> t.Any:
        for _ in range(before):
            rt.broadcast("chat.1", "m", "before")
        result = read(topic, **kwargs)
        for _ in range(after):
            rt.broadcast("chat.1", "m", "after")
        return result

    monkeypatch.setattr(broker, "history", history)


@pytest.mark.parametrize("with_since", [True, False])
def test_events_delivered_during_the_read_come_once_in_order(
    rt: Realtime, monkeypatch: pytest.MonkeyPatch, with_since: bool
) -> None:
    with rt.test_client() as first:
        start = first.subscribe("chat.1")
    rt.broadcast("chat.1", "m", 0)
    _publishing_during_history_read(rt, monkeypatch, before=2, after=2)
    with rt.test_client() as client:
        if with_since:
            reply = client.subscribe("chat.1", since=since(start, 0))
            assert reply["data"]["recovered"] is True
            assert offsets(client, "chat.1") == [1, 2, 3, 4, 5]
        else:
            reply = client.subscribe("chat.1")
            # No event at or below the reply's position follows it.
            assert reply["data"]["position"]["offset"] == 3
            assert offsets(client, "chat.1") == [4, 5]


def test_the_stand_in_is_bounded_like_the_queue(rt: Realtime) -> None:
    with rt.test_client() as client:
        conn = client.connection
        conn.limit(3, 1 << 20)
        stand_in = Recovering(conn)
        for n in range(3):
            stand_in.push(Outbound(b'{"offset":%d}' % n))
        assert client.close_code is None
        stand_in.push(Outbound(b'{"offset":3}'))
        assert client.close_code == protocol.CLOSE_TOO_SLOW
        assert stand_in.settle(None, [], 0, lambda: None) is False


def test_a_client_event_relayed_on_a_kept_channel_carries_an_offset(
    rt: Realtime,
) -> None:
    with rt.test_client(user_id=1) as a, rt.test_client(user_id=2) as b:
        a.subscribe("private-chat.1")
        b.subscribe("private-chat.1")
        assert a.emit("private-chat.1", "client-typing", {"on": True}) is None
        [event] = b.get_received("private-chat.1")
        assert event["offset"] == 1 and event["user_id"] == 1
        assert a.get_received("private-chat.1") == []
        [kept] = rt.channel("private-chat.1").history()
        assert kept == {
            "offset": 1,
            "event": "client-typing",
            "data": {"on": True},
            "user_id": 1,
        }


def test_presence_events_are_not_kept_and_carry_no_offset(rt: Realtime) -> None:
    with rt.test_client(user_id=1) as a:
        reply = a.subscribe("presence-chat.1")
        assert [m["user_id"] for m in reply["data"]["members"]] == [1]
        assert reply["data"]["position"]["offset"] == 0
        with rt.test_client(user_id=2) as b:
            b.subscribe("presence-chat.1")
        events = a.get_received("presence-chat.1")
        assert [m["event"] for m in events] == ["presence.join", "presence.leave"]
        assert all("offset" not in m for m in events)
        assert rt.channel("presence-chat.1").position["offset"] == 0


# -- Channel.history and Channel.position --------------------------------------------


def test_channel_history_oldest_first_and_limited(rt: Realtime) -> None:
    channel = rt.channel("chat.1")
    assert channel.history() == []
    assert channel.position["offset"] == 0
    for n in range(7):
        channel.broadcast("m", {"n": n})
    kept = channel.history()
    assert [(e["offset"], e["data"]["n"]) for e in kept] == [
        (3, 2), (4, 3), (5, 4), (6, 5), (7, 6),
    ]  # fmt: skip
    assert kept[0]["event"] == "m" and set(kept[0]) == {"offset", "event", "data"}
    assert [e["offset"] for e in channel.history(limit=2)] == [6, 7]
    assert channel.history(limit=0) == []
    assert channel.position["offset"] == 7


def test_channel_history_without_history_is_a_value_error(rt: Realtime) -> None:
    channel = rt.channel("news")
    with pytest.raises(ValueError, match="REALTIME_HISTORY"):
        channel.history()
    with pytest.raises(ValueError, match="REALTIME_HISTORY"):
        channel.position  # noqa: B018


@pytest.mark.parametrize("limit", [-1, 1.5, True, "3"])
def test_channel_history_refuses_a_bad_limit(rt: Realtime, limit: t.Any) -> None:
    with pytest.raises(ValueError, match="limit"):
        rt.channel("chat.1").history(limit=limit)


def test_a_history_read_that_fails_leaves_the_channel_unsubscribed(
    rt: Realtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(topic: str, **kwargs: t.Any) -> t.Any:
        raise BrokerUnavailable("down")

    monkeypatch.setattr(rt.node.broker, "history", unreachable)
    with rt.test_client() as client:
        reply = client.request({"type": "subscribe", "channel": "chat.1", "id": 1})
        assert reply is not None and reply["data"]["code"] == 503, reply
        assert "chat.1" not in client.connection.channels
        assert rt.channel("chat.1").subscriber_count == 0
        rt.broadcast("chat.1", "m", 1)
        assert client.get_received("chat.1") == []


def test_two_racing_subscribes_of_one_connection_replay_once(
    rt: Realtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two subscribes to one channel from one connection at once (two
    ``POST /send``): the second passes the "already subscribed" check while
    the first waits for the broker; only one of them replays."""
    with rt.test_client() as first:
        start = first.subscribe("chat.1")
    rt.broadcast("chat.1", "m", 0)
    interest = rt.node.interest
    real_hold = interest.hold
    replies = []

    @contextlib.contextmanager
    def hold(topic: str, prepare: t.Any = None) -> t.Iterator[None]:
        if not replies:  # the first subscribe, while it waits: the second
            replies.append(None)
            replies.append(client.subscribe("chat.1", since=since(start, 0)))
        with real_hold(topic, prepare):
            yield

    monkeypatch.setattr(interest, "hold", hold)
    with rt.test_client() as client:
        replies.append(client.subscribe("chat.1", since=since(start, 0)))
        assert replies[1]["data"]["recovered"] is True
        assert "data" not in replies[2]
        rt.broadcast("chat.1", "m", 1)
        assert offsets(client, "chat.1") == [1, 2]


def test_a_late_delivery_at_or_below_the_position_is_dropped(rt: Realtime) -> None:
    """A networked broker may deliver an event stored before the history
    read after the hand-over (its reader lags): the connection, which got it
    in the replay (or asked for nothing before the position), must not get
    it again; the first newer event ends the filtering."""
    with rt.test_client() as first:
        start = first.subscribe("chat.1")
    rt.broadcast("chat.1", "m", 0)
    rt.broadcast("chat.1", "m", 1)
    late = Outbound(b'{"offset":2,"type":"event","channel":"chat.1","event":"m"}')
    with rt.test_client() as recovering, rt.test_client() as plain:
        recovering.subscribe("chat.1", since=since(start, 0))
        assert offsets(recovering, "chat.1") == [1, 2]
        plain.subscribe("chat.1")
        rt.node.hub.deliver_channel("chat.1", late)  # as a lagging reader would
        assert offsets(recovering, "chat.1") == [] == offsets(plain, "chat.1")
        rt.broadcast("chat.1", "m", 2)
        assert offsets(recovering, "chat.1") == [3] == offsets(plain, "chat.1")
        # Handed over: the connections are the hub's targets again.
        targets = rt.node.hub.subscribers("chat.1")
        assert set(targets) == {recovering.connection, plain.connection}
