"""Transport-agnostic connections and the bytes they are sent."""

from __future__ import annotations

import time
import typing as t

from ._ws_frames import text_frame


def user_key(user_id: t.Any) -> str | None:
    """User ids compare by value: ``5`` and ``"5"`` are one user."""
    return None if user_id is None else str(user_id)


class Outbound:
    """One server message, encoded once and framed once per transport kind.

    A broadcast to a thousand WebSocket subscribers builds its frame the first
    time a WebSocket sink asks for it and hands the same bytes to all of them.
    """

    __slots__ = ("json", "_ws_frame")

    def __init__(self, json: bytes) -> None:
        self.json = json
        self._ws_frame: bytes | None = None

    @property
    def ws_frame(self) -> bytes:
        frame = self._ws_frame
        if frame is None:
            frame = self._ws_frame = text_frame(self.json)
        return frame


class Sink(t.Protocol):
    """What a transport gives the node: somewhere to put bytes, a way to close."""

    def push(self, message: Outbound) -> None: ...

    def close(self, code: int, reason: str = "") -> None: ...


class Connection:
    """One client connection, whatever carries it.

    Authorizers and event handlers receive it: ``id``, ``user_id``,
    ``user_info`` and ``transport`` are the public part.
    """

    __slots__ = (
        "id",
        "user_id",
        "user_info",
        "user_key",
        "transport",
        "channels",
        "connected_at",
        "last_seen",
        "token",
        "sink",
        "rate",
        "closed",
        "__weakref__",
    )

    def __init__(
        self,
        connection_id: str,
        transport: str,
        sink: Sink,
        user_id: t.Any = None,
        user_info: t.Any = None,
    ) -> None:
        self.id = connection_id
        self.transport = transport
        self.sink = sink
        self.user_id = user_id
        self.user_info = user_info
        self.user_key = user_key(user_id)
        self.channels: set[str] = set()
        self.connected_at = int(time.time())
        self.last_seen = time.monotonic()
        self.token: str | None = None
        self.rate: t.Any = None
        self.closed = False

    def push(self, message: Outbound) -> None:
        self.sink.push(message)

    def push_json(self, json: bytes) -> None:
        self.sink.push(Outbound(json))

    def close(self, code: int, reason: str = "") -> None:
        """Close with ``code``: what is queued goes first, then the close."""
        self.sink.close(code, reason)

    def tick(self, now: float, heartbeat: float) -> None:
        """Heartbeats and expiry, from the node's one timer."""
        tick = getattr(self.sink, "tick", None)
        if tick is not None:
            tick(self, now, heartbeat)

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.user_id!r} via {self.transport}>"
