"""The node's pressure gauge: when must a publisher slow down?

Sessions report to the gauge through its methods: bytes that wait on sockets
that were full, and whether their queue is past half its bound. Publishers ask
it, through :meth:`PressureGauge.wait_for_capacity`, before they publish. The
gauge never touches a socket; a session never reads the gauge.
"""

from __future__ import annotations

import logging
import time
import typing as t

from ._runtime import gevent_active, in_event_loop

logger = logging.getLogger("flask_realtime")

# A pressured session that drains nothing for this long is a stuck client, not
# load: it stops holding publishers, and its own bound closes it (4100).
STUCK_AFTER = 15.0
# A publisher never waits longer than this for clients to drain.
MAX_PUBLISH_WAIT = 30.0
# Without pressure a publisher still yields this often, so that reads, pings
# and timers keep running while it publishes in a loop.
_YIELD_EVERY = 0.005


class PressuredSession(t.Protocol):
    """What the gauge needs to know of a session it holds publishers for."""

    last_progress: float  # time.monotonic() of its last write that drained bytes

    @property
    def label(self) -> str: ...  # for the log line when it is found stuck


class PressureGauge:
    """Bytes waiting on full sockets, and the sessions that cannot keep up."""

    def __init__(self, backlog_limit: int) -> None:
        self.backlog_limit = backlog_limit  # REALTIME_BACKPRESSURE_BYTES
        self.backlog_bytes = 0  # queued for sockets that were full
        self.drained_bytes = 0  # written to such sockets since the start
        self.blocked_sessions = 0  # sessions whose socket is full now
        self.waits = 0  # how often a publisher had to wait
        self._pressured: set[PressuredSession] = set()
        self._last_yield = 0.0

    # -- what sessions report ------------------------------------------------

    def queued(self, nbytes: int) -> None:
        """``nbytes`` more wait for a socket that is full."""
        self.backlog_bytes += nbytes

    def dequeued(self, nbytes: int, *, drained: bool = False) -> None:
        """``nbytes`` left the backlog: written (``drained``) or dropped."""
        self.backlog_bytes -= nbytes
        if drained:
            self.drained_bytes += nbytes

    def blocked(self) -> None:
        """A session's socket is full: it writes from a greenlet of its own."""
        self.blocked_sessions += 1

    def unblocked(self) -> None:
        self.blocked_sessions -= 1

    def pressured(self, session: PressuredSession) -> None:
        """``session`` is past half its queue bound while its socket is full."""
        self._pressured.add(session)

    def relieved(self, session: PressuredSession) -> None:
        self._pressured.discard(session)

    def is_pressured(self, session: PressuredSession) -> bool:
        return session in self._pressured

    @property
    def pressured_count(self) -> int:
        return len(self._pressured)

    # -- what publishers ask -------------------------------------------------

    def wait_for_capacity(self, connections: int) -> None:
        """Slow the publisher when the node, not one client, is the bottleneck.

        When more than two sessions, and more than one in a hundred of the
        node's ``connections``, are pressured, clients as a whole cannot take
        what is published: the publisher waits until most have drained. Past
        the backlog limit it waits too. A pressured session that drains
        nothing for :data:`STUCK_AFTER` seconds no longer counts.
        """
        if not gevent_active() or in_event_loop():
            return  # a broker callback runs in the loop itself: never blocked
        import gevent

        now = time.monotonic()
        pressured = self._pressured
        threshold = max(2, connections // 100)
        limit = self.backlog_limit
        if len(pressured) <= threshold and self.backlog_bytes <= limit:
            if now - self._last_yield > _YIELD_EVERY:
                self._last_yield = now
                gevent.sleep(0)
            return
        self.waits += 1
        deadline = now + MAX_PUBLISH_WAIT
        while now < deadline:
            for session in [
                s for s in pressured if now - s.last_progress > STUCK_AFTER
            ]:
                logger.info(
                    "flask_realtime: %s drains nothing; it no longer holds publishers",
                    session.label,
                )
                pressured.discard(session)  # re-added if it drains and fills again
            if len(pressured) <= threshold // 2 and self.backlog_bytes <= limit // 2:
                break
            gevent.sleep(0.005)
            now = time.monotonic()
        self._last_yield = now
