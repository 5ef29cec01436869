"""brokers/base.py on a backend in memory: what no real server makes happen
on demand (a refused message, a link lost in the middle of a batch).

The promises every real backend keeps are in tests/test_brokers.py.
"""

from __future__ import annotations

import threading
import time
import typing as t

import pytest

from flask_realtime.brokers.base import BrokerBase, BrokerUnavailable, LinkLost


class MemoryBroker(BrokerBase):
    """Sends into a list; ``fail_after`` loses the link after that many."""

    kind = "memory"

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.fail_after: int | None = None
        self._stop = threading.Event()
        super().__init__("memory://user:secret@here", 100, lambda t, d: None)

    def _connect(self, topics: list[str]) -> None:
        self._stop.clear()

    def _read(self) -> None:
        while self._tick():
            self._stop.wait(0.02)

    def _send_batch(self, messages: list[tuple[str, bytes]]) -> list[t.Any]:
        counts: list[t.Any] = []
        for topic, data in messages:
            if self.fail_after is not None and len(self.sent) >= self.fail_after:
                self.fail_after = None
                raise LinkLost("cut", accepted=len(counts))
            self.sent.append((topic, data))
            counts.append(ValueError("NOPERM") if topic == "x:refused" else 1)
        return counts

    def _subscribe(self, topics: list[str]) -> None:
        return None

    def _unsubscribe(self, topics: list[str]) -> None:
        pass

    def _disconnect(self) -> None:
        self._stop.set()

    def _drop_after_fork(self) -> None:
        pass


@pytest.fixture
def broker() -> t.Iterator[MemoryBroker]:
    made = MemoryBroker()
    yield made
    made.close()


def test_a_refused_message_raises_and_the_others_go_out(broker: MemoryBroker) -> None:
    assert broker.publish("c:a", b"1") == 1
    with pytest.raises(BrokerUnavailable, match="refused a message: NOPERM"):
        broker.publish("x:refused", b"2")
    assert broker.publish("c:a", b"3") == 1
    assert [d for _, d in broker.sent] == [b"1", b"2", b"3"]


def test_a_link_lost_mid_batch_resends_only_what_was_not_accepted(
    broker: MemoryBroker,
) -> None:
    broker.publish("c:a", b"0")
    broker.fail_after = 1  # the next send fails before the broker took any
    assert broker.publish("c:a", b"1") is None  # buffered
    assert broker.publish("c:a", b"2") is None  # the retry is not due: behind it
    broker.fail_after = 2  # the flush of [1, 2] loses the link after 1
    deadline = time.monotonic() + 10
    while len(broker.sent) < 3:
        assert time.monotonic() < deadline, broker.sent
        time.sleep(0.01)
    assert [d for _, d in broker.sent] == [b"0", b"1", b"2"]
    broker.publish("c:a", b"3")
    assert [d for _, d in broker.sent] == [b"0", b"1", b"2", b"3"]


def test_a_closed_broker_refuses_to_publish_and_its_url_hides_the_password(
    broker: MemoryBroker,
) -> None:
    broker.publish("c:a", b"up")
    broker.close()
    with pytest.raises(BrokerUnavailable, match="closed"):
        broker.publish("c:a", b"down")
    assert broker.url == "memory://user:***@here"
    assert not broker.connected
