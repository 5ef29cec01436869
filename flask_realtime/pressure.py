"""The node's pressure gauge: when must a publisher slow down?

Sessions report to the gauge through its methods: bytes that wait on sockets
that were full, and whether their queue is past half its bound. Publishers ask
it, through :meth:`PressureGauge.wait_for_capacity`, before they publish. The
gauge never touches a socket; a session never reads the gauge.

The rule (DESIGN.md property 2): a publisher is slowed only when the node
itself is behind, or when a large share of all connections is reading but
cannot keep up. A client that stopped reading is closed by its own queue
bound (4100) and counts for nothing once it drained nothing for
:data:`STALLED_AFTER`. And no wait for clients lasts longer than
:data:`MAX_CLIENT_WAIT`, so no group of connections, however chosen, can
delay one broadcast elsewhere by more.
"""

from __future__ import annotations

import time
import typing as t

from ._runtime import gevent_active, in_event_loop

# A pressured session that drained nothing for this long does not read: it
# holds no publisher. Long, because a slow reader shows progress rarely: the
# kernel reports a full socket writable again only once half its send
# buffer (up to 4 MiB) drained, which takes a 60 KB/s reader half a minute.
# Until then a socket that stopped reading counts as slow, and can make a
# publish wait, but never longer than MAX_CLIENT_WAIT.
STALLED_AFTER = 60.0
# The longest one publish waits for clients to drain. A publisher in a loop
# is slowed to a few publishes a second while clients as a whole lag, which
# lets them catch up; a single broadcast is never held longer.
MAX_CLIENT_WAIT = 0.1
# Clients as a whole lag when more than this many sessions that read, and
# more than one in SLOW_SHARE of all connections, are pressured.
MIN_SLOW = 2
SLOW_SHARE = 50
# While more than one in BLOCKED_SHARE of all connections have a full socket,
# each publish pauses for PACE: clients as a whole fall behind, and a
# publisher far faster than they read must not fill their queues from half
# to full before the count of pressured readers can tell (at 100,000
# publishes a second that takes 50 ms). A millisecond is nothing to one
# broadcast, whoever holds those sockets.
BLOCKED_SHARE = 4
PACE = 0.001
# ... and five times that while some queue is past half its bound already.
PACE_PRESSURED = 0.005
# Without pressure a publisher still yields this often, so that reads, pings,
# timers and the broker's deliveries keep running while it publishes in a
# loop: its speed is then the speed at which the node delivers.
_YIELD_EVERY = 0.005
_POLL = 0.005


class PressuredSession(t.Protocol):
    """What the gauge needs to know of a session it may hold publishers for."""

    last_progress: float  # time.monotonic() of its last write that drained bytes


class PressureGauge:
    """Bytes waiting on full sockets, and the sessions that cannot keep up."""

    def __init__(self, backlog_limit: int) -> None:
        self.backlog_limit = backlog_limit  # REALTIME_BACKPRESSURE_BYTES
        self.backlog_bytes = 0  # queued for sockets that were full
        self.drained_bytes = 0  # written to such sockets since the start
        self.blocked_sessions = 0  # sessions whose socket is full now
        self.waits = 0  # how often a publisher had to wait
        self.paced = 0  # how often it paused for PACE
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

    def slow_readers(self, now: float) -> int:
        """Pressured sessions that still read: drained within STALLED_AFTER."""
        since = now - STALLED_AFTER
        return sum(1 for s in self._pressured if s.last_progress >= since)

    # -- what publishers ask -------------------------------------------------

    def lagging(self, connections: int, now: float, *, easing: int = 1) -> bool:
        """Whether clients as a whole cannot take what is published.

        True when more than :data:`MIN_SLOW` sessions that read, and more
        than one in :data:`SLOW_SHARE` of the node's ``connections``, are
        pressured, or when the bytes waiting on full sockets pass the
        backlog limit while some sessions still drain. ``easing`` divides
        both thresholds: a waiting publisher waits until most have drained.
        """
        threshold = max(MIN_SLOW, connections // SLOW_SHARE) // easing
        if len(self._pressured) > threshold and self.slow_readers(now) > threshold:
            return True
        return (
            self.backlog_bytes > self.backlog_limit // easing
            and self.slow_readers(now) > 0
        )

    def wait_for_capacity(self, connections: int) -> None:
        """Slow the publisher when clients as a whole cannot keep up.

        Waits while :meth:`lagging` holds, for at most
        :data:`MAX_CLIENT_WAIT`; pauses for :data:`PACE` while a large share
        of connections have a full socket; otherwise only yields now and
        then. A node
        short of CPU is slowed elsewhere: the flusher makes a publisher that
        outruns it write the backlog itself (``transports/flusher.py``).
        """
        if not gevent_active() or in_event_loop():
            return  # a broker callback runs in the loop itself: never blocked
        import gevent

        now = time.monotonic()
        if not self._pressured or not self.lagging(connections, now):
            if self.blocked_sessions > max(MIN_SLOW, connections // BLOCKED_SHARE):
                self.paced += 1
                self._last_yield = now
                gevent.sleep(PACE_PRESSURED if self._pressured else PACE)
            elif now - self._last_yield > _YIELD_EVERY:
                self._last_yield = now
                gevent.sleep(0)
            return
        self.waits += 1
        deadline = now + MAX_CLIENT_WAIT
        while now < deadline and self.lagging(connections, now, easing=2):
            gevent.sleep(_POLL)
            now = time.monotonic()
        self._last_yield = now
