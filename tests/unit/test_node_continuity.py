"""The node's follower of kept channels (``node/continuity.py``), alone:
a fake broker history and hub, the fills run by hand in the test's order.
The real thing is ``tests/cluster/test_continuity.py`` (Redis) and the
chaos test."""

from __future__ import annotations

import types
import typing as t

import pytest

from flask_realtime import protocol
from flask_realtime.brokers._history import offset_of
from flask_realtime.brokers.interface import Position
from flask_realtime.connection import Outbound
from flask_realtime.node import continuity as continuity_module
from flask_realtime.node.continuity import Continuity


def event(offset: int) -> bytes:
    return b'{"offset":%d,"type":"event","channel":"c","event":"e","data":%d}' % (
        offset,
        offset,
    )


class FakeBroker:
    def __init__(self) -> None:
        self.links = 1
        self.epoch = "E"
        self.stored: list[bytes] = []
        self.reads = 0

    def store(self, *offsets: int) -> list[Outbound]:
        self.stored += [event(n) for n in offsets]
        return [Outbound(event(n)) for n in offsets]

    def history(self, topic: str, *, after: int) -> tuple[Position, list[bytes] | None]:
        self.reads += 1
        kept = [e for e in self.stored if t.cast(int, offset_of(e)) > after]
        return Position(len(self.stored), self.epoch), kept


class FakeConn:
    def __init__(self) -> None:
        self.closed: tuple[int, str] | None = None

    def close(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)


class FakeHub:
    def __init__(self) -> None:
        self.delivered: list[int] = []
        self.conn = FakeConn()

    def deliver_channel(
        self, name: str, message: Outbound, exclude: t.Any = None
    ) -> int:
        self.delivered.append(t.cast(int, offset_of(message.json)))
        return 1

    def subscribers(self, name: str) -> tuple[FakeConn, ...]:
        return (self.conn,)


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[t.Any]:
    calls: list[t.Any] = []
    monkeypatch.setattr(continuity_module, "spawn", lambda f, *a: calls.append((f, a)))
    return calls


def run(spawned: list[t.Any]) -> None:
    while spawned:
        func, args = spawned.pop(0)
        func(*args)


@pytest.fixture
def setup(spawned: list[t.Any]) -> tuple[Continuity, FakeBroker, FakeHub]:
    broker, hub = FakeBroker(), FakeHub()
    node = types.SimpleNamespace(broker=broker, hub=hub)
    follower = Continuity(t.cast(t.Any, node))
    broker.store(1, 2)
    follower.seed("c", Position(2, "E"))
    return follower, broker, hub


def test_a_hole_is_filled_from_the_history_before_what_came_meanwhile(
    setup: t.Any, spawned: list[t.Any]
) -> None:
    follower, broker, hub = setup
    three, four, five, six = broker.store(3, 4, 5, 6)
    follower.deliver("c", three, None)
    follower.deliver("c", five, None)  # 4 was lost on the way
    follower.deliver("c", six, None)  # held while 4 is read
    assert hub.delivered == [3]
    run(spawned)
    assert hub.delivered == [3, 4, 5, 6]
    assert hub.conn.closed is None


def test_an_event_the_fill_gave_is_dropped_when_it_comes_live_too(
    setup: t.Any, spawned: list[t.Any]
) -> None:
    """The chaos test's duplicate: after a link came back, the fill read an
    event that the broker then delivered live as well."""
    follower, broker, hub = setup
    [three] = broker.store(3)
    broker.links += 1  # the link dropped and came back
    follower.check_links()
    run(spawned)
    follower.deliver("c", three, None)
    assert hub.delivered == [3]
    [four] = broker.store(4)
    follower.deliver("c", four, None)
    assert hub.delivered == [3, 4]


def test_a_late_event_after_the_seed_is_dropped(setup: t.Any) -> None:
    follower, broker, hub = setup
    follower.deliver("c", Outbound(event(2)), None)  # stored before the read
    assert hub.delivered == []
    assert broker.reads == 0


@pytest.mark.parametrize("why", ["epoch", "trimmed"])
def test_a_hole_the_history_cannot_fill_closes_the_subscribers(
    setup: t.Any, spawned: list[t.Any], why: str
) -> None:
    follower, broker, hub = setup
    broker.store(3, 4)
    if why == "epoch":
        broker.epoch = "F"
    else:
        del broker.stored[2]  # offset 3 trimmed: after=2 cannot be answered
        broker.history = lambda topic, after: (Position(4, "E"), None)
    follower.deliver("c", Outbound(event(4)), None)
    run(spawned)
    assert hub.delivered == []
    assert hub.conn.closed == (protocol.CLOSE_SHUTDOWN, "resubscribe")
    # Forgotten: the resubscribe's read seeds it again.
    follower.seed("c", Position(4, "F"))
    follower.deliver("c", Outbound(event(5)), None)
    assert hub.delivered == [5]


def test_an_unreadable_hole_closes_the_subscribers_after_the_deadline(
    setup: t.Any, spawned: list[t.Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    follower, broker, hub = setup
    monkeypatch.setattr(continuity_module, "FILL_DEADLINE", 0.2)

    def unreachable(topic: str, after: int) -> t.NoReturn:
        raise OSError("down")

    broker.history = unreachable
    follower.deliver("c", Outbound(event(4)), None)
    run(spawned)
    assert hub.conn.closed is not None


def test_too_much_held_closes_the_subscribers(
    setup: t.Any, spawned: list[t.Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    follower, broker, hub = setup
    monkeypatch.setattr(continuity_module, "HELD_LIMIT", 3)
    for n in range(4, 8):  # 3 lost; 4, 5, 6 held, 7 past the limit
        follower.deliver("c", Outbound(event(n)), None)
    assert hub.conn.closed is not None
    run(spawned)  # the fill finds the channel forgotten
    assert hub.delivered == []


def test_a_channel_not_followed_is_delivered_as_it_comes(setup: t.Any) -> None:
    follower, _, hub = setup
    follower.deliver("other", Outbound(event(7)), None)
    follower.deliver("c", Outbound(b'{"type":"presence"}'), None)
    assert hub.delivered == [7, None]


def test_following_starts_after_what_was_delivered_before_the_seed(
    spawned: list[t.Any],
) -> None:
    """An event delivered while the subscribe's read was on its way, then
    again by a broker that delivers twice (NATS in the chaos test), once."""
    broker, hub = FakeBroker(), FakeHub()
    follower = Continuity(t.cast(t.Any, types.SimpleNamespace(broker=broker, hub=hub)))
    [one, two] = broker.store(1, 2)
    follower.deliver("c", two, None)  # not followed yet: as it comes
    follower.seed("c", Position(1, "E"))  # the read was made before 2 came
    follower.deliver("c", two, None)
    assert hub.delivered == [2]
    assert spawned == []
