"""The node's local registry: connections by id, by user and by channel.

Only the hub mutates these maps, under one lock it never yields inside.
Delivery iterates over immutable snapshots, so a connection closing in the
middle of a broadcast (queue overflow) cannot upset the loop. A channel's
subscriber is delivered to through its *target*: the connection itself, or
while its subscribe recovers history, a stand-in that holds the channel's
live events until the replay is out (``node/recovery.py``); delivery pays
nothing for it.
"""

from __future__ import annotations

import typing as t

from . import metrics as _metrics
from ._runtime import real_lock
from .connection import Connection, Outbound


class Target(t.Protocol):
    """What a channel's delivery pushes to: a connection, or its stand-in."""

    id: str

    def push(self, message: Outbound) -> None: ...


class Hub:
    def __init__(self) -> None:
        self._lock = real_lock()
        self.connections: dict[str, Connection] = {}
        self._by_user: dict[str, set[Connection]] = {}
        self._by_channel: dict[str, dict[Connection, Target]] = {}
        self._snapshots: dict[str, tuple[Target, ...]] = {}

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, conn: Connection) -> bool:
        """Register a connection; True if it is its user's first one here."""
        with self._lock:
            self.connections[conn.id] = conn
            if conn.user_key is None:
                return False
            conns = self._by_user.setdefault(conn.user_key, set())
            conns.add(conn)
            return len(conns) == 1

    def remove(self, conn: Connection) -> tuple[list[str], bool]:
        """Forget a connection; returns the channels it left and whether it was
        its user's last connection here."""
        with self._lock:
            if self.connections.pop(conn.id, None) is None:
                return [], False
            left = list(conn.channels)
            for name in left:
                self._unsubscribe_locked(conn, name)
            last_of_user = False
            if conn.user_key is not None:
                conns = self._by_user.get(conn.user_key)
                if conns is not None:
                    conns.discard(conn)
                    if not conns:
                        del self._by_user[conn.user_key]
                        last_of_user = True
            return left, last_of_user

    def subscribe(
        self, conn: Connection, channel: str, target: Target | None = None
    ) -> bool:
        """True if this is the channel's first local subscriber.

        ``target``: what the channel's messages go to instead of ``conn``,
        until :meth:`settle`.

        A closed connection (closed while its subscribe waited for the
        broker) is not subscribed: it may be removed already, and nothing
        would remove it again.
        """
        with self._lock:
            if conn.closed:
                return False
            subs = self._by_channel.get(channel)
            first = subs is None
            if first:
                subs = self._by_channel[channel] = {}
            if conn not in subs:  # (a subscribe racing another keeps the first)
                subs[conn] = conn if target is None else target
                _metrics.subscriptions(1)
            conn.channels.add(channel)
            self._snapshots.pop(channel, None)
            return first

    def target(self, conn: Connection, channel: str) -> Target | None:
        """What ``conn``'s messages of ``channel`` go to (None: not subscribed)."""
        subs = self._by_channel.get(channel)
        return None if subs is None else subs.get(conn)

    def settle(self, conn: Connection, channel: str) -> None:
        """The channel's messages go to ``conn`` itself from now on."""
        with self._lock:
            subs = self._by_channel.get(channel)
            if subs is not None and conn in subs:
                subs[conn] = conn
                self._snapshots.pop(channel, None)

    def unsubscribe(self, conn: Connection, channel: str) -> bool:
        """True if the channel has no local subscriber left."""
        with self._lock:
            return self._unsubscribe_locked(conn, channel)

    def _unsubscribe_locked(self, conn: Connection, channel: str) -> bool:
        conn.channels.discard(channel)
        subs = self._by_channel.get(channel)
        if subs is None:
            return False
        if subs.pop(conn, None) is not None:
            _metrics.subscriptions(-1)
        self._snapshots.pop(channel, None)
        if subs:
            return False
        del self._by_channel[channel]
        return True

    def subscribers(self, channel: str) -> tuple[Target, ...]:
        snapshot = self._snapshots.get(channel)
        if snapshot is None:
            with self._lock:
                subs = self._by_channel.get(channel)
                if subs is None:
                    # Not cached: a channel nobody here is in keeps no entry
                    # (a presence leave is delivered after the last one left).
                    return ()
                snapshot = self._snapshots[channel] = tuple(subs.values())
        return snapshot

    def subscriber_count(self, channel: str) -> int:
        return len(self._by_channel.get(channel, ()))

    def channels(self) -> list[str]:
        return list(self._by_channel)

    def user_connections(self, key: str) -> tuple[Connection, ...]:
        with self._lock:
            return tuple(self._by_user.get(key, ()))

    def has_user(self, key: str) -> bool:
        return key in self._by_user

    def users(self) -> list[str]:
        return list(self._by_user)

    def deliver_channel(
        self, channel: str, message: Outbound, exclude: str | None = None
    ) -> int:
        count = 0
        for conn in self.subscribers(channel):
            if conn.id != exclude:
                conn.push(message)
                count += 1
        _metrics.sent("channel", count)  # once per broadcast, not per recipient
        return count

    def deliver_user(self, key: str, message: Outbound) -> int:
        conns = self.user_connections(key)
        for conn in conns:
            conn.push(message)
        _metrics.sent("user", len(conns))
        return len(conns)

    def deliver_connection(self, connection_id: str, message: Outbound) -> int:
        conn = self.connections.get(connection_id)
        if conn is None:
            return 0
        conn.push(message)
        _metrics.sent("connection")
        return 1

    def all(self) -> list[Connection]:
        return list(self.connections.values())

    def sizes(self) -> dict[str, int]:
        """How many entries each map holds (all 0 once every client left)."""
        return {
            "connections": len(self.connections),
            "users": len(self._by_user),
            "channels": len(self._by_channel),
            "snapshots": len(self._snapshots),
        }
