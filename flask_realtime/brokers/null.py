"""One process, no broker server: publishing delivers to this node at once."""

from __future__ import annotations

from .base import MessageCallback


class NullBroker:
    kind = "null"
    url = "null:"
    connected = True

    def __init__(self, on_message: MessageCallback) -> None:
        self._on_message = on_message
        self._topics: set[str] = set()

    def publish(self, topic: str, data: bytes) -> int:
        if topic not in self._topics:
            return 0
        self._on_message(topic, data)
        return 1

    def subscribe(self, *topics: str) -> None:
        self._topics.update(topics)

    def unsubscribe(self, *topics: str) -> None:
        self._topics.difference_update(topics)

    def close(self) -> None:
        self._topics.clear()
