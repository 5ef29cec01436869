"""The node through the extension's TestClient: presence channels on one
node (node/presence_sync.py, presence.py)."""

from __future__ import annotations

import typing as t

import pytest

from flask_realtime import Connection, Realtime
from tests.unit.node_helpers import allow, error_code

pytestmark = pytest.mark.usefixtures("own_initialised_apps")


# -- presence --------------------------------------------------------------------


@pytest.fixture
def presence(realtime: Realtime) -> Realtime:
    """Presence channels open to everyone, with user_info from the authorizer."""

    @realtime.authorizer("presence-*")
    def member(connection: Connection, channel: str) -> dict[str, t.Any]:
        return {"name": f"user{connection.user_id}"}

    return realtime


def test_presence_needs_an_authenticated_user(presence: Realtime) -> None:
    reply = presence.test_client().subscribe("presence-room.1")
    assert error_code(reply) == 401
    assert presence.channel("presence-room.1").subscriber_count == 0


def test_presence_members_with_user_info_from_the_authorizer(
    presence: Realtime,
) -> None:
    alice = presence.test_client(user_id=1, user_info={"name": "ignored"})
    reply = alice.request({"type": "subscribe", "channel": "presence-room.1", "id": 1})
    assert reply == {
        "type": "subscribed",
        "channel": "presence-room.1",
        "id": 1,
        "data": {
            "members": [
                {
                    "user_id": 1,
                    "user_info": {"name": "user1"},
                    "connected_at": alice.connection.connected_at,
                }
            ]
        },
    }
    bob = presence.test_client(user_id=2)
    members = bob.subscribe("presence-room.1")["data"]["members"]
    assert sorted((m["user_id"], m["user_info"]["name"]) for m in members) == [
        (1, "user1"),
        (2, "user2"),
    ]


def test_presence_user_info_from_the_connection_when_authorizer_says_true(
    realtime: Realtime,
) -> None:
    realtime.authorizer("presence-*")(allow)
    client = realtime.test_client(user_id=7, user_info={"name": "Seven"})
    members = client.subscribe("presence-a")["data"]["members"]
    assert [(m["user_id"], m["user_info"]) for m in members] == [(7, {"name": "Seven"})]


def test_presence_authorizer_returning_an_empty_dict_admits(
    realtime: Realtime,
) -> None:
    # "may return a dict: the member's user_info" -- an empty one included.
    realtime.authorizer("presence-*")(lambda connection, channel: {})
    reply = realtime.test_client(user_id=1).subscribe("presence-a")
    assert reply["type"] == "subscribed"
    assert reply["data"]["members"][0]["user_info"] == {}


def test_presence_join_once_per_user(presence: Realtime) -> None:
    observer = presence.test_client(user_id=9)
    observer.subscribe("presence-room.1")
    first = presence.test_client(user_id=5)
    second = presence.test_client(user_id="5")  # the same user, by value

    first.subscribe("presence-room.1")
    assert observer.get_received() == [
        {
            "type": "event",
            "channel": "presence-room.1",
            "event": "presence.join",
            "data": {"user_id": 5, "user_info": {"name": "user5"}},
        }
    ]
    assert first.received == []  # no join about oneself

    members = second.subscribe("presence-room.1")["data"]["members"]
    assert observer.received == []  # no second join for the same user
    assert first.received == []
    assert sorted(str(m["user_id"]) for m in members) == ["5", "9"]
    assert len(presence.channel("presence-room.1").get_presence_data()) == 2
    assert presence.channel("presence-room.1").subscriber_count == 3


def _observer_and_user_5_twice(presence: Realtime) -> tuple[t.Any, t.Any, t.Any]:
    """User 9 on presence-room.1, then user 5 on two connections (the same
    user by value: 5 and "5")."""
    observer = presence.test_client(user_id=9)
    observer.subscribe("presence-room.1")
    first = presence.test_client(user_id=5)
    second = presence.test_client(user_id="5")
    first.subscribe("presence-room.1")
    second.subscribe("presence-room.1")
    return observer, first, second


def test_presence_leave_only_when_the_last_connection_leaves(
    presence: Realtime,
) -> None:
    observer, first, second = _observer_and_user_5_twice(presence)
    observer.received.clear()

    first.unsubscribe("presence-room.1")
    assert observer.received == []
    users = [
        m["user_id"] for m in presence.channel("presence-room.1").get_presence_data()
    ]
    assert sorted(map(str, users)) == ["5", "9"]

    second.unsubscribe("presence-room.1")
    assert [(e, str(d["user_id"])) for e, d in observer.events()] == [
        ("presence.leave", "5")
    ]
    users = [
        m["user_id"] for m in presence.channel("presence-room.1").get_presence_data()
    ]
    assert users == [9]


def test_presence_leave_carries_the_user_id_the_join_announced(
    presence: Realtime,
) -> None:
    observer, first, second = _observer_and_user_5_twice(presence)
    first.disconnect()
    second.disconnect()
    (join, leave) = observer.get_received()
    # a client removes the member it was told about: same id, same JSON type
    assert join["data"]["user_id"] == 5
    assert leave == {
        "type": "event",
        "channel": "presence-room.1",
        "event": "presence.leave",
        "data": {"user_id": 5},
    }


def test_presence_leave_on_disconnect(presence: Realtime) -> None:
    observer = presence.test_client(user_id=9)
    observer.subscribe("presence-room.1")
    leaver = presence.test_client(user_id=5)
    leaver.subscribe("presence-room.1")
    observer.received.clear()

    leaver.disconnect()
    assert observer.get_received() == [
        {
            "type": "event",
            "channel": "presence-room.1",
            "event": "presence.leave",
            "data": {"user_id": 5},
        }
    ]
    channel = presence.channel("presence-room.1")
    assert [m["user_id"] for m in channel.get_presence_data()] == [9]
    assert channel.subscriber_count == 1


def test_get_presence_data_and_subscriber_count(presence: Realtime) -> None:
    channel = presence.channel("presence-room.1")
    assert channel.kind == "presence"
    assert channel.get_presence_data() == []
    assert channel.subscriber_count == 0
    alice = presence.test_client(user_id=1)
    alice.subscribe("presence-room.1")
    presence.test_client(user_id=1).subscribe("presence-room.1")
    assert channel.subscriber_count == 2
    assert channel.get_presence_data() == [
        {
            "user_id": 1,
            "user_info": {"name": "user1"},
            "connected_at": alice.connection.connected_at,
        }
    ]
