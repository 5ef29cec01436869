"""The pressure gauge's rule: who may make a publisher wait, and how long."""

from __future__ import annotations

import time

import gevent
import pytest

from flask_realtime import pressure
from flask_realtime.pressure import PressureGauge


class Session:
    """A session as the gauge sees it: when its client last took bytes, and
    how far behind it is (``share`` of its bound, as the kernel would say)."""

    def __init__(self, last_progress: float, share: float = 1.0) -> None:
        self.last_progress = last_progress
        self.share = share
        self.looks = 0
        self.label = "session"

    def lag(self, now: float) -> float:
        self.looks += 1
        return self.share


@pytest.fixture(autouse=True)
def under_gevent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gauge waits only in greenlets; these tests run in one."""
    monkeypatch.setattr(pressure, "gevent_active", lambda: True)
    monkeypatch.setattr(pressure, "in_event_loop", lambda: False)


def _publish(gauge: PressureGauge, connections: int) -> float:
    """One publisher's wait, in seconds; fails fast where it would hang."""
    started = time.monotonic()
    with gevent.Timeout(2, AssertionError("the publisher was held for long")):
        gauge.wait_for_capacity(connections)
    return time.monotonic() - started


def test_clients_that_stopped_reading_hold_no_publisher() -> None:
    gauge = PressureGauge(backlog_limit=64 * 1024 * 1024)
    for _ in range(8):  # drained nothing for longer than STALLED_AFTER
        gauge.pressured(Session(time.monotonic() - 2 * pressure.STALLED_AFTER))
    assert _publish(gauge, connections=10) < 0.05
    assert gauge.waits == 0


def test_a_backlog_nobody_drains_holds_no_publisher() -> None:
    """Bytes past the node's cap that no client reads (a reply flood):
    waiting would never free them."""
    gauge = PressureGauge(backlog_limit=64 * 1024)
    gauge.queued(10 * 1024 * 1024)
    gauge.pressured(Session(time.monotonic() - 2 * pressure.STALLED_AFTER))
    assert _publish(gauge, connections=10) < 0.05
    assert gauge.waits == 0


def test_a_few_slow_readers_hold_no_publisher() -> None:
    gauge = PressureGauge(backlog_limit=64 * 1024 * 1024)
    for _ in range(pressure.MIN_SLOW):
        gauge.pressured(Session(time.monotonic()))
    assert _publish(gauge, connections=1000) < 0.05
    assert gauge.waits == 0


def test_a_large_share_of_slow_readers_slows_the_publisher_briefly() -> None:
    """Readers that cannot keep up, many of them: each publish waits, but
    never longer than MAX_CLIENT_WAIT, whoever the readers are."""
    gauge = PressureGauge(backlog_limit=64 * 1024 * 1024)
    for _ in range(100):
        gauge.pressured(Session(time.monotonic()))
    waited = _publish(gauge, connections=500)
    assert pressure.MAX_CLIENT_WAIT * 0.9 <= waited < pressure.MAX_CLIENT_WAIT + 0.05
    assert gauge.waits == 1


def test_a_backlog_past_the_cap_that_drains_slows_the_publisher() -> None:
    gauge = PressureGauge(backlog_limit=64 * 1024)
    gauge.queued(1024 * 1024)
    gauge.pressured(Session(time.monotonic()))
    waited = _publish(gauge, connections=500)
    assert waited >= pressure.MAX_CLIENT_WAIT * 0.9
    assert gauge.waits == 1


def test_the_wait_ends_once_most_readers_drained() -> None:
    gauge = PressureGauge(backlog_limit=64 * 1024 * 1024)
    sessions = [Session(time.monotonic()) for _ in range(40)]
    for session in sessions:
        gauge.pressured(session)

    def drain() -> None:
        gevent.sleep(0.02)
        for session in sessions:
            gauge.relieved(session)

    gevent.spawn(drain)
    waited = _publish(gauge, connections=100)
    assert 0.015 <= waited < pressure.MAX_CLIENT_WAIT * 0.8
    assert gauge.pressured_count == 0


