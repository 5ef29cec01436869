from __future__ import annotations

import typing as t

MessageCallback = t.Callable[[str, bytes], None]


class Broker(t.Protocol):
    def publish(self, topic: str, data: bytes) -> None:
        """Hand ``data`` to every node subscribed to ``topic``; returns once
        the broker has accepted it."""

    def subscribe(self, *topics: str) -> None: ...

    def unsubscribe(self, *topics: str) -> None: ...

    def close(self) -> None: ...
