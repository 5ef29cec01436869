"""What history costs on the Redis broker (issue 10): memory and rate.

Starts a private redis-server (as the test suite does), then:

* ``memory``: C channels, each given 3 x ``size`` events of 100 bytes
  (the stamped envelope), kept two ways: the broker's own (a list of
  ``<ms><envelope>`` and a position hash, through its Lua script) and the
  one it did not take (a stream trimmed to exactly ``size``, the same
  hash). Per channel: MEMORY USAGE of its keys, and Redis's
  ``used_memory`` growth divided by C (the keyspace's entries added).
* ``rate``: a Flask app's ``Realtime.broadcast`` under gevent, G greenlets
  broadcasting N events (~100 bytes) to one channel at once (so group
  commit engages), another broker subscribed; the rate is N over the time
  from the first broadcast to the last delivery, with and without history
  on the channel (``broker.retention`` set by hand), alternated
  ``--rounds`` times; plus one greenlet alone (a round trip per message),
  and the p99 of one broadcast call.
* ``lone``: one greenlet alternating broadcasts without and with history,
  every call timed (``benchmarks/_lone.py``): the noise falls on both.
* ``reads``: a recovery storm's reads, R greenlets at once each reading
  the 50 events it missed (``history(after=50)``) of a channel keeping 100.

Usage::

    .venv/bin/python benchmarks/redis_history.py [--count 30000]
        [--greenlets 50] [--rounds 3] [--channels 1000] [--size 100]
        [--lone 3000] [--parts memory,reads,rate,lone]
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
import redis as redis_py  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from benchmarks._lone import interleaved, report  # noqa: E402
from benchmarks._rate import rate  # noqa: E402
from flask_realtime.brokers import create_broker  # noqa: E402
from flask_realtime.brokers.interface import Retention  # noqa: E402
from tests.brokerclients import settings_for  # noqa: E402
from tests.brokerservers import BrokerServer  # noqa: E402

_HEAD = b'm\n{"type":"event","channel":"chat.room.1","event":"sent","data":"'
RULE = Retention(size=100, ttl=600.0)
# Padded so that the stamped envelope of offset 50 is 100 bytes.
_PAD = 100 - len(b'{"offset":50,' + _HEAD[3:] + b'"}')


def payload(n: int) -> bytes:
    """A realistic event: 100 bytes once stamped (offsets of two digits)."""
    return _HEAD + b"%05d" % n + b"x" * (_PAD - 5) + b'"}'


def envelope_size() -> int:
    return len(b'{"offset":50,') + len(payload(0)) - len(b"m\n{")


def memory(url: str, port: int, channels: int, size: int) -> None:
    admin = redis_py.Redis(host="127.0.0.1", port=port)
    rule = Retention(size=size, ttl=600.0)
    broker = create_broker(settings_for("redis", url), lambda *a: None)
    broker.retention = lambda topic: rule
    for layout in ("list", "stream"):
        admin.flushall()
        before = admin.info("memory")["used_memory"]
        for c in range(channels):
            topic = f"c:chat.room.{c}"
            if layout == "list":  # the broker's own
                for n in range(3 * size):  # trimmed, as a busy channel is
                    broker.publish(topic, payload(n))
                continue
            position, events = broker._history.keys(topic)
            pipe = admin.pipeline(transaction=False)
            pipe.hset(position, mapping={"epoch": "0123456789abcdef", "offset": size})
            for n in range(3 * size):
                stamped = payload(n).split(b"\n", 1)[1]
                pipe.xadd(events, {"e": stamped}, maxlen=size, approximate=False)
            pipe.pexpire(events, 600_000)
            pipe.execute()
        grown = admin.info("memory")["used_memory"] - before
        position, events = broker._history.keys("c:chat.room.0")
        kept = admin.memory_usage(events, samples=0)
        print(
            f"memory {layout:6}: {kept + admin.memory_usage(position)} B per channel"
            f" by MEMORY USAGE (events {kept} B, {admin.object('encoding', events)},"
            f" {admin.llen(events) if layout == 'list' else admin.xlen(events)}"
            f" kept; position {admin.memory_usage(position)} B); used_memory grew"
            f" {grown / channels:.0f} B per channel ({channels} channels, {3 * size}"
            f" events of {envelope_size()} B each, size {size})",
            flush=True,
        )
    broker.close()


def reads(url: str, clients: int) -> None:
    """A recovery storm's reads: ``clients`` greenlets at once, each asking
    for the 50 events it missed of a channel that keeps 100."""
    broker = create_broker(settings_for("redis", url), lambda *a: None)
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
    parser.add_argument("--count", type=int, default=30000)
    parser.add_argument("--greenlets", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--channels", type=int, default=300)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument(
        "--lone", type=int, default=0, help="broadcasts of the lone greenlet"
    )
    parser.add_argument("--parts", default="memory,reads,rate,lone")
    args = parser.parse_args()
    server = BrokerServer("redis", Path(tempfile.mkdtemp(prefix="redis-history-")))
    server.start()
    try:
        parts = args.parts.split(",")
        if "memory" in parts:
            memory(server.url, server.port, args.channels, args.size)
        if "reads" in parts:
            reads(server.url, args.readers)
        lone = args.lone or args.count // 10
        cases = [(args.greenlets, args.count), (1, lone)] if "rate" in parts else []
        for _ in range(args.rounds):
            for greenlets, count in cases:
                for kept in (False, True):
                    per_s, per_batch, p99 = rate(
                        "redis", server.url, count, greenlets, 1, RULE if kept else None
                    )
                    print(
                        f"rate {'history' if kept else 'plain':7} {greenlets:3}"
                        f" greenlets: {per_s:8.0f} broadcasts/s, {per_batch:6.1f}"
                        f" per batch, broadcast p99 {p99:.2f} ms",
                        flush=True,
                    )
        for _ in range(args.rounds if "lone" in parts else 0):
            figures = interleaved("redis", server.url, lone, RULE)
            print(report(figures, lone), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
