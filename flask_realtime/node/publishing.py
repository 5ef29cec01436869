"""Server-side sends: ``broadcast``, ``send_to_user`` and ``send``.

Each event is encoded once and published to the broker, which brings it back
to every node whose clients want it, this one included: no local shortcut
lets a later message overtake an earlier one from another node. A publisher
is slowed first when the node is overloaded (see :mod:`flask_realtime.pressure`).
"""

from __future__ import annotations

import re
import typing as t

from .. import channels as _channels
from .. import metrics as _metrics
from .. import protocol
from ..connection import user_key
from . import control, topics

if t.TYPE_CHECKING:
    from . import Node

# observer(kind, target, event, data): kind is "broadcast", "user" or
# "connection"; the memory transport's recorder is one.
Observer = t.Callable[[str, t.Any, str, t.Any], None]


#: What ``Node.open`` makes: the node's id, a dot, a URL-safe token.
_CONNECTION_ID = re.compile(r"[0-9a-f]{1,32}\.[A-Za-z0-9_-]{1,64}")


def is_connection_id(value: t.Any) -> bool:
    """Whether ``value`` looks like a connection id (an ``X-Socket-ID``)."""
    return isinstance(value, str) and _CONNECTION_ID.fullmatch(value) is not None


def _check_event(event: t.Any) -> None:
    if not isinstance(event, str) or not event or len(event) > 200:
        raise ValueError(f"invalid event name: {event!r}")


class Publisher:
    """What the app sends, from a view, a task or a handler."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self.observers: list[Observer] = []

    def _notify(self, kind: str, target: t.Any, event: str, data: t.Any) -> None:
        for observer in self.observers:
            observer(kind, target, event, data)

    def wait_for_capacity(self) -> None:
        """Slow the publisher when the node is overloaded."""
        node = self._node
        node.pressure.wait_for_capacity(len(node.hub))

    def publish_channel(
        self, channel: str, envelope: bytes, exclude: str | None = None
    ) -> None:
        header = exclude.encode() if exclude else b""
        data = control.message(_metrics.stamp(header), envelope)
        self._node.broker.publish(topics.channel(channel), data)

    def broadcast(
        self, channel: str, event: str, data: t.Any, exclude: str | None = None
    ) -> None:
        """``exclude``: a connection id that does not get it (the sender's)."""
        if not isinstance(channel, str) or not _channels.is_valid_name(channel):
            raise ValueError(f"invalid channel name: {channel!r}")
        _check_event(event)
        if exclude is not None and not is_connection_id(exclude):
            raise ValueError(f"exclude must be a connection id, got {exclude!r}")
        envelope = protocol.event(channel, event, data)
        self._notify("broadcast", channel, event, data)
        self.wait_for_capacity()
        _metrics.published("channel")
        self.publish_channel(channel, envelope, exclude or None)

    def send_to_user(self, user_id: t.Any, event: str, data: t.Any) -> None:
        key = user_key(user_id)
        if key is None:
            raise ValueError("user_id must not be None")
        _check_event(event)
        envelope = protocol.event(None, event, data)
        self._notify("user", user_id, event, data)
        self.wait_for_capacity()
        _metrics.published("user")
        self._node.broker.publish(topics.user(key), control.message(b"", envelope))

    def send(self, connection_id: str, event: str, data: t.Any) -> None:
        _check_event(event)
        envelope = protocol.event(None, event, data)
        self._notify("connection", connection_id, event, data)
        connection_id = str(connection_id)
        node_id = connection_id.partition(".")[0]
        payload = control.message(connection_id.encode(), envelope)
        _metrics.published("connection")
        self._node.broker.publish(topics.node(node_id), payload)
