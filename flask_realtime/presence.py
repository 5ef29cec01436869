"""Who is in each presence channel, across the cluster, as one node sees it.

Each node is the authority on its own members; it tells the others through
the channel's presence topic (a join when a user's first connection on this
node enters, a leave when the last one goes, and its whole member list every
few seconds). A node keeps a replica of the other nodes' lists for every
presence channel it has local subscribers in, so that member lists and
join/leave events come from local memory. A node that stops refreshing (a
crash, SIGKILL, a partition) has its members expire from every replica.

Join and leave events are computed by each node from its own view: a user
joins when present on no node before, and leaves when present on none after.
So each subscriber hears of a user once, however many tabs or nodes the user
has. No I/O here: the node publishes and delivers what this module decides.
"""

from __future__ import annotations

import time
import typing as t

Member = dict[str, t.Any]

# A node republishes its members this often, and the others forget a node's
# members after missing that many refreshes: a dead node's users leave within
# EXPIRY plus one timer tick.
REFRESH = 3.0
EXPIRY = 10.0


def user_key_of(member: Member) -> str:
    return str(member["user_id"])


class _Remote(t.NamedTuple):
    seen: float
    members: dict[str, Member]


class ClusterPresence:
    def __init__(self) -> None:
        # channel -> user key -> (member, local connection ids)
        self._local: dict[str, dict[str, tuple[Member, set[str]]]] = {}
        # channel -> node id -> that node's members, and when last heard from
        self._remote: dict[str, dict[str, _Remote]] = {}

    # -- this node's connections ----------------------------------------------

    def join(
        self, channel: str, connection_id: str, member: Member
    ) -> tuple[bool, bool]:
        """Add a local connection of ``member['user_id']``.

        Returns (new on this node, new in the cluster).
        """
        users = self._local.setdefault(channel, {})
        key = user_key_of(member)
        entry = users.get(key)
        if entry is not None:
            entry[1].add(connection_id)
            return False, False
        was_present = self._present_remotely(channel, key)
        member = {
            "user_id": member["user_id"],
            "user_info": member.get("user_info"),
            "connected_at": member.get("connected_at", int(time.time())),
        }
        users[key] = (member, {connection_id})
        return True, not was_present

    def leave(
        self, channel: str, connection_id: str, user_key: str
    ) -> tuple[Member | None, bool]:
        """Remove a local connection.

        Returns (the member, if that was the user's last connection on this
        node; whether the user is now gone from the whole cluster).
        """
        users = self._local.get(channel)
        if not users or user_key not in users:
            return None, False
        member, connections = users[user_key]
        connections.discard(connection_id)
        if connections:
            return None, False
        del users[user_key]
        if not users:
            del self._local[channel]
        return member, not self._present_remotely(channel, user_key)

    def local_members(self, channel: str) -> list[Member]:
        return [member for member, _ in self._local.get(channel, {}).values()]

    def local_channels(self) -> list[str]:
        return list(self._local)

    # -- the other nodes ------------------------------------------------------

    def remote_join(
        self, channel: str, node_id: str, member: Member, now: float
    ) -> bool:
        """Another node has a new user here; True if new in the cluster."""
        key = user_key_of(member)
        present = self.is_member(channel, key)
        nodes = self._remote.setdefault(channel, {})
        entry = nodes.get(node_id)
        members = dict(entry.members) if entry else {}
        members[key] = member
        nodes[node_id] = _Remote(now, members)
        return not present

    def remote_leave(
        self, channel: str, node_id: str, user_key: str, now: float
    ) -> Member | None:
        """Another node lost a user; the member if gone from the cluster."""
        nodes = self._remote.get(channel, {})
        entry = nodes.get(node_id)
        if entry is None or user_key not in entry.members:
            return None
        members = dict(entry.members)
        member = members.pop(user_key)
        nodes[node_id] = _Remote(now, members)
        return None if self.is_member(channel, user_key) else member

    def remote_state(
        self, channel: str, node_id: str, members: list[Member], now: float
    ) -> tuple[list[Member], list[Member]]:
        """A node's full list for a channel; returns (joined, left) users.

        This repairs whatever a lost join or leave made diverge.
        """
        before = self._users(channel)
        nodes = self._remote.setdefault(channel, {})
        nodes[node_id] = _Remote(now, {user_key_of(m): m for m in members})
        return self._changes(channel, before)

    def load(self, channel: str, snapshot: dict[str, list[Member]], now: float) -> None:
        """Start a replica from another node's answer to a sync request."""
        nodes = self._remote.setdefault(channel, {})
        for node_id, members in snapshot.items():
            nodes[node_id] = _Remote(now, {user_key_of(m): m for m in members})

    def expire(self, now: float, own_id: str) -> list[tuple[str, Member]]:
        """Forget nodes not heard from for EXPIRY; the users that left."""
        gone: list[tuple[str, Member]] = []
        for channel, nodes in list(self._remote.items()):
            stale = [
                n for n, e in nodes.items() if now - e.seen > EXPIRY and n != own_id
            ]
            if not stale:
                continue
            before = self._users(channel)
            for node_id in stale:
                del nodes[node_id]
            _, left = self._changes(channel, before)
            gone.extend((channel, member) for member in left)
        return gone

    def forget(self, channel: str) -> None:
        """No local subscriber is left: stop keeping a replica."""
        self._remote.pop(channel, None)

    def has_replica(self, channel: str) -> bool:
        return channel in self._remote or channel in self._local

    def sizes(self) -> dict[str, int]:
        """Channels with local members, and channels with a replica."""
        return {"local": len(self._local), "replicas": len(self._remote)}

    # -- answers --------------------------------------------------------------

    def snapshot(self, channel: str, own_id: str) -> dict[str, list[Member]]:
        """Every node's members as this node knows them, its own included."""
        found = {
            n: list(e.members.values())
            for n, e in self._remote.get(channel, {}).items()
        }
        found[own_id] = self.local_members(channel)
        return found

    def members(self, channel: str) -> list[Member]:
        """One entry per user; a user on several nodes shows its earliest join."""
        return merge(self.snapshot(channel, ""))

    def is_member(self, channel: str, user_key: str) -> bool:
        return user_key in self._local.get(channel, {}) or self._present_remotely(
            channel, user_key
        )

    def _present_remotely(self, channel: str, user_key: str) -> bool:
        return any(
            user_key in e.members for e in self._remote.get(channel, {}).values()
        )

    def _users(self, channel: str) -> dict[str, Member]:
        found: dict[str, Member] = {}
        for entry in self._remote.get(channel, {}).values():
            found.update(entry.members)
        for key, (member, _) in self._local.get(channel, {}).items():
            found[key] = member
        return found

    def _changes(
        self, channel: str, before: dict[str, Member]
    ) -> tuple[list[Member], list[Member]]:
        after = self._users(channel)
        joined = [m for k, m in after.items() if k not in before]
        left = [m for k, m in before.items() if k not in after]
        return joined, left


def merge(snapshot: dict[str, list[Member]]) -> list[Member]:
    """Nodes' member lists as one list, one entry per user."""
    users: dict[str, Member] = {}
    for members in snapshot.values():
        for member in members:
            key = user_key_of(member)
            known = users.get(key)
            if known is None or member.get("connected_at", 0) < known.get(
                "connected_at", 0
            ):
                users[key] = dict(member)
    return list(users.values())
