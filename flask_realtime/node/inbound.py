"""What the broker brings: each message routed by its topic's kind.

A channel or user message goes to the hub's local subscribers (its tag
stripped, wrapped once in an :class:`Outbound` for all of them), a node
message to the one connection it names, presence news to the presence sync,
a request to whoever answers it. The interest's questions (does a local
subscriber still want this topic?) are answered here too, by the same kinds.
"""

from __future__ import annotations

import typing as t

from .. import metrics as _metrics
from ..connection import Outbound
from . import commands, control, topics

if t.TYPE_CHECKING:
    from . import Node


class Inbound:
    """The node's side of the broker's callbacks."""

    def __init__(self, node: Node) -> None:
        self._node = node
        # What the broker brought here, by topic kind: with interest-based
        # routing, a node gets no channel traffic none of its clients wants.
        self.received = {"channel": 0, "user": 0, "node": 0, "presence": 0}

    def plain(self, topic: str, data: bytes) -> None:
        """Deliver a plain message to the local clients that want it."""
        node = self._node
        kind, name = topics.split(topic)
        received = self.received
        if kind == topics.PRESENCE:
            received["presence"] += 1
            node.presence_sync.on_message(name, control.split_message(data)[1])
            return
        if kind == topics.WEBHOOKS:
            if node.webhooks is not None:
                node.webhooks.on_message(control.split_message(data)[1])
            return
        header, envelope = control.split_message(data)
        if header[:1] == commands.HEADER and kind in (topics.USER, topics.NODE):
            received["node" if kind == topics.NODE else "user"] += 1
            node.commands.received(kind, name, envelope)  # realtime.subscribe() &c.
            return
        message = Outbound(envelope)
        if kind == topics.CHANNEL:
            received["channel"] += 1
            header, sent_at = _metrics.unstamp(header)
            # A kept channel's events are followed by offset (.continuity).
            node.continuity.deliver(name, message, header.decode() or None)
            _metrics.broadcast_done(sent_at)
        elif kind == topics.USER:
            received["user"] += 1
            node.hub.deliver_user(name, message)
        elif kind == topics.NODE:
            received["node"] += 1
            node.hub.deliver_connection(header.decode(), message)

    def request(self, topic: str, body: bytes, reply_to: str) -> None:
        """A request from another node: presence replicas, forwarded
        requests, admin reports."""
        kind, name = topics.split(topic)
        if kind == topics.PRESENCE:
            self.received["presence"] += 1
            self._node.presence_sync.answer(name, body, reply_to)
        elif kind == topics.NODE:
            self.received["node"] += 1
            self._node.forwarding.on_request(body, reply_to)
        elif kind == topics.ADMIN:
            self._node.admin.answer(body, reply_to)

    def wanted(self, topic: str) -> bool:
        """Does a local subscriber still want ``topic`` (see .interest)?"""
        hub = self._node.hub
        kind, name = topics.split(topic)
        if kind in (topics.CHANNEL, topics.PRESENCE):
            return hub.subscriber_count(name) > 0
        if kind == topics.USER:
            return hub.has_user(name)
        return True  # the node topic: for the process's life

    def dropped(self, topic: str) -> None:
        """``topic``'s broker subscription is gone: a presence replica stops,
        a kept channel is no longer followed."""
        kind, name = topics.split(topic)
        if kind == topics.PRESENCE:
            self._node.presence_sync.dropped(name)
        elif kind == topics.CHANNEL:
            self._node.continuity.forget(name)
