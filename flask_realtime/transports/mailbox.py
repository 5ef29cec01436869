"""Numbered messages for connections carried over plain HTTP (SSE, long-poll).

The messages wait in the connection's own queue (:mod:`..connection`) until
the client has them: a streamed SSE response takes them as they come, a
long poll reads from its cursor and acknowledges with the next one.
"""

from __future__ import annotations

import itertools
import threading
import typing as t

from .._runtime import event, gevent_active
from ..connection import Connection, Sink

if t.TYPE_CHECKING:
    from ..node import Node


class Mailbox(Sink):
    """The transport adapter of an SSE stream without a socket of its own, or
    of a long-poll connection.

    Each message gets the next sequence number, the cursor clients send back.
    Messages wait for the client to come for them, so the queue's bound
    always applies: overflowing it closes the connection (4100), and a
    closed box wakes whoever waits on it.

    It reports when its wire is done (:attr:`reports_written`): a stream
    when the server closes its response, a poll box when its last answer is
    written (:class:`.pollbox.PollBox`).
    """

    reports_written = True

    def __init__(self, node: Node) -> None:
        self.node = node
        self.seq = 0  # the number of the last message queued
        self.close_code: int | None = None
        self._wake = event()

    def bind(self, conn: Connection) -> None:
        super().bind(conn)
        settings = self.node.settings
        conn.limit(settings.max_queue_messages, settings.max_queue_bytes)
        conn.backed_up = True
        if not gevent_active():
            # Pushes and polls come from threads of their own (flask run).
            conn.lock = threading.RLock()

    # the seam ------------------------------------------------------------------

    def write(self, nbytes: int) -> None:
        self.seq += 1
        self._wake.set()

    def close(self, code: int, reason: str) -> None:
        self.close_code = code
        self._wake.set()
        if not self.conn.closed:
            self.node.disconnect(self.conn)

    def tick(self, now: float, heartbeat: float) -> None:
        """Nothing: a stream sends its own keepalives, a poll box expires."""

    # what the endpoints do --------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Messages wait for the client."""
        return bool(self.conn.queue)

    def ack(self, cursor: int) -> None:
        """Forget every message up to ``cursor``: the client has them."""
        conn = self.conn
        with conn.locked():
            queue = conn.queue
            first = self.seq - len(queue) + 1
            while queue and first <= cursor:
                conn.queued_bytes -= len(queue.popleft())
                first += 1

    def take(self, limit: int = 1000) -> list[tuple[int, bytes]]:
        """Up to ``limit`` waiting messages with their numbers, oldest first."""
        conn = self.conn
        with conn.locked():
            queue = conn.queue
            first = self.seq - len(queue) + 1
            return list(zip(itertools.count(first), itertools.islice(queue, limit)))

    def wait(self, timeout: float) -> None:
        """Until a message arrives, the box closes, or ``timeout`` passes."""
        self._wake.clear()
        if self.conn.queue or self.close_code is not None:
            return
        self._wake.wait(timeout)

    def wake(self) -> None:
        self._wake.set()
