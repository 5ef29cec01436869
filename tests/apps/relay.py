"""The basic test app plus a naive relay: ``tests/test_client_events.py``.

On ``relay.*`` channels, client events named like the server's own messages
are handled by rebroadcasting them under the same name, as an app that
trusts its clients might. The server must refuse those names before any
handler runs, or a client could pass for the server (a fake
``presence.join``, a fake ``error``).
"""

from __future__ import annotations

import typing as t

from tests.apps.basic import app as app
from tests.apps.basic import broadcast, realtime

SERVER_NAMES = (
    "presence.join",
    "presence.leave",
    "presence.anything",
    "connected",
    "subscribed",
    "unsubscribed",
    "event",
    "error",
    "pong",
    "ack",
)


def _relay_as(name: str) -> t.Callable[..., None]:
    def relay(connection: t.Any, channel: str, data: t.Any) -> None:
        broadcast(channel, name, data)

    return relay


for _name in SERVER_NAMES:
    realtime.on(_name, channel="relay.*")(_relay_as(_name))
