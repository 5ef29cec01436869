"""Broker objects for the broker tests, what each one received, and the
fixtures and helpers the broker suites share."""

from __future__ import annotations

import copy
import threading
import time
import typing as t
from pathlib import Path

import pytest

from flask_realtime import config as _config
from flask_realtime.brokers import Broker, MessageCallback, create_broker

if t.TYPE_CHECKING:
    from tests.brokerservers import BrokerServer

TIMEOUT = 10.0
ROOT = Path(__file__).resolve().parent.parent


class Inbox:
    """What one broker delivered to its callback, with waiting helpers."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.broker: Broker | None = None
        self._changed = threading.Condition()

    def __call__(self, topic: str, data: bytes) -> None:
        with self._changed:
            self.messages.append((topic, data))
            self._changed.notify_all()

    def payloads(self, topic: str | None = None) -> list[bytes]:
        return [d for tp, d in list(self.messages) if topic in (None, tp)]

    def wait_for(
        self, predicate: t.Callable[[], bool], timeout: float = TIMEOUT
    ) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out; received {self.messages[-5:]!r}")
                self._changed.wait(remaining)


def settings_for(
    kind: str, url: str | None = None, **config: t.Any
) -> _config.Settings:
    """Settings for a ``kind`` broker at ``url`` (REALTIME_* keys in ``config``)."""
    values = copy.deepcopy(_config.DEFAULTS)
    values["REALTIME_BROKER"] = kind
    if url is not None:
        values["REALTIME_BROKER_URL"] = url
        if kind == "nats":
            values["REALTIME_NATS_URL"] = url
    values.update(config)
    return _config.load(values)


class Brokers:
    """The brokers one test makes; :meth:`close` closes them all."""

    def __init__(self, kind: str | None = None) -> None:
        self.kind = kind
        self._made: list[Broker] = []

    def make(
        self,
        url: str | None = None,
        on_message: MessageCallback | None = None,
        kind: str | None = None,
        **config: t.Any,
    ) -> tuple[t.Any, Inbox]:
        """A broker and its Inbox (which receives unless ``on_message`` does)."""
        kind = kind or self.kind
        assert kind is not None, "which broker?"
        inbox = Inbox()
        broker = create_broker(settings_for(kind, url, **config), on_message or inbox)
        inbox.broker = broker
        self._made.append(broker)
        return broker, inbox

    def close(self) -> None:
        for broker in self._made:
            broker.close()


def broker_fixtures(kind: str) -> tuple[t.Any, t.Any]:
    """A broker test module's ``make`` and ``server`` fixtures:
    ``make, server = broker_fixtures("redis")``."""

    @pytest.fixture(name="make")
    def make_fixture() -> t.Iterator[t.Callable[..., tuple[t.Any, Inbox]]]:
        """``make(url=None, on_message=None, **REALTIME_settings)``: a broker
        and what it receives (an Inbox, unless ``on_message`` is given)."""
        brokers = Brokers(kind)
        yield brokers.make
        brokers.close()

    @pytest.fixture(name="server")
    def server_fixture(
        broker_servers: t.Callable[[str], BrokerServer],
    ) -> BrokerServer:
        """The session's broker server of ``kind``."""
        return broker_servers(kind)

    return make_fixture, server_fixture


def wait_until(predicate: t.Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def round_trip(publisher: t.Any, inbox: Inbox, topic: str, data: bytes) -> None:
    """Publish ``data`` and wait until ``inbox`` has it."""
    publisher.publish(topic, data)
    inbox.wait_for(lambda: data in inbox.payloads(topic))


def in_threads(target: t.Callable[[int], t.Any], count: int) -> None:
    """Run ``target(0)`` ... ``target(count - 1)`` at once, a thread each;
    return when all are done."""
    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def count_batches(broker: t.Any) -> list[int]:
    """From now on, the size of each batch ``broker`` sends, in a list."""
    sizes: list[int] = []
    send_batch = broker._send_batch

    def counting(messages: list[tuple[str, bytes]]) -> t.Any:
        sizes.append(len(messages))
        return send_batch(messages)

    broker._send_batch = counting
    return sizes
