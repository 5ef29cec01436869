"""Every broker topic name the node uses, and nowhere else.

A node subscribes only to what its own clients need (see :mod:`.interest`):
a channel's topic while it has local subscribers, a user's while that user
has a local connection, its own node topic once it hosts a connection, a
presence channel's while it keeps a replica of its members, and its inbox
while it waits for replies (see :mod:`.control`). From its first connection
or readiness probe on, a node also subscribes to the one topic all nodes
share, where the admin commands ask every node at once (see :mod:`.admin`).
"""

from __future__ import annotations

CHANNEL = "c:"  # broadcasts to a channel
USER = "u:"  # send_to_user: every connection of a user
NODE = "n:"  # send(connection_id), and requests forwarded to the owning node
PRESENCE = "p:"  # presence announcements and queries of a presence channel
INBOX = "i:"  # replies to this process's requests
ADMIN = "a:"  # admin requests every node answers (flask realtime stats, ...)
WEBHOOKS = "w:"  # every node's local facts for the webhooks (webhooks/cluster.py)

_PREFIX_LENGTH = 2


def channel(name: str) -> str:
    return CHANNEL + name


def user(key: str) -> str:
    return USER + key


def node(node_id: str) -> str:
    return NODE + node_id


def presence(name: str) -> str:
    return PRESENCE + name


def inbox(token: str) -> str:
    return INBOX + token


def all_nodes() -> str:
    return ADMIN + "nodes"


def split(topic: str) -> tuple[str, str]:
    """``(kind, name)``: ``"c:news"`` gives ``("c:", "news")``."""
    return topic[:_PREFIX_LENGTH], topic[_PREFIX_LENGTH:]
