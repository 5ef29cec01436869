"""What history costs on the NATS broker (issue 10): rate and storage.

Starts a private nats-server with JetStream (as the test suite does), then:

* ``rate``: a Flask app's ``Realtime.broadcast`` under gevent, G greenlets
  broadcasting N events (~100 bytes) to 1, 8 or G channels at once (so group
  commit engages), another broker subscribed; the rate is N over the time
  from the first broadcast to the last delivery, with and without history
  on the channels (``broker.retention`` set by hand), alternated
  ``--rounds`` times; plus one greenlet alone (a round trip per batch), and
  the p99 of one broadcast call.
* ``lone``: one greenlet alternating broadcasts without and with history,
  every call timed (``benchmarks/_lone.py``): the noise falls on both.
* ``storage``: C channels, each given 3 x ``size`` events of 100 bytes
  (the stamped envelope): the stream's bytes (JetStream's own count, headers
  included) per channel, and the nats-server's resident memory growth per
  channel.
* ``packed`` (not by default): the same for 10 channels each given 150 x
  ``size`` events by 50 greenlets at once, so their events go in packs as
  full as the cap allows (what a subject's ``size`` messages keep at most).

Usage::

    .venv/bin/python benchmarks/nats_history.py [--count 20000]
        [--greenlets 50] [--rounds 3] [--channels 300] [--size 100]
        [--lone 2000] [--parts storage,packed,rate,lone]
        [--channels-of-rate 1,8,G,lone]
"""

from __future__ import annotations

import argparse
import faulthandler
import sys
import tempfile
import time
import typing as t
from pathlib import Path

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402
import gevent.event  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from benchmarks._lone import interleaved, report  # noqa: E402
from benchmarks._rate import rate  # noqa: E402
from benchmarks.loadgen import read_cpu_s, self_cpu_s  # noqa: E402
from flask_realtime.brokers import create_broker  # noqa: E402
from flask_realtime.brokers._nats_history import stream_name  # noqa: E402
from flask_realtime.brokers.interface import Retention  # noqa: E402
from tests.brokerclients import settings_for  # noqa: E402
from tests.brokerservers import BrokerServer  # noqa: E402

_HEAD = b'm\n{"type":"event","channel":"chat.room.1","event":"sent","data":"'
# Padded so that the stamped envelope of offset 50 is 100 bytes.
_PAD = 100 - len(b'{"offset":50,' + _HEAD[3:] + b'"}')
RULE = Retention(size=100, ttl=600.0)


def payload(n: int) -> bytes:
    return _HEAD + b"%05d" % n + b"x" * (_PAD - 5) + b'"}'


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def stream_bytes(broker: t.Any, rule: Retention) -> tuple[int, int]:
    """(bytes, messages) of the rule's stream, JetStream's own count, asked
    on the broker's connection (its loop thread)."""
    js = broker._link.jetstream()
    info = broker._loop.run(js.stream_info(stream_name(rule)), 10)
    return info.state.bytes, info.state.messages


def storage(server: BrokerServer, channels: int, size: int) -> None:
    rule = Retention(size=size, ttl=600.0)
    broker = create_broker(settings_for("nats", server.url), lambda *a: None)
    broker.retention = lambda topic: rule
    broker.publish("c:warm", payload(0))
    assert server.process is not None
    before = rss_kb(server.process.pid)
    base_bytes, _ = stream_bytes(broker, rule)

    def fill(c: int) -> None:
        for n in range(3 * size):  # trimmed, as a busy channel is
            broker.publish(f"c:chat.room.{c}", payload(n))

    gevent.joinall([gevent.spawn(fill, c) for c in range(channels)])
    grown = rss_kb(server.process.pid) - before
    kept, messages = stream_bytes(broker, rule)
    print(
        f"storage: {(kept - base_bytes) / channels:.0f} B per channel in the stream"
        f" ({messages} messages kept, size {size}, {3 * size} events of 100 B"
        f" each per channel, {channels} channels); nats-server RSS grew"
        f" {grown * 1024 / channels:.0f} B per channel",
        flush=True,
    )
    broker.close()


