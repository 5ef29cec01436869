"""Numbered, bounded message boxes for connections carried over plain HTTP."""

from __future__ import annotations

import itertools
import typing as t
from collections import deque

from .. import protocol
from .._runtime import event

if t.TYPE_CHECKING:
    from ..connection import Connection, Outbound
    from ..node import Node


class Mailbox:
    """Where the node leaves an SSE or long-poll connection's messages.

    Each message gets the next sequence number, the cursor clients send back.
    The box is bounded like a WebSocket queue: overflowing it closes the
    connection (4100), and a closed box wakes whoever waits on it.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.conn: Connection | None = None
        self.items: deque[tuple[int, bytes]] = deque()
        self.size = 0
        self.seq = 0
        self.max_messages = node.settings.max_queue_messages
        self.max_bytes = node.settings.max_queue_bytes
        self.close_code: int | None = None
        self._wake = event()

    def push(self, message: Outbound) -> None:
        if self.close_code is not None:
            return
        self.seq += 1
        self.items.append((self.seq, message.json))
        self.size += len(message.json)
        if len(self.items) > self.max_messages or self.size > self.max_bytes:
            self.close(protocol.CLOSE_TOO_SLOW, "too slow")
        else:
            self._wake.set()

    def close(self, code: int, reason: str = "") -> None:
        if self.close_code is not None:
            return
        self.close_code = code
        self._wake.set()
        if self.conn is not None and not self.conn.closed:
            self.node.disconnect(self.conn)

    def ack(self, cursor: int) -> None:
        """Forget every message up to ``cursor``: the client has them."""
        items = self.items
        while items and items[0][0] <= cursor:
            self.size -= len(items.popleft()[1])

    def take(self, limit: int = 1000) -> list[tuple[int, bytes]]:
        return list(itertools.islice(self.items, limit))

    def wait(self, timeout: float) -> None:
        """Until a message arrives, the box closes, or ``timeout`` passes."""
        self._wake.clear()
        if self.items or self.close_code is not None:
            return
        self._wake.wait(timeout)

    def wake(self) -> None:
        self._wake.set()
