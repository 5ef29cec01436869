"""Pieces every networked broker needs: outage buffer, backoff, replies."""

from __future__ import annotations

import itertools
import os
import random
import secrets
import typing as t
from collections import deque
from urllib.parse import urlsplit, urlunsplit

from .._runtime import event, real_lock
from .base import BrokerUnavailable


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

    def __init__(self, limit: int, kind: str, url: str) -> None:
        self.limit = limit
        self._where = f"{kind} broker at {redact(url)}"
        self._items: deque[tuple[str, bytes]] = deque()

    def add(self, topic: str, data: bytes) -> None:
        if len(self._items) >= self.limit:
            raise BrokerUnavailable(
                f"the {self._where} is unreachable and {self.limit} messages"
                " already wait for it (REALTIME_BROKER_BUFFER)"
            )
        self._items.append((topic, data))

    def __len__(self) -> int:
        return len(self._items)

    def drain(self) -> t.Iterator[tuple[str, bytes]]:
        """Oldest first; an item is removed only once the caller sent it."""
        while self._items:
            yield self._items[0]
            self._items.popleft()


class PendingReplies:
    """Requests waiting for their answer, for brokers without native replies.

    Each process gets one inbox topic; a request carries ``<inbox>#<n>`` as
    its reply address, and a reply published to the inbox with that address
    resolves the waiter. A forked child gets an inbox of its own: sharing
    the parent's would hand it the parent's replies.
    """

    def __init__(self) -> None:
        self._pid = 0
        self._inbox = ""
        self._serial = itertools.count(1)
        self._waiting: dict[str, list[t.Any]] = {}
        self._lock = real_lock()

    @property
    def inbox(self) -> str:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._inbox = "i:" + secrets.token_hex(8)
            self._waiting = {}
            self._lock = real_lock()
        return self._inbox

    def new(self) -> tuple[str, t.Any]:
        reply_to = f"{self.inbox}#{next(self._serial)}"
        slot = [event(), None]
        with self._lock:
            self._waiting[reply_to] = slot
        return reply_to, slot

    def wait(self, reply_to: str, slot: list[t.Any], timeout: float) -> bytes:
        try:
            if not slot[0].wait(timeout):
                raise TimeoutError(f"no reply within {timeout} s")
            return t.cast(bytes, slot[1])
        finally:
            self.forget(reply_to)

    def forget(self, reply_to: str) -> None:
        with self._lock:
            self._waiting.pop(reply_to, None)

    def resolve(self, reply_to: str, data: bytes) -> bool:
        with self._lock:
            slot = self._waiting.pop(reply_to, None)
        if slot is None:
            return False  # answered already, or given up on
        slot[1] = data
        slot[0].set()
        return True
