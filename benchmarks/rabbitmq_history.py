"""What history costs on the RabbitMQ broker (issue 10): rate and reads.

Starts a private rabbitmq-server (as the test suite does), then:

* ``rate``: a Flask app's ``Realtime.broadcast`` under gevent, G greenlets
  broadcasting N events (~100 bytes) to one channel at once (so group
  commit engages), another broker subscribed; the rate is N over the time
  from the first broadcast to the last delivery, with and without history
  on the channel (``broker.retention`` set by hand: the channel's inbox,
  its writer and stream, and a stream consumer, instead of the exchange and
  the node's queue),
  alternated ``--rounds`` times; plus one greenlet alone (a round trip per
  message), and the p99 of one broadcast call.
* ``reads``: a recovery storm's reads, R greenlets at once each reading
  the 50 events it missed (``history(after=50)``) of a channel keeping 100.

Usage::

    .venv/bin/python benchmarks/rabbitmq_history.py [--count 20000]
        [--greenlets 50] [--rounds 3] [--readers 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from flask_realtime.brokers import create_broker  # noqa: E402
from flask_realtime.brokers.interface import Retention  # noqa: E402
from tests.brokerclients import count_batches, settings_for  # noqa: E402
from tests.brokerservers import BrokerServer  # noqa: E402

_HEAD = b'm\n{"type":"event","channel":"chat.room.1","event":"sent","data":"'


def payload(n: int) -> bytes:
    """A realistic event of about 100 bytes."""
    return _HEAD + b"%05d" % n + b"x" * 20 + b'"}'


def rate(url: str, count: int, greenlets: int, kept: bool) -> tuple[float, ...]:
    """(broadcasts/s, messages per batch, p99 of a broadcast in ms) through
    ``Realtime.broadcast``, to one channel, one subscribing broker."""
    from flask import Flask

    from flask_realtime import Realtime

    got = [0]
    done = gevent.event.Event()

    def on_message(topic: str, data: bytes) -> None:
        got[0] += 1
        if got[0] == count:
            done.set()

    app = Flask(__name__)
    app.config.update(REALTIME_BROKER="rabbitmq", REALTIME_BROKER_URL=url)
    realtime = Realtime(app)
    broker = realtime.node.broker
    rule = Retention(size=100, ttl=600.0)
    broker.retention = (lambda topic: rule) if kept else (lambda topic: None)
    channel = f"bench.{time.monotonic_ns()}"
    subscriber = create_broker(settings_for("rabbitmq", url), on_message)
    subscriber.retention = broker.retention
    subscriber.subscribe(f"c:{channel}")
    realtime.broadcast("warm", "up", None)
    batches = count_batches(broker)
    calls: list[float] = []
    data = {"text": "x" * 40, "user": 12345}

    def publisher(n: int) -> None:
        for _ in range(n):
            started = time.perf_counter()
            realtime.broadcast(channel, "message.sent", data)
            calls.append(time.perf_counter() - started)

    started = time.perf_counter()
    share = count // greenlets
    gevent.joinall([gevent.spawn(publisher, share) for _ in range(greenlets)])
    assert done.wait(60), f"{got[0]} of {count} delivered"
    elapsed = time.perf_counter() - started
    if kept:  # contiguous: one offset per broadcast, the warm-up aside
        offset = broker.history(f"c:{channel}", limit=0)[0].offset
        assert offset == count, offset
    subscriber.close()
    broker.close()
    calls.sort()
    per_batch = sum(batches) / max(1, len(batches))
    return count / elapsed, per_batch, calls[int(len(calls) * 0.99)] * 1000


def reads(url: str, clients: int) -> None:
    """A recovery storm's reads: ``clients`` greenlets at once, each asking
    for the 50 events it missed of a channel that keeps 100."""
    broker = create_broker(settings_for("rabbitmq", url), lambda *a: None)
    rule = Retention(size=100, ttl=600.0)
    broker.retention = lambda topic: rule
    topic = f"c:storm.{time.monotonic_ns()}"
    for n in range(100):
        broker.publish(topic, payload(n))

    def recover() -> int:
        events = broker.history(topic, after=50)[1]
        assert events is not None
        return len(events)

    started = time.perf_counter()
    readers = [gevent.spawn(recover) for _ in range(clients)]
    gevent.joinall(readers, raise_error=True)
    elapsed = time.perf_counter() - started
    assert all(reader.value == 50 for reader in readers)
    print(
        f"reads: {clients} greenlets each read 50 missed events in"
        f" {elapsed * 1000:.0f} ms ({clients / elapsed:.0f} reads/s)",
        flush=True,
    )
    broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--greenlets", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--readers", type=int, default=200)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="rabbitmq-history-"))
    server = BrokerServer("rabbitmq", directory)
    server.start()
    try:
        reads(server.url, args.readers)
        cases = [(args.greenlets, args.count), (1, args.count // 10)]
        for _ in range(args.rounds):
            for greenlets, count in cases:
                for kept in (False, True):
                    per_s, per_batch, p99 = rate(server.url, count, greenlets, kept)
                    print(
                        f"rate {'history' if kept else 'plain':7} {greenlets:3}"
                        f" greenlets: {per_s:8.0f} broadcasts/s, {per_batch:6.1f}"
                        f" per batch, broadcast p99 {p99:.2f} ms",
                        flush=True,
                    )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
