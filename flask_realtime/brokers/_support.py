"""Leaf helpers of the broker base: its errors, URL redaction, backoff, the
outage buffer."""

from __future__ import annotations

import random
import typing as t
from collections import deque
from urllib.parse import urlsplit, urlunsplit


class BrokerUnavailable(RuntimeError):
    """The broker is unreachable and the outage buffer is full (or it is closed).

    Raised by ``publish`` (and so by ``broadcast``) instead of waiting or
    dropping messages silently; ``REALTIME_BROKER_BUFFER`` sets the buffer.
    """


class LinkLost(ConnectionError):
    """A backend's connection failed after the first ``accepted`` of a batch."""

    def __init__(self, message: str, accepted: int = 0) -> None:
        super().__init__(message)
        self.accepted = accepted


def redact(url: str) -> str:
    """The URL with its password hidden, for log lines and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class Backoff:
    """Reconnect delays: doubling from ``first`` up to ``limit``, with jitter."""

    def __init__(self, first: float = 0.1, limit: float = 5.0) -> None:
        self.first = first
        self.limit = limit
        self.attempts = 0

    def next_delay(self) -> float:
        delay = min(self.limit, self.first * (2**self.attempts))
        self.attempts += 1
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempts = 0


class OutageBuffer:
    """Messages published while the broker is unreachable, sent on reconnect."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[tuple[str, bytes]] = deque()

    def add(self, topic: str, data: bytes) -> bool:
        """Keep one message; False when the buffer is full."""
        if len(self._items) >= self.limit:
            return False
        self._items.append((topic, data))
        return True

    def put_back(self, items: t.Sequence[tuple[str, bytes]]) -> None:
        """Return unsent items to the front, oldest first (the bound may be passed)."""
        self._items.extendleft(reversed(items))

    def take(self, limit: int) -> list[tuple[str, bytes]]:
        """Up to ``limit`` of the oldest items, removed."""
        count = min(limit, len(self._items))
        return [self._items.popleft() for _ in range(count)]

    def __len__(self) -> int:
        return len(self._items)
