"""What every broker's history does the same way: stamping a kept event
with its offset, epochs, and the order in which a batch's kept events go.

A kept topic's payload is ``<header>\\n<JSON object>``; its offset goes in
as the object's first member, so that reading it back needs no JSON parser
and the stamped bytes are still the envelope clients receive.
"""

from __future__ import annotations

import secrets
import typing as t

_OFFSET = b'{"offset":'


def stamp(data: bytes, offset: int) -> bytes:
    """``<header>\\n{"offset":N,...}`` from ``<header>\\n{...}``."""
    newline = data.index(b"\n") + 1
    return b"%s%s%d,%s" % (data[:newline], _OFFSET, offset, data[newline + 1 :])


def envelope(stamped: bytes) -> bytes:
    """The stamped JSON object of a stamped payload (what history returns)."""
    return stamped[stamped.index(b"\n") + 1 :]


def offset_of(envelope: bytes) -> int | None:
    """The offset of a stamped object; None for an unstamped one."""
    if not envelope.startswith(_OFFSET):
        return None
    end = envelope.index(b",", len(_OFFSET))
    return int(envelope[len(_OFFSET) : end])


def new_epoch() -> str:
    """A fresh epoch: unguessable, short, and never equal to an earlier one."""
    return secrets.token_hex(8)


# A stream's position outlives its events by this long after its last event:
# a client that saw the last event of a quiet channel still recovers (with
# nothing to replay) when it comes back after the events' ttl.
POSITION_TTL = 86_400.0


def grouped(topics: t.Sequence[str | None]) -> list[int]:
    """The indices of a batch's messages in the order they go when a kept
    topic's messages go together, where the topic first comes in the batch
    (one store for them all), and the others (None) in their places. A
    topic's messages keep their order, and every message before a plain one
    goes before it; two topics' messages in one batch may change order
    (concurrent publishers have none between them; one publisher's share a
    batch only in a flush of the outage buffer)."""
    together: dict[str, list[int]] = {}
    firsts: list[int] = []
    for n, topic in enumerate(topics):
        if topic is None or topic not in together:
            firsts.append(n)
        if topic is not None:
            together.setdefault(topic, []).append(n)
    order: list[int] = []
    for n in firsts:
        topic = topics[n]
        order.extend([n] if topic is None else together[topic])
    return order
