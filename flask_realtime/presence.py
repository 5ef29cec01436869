"""Who is in each presence channel.

The interface is four calls; a node asks it on every presence subscribe,
unsubscribe and disconnect. ``LocalPresence`` keeps one process's view;
cluster-wide stores implement the same calls over a broker's storage.
"""

from __future__ import annotations

import time
import typing as t


class Presence(t.Protocol):
    def join(self, channel: str, connection_id: str, member: dict[str, t.Any]) -> bool:
        """Add one connection of ``member['user_id']``; True if the user is new."""

    def leave(
        self, channel: str, connection_id: str, user_key: str
    ) -> dict[str, t.Any] | None:
        """Remove one connection; the member if it was the user's last one."""

    def members(self, channel: str) -> list[dict[str, t.Any]]:
        """One entry per user: ``user_id``, ``user_info``, ``connected_at``."""

    def is_member(self, channel: str, user_key: str) -> bool: ...


class LocalPresence:
    def __init__(self) -> None:
        # channel -> user key -> (member, connection ids)
        self._channels: dict[str, dict[str, tuple[dict[str, t.Any], set[str]]]] = {}

    def join(self, channel: str, connection_id: str, member: dict[str, t.Any]) -> bool:
        users = self._channels.setdefault(channel, {})
        key = str(member["user_id"])
        entry = users.get(key)
        if entry is None:
            member = {
                "user_id": member["user_id"],
                "user_info": member.get("user_info"),
                "connected_at": member.get("connected_at", int(time.time())),
            }
            users[key] = (member, {connection_id})
            return True
        entry[1].add(connection_id)
        return False

    def leave(
        self, channel: str, connection_id: str, user_key: str
    ) -> dict[str, t.Any] | None:
        users = self._channels.get(channel)
        if not users or user_key not in users:
            return None
        member, conns = users[user_key]
        conns.discard(connection_id)
        if conns:
            return None
        del users[user_key]
        if not users:
            del self._channels[channel]
        return member

    def members(self, channel: str) -> list[dict[str, t.Any]]:
        return [dict(member) for member, _ in self._channels.get(channel, {}).values()]

    def is_member(self, channel: str, user_key: str) -> bool:
        return user_key in self._channels.get(channel, {})
