"""A long-poll connection's mailbox, and the answer a poll gets from it."""

from __future__ import annotations

import time
import typing as t

from .. import protocol
from .http import Answer
from .mailbox import Mailbox

if t.TYPE_CHECKING:
    from ..node import Node
    from .longpoll_parked import ParkedPoll

CLOSED = "the connection was closed; open a new one"


class PollBox(Mailbox):
    """A mailbox that remembers its polls, for supersession and expiry."""

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self.poll_serial = 0
        self.polling = 0
        self.last_poll = time.monotonic()
        self.expiry = node.settings.longpoll_expiry
        #: The poll waiting on its own socket, if any (at most one: a newer
        #: poll answers the older one first).
        self.parked: ParkedPoll | None = None
        #: Polls begun whose answer is not yet written (or dropped): once
        #: the box is closed and none is left, its wire is done.
        self.answering = 0

    def write(self, nbytes: int) -> None:
        super().write(nbytes)
        parked = self.parked
        if parked is not None:
            parked.ready(nbytes)

    def close(self, code: int, reason: str) -> None:
        parked = self.parked
        super().close(code, reason)
        if parked is not None:
            # At once, not at the next idle moment: a closing worker may not
            # have one. Messages still waiting go first, as in a waiting poll.
            parked.flush()
        with self.conn.locked():
            done = not self.answering
        if done:
            self.node.written(self.conn)

    def tick(self, now: float, heartbeat: float) -> None:
        self.expire_if_stale(now)

    def expire_if_stale(self, now: float) -> bool:
        """Expire a connection nobody polled for ``expiry`` seconds.

        Checked by the timer and on each use, so that a request arriving
        between two ticks never finds a connection that should be gone.
        """
        if not self.polling and now - self.last_poll > self.expiry:
            self.conn.close(protocol.CLOSE_HEARTBEAT_TIMEOUT, "not polled")
        return self.close_code is not None

    def begin_answer(self) -> bool:
        """Count a poll that will be answered; False once the box is closed
        (then its 404 carries nothing the shutdown should wait for)."""
        with self.conn.locked():
            if self.close_code is not None:
                return False
            self.answering += 1
            return True

    def answered(self) -> None:
        """A poll's answer is written, or its client is gone."""
        with self.conn.locked():
            self.answering -= 1
            done = not self.answering and self.close_code is not None
        if done:
            self.node.written(self.conn)

    def end_poll(self) -> None:
        """A poll ended: the client was here until now."""
        self.polling -= 1
        self.last_poll = time.monotonic()


def answer(items: list[tuple[int, bytes]], cursor: int, **extra: t.Any) -> Answer:
    """A poll's 200: the messages (JSON already, joined, not decoded again)."""
    body = b'{"messages":[' + b",".join(data for _, data in items) + b"]"
    body += b',"cursor":%d' % cursor
    for key, value in extra.items():
        body += b',"%s":%s' % (key.encode(), protocol.encode(value))
    return 200, body + b"}"
