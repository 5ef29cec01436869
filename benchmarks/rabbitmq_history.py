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
* ``bursts``: the same rate measured so that the shared machine's noise
  falls on both sides: one app and one subscriber, bursts of B broadcasts
  by G greenlets alternated between a channel without history and one with
  it (which goes first alternates too), each timed from its first broadcast
  to its last delivery; the medians of the burst rates, and their ratio.
  ``before``: the same as the publisher sent before this benchmark's last
  changes, each kept event in an inbox message of its own in a classic
  queue of version 1; ``packed-v1``: a batch's events of one channel
  packed in inbox messages, version 1 still. Each run alternately with
  ``bursts`` ``--rounds`` times: before and after in one run; ``lone``
  too, when ``before`` is asked.
* ``lone``: one greenlet alternating broadcasts without and with history,
  every call timed (``benchmarks/_lone.py``).
* ``reads``: a recovery storm's reads, R greenlets at once each reading
  the 50 events it missed (``history(after=50)``) of a channel keeping 100.

Usage::

    .venv/bin/python benchmarks/rabbitmq_history.py [--count 20000]
        [--greenlets 50] [--rounds 3] [--readers 200] [--bursts 20]
        [--burst 2000] [--lone 2000] [--parts reads,rate,before,packed-v1,bursts,lone]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from benchmarks._lone import interleaved, report  # noqa: E402
from benchmarks._rate import rate  # noqa: E402
from flask_realtime.brokers import _amqp_history, create_broker, rabbitmq  # noqa: E402
from flask_realtime.brokers.interface import Retention  # noqa: E402
from tests.brokerclients import settings_for  # noqa: E402
from tests.brokerservers import BrokerServer  # noqa: E402

_HEAD = b'm\n{"type":"event","channel":"chat.room.1","event":"sent","data":"'
RULE = Retention(size=100, ttl=600.0)


def payload(n: int) -> bytes:
    """A realistic event of about 100 bytes."""
    return _HEAD + b"%05d" % n + b"x" * 20 + b'"}'


# How the publisher sends kept events: (events per inbox message at most,
# the inbox's arguments); "after" is the code's own.
VARIANTS = {
    "before": (1, {"x-single-active-consumer": True}),
    "packed-v1": (rabbitmq._PACK_EVENTS, {"x-single-active-consumer": True}),
    "after": (rabbitmq._PACK_EVENTS, _amqp_history.INBOX_ARGUMENTS),
}


def variant(name: str) -> None:
    """Make the publisher send kept events as ``VARIANTS[name]`` says (for
    channels whose inbox is declared from now on)."""
    rabbitmq._PACK_EVENTS, _amqp_history.INBOX_ARGUMENTS = VARIANTS[name]


