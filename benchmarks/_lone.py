"""A lone publisher's cost of history, measured so that the machine's noise
falls on both sides alike (used by redis_history.py and nats_history.py).

One greenlet alternates: a broadcast to a channel without history, then one
to a channel with it, ``count`` times each, every call timed; another broker
subscribes to both. A lone publisher's rate is one over its mean call time,
so the ratio of the means is the ratio of the rates, taken over the same
seconds: a stall of the shared machine slows both sides, not one run of
them.
"""

from __future__ import annotations

import statistics
import time

import gevent.event

from flask_realtime.brokers import create_broker
from flask_realtime.brokers.interface import Retention
from tests.brokerclients import settings_for


def interleaved(kind: str, url: str, count: int, rule: Retention) -> dict[str, float]:
    """Mean, median and p99 call times (ms) without and with history, and
    the rate ratio (mean without / mean with)."""
    from flask import Flask

    from flask_realtime import Realtime

    got = [0]
    done = gevent.event.Event()

    def on_message(topic: str, data: bytes) -> None:
        got[0] += 1
        if got[0] == 2 * count:
            done.set()

    app = Flask(__name__)
    app.config.update(REALTIME_BROKER=kind, REALTIME_BROKER_URL=url)
    realtime = Realtime(app)
    broker = realtime.node.broker
    stamp = time.monotonic_ns()
    plain, kept = f"lone.plain.{stamp}", f"lone.kept.{stamp}"
    broker.retention = lambda topic: rule if topic == f"c:{kept}" else None
    subscriber = create_broker(settings_for(kind, url), on_message)
    if kind == "rabbitmq":  # kept topics come from their streams
        subscriber.retention = broker.retention
    subscriber.subscribe(f"c:{plain}", f"c:{kept}")
    realtime.broadcast("warm", "up", None)
    realtime.broadcast(kept, "warm", None)  # the stream exists, the topic known
    got[0] = 0
    times: dict[str, list[float]] = {plain: [], kept: []}
    data = {"text": "x" * 40, "user": 12345}
    for _ in range(count):
        for channel in (plain, kept):
            started = time.perf_counter()
            realtime.broadcast(channel, "message.sent", data)
            times[channel].append((time.perf_counter() - started) * 1000)
    assert done.wait(60), f"{got[0]} of {2 * count} delivered"
    subscriber.close()
    broker.close()
    figures: dict[str, float] = {}
    for name, channel in (("plain", plain), ("history", kept)):
        calls = sorted(times[channel])
        figures[f"{name}_mean_ms"] = statistics.fmean(calls)
        figures[f"{name}_median_ms"] = calls[len(calls) // 2]
        figures[f"{name}_p99_ms"] = calls[int(len(calls) * 0.99)]
    figures["ratio"] = figures["plain_mean_ms"] / figures["history_mean_ms"]
    return figures


def report(figures: dict[str, float], count: int) -> str:
    """One line for the scripts' output."""
    return (
        f"lone interleaved, {count} + {count} broadcasts: mean"
        f" {figures['plain_mean_ms']:.3f} / {figures['history_mean_ms']:.3f} ms"
        f" (rates {1000 / figures['plain_mean_ms']:.0f} /"
        f" {1000 / figures['history_mean_ms']:.0f} per s, ratio"
        f" {figures['ratio']:.2f}), median {figures['plain_median_ms']:.3f} /"
        f" {figures['history_median_ms']:.3f} ms, p99"
        f" {figures['plain_p99_ms']:.2f} / {figures['history_p99_ms']:.2f} ms"
        " (without / with history)"
    )
