"""Broadcasts/s through ``Realtime.broadcast`` with and without history, on
any broker (used by the ``*_history.py`` scripts and ``history_rate.py``).

G greenlets under gevent broadcast N events of some 100 bytes to C channels
(greenlet g to channel g mod C), each waiting for its broadcast to be
accepted before the next, so that the group commit gathers their broadcasts
in batches; another broker subscribes to the channels. The rate is N over
the time from the first broadcast to the last delivery.
"""

from __future__ import annotations

import time

import gevent
import gevent.event

from flask_realtime.brokers import create_broker
from flask_realtime.brokers.interface import Retention
from tests.brokerclients import count_batches, settings_for


def rate(
    kind: str,
    url: str,
    count: int,
    greenlets: int,
    channels: int,
    rule: Retention | None,
) -> tuple[float, float, float]:
    """(broadcasts/s, messages per batch, p99 of a broadcast in ms); with
    ``rule``, every channel keeps its history by it, and the offsets are
    checked to be contiguous at the end."""
    from flask import Flask

    from flask_realtime import Realtime

    got = [0]
    done = gevent.event.Event()

    def on_message(topic: str, data: bytes) -> None:
        got[0] += 1
        if got[0] == count:
            done.set()

    app = Flask(__name__)
    app.config.update(REALTIME_BROKER=kind, REALTIME_BROKER_URL=url)
    realtime = Realtime(app)
    broker = realtime.node.broker
    broker.retention = lambda topic: rule
    stamp = time.monotonic_ns()
    names = [f"bench.{stamp}.{c}" for c in range(channels)]
    subscriber = create_broker(settings_for(kind, url), on_message)
    if kind == "rabbitmq":  # kept topics come from their streams
        subscriber.retention = broker.retention
    subscriber.subscribe(*(f"c:{name}" for name in names))
    realtime.broadcast("warm", "up", None)
    batches = count_batches(broker)
    calls: list[float] = []
    data = {"text": "x" * 40, "user": 12345}

    def publisher(g: int, n: int) -> None:
        name = names[g % channels]
        for _ in range(n):
            started = time.perf_counter()
            realtime.broadcast(name, "message.sent", data)
            calls.append(time.perf_counter() - started)

    started = time.perf_counter()
    share = count // greenlets
    gevent.joinall([gevent.spawn(publisher, g, share) for g in range(greenlets)])
    assert done.wait(60), f"{got[0]} of {count} delivered"
    elapsed = time.perf_counter() - started
    if rule is not None:  # contiguous: one offset per broadcast
        offsets = sum(broker.history(f"c:{n}", limit=0)[0].offset for n in names)
        assert offsets == count, offsets
    subscriber.close()
    broker.close()
    calls.sort()
    per_batch = sum(batches) / max(1, len(batches))
    return count / elapsed, per_batch, calls[int(len(calls) * 0.99)] * 1000
