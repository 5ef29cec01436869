"""The node-wide flusher: queued frames reach their sockets in one ``send`` each.

For sessions on detached sockets under gevent (:mod:`.socket_session`) and
parked long polls (:mod:`.longpoll_parked`). Broadcasts only append frames
to connection queues and mark the session here; the flush runs from an idle
watcher of gevent's event loop.
"""

from __future__ import annotations

import os
import typing as t


class Flushable(t.Protocol):
    """What the flusher runs: a socket session, or a parked long poll."""

    def flush(self) -> None: ...


class Flusher:
    """Writes what broadcasts queued, when the event loop has nothing else to do.

    With a publisher that comes and goes, that is at once; with a saturated
    loop (a burst, many publishers) messages gather and each socket gets
    several of them in one ``send``, which is where the time goes (a
    loopback ``send`` costs more than everything else a delivery does). A
    timer bounds the wait at ``MAX_DELAY``; and when more than
    ``INLINE_BYTES`` wait, the publisher flushes itself, which slows a
    publisher that outruns the CPU.
    """

    INLINE_BYTES = 512 * 1024
    MAX_DELAY = 0.002

    def __init__(self) -> None:
        import gevent

        loop = gevent.get_hub().loop
        self._idle = loop.idle()
        self._timer = loop.timer(self.MAX_DELAY)
        self._pending: list[Flushable] = []
        self._pending_bytes = 0
        self._scheduled = False

    def add(self, session: Flushable, size: int) -> None:
        """``session`` has ``size`` bytes to write; it is flushed once."""
        self._pending.append(session)
        self._pending_bytes += size
        if not self._scheduled:
            self._scheduled = True
            self._idle.start(self.flush)
            self._timer.start(self.flush)

    def grew(self, size: int) -> None:
        """A session already added has ``size`` bytes more."""
        self._pending_bytes += size
        if self._pending_bytes > self.INLINE_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._scheduled:
            self._scheduled = False
            self._idle.stop()
            self._timer.stop()
        pending = self._pending
        self._pending = []
        self._pending_bytes = 0
        for session in pending:
            session.flush()


_flushers: dict[int, Flusher] = {}


def flusher() -> Flusher:
    """This process's flusher (a forked worker gets its own)."""
    pid = os.getpid()
    found = _flushers.get(pid)
    if found is None:
        found = _flushers[pid] = Flusher()
    return found
