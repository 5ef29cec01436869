"""One process, no broker server: publishing delivers to this node at once."""

from __future__ import annotations

from ._support import PendingReplies
from .base import MessageCallback


class NullBroker:
    kind = "null"
    url = "null://"
    connected = True

    def __init__(self, on_message: MessageCallback) -> None:
        self._on_message = on_message
        self._topics: set[str] = set()
        self._replies = PendingReplies()

    def publish(self, topic: str, data: bytes) -> int:
        if topic in self._topics:
            self._on_message(topic, data, None)
            return 1
        return 0

    def request(self, topic: str, data: bytes, timeout: float) -> bytes | None:
        if topic not in self._topics:
            return None
        reply_to, slot = self._replies.new()
        self._on_message(topic, data, reply_to)
        return self._replies.wait(reply_to, slot, timeout)

    def reply(self, reply_to: str, data: bytes) -> None:
        self._replies.resolve(reply_to, data)

    def subscribe(self, *topics: str) -> None:
        self._topics.update(topics)

    def unsubscribe(self, *topics: str) -> None:
        self._topics.difference_update(topics)

    def close(self) -> None:
        self._topics.clear()
