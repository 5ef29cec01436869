"""What a webhook reports, apart from how it is sent or encoded.

An :class:`Event` is a fact about the cluster (a channel became occupied, a
member left, a client sent an event). The sender batches events per URL and
a :class:`~.wire.Format` turns a batch into a body and headers, so another
wire format (Pusher's) reuses everything but the encoding.
"""

from __future__ import annotations

import dataclasses
import time
import typing as t

CHANNEL_OCCUPIED = "channel.occupied"
CHANNEL_VACATED = "channel.vacated"
MEMBER_ADDED = "member.added"
MEMBER_REMOVED = "member.removed"
CLIENT_EVENT = "client.event"


@dataclasses.dataclass(frozen=True)
class Event:
    """One webhook event: its name, channel, when, and name-specific fields
    (``user_id`` for members; ``event``, ``data``, ``user_id`` and
    ``connection_id`` for client events)."""

    name: str
    channel: str
    fields: dict[str, t.Any] = dataclasses.field(default_factory=dict)
    time_ms: int = dataclasses.field(default_factory=lambda: int(time.time() * 1000))

    def as_dict(self) -> dict[str, t.Any]:
        return {"name": self.name, "channel": self.channel, **self.fields}


def occupied(channel: str) -> Event:
    return Event(CHANNEL_OCCUPIED, channel)


def vacated(channel: str) -> Event:
    return Event(CHANNEL_VACATED, channel)


def member_added(channel: str, user_id: t.Any) -> Event:
    return Event(MEMBER_ADDED, channel, {"user_id": user_id})


def member_removed(channel: str, user_id: t.Any) -> Event:
    return Event(MEMBER_REMOVED, channel, {"user_id": user_id})


def client_event(
    channel: str, event: str, data: t.Any, user_id: t.Any, connection_id: str
) -> Event:
    return Event(
        CLIENT_EVENT,
        channel,
        {
            "event": event,
            "data": data,
            "user_id": user_id,
            "connection_id": connection_id,
        },
    )
