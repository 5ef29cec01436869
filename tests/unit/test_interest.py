"""node/interest.py: broker subscriptions follow local subscribers.

The first local subscriber subscribes at the broker, a failed subscription
leaves nothing behind and answers an error, and the last one leaving
unsubscribes only after a delay and a re-check, so subscriptions do not flap.
"""

from __future__ import annotations

import threading
import time

import pytest

from flask_realtime import BrokerUnavailable
from flask_realtime.node.interest import Interest

TIMEOUT = 10.0


class FakeBroker:
    """Records (un)subscriptions; ``fail`` makes subscribe raise it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail: BaseException | None = None
        self.unsubscribed = threading.Event()

    def subscribe(self, *topics: str) -> None:
        if self.fail is not None:
            raise self.fail
        self.calls.extend(("subscribe", topic) for topic in topics)

    def unsubscribe(self, *topics: str) -> None:
        self.calls.extend(("unsubscribe", topic) for topic in topics)
        self.unsubscribed.set()


class Local:
    """Stands in for the hub: which topics have a local subscriber."""

    def __init__(self) -> None:
        self.topics: set[str] = set()

    def __call__(self, topic: str) -> bool:
        return topic in self.topics


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def local() -> Local:
    return Local()


@pytest.fixture
def interest(broker: FakeBroker, local: Local) -> Interest:
    # No worker: the tests run the delayed re-checks themselves (run_due).
    return Interest(broker, local, delay=1.0, start=lambda func: None)  # type: ignore[arg-type]


def test_the_first_subscriber_subscribes_at_the_broker_once(
    interest: Interest, broker: FakeBroker, local: Local
) -> None:
    with interest.hold("c:news"):
        local.topics.add("c:news")
    with interest.hold("c:news"):
        pass
    assert broker.calls == [("subscribe", "c:news")]
    assert interest.is_subscribed("c:news")


def test_a_failed_subscription_runs_nothing_and_is_tried_again(
    interest: Interest, broker: FakeBroker, local: Local
) -> None:
    broker.fail = BrokerUnavailable("down")
    ran = []
    with pytest.raises(BrokerUnavailable), interest.hold("c:news"):
        ran.append(1)
    assert ran == [] and not interest.is_subscribed("c:news")
    broker.fail = None
    with interest.hold("c:news"):
        local.topics.add("c:news")
    assert broker.calls == [("subscribe", "c:news")]


def test_any_subscribe_error_reaches_the_caller_as_broker_unavailable(
    interest: Interest, broker: FakeBroker
) -> None:
    broker.fail = OSError("connection reset")
    with pytest.raises(BrokerUnavailable, match="c:news"), interest.hold("c:news"):
        pass


def test_prepare_runs_only_when_a_subscription_is_made(
    interest: Interest, broker: FakeBroker, local: Local
) -> None:
    prepared = []

    def prepare() -> None:
        prepared.append(list(broker.calls))  # before the subscription

    with interest.hold("p:room", prepare):
        local.topics.add("p:room")
    with interest.hold("p:room", prepare):
        pass
    assert prepared == [[]]


def test_unsubscribe_waits_for_the_delay_and_re_checks(
    interest: Interest, broker: FakeBroker, local: Local
) -> None:
    with interest.hold("c:news"):
        local.topics.add("c:news")
    local.topics.discard("c:news")
    interest.release("c:news")
    assert interest.run_due(time.monotonic()) == []
    assert interest.run_due(time.monotonic() + 1.5) == ["c:news"]
    assert broker.calls == [("subscribe", "c:news"), ("unsubscribe", "c:news")]
    assert not interest.is_subscribed("c:news")


def test_a_subscriber_back_within_the_delay_does_not_flap(
    interest: Interest, broker: FakeBroker, local: Local
) -> None:
    for _ in range(3):  # leave and come back, three times
        with interest.hold("c:news"):
            local.topics.add("c:news")
        local.topics.discard("c:news")
        interest.release("c:news")
    with interest.hold("c:news"):
        local.topics.add("c:news")
    assert interest.run_due(time.monotonic() + 10) == []
    assert broker.calls == [("subscribe", "c:news")]


def test_a_hold_that_adds_nobody_releases_the_topic(
    interest: Interest, broker: FakeBroker
) -> None:
    with pytest.raises(KeyError), interest.hold("c:news"):
        raise KeyError("the subscriber could not be added")
    with interest.hold("c:other"):
        pass  # nobody added: a closed connection, say
    assert interest.run_due(time.monotonic() + 1.5) == ["c:news", "c:other"]


def test_on_dropped_runs_once_unsubscribed(broker: FakeBroker, local: Local) -> None:
    dropped = []
    interest = Interest(
        broker,  # type: ignore[arg-type]
        local,
        on_dropped=dropped.append,
        start=lambda func: None,
    )
    with interest.hold("p:room"):
        pass
    interest.run_due(time.monotonic() + 5)
    assert dropped == ["p:room"]


def test_a_second_subscriber_waits_for_the_first_ones_subscription(
    broker: FakeBroker, local: Local
) -> None:
    """Nobody gets a reply before the broker delivers the topic here."""
    gate, inside = threading.Event(), threading.Event()
    order: list[str] = []
    subscribe = broker.subscribe

    def slow_subscribe(*topics: str) -> None:
        order.append("subscribing")
        inside.set()
        assert gate.wait(TIMEOUT)
        subscribe(*topics)
        order.append("subscribed")

    broker.subscribe = slow_subscribe  # type: ignore[method-assign]
    interest = Interest(broker, local, start=lambda func: None)  # type: ignore[arg-type]

    def join(name: str) -> None:
        with interest.hold("c:news"):
            order.append(name)

    first = threading.Thread(target=join, args=("first",))
    first.start()
    assert inside.wait(TIMEOUT)
    second = threading.Thread(target=join, args=("second",))
    second.start()
    gate.set()
    first.join(TIMEOUT)
    second.join(TIMEOUT)
    assert order == ["subscribing", "subscribed", "first", "second"]
    assert broker.calls == [("subscribe", "c:news")]


def test_the_worker_unsubscribes_after_the_delay(
    broker: FakeBroker, local: Local
) -> None:
    interest = Interest(broker, local, delay=0.05)  # type: ignore[arg-type]
    with interest.hold("c:news"):
        pass
    assert broker.unsubscribed.wait(TIMEOUT)
    assert broker.calls == [("subscribe", "c:news"), ("unsubscribe", "c:news")]