def test_many_full_sockets_pace_the_publisher_by_a_millisecond() -> None:
    gauge = PressureGauge(backlog_limit=64 * 1024 * 1024)
    sessions = [Session(time.monotonic(), share=0.0) for _ in range(30)]
    for session in sessions:
        gauge.blocked(session)
    assert _publish(gauge, connections=100) < 0.05
    assert gauge.paced == 1 and gauge.waits == 0
    for session in sessions[:10]:
        gauge.unblocked(session)
    _publish(gauge, connections=100)  # 20 of 100: not a large share
    assert gauge.paced == 1


@pytest.fixture
def kernel_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on Linux, whatever system runs the test."""
    monkeypatch.setattr(pressure._kernel, "AVAILABLE", True)


@pytest.mark.usefixtures("kernel_says")
def test_a_full_socket_lags_past_half_its_bound_until_under_a_quarter() -> None:
    gauge = PressureGauge(backlog_limit=64 * 1024 * 1024)
    session = Session(time.monotonic(), share=0.4)
    gauge.blocked(session)
    gauge.refresh(time.monotonic())
    assert not gauge.is_pressured(session)  # behind, but not by half
    session.share = 0.6  # the kernel holds most of it: the queue is empty
    gauge.refresh(time.monotonic() + 1)
    assert gauge.is_pressured(session)
    session.share = 0.3
    gauge.refresh(time.monotonic() + 2)
    assert gauge.is_pressured(session)  # hysteresis: not yet under a quarter
    session.share = 0.2
    gauge.refresh(time.monotonic() + 3)
    assert not gauge.is_pressured(session)


@pytest.mark.usefixtures("kernel_says")
def test_the_kernel_is_asked_at_most_every_refresh_interval() -> None:
    gauge = PressureGauge(backlog_limit=64 * 1024 * 1024)
    session = Session(time.monotonic(), share=0.0)
    gauge.blocked(session)
    start = time.monotonic()
    for step in range(10):
        gauge.refresh(start + step * pressure.REFRESH_EVERY / 10)
    assert session.looks == 1
    gauge.refresh(start + pressure.REFRESH_EVERY)
    assert session.looks == 2
    gauge.unblocked(session)  # a socket that is not full is never asked
    gauge.refresh(start + 10)
    assert session.looks == 2


@pytest.mark.usefixtures("kernel_says")
def test_readers_the_kernel_shows_behind_make_the_publisher_wait() -> None:
    """Their queues are empty (the kernel holds what they are behind), yet
    they are a large share of all connections: the publisher waits."""
    gauge = PressureGauge(backlog_limit=64 * 1024 * 1024)
    sessions = [Session(time.monotonic(), share=0.9) for _ in range(10)]
    for session in sessions:
        gauge.blocked(session)
    waited = _publish(gauge, connections=100)
    assert waited >= pressure.MAX_CLIENT_WAIT * 0.9
    assert gauge.waits == 1 and gauge.pressured_count == 10


@pytest.mark.usefixtures("kernel_says")
def test_the_wait_ends_when_the_kernel_shows_readers_caught_up() -> None:
    gauge = PressureGauge(backlog_limit=64 * 1024 * 1024)
    sessions = [Session(time.monotonic(), share=0.9) for _ in range(10)]
    for session in sessions:
        gauge.blocked(session)

    def catch_up() -> None:
        gevent.sleep(0.02)
        for session in sessions:
            session.share = 0.1

    gevent.spawn(catch_up)
    waited = _publish(gauge, connections=100)
    assert 0.015 <= waited < pressure.MAX_CLIENT_WAIT * 0.8
    assert gauge.pressured_count == 0


@pytest.mark.usefixtures("kernel_says")
def test_a_lagging_socket_stays_pressured_when_no_longer_full() -> None:
    """Its writer emptied the queue into the kernel, whose buffer still holds
    more than a quarter of the bound: the client has not caught up."""
    gauge = PressureGauge(backlog_limit=64 * 1024 * 1024)
    session = Session(time.monotonic(), share=0.9)
    gauge.blocked(session)
    gauge.refresh(time.monotonic())
    gauge.unblocked(session)
    session.share = 0.3
    gauge.refresh(time.monotonic() + 1)
    assert gauge.is_pressured(session)
    session.share = 0.1
    gauge.refresh(time.monotonic() + 2)
    assert not gauge.is_pressured(session)
    session.share = 0.9  # neither full nor pressured: never asked again
    gauge.refresh(time.monotonic() + 3)
    assert not gauge.is_pressured(session)
