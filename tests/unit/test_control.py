"""Requests to nodes that vanished: a deadline, and presence that still answers.

A subscriber that froze, or whose machine was cut off with its connection
open, still counts at the broker and never replies (issue 9).
"""

from __future__ import annotations

import time
import typing as t

import pytest

from flask_realtime import BrokerUnavailable, Realtime
from flask_realtime.node.control import Control


class SilentSubscriber:
    """A broker with one subscriber on every topic, which never replies;
    a publish takes ``delay`` seconds to be accepted."""

    kind = "fake"
    url = "fake://"
    connected = True

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def publish(self, topic: str, data: bytes) -> int:
        time.sleep(self.delay)
        return 1

    def subscribe(self, *topics: str) -> None:
        pass


def test_a_request_times_out_within_its_timeout_the_publish_included() -> None:
    control = Control(lambda _: SilentSubscriber(0.6), print, print)  # type: ignore[arg-type, return-value]
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        control.request("p:presence-room", b"{}", 0.5)
    assert time.monotonic() - started < 0.9  # not the publish plus the timeout


class DiesWithTheRequest(SilentSubscriber):
    """The subscriber took the request and died: the broker counted it for
    the request, and counts nobody from then on."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.published: list[bytes] = []

    def publish(self, topic: str, data: bytes) -> int:
        self.published.append(data)
        return 1 if len(self.published) == 1 else 0


def test_a_request_whose_subscriber_died_with_it_answers_nobody_early() -> None:
    broker = DiesWithTheRequest()
    control = Control(lambda _: broker, print, print)  # type: ignore[arg-type, return-value]
    started = time.monotonic()
    assert control.request("n:dead", b"{}", 10.0) is None
    assert time.monotonic() - started < 2.0
    assert broker.published[1:] == [b"?"]  # a probe, which every node ignores


def test_a_probe_is_ignored_by_the_node_that_gets_it() -> None:
    seen: list[t.Any] = []
    control = Control(
        lambda _: SilentSubscriber(0.0),  # type: ignore[arg-type, return-value]
        lambda *args: seen.append(args),
        lambda *args: seen.append(args),
    )
    control.on_message("n:me", b"?")
    assert seen == []


class SlowToConnect(SilentSubscriber):
    """A broker whose first connection comes ``after`` seconds from now."""

    def __init__(self, after: float) -> None:
        super().__init__(0.0)
        self.up_at = time.monotonic() + after
        self.down = False

    @property  # type: ignore[override]
    def connected(self) -> bool:
        return not self.down and time.monotonic() >= self.up_at

    def publish(self, topic: str, data: bytes) -> int:
        return 0  # nobody subscribes


def test_a_first_request_waits_for_a_slow_first_connection() -> None:
    broker = SlowToConnect(0.3)
    control = Control(lambda _: broker, print, print)  # type: ignore[arg-type, return-value]
    # Slow is not down: no BrokerUnavailable while the first connection comes.
    assert control.request("p:presence-room", b"{}", 2.0) is None
    # Once up, a broker that goes down is an outage, said at once.
    broker.down = True
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        control.request("p:presence-room", b"{}", 2.0)
    assert time.monotonic() - started < 0.5


def test_presence_asked_only_of_silent_nodes_is_empty_not_an_error(
    make: t.Callable[..., Realtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = make().node
    node.clustered = True  # asks other nodes

    def silent(topic: str, data: bytes, timeout: float) -> bytes | None:
        assert timeout <= 2.0
        raise TimeoutError(f"no reply to a request on {topic!r} in {timeout} s")

    monkeypatch.setattr(node.control, "request", silent)
    assert node.presence_members("presence-room.1") == []
