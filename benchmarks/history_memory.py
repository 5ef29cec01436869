"""Memory per channel with history (issue 10): size 100, 100-byte events.

Fills N channels (default 1,000) with 100 events each through a broker's
public interface, as a node does, and reports the memory each channel
holds: in the process (the null broker; tracemalloc's count of the
allocations that stay) and in Redis (``INFO memory``'s ``used_memory``
before and after, on a private redis-server).

Usage::

    .venv/bin/python benchmarks/history_memory.py [--channels 1000] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import tracemalloc
import typing as t
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flask_realtime import protocol  # noqa: E402
from flask_realtime.brokers.interface import Retention  # noqa: E402
from tests import brokerservers  # noqa: E402
from tests.brokerclients import Brokers  # noqa: E402

SIZE = 100
RULE = Retention(size=SIZE, ttl=600.0)


def payload(channel: str, n: int) -> bytes:
    """A control message around an event whose data is 100 bytes of JSON."""
    data = {"n": n, "text": "x" * 84}
    assert len(json.dumps(data, separators=(",", ":"))) >= 94
    return b"m\n" + protocol.event(channel, "message.sent", data)


def fill(broker: t.Any, channels: int, tag: str) -> None:
    broker.retention = lambda topic: RULE if topic.startswith("c:mem.") else None
    for c in range(channels):
        name = f"mem.{tag}.{c}"
        for n in range(SIZE):
            broker.publish(f"c:{name}", payload(name, n))
        assert broker.history(f"c:{name}", limit=0)[0].offset == SIZE


def in_process(channels: int) -> float:
    brokers = Brokers("null")
    broker, _ = brokers.make()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fill(broker, channels, "p")
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    brokers.close()
    return (after - before) / channels


def in_redis(channels: int) -> tuple[float, str]:
    import redis

    work = Path(tempfile.mkdtemp(prefix="histmem-"))
    server = brokerservers.start("redis", work)
    try:
        client = redis.Redis.from_url(server.url)
        brokers = Brokers("redis")
        broker, _ = brokers.make(server.url)
        broker.history("c:mem.warm", limit=0)  # connections and scripts loaded
        before = client.info("memory")["used_memory"]
        fill(broker, channels, "r")
        after = client.info("memory")["used_memory"]
        sample = sorted(k.decode() for k in client.keys("*mem.r.0*"))
        brokers.close()
        return (after - before) / channels, ", ".join(sample)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    event_bytes = len(payload("mem.p.0", 0))
    process = in_process(args.channels)
    redis_bytes, keys = in_redis(args.channels)
    print(f"{args.channels} channels x {SIZE} events; one event is {event_bytes} bytes")
    print("| where | bytes per channel | per event |")
    print("|---|---|---|")
    print(f"| in the process (null broker) | {process:,.0f} | {process / SIZE:,.0f} |")
    print(f"| Redis (used_memory) | {redis_bytes:,.0f} | {redis_bytes / SIZE:,.0f} |")
    print(f"Redis keys of one channel: {keys}")
    if args.json:
        args.json.write_text(
            json.dumps({"process": process, "redis": redis_bytes, "event": event_bytes})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
