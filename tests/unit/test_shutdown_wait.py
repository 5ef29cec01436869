"""The shutdown's wait for the last bytes (issue 9), without a server."""

from __future__ import annotations

import threading
import time
import types
import typing as t

import pytest

from flask_realtime import Realtime
from flask_realtime.connection import Sink
from flask_realtime.node.lifecycle import shutdown_bound
from tests.unit.conftest import Factory

pytestmark = pytest.mark.usefixtures("own_initialised_apps")


class SlowSink(Sink):
    """A wire that reports when it is done, once the test says so."""

    reports_written = True

    def __init__(self) -> None:
        self.closed: list[int] = []

    def write(self, nbytes: int) -> None:
        pass

    def close(self, code: int, reason: str = "") -> None:
        self.closed.append(code)
        self.node.disconnect(self.conn)

    def tick(self, now: float, heartbeat: float) -> None:
        pass


def _open(realtime: Realtime) -> SlowSink:
    sink = SlowSink()
    sink.node = realtime.node  # type: ignore[attr-defined]
    realtime.node.open("fake", sink)
    return sink


def test_the_wait_ends_when_the_last_connection_is_written(realtime: Realtime) -> None:
    node = realtime.node
    first, second = _open(realtime), _open(realtime)
    realtime.test_client()  # the memory transport's sink reports nothing
    node.shutdown()
    assert first.closed == second.closed == [4200]
    ended: list[bool] = []
    waiter = threading.Thread(
        target=lambda: ended.append(node.wait_written(time.monotonic() + 30))
    )
    waiter.start()
    node.written(first.conn)
    waiter.join(0.2)
    assert waiter.is_alive()  # the second one is still writing
    node.written(second.conn)
    waiter.join(5)
    assert ended == [True]


def test_the_wait_gives_up_at_its_deadline(realtime: Realtime) -> None:
    _open(realtime)
    realtime.node.shutdown()
    started = time.monotonic()
    assert realtime.node.wait_written(started + 0.2) is False
    assert 0.15 < time.monotonic() - started < 2


def test_without_connections_there_is_nothing_to_wait_for(make: Factory) -> None:
    node = make().node
    assert node.wait_written(time.monotonic() + 30) is True  # no shutdown yet
    node.shutdown()
    assert node.wait_written(time.monotonic() + 30) is True


class _Worker:
    """What gunicorn's worker offers the handler it set: ``cfg``."""

    def __init__(self, graceful_timeout: float) -> None:
        self.cfg = types.SimpleNamespace(graceful_timeout=graceful_timeout)

    def handle_exit(self, signum: int, frame: t.Any) -> None:
        pass


@pytest.mark.parametrize(
    ("graceful", "bound"), [(30, 29.0), (10, 9.0), (2, 1.0), (1, 0.5)]
)
def test_under_gunicorn_the_bound_is_the_graceful_timeout_less_a_second(
    realtime: Realtime, graceful: float, bound: float
) -> None:
    previous = _Worker(graceful).handle_exit
    assert shutdown_bound(previous, realtime.node.settings) == bound


def test_elsewhere_the_bound_is_the_config_key(make: Factory) -> None:
    settings = make(REALTIME_SHUTDOWN_TIMEOUT=4.5).node.settings
    assert shutdown_bound(None, settings) == 4.5


def test_a_connection_already_done_is_not_waited_for(realtime: Realtime) -> None:
    # Its wire reported before the shutdown, and the hub forgets it later
    # (a watcher's callback hands that to a greenlet).
    done = _open(realtime)
    done.conn.closed = True
    realtime.node.shutdown()
    assert realtime.node.wait_written(time.monotonic() + 30) is True