def packed_storage(server: BrokerServer, channels: int, size: int) -> None:
    """The worst case of packs: C channels each given 3 x ``size`` x 50
    events by 50 greenlets at once, so a channel's events of a round go in
    packs as full as the cap allows."""
    rule = Retention(size=size, ttl=600.0)
    broker = create_broker(settings_for("nats", server.url), lambda *a: None)
    broker.retention = lambda topic: rule
    broker.publish("c:warm", payload(0))
    base_bytes, base_messages = stream_bytes(broker, rule)
    stamp = time.monotonic_ns()

    def fill(c: int) -> None:
        for n in range(3 * size):
            broker.publish(f"c:chat.hot.{stamp}.{c % channels}", payload(n))

    gevent.joinall([gevent.spawn(fill, g) for g in range(50 * channels)])
    kept, messages = stream_bytes(broker, rule)
    print(
        f"packed storage: {(kept - base_bytes) / channels:.0f} B per channel in"
        f" the stream ({(messages - base_messages) / channels:.0f} messages kept"
        f" per channel, size {size}, {150 * size} events of 100 B each per"
        f" channel from 50 greenlets at once, {channels} channels)",
        flush=True,
    )
    broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--greenlets", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--channels", type=int, default=300)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument(
        "--lone", type=int, default=0, help="broadcasts of the lone greenlet"
    )
    parser.add_argument("--parts", default="storage,rate,lone")
    parser.add_argument(
        "--channels-of-rate",
        default="1,8,G,lone",
        help="the rate cases: channel counts (G: one a greenlet), lone: one greenlet",
    )
    args = parser.parse_args()
    parts = args.parts.split(",")
    lone = args.lone or args.count // 10
    faulthandler.dump_traceback_later(120, exit=True)
    server = BrokerServer("nats", Path(tempfile.mkdtemp(prefix="nats-history-")))
    server.start()
    try:
        if "storage" in parts:
            storage(server, args.channels, args.size)
        if "packed" in parts:
            packed_storage(server, 10, args.size)
        # "G": each greenlet its own channel, so a round holds one event a
        # channel and packs do not help (the requests of a busy chat, one a room).
        cases = [
            (1, 1, lone)
            if case == "lone"
            else (
                args.greenlets,
                args.greenlets if case == "G" else int(case),
                args.count,
            )
            for case in args.channels_of_rate.split(",")
        ]
        if "rate" not in parts:
            cases = []
        for _ in range(args.rounds):
            for greenlets, channels, count in cases:
                for kept in (False, True):
                    assert server.process is not None
                    cpu = (self_cpu_s(), read_cpu_s(server.process.pid))
                    per_s, per_batch, p99 = rate(
                        "nats",
                        server.url,
                        count,
                        greenlets,
                        channels,
                        RULE if kept else None,
                    )
                    # Where the time goes, per broadcast: this process (both
                    # brokers, the app, the loop thread) and the nats-server.
                    ours = (self_cpu_s() - cpu[0]) / count * 1e6
                    theirs = (read_cpu_s(server.process.pid) - cpu[1]) / count * 1e6
                    print(
                        f"rate {'history' if kept else 'plain':7} {greenlets:3}"
                        f" greenlets, {channels} channel(s): {per_s:8.0f}"
                        f" broadcasts/s, {per_batch:6.1f} per batch,"
                        f" broadcast p99 {p99:.2f} ms; CPU per broadcast:"
                        f" Python {ours:.0f} µs, nats-server {theirs:.0f} µs",
                        flush=True,
                    )
        for _ in range(args.rounds if "lone" in parts else 0):
            figures = interleaved("nats", server.url, lone, RULE)
            print(report(figures, lone), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
