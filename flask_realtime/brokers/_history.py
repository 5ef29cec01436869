"""Stamping a kept event with its offset, the same way in every broker.

A kept topic's payload is ``<header>\\n<JSON object>``; its offset goes in
as the object's first member, so that reading it back needs no JSON parser
and the stamped bytes are still the envelope clients receive.
"""

from __future__ import annotations

import secrets

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
