"""Helpers shared by the three benchmark server apps.

Each app publishes the same payload shape on the same schedule, so the
figures differ only by what the messaging layer does with a message.
"""

from __future__ import annotations

import json
import os
import time
import typing as t
from urllib.parse import parse_qs

import gevent

_compact = json.JSONEncoder(separators=(",", ":")).encode


def make_data(seq: int, pad: str) -> dict[str, t.Any]:
    """Build one message body; ``t`` is the publish wall-clock time."""
    return {"t": time.time(), "seq": seq, "pad": pad}


def pad_for(size: int, envelope: t.Callable[[dict[str, t.Any]], str]) -> str:
    """Return padding so that ``envelope(data)`` is about ``size`` bytes.

    ``envelope`` renders a data dict as it goes on the wire for one app,
    so each target gets the same wire size, not the same payload size.
    """
    bare = envelope({"t": time.time(), "seq": 0, "pad": ""})
    return "x" * max(0, size - len(bare.encode()))


def publish_params(query_string: str) -> tuple[int, float, int, str]:
    """Parse ``count``, ``rate``, ``size`` and ``channel`` from a query string."""
    q = parse_qs(query_string)
    count = int(q.get("count", ["1"])[0])
    rate = float(q.get("rate", ["0"])[0])
    size = int(q.get("size", ["100"])[0])
    channel = q.get("channel", ["bench"])[0]
    return count, rate, size, channel


def run_schedule(count: int, rate: float, publish_one: t.Callable[[int], None]) -> None:
    """Call ``publish_one(i)`` ``count`` times.

    ``rate <= 0`` is a burst that still yields to the hub between publishes
    (``gevent.sleep(0)``), so socket writes and reads can interleave.
    ``rate > 0`` follows a fixed deadline schedule, so a slow publish does
    not shift every later one.
    """
    start = time.monotonic()
    for i in range(count):
        if rate > 0:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            publish_one(i)
        else:
            publish_one(i)
            gevent.sleep(0)


def spawn_publisher(
    query_string: str,
    envelope: t.Callable[[dict[str, t.Any]], str],
    publish: t.Callable[[str, dict[str, t.Any]], None],
) -> dict[str, t.Any]:
    """Start a publishing greenlet for a ``/bench/publish`` request."""
    count, rate, size, channel = publish_params(query_string)
    pad = pad_for(size, envelope)

    def one(i: int) -> None:
        publish(channel, make_data(i, pad))

    gevent.spawn(run_schedule, count, rate, one)
    return {"ok": True, "count": count, "rate": rate, "size": size}


def stats(**extra: t.Any) -> dict[str, t.Any]:
    """Report the worker pid so the load generator can read its RSS and CPU."""
    return {"pid": os.getpid(), **extra}


def dumps(obj: t.Any) -> str:
    """Compact JSON, as all three targets put on the wire."""
    return _compact(obj)
