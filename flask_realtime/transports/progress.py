"""How far behind a socket session's client is, and whether it still reads.

Mixed into :class:`.socket_session.SocketSession`, whose writes count
:attr:`Progress.sent`. The pressure gauge calls :meth:`Progress.lag` for
sockets that are full, every few milliseconds at most, and the writer
greenlet once per batch it writes: never per message.
"""

from __future__ import annotations

import typing as t

from .. import _kernel

if t.TYPE_CHECKING:
    from ..connection import Connection


class Progress:
    """The kernel's side of a session: bytes handed to it, bytes acknowledged."""

    conn: Connection
    raw: t.Any  # the session's non-blocking socket, once attached
    head: bytes  # the partly written rest of a write
    last_progress: float
    sent = 0  # bytes the kernel accepted from us, since the start
    acked = 0  # of those, what the client had acknowledged at the last look

    def filled(self, now: float) -> None:
        """The socket just filled. What its client acknowledged until now is
        no sign that it reads: only what it takes from here on is. Without
        the kernel's figure the fill itself counts, the only sign there is."""
        unsent = None if self.raw is None else _kernel.unsent(self.raw.fileno())
        if unsent is None:
            self.last_progress = now
        else:
            self.acked = self.sent - unsent

    def lag(self, now: float) -> float:
        """What the client is behind (queue, unwritten head, and the bytes
        the kernel holds that it did not acknowledge, where the kernel says),
        as a share of the queue's bound. A client that acknowledged bytes
        since the last look made progress at ``now``."""
        raw = self.raw
        unsent = None if raw is None else _kernel.unsent(raw.fileno())
        if unsent is None:
            unsent = 0
        else:
            acked = self.sent - unsent
            if acked > self.acked:
                self.acked = acked
                self.last_progress = now
        conn = self.conn
        return max(
            len(conn.queue) / conn.max_messages,
            (conn.queued_bytes + len(self.head) + unsent) / conn.max_bytes,
        )