def bursts(url: str, pairs: int, size: int, greenlets: int, name: str) -> None:
    """Bursts alternated between a plain and a kept channel (module
    docstring); prints the median rates, p99s and their ratio."""
    from flask import Flask

    from flask_realtime import Realtime

    variant(name)
    got = [0]
    done = gevent.event.Event()
    want = [0]

    def on_message(topic: str, data: bytes) -> None:
        got[0] += 1
        if got[0] == want[0]:
            done.set()

    app = Flask(__name__)
    app.config.update(REALTIME_BROKER="rabbitmq", REALTIME_BROKER_URL=url)
    realtime = Realtime(app)
    broker = realtime.node.broker
    stamp = time.monotonic_ns()
    plain, kept = f"bursts.plain.{stamp}", f"bursts.kept.{stamp}"
    rule = RULE
    broker.retention = lambda topic: rule if topic == f"c:{kept}" else None
    subscriber = create_broker(settings_for("rabbitmq", url), on_message)
    subscriber.retention = broker.retention
    subscriber.subscribe(f"c:{plain}", f"c:{kept}")
    data = {"text": "x" * 40, "user": 12345}
    rates: dict[str, list[float]] = {plain: [], kept: []}
    calls: dict[str, list[float]] = {plain: [], kept: []}

    def burst(channel: str) -> float:
        got[0], want[0] = 0, size
        done.clear()

        def publisher(n: int) -> None:
            for _ in range(n):
                started = time.perf_counter()
                realtime.broadcast(channel, "message.sent", data)
                calls[channel].append(time.perf_counter() - started)

        started = time.perf_counter()
        share = size // greenlets
        gevent.joinall([gevent.spawn(publisher, share) for _ in range(greenlets)])
        assert done.wait(60), f"{got[0]} of {size} delivered"
        return size / (time.perf_counter() - started)

    for channel in (plain, kept):  # warm up: links, inbox, writer, stream
        burst(channel)
    calls = {plain: [], kept: []}
    for n in range(pairs):
        for channel in (plain, kept) if n % 2 == 0 else (kept, plain):
            rates[channel].append(burst(channel))
    offset = broker.history(f"c:{kept}", limit=0)[0].offset
    assert offset == size * (pairs + 1), offset  # contiguous, none lost
    subscriber.close()
    broker.close()
    medians = {channel: statistics.median(rates[channel]) for channel in rates}
    p99 = {
        channel: sorted(calls[channel])[int(len(calls[channel]) * 0.99)] * 1000
        for channel in calls
    }
    ratios = sorted(k / p for p, k in zip(rates[plain], rates[kept], strict=True))
    print(
        f"bursts ({name}), {pairs} x {size} broadcasts"
        f" each side, {greenlets} greenlets:"
        f" median {medians[plain]:.0f} / {medians[kept]:.0f} broadcasts/s (ratio"
        f" {medians[kept] / medians[plain]:.2f}; pairs' ratios {ratios[0]:.2f} to"
        f" {ratios[-1]:.2f}, median {statistics.median(ratios):.2f}), broadcast"
        f" p99 {p99[plain]:.1f} / {p99[kept]:.1f} ms (without / with history)",
        flush=True,
    )


def reads(url: str, clients: int) -> None:
    """A recovery storm's reads: ``clients`` greenlets at once, each asking
    for the 50 events it missed of a channel that keeps 100."""
    broker = create_broker(settings_for("rabbitmq", url), lambda *a: None)
    rule = RULE
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
    parser.add_argument("--bursts", type=int, default=20, help="pairs of bursts")
    parser.add_argument("--burst", type=int, default=2000, help="broadcasts each")
    parser.add_argument("--lone", type=int, default=2000)
    parser.add_argument("--parts", default="reads,rate,bursts,lone")
    args = parser.parse_args()
    parts = args.parts.split(",")
    directory = Path(tempfile.mkdtemp(prefix="rabbitmq-history-"))
    server = BrokerServer("rabbitmq", directory)
    server.start()
    try:
        if "reads" in parts:
            reads(server.url, args.readers)
        names = {"before": "before", "packed-v1": "packed-v1", "bursts": "after"}
        for _ in range(args.rounds):
            for part, name in names.items():
                if part in parts:
                    bursts(server.url, args.bursts, args.burst, args.greenlets, name)
        rule = RULE
        for _ in range(args.rounds if "lone" in parts else 0):
            for name in ("before", "after") if "before" in parts else ("after",):
                variant(name)
                figures = interleaved("rabbitmq", server.url, args.lone, rule)
                print(f"({name}) {report(figures, args.lone)}", flush=True)
        variant("after")
        cases = [(args.greenlets, args.count), (1, args.count // 10)]
        cases = cases if "rate" in parts else []
        for _ in range(args.rounds):
            for greenlets, count in cases:
                for kept in (False, True):
                    per_s, per_batch, p99 = rate(
                        "rabbitmq",
                        server.url,
                        count,
                        greenlets,
                        1,
                        RULE if kept else None,
                    )
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
