"""Presence across the cluster: replicas, announcements, refresh and expiry.

:mod:`flask_realtime.presence` decides who is present (no I/O); this module
carries its decisions between nodes over each presence channel's topic and
delivers join and leave events to the local subscribers. A node announces a
join when a user's first connection here enters, a leave when the last one
goes, and its whole member list every ``presence.REFRESH`` seconds; a node
that starts following a channel first asks another for its replica (a
request, see :mod:`.control`).
"""

from __future__ import annotations

import json
import logging
import time
import typing as t

from .. import protocol
from ..brokers import BrokerUnavailable
from ..connection import Connection, Outbound
from ..presence import ClusterPresence, Member, merge
from . import control, topics

if t.TYPE_CHECKING:
    from . import Node

logger = logging.getLogger("flask_realtime")

# How long a new local subscriber's sync waits for another node's replica:
# well under a client's timeout for its ``subscribed`` reply (5 s in our
# clients), which waits for it. What a late or lost answer would have said
# comes with the other nodes' next refresh, as ``presence.join`` events.
SYNC_TIMEOUT = 1.5
# get_presence_data() in a process without a replica waits for a node that
# has one up to REALTIME_PRESENCE_QUERY_TIMEOUT (2 s by default). Whichever
# node answers first answers for the cluster; when none does in time (the
# only ones with a replica froze, or were cut off with their connections
# open), nobody that answers knows of a member: an empty list, and a warning
# in the log.

_SYNC = b'{"op":"sync"}'
_MEMBERS = b'{"op":"members"}'


class PresenceSync:
    """One node's presence: its members, its replicas, and the wire."""

    def __init__(self, node: Node, presence: ClusterPresence) -> None:
        self._node = node
        self.presence = presence

    # -- local subscribers -------------------------------------------------------

    def start_replica(self, channel: str) -> None:
        """Learn the channel's members on other nodes before the first local
        subscriber gets its member list (then its topic follows changes).

        Runs before this node subscribes to the channel's presence topic, so
        its own replica does not answer; a change that slips between the two
        is repaired by the next refresh.
        """
        snapshot: dict[str, list[Member]] = {}
        try:
            answer = self._node.control.request(
                topics.presence(channel), _SYNC, SYNC_TIMEOUT
            )
            if answer is not None:
                snapshot = json.loads(answer)
        except (TimeoutError, BrokerUnavailable, ValueError) as exc:
            logger.warning(
                "flask_realtime: no presence sync for %r (%s); the next refresh"
                " fills it in",
                channel,
                exc,
            )
        snapshot.pop(self._node.id, None)
        self.presence.load(channel, snapshot, time.monotonic())

    def joined(self, conn: Connection, channel: str, user_info: t.Any) -> None:
        """``conn`` entered the presence channel (it is in the hub already)."""
        member = {
            "user_id": conn.user_id,
            "user_info": user_info,
            "connected_at": conn.connected_at,
        }
        new_here, new_in_cluster = self.presence.join(channel, conn.id, member)
        if new_here:
            self._tell_nodes(channel, {"op": "join", "member": member})
            if self._node.webhooks is not None:
                key = t.cast(str, conn.user_key)
                self._node.webhooks.member_changed(channel, key, conn.user_id, True)
        if new_in_cluster:
            self._deliver_join(channel, member, exclude=conn.id)

    def left(self, conn: Connection, channel: str, last_here: bool) -> None:
        """``conn`` left the presence channel (unsubscribed or gone)."""
        if conn.user_key is not None:
            member, gone = self.presence.leave(channel, conn.id, conn.user_key)
            if member is not None:
                self._tell_nodes(channel, {"op": "leave", "user": conn.user_key})
                if self._node.webhooks is not None:
                    self._node.webhooks.member_changed(
                        channel, conn.user_key, member["user_id"], False
                    )
            if gone:
                self._deliver_leave(channel, t.cast(dict, member))
        if last_here and self._node.clustered:
            self._node.interest.release(topics.presence(channel))

    def dropped(self, channel: str) -> None:
        """The channel's presence topic is unsubscribed: stop the replica."""
        self.presence.forget(channel)

    def refresh(self, now: float) -> None:
        """From the node's timer: announce our members, expire silent nodes."""
        for channel in self.presence.local_channels():
            self._tell_nodes(
                channel,
                {"op": "state", "members": self.presence.local_members(channel)},
            )
        for channel, member in self.presence.expire(now, self._node.id):
            self._deliver_leave(channel, member)

    def members(self, channel: str) -> list[Member]:
        """Cluster-wide: from this node's replica, else from a node that has one."""
        if not self._node.clustered or self.presence.has_replica(channel):
            return self.presence.members(channel)
        try:
            answer = self._node.control.request(
                topics.presence(channel),
                _MEMBERS,
                self._node.settings.presence_query_timeout,
            )
        except TimeoutError as exc:
            # Only nodes that vanished hold the channel (frozen, or cut off
            # with their connections open): their members expire within
            # about 13 s anyway, and no node that answers knows of others.
            logger.warning(
                "flask_realtime: no node answered for the members of %r (%s);"
                " nobody present",
                channel,
                exc,
            )
            return []
        if answer is None:
            return []  # no node has a subscriber, so nobody is present
        return merge(json.loads(answer))

    # -- other nodes ------------------------------------------------------------

    def _tell_nodes(self, channel: str, message: dict[str, t.Any]) -> None:
        if not self._node.clustered:
            return
        message["node"] = self._node.id
        data = control.message(b"", protocol.encode(message))
        try:
            self._node.broker.publish(topics.presence(channel), data)
        except BrokerUnavailable:
            # The refresh after the broker's return carries it.
            logger.warning("flask_realtime: presence change of %r not sent", channel)

    def answer(self, channel: str, body: bytes, reply_to: str) -> None:
        """Another node asks for this channel's members (sync or query)."""
        try:
            if json.loads(body).get("op") not in ("sync", "members"):
                return
        except (ValueError, AttributeError):
            logger.warning("flask_realtime: malformed presence query on %r", channel)
            return
        snapshot = self.presence.snapshot(channel, self._node.id)
        try:
            self._node.control.reply(reply_to, protocol.encode(snapshot))
        except BrokerUnavailable:
            logger.warning("flask_realtime: presence query on %r not answered", channel)

    def on_message(self, channel: str, body: bytes) -> None:
        """Another node's join, leave or state announcement."""
        try:
            message = json.loads(body)
            node_id = message["node"]
            if node_id == self._node.id:
                return  # our own announcement, back from the broker
            if not self.presence.has_replica(channel):
                return  # arrived after the replica was dropped: keep nothing
            op = message["op"]
            now = time.monotonic()
            if op == "join":
                member = message["member"]
                if self.presence.remote_join(channel, node_id, member, now):
                    self._deliver_join(channel, member)
            elif op == "leave":
                gone = self.presence.remote_leave(
                    channel, node_id, message["user"], now
                )
                if gone is not None:
                    self._deliver_leave(channel, gone)
            elif op == "state":
                joined, left = self.presence.remote_state(
                    channel, node_id, message["members"], now
                )
                for member in joined:
                    self._deliver_join(channel, member)
                for member in left:
                    self._deliver_leave(channel, member)
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("flask_realtime: malformed presence message on %r", channel)

    # -- local delivery ---------------------------------------------------------

    def _deliver_join(
        self, channel: str, member: Member, exclude: str | None = None
    ) -> None:
        data = {"user_id": member["user_id"], "user_info": member.get("user_info")}
        envelope = protocol.event(channel, "presence.join", data)
        self._node.hub.deliver_channel(channel, Outbound(envelope), exclude)

    def _deliver_leave(self, channel: str, member: Member) -> None:
        # The id as the join announced it: 5 and "5" are one user.
        data = {"user_id": member["user_id"]}
        envelope = protocol.event(channel, "presence.leave", data)
        self._node.hub.deliver_channel(channel, Outbound(envelope))
