"""The node's pressure gauge: when must a publisher slow down?

Sessions report to the gauge through its methods: bytes that wait on sockets
that were full, which sockets are full, and whether their queue is past half
its bound. Publishers ask it, through :meth:`PressureGauge.wait_for_capacity`,
before they publish; at most every :data:`REFRESH_EVERY` that call also asks
the session of each socket that is full or pressured how far behind its
client is, the kernel's send queue included (:meth:`PressuredSession.lag`,
:mod:`._kernel`). The gauge never touches a socket itself; a session never
reads the gauge.

The rule (DESIGN.md property 2): a publisher is slowed only when the node
itself is behind, or when a large share of all connections is reading but
cannot keep up. A socket *lags* (is pressured) while it is full and its
client is more than half its queue bound behind, and until that falls under
a quarter. A client that stopped reading is closed by its own queue bound
(4100) and counts for nothing once the kernel saw it take nothing for
:data:`STALLED_AFTER`. And no wait for clients lasts longer than
:data:`MAX_CLIENT_WAIT`, so no group of connections, however chosen, can
delay one broadcast elsewhere by more.
"""

from __future__ import annotations

import time
import typing as t

from . import _kernel
from ._runtime import gevent_active, in_event_loop

# A pressured session whose client took nothing for this long does not read:
# it holds no publisher. Where the kernel tells what a socket's peer
# acknowledged, a reader shows progress each time it opens its receive
# window again: on loopback (64 KiB segments) about once a second for a
# 60 KB/s reader, far more often over a real network; so 5 s tells a
# stopped reader from a slow one, and one that took nothing since its socket
# filled never counts (transports/progress.py). Elsewhere the only signs are
# the fill itself, then the full socket turning writable once half its send
# buffer (up to 4 MiB) drained, which takes such a reader half a minute:
# 60 s. Until then a socket that stopped reading counts as slow, and can
# make a publish wait, but never longer than MAX_CLIENT_WAIT.
STALLED_AFTER = 5.0 if _kernel.AVAILABLE else 60.0
# A full socket lags once its client is behind by more than this share of
# its queue bound (queue and kernel send queue together), and lags until it
# is behind by less than CAUGHT_UP.
LAGGING = 0.5
CAUGHT_UP = 0.25
# How often at most the gauge asks the kernel about every full socket, and
# at least this long per full socket between two rounds, so that the ioctls
# take a few percent of a worker whatever the number of full sockets.
REFRESH_EVERY = 0.01
REFRESH_PER_SOCKET = 0.00002
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

    last_progress: float  # time.monotonic() when its client last took bytes

    def lag(self, now: float) -> float:
        """How far behind its client is, as a share of its queue bound, the
        kernel's send queue included where the kernel says. Moves
        :attr:`last_progress` when the client took bytes since."""


class PressureGauge:
    """Bytes waiting on full sockets, and the sessions that cannot keep up."""

    def __init__(self, backlog_limit: int) -> None:
        self.backlog_limit = backlog_limit  # REALTIME_BACKPRESSURE_BYTES
        self.backlog_bytes = 0  # queued for sockets that were full
        self.drained_bytes = 0  # written to such sockets since the start
        self.waits = 0  # how often a publisher had to wait
        self.paced = 0  # how often it paused for PACE
        self._pressured: set[PressuredSession] = set()
        self._blocked: set[PressuredSession] = set()  # sockets full now
        self._last_yield = 0.0
        self._next_refresh = 0.0

    # -- what sessions report ------------------------------------------------

    def queued(self, nbytes: int) -> None:
        """``nbytes`` more wait for a socket that is full."""
        self.backlog_bytes += nbytes

    def dequeued(self, nbytes: int, *, drained: bool = False) -> None:
        """``nbytes`` left the backlog: written (``drained``) or dropped."""
        self.backlog_bytes -= nbytes
        if drained:
            self.drained_bytes += nbytes

    def blocked(self, session: PressuredSession) -> None:
        """A session's socket is full: it writes from a greenlet of its own."""
        self._blocked.add(session)

    def unblocked(self, session: PressuredSession) -> None:
        self._blocked.discard(session)

    @property
    def blocked_sessions(self) -> int:
        return len(self._blocked)

    def pressured(self, session: PressuredSession) -> None:
        """``session`` is past half its queue bound while its socket is full."""
        self._pressured.add(session)

    def relieved(self, session: PressuredSession) -> None:
        self._pressured.discard(session)

    def report(self, session: PressuredSession, share: float) -> None:
        """``session``'s client is ``share`` of its bound behind: past
        :data:`LAGGING` it is pressured, under :data:`CAUGHT_UP` no longer.
        (Only for a socket that is full, or already pressured.)"""
        if share > LAGGING:
            self._pressured.add(session)
        elif share < CAUGHT_UP:
            self._pressured.discard(session)

    def refresh(self, now: float) -> None:
        """Ask every full socket, and every pressured one, how far behind its
        client is, at most every :data:`REFRESH_EVERY` (longer with many):
        the kernel's figure, which shows a client behind and reading long
        before its queue does. A pressured socket that is no longer full (its
        writer emptied the queue into the kernel) stays pressured until its
        client is under a quarter behind."""
        if not _kernel.AVAILABLE or now < self._next_refresh:
            return
        blocked = self._blocked
        pressured = self._pressured
        watched = len(blocked) + len(pressured)
        self._next_refresh = now + max(REFRESH_EVERY, watched * REFRESH_PER_SOCKET)
        for session in blocked:
            self.report(session, session.lag(now))
        for session in [s for s in pressured if s not in blocked]:
            self.report(session, session.lag(now))

    def is_pressured(self, session: PressuredSession) -> bool:
        return session in self._pressured

    @property
    def pressured_count(self) -> int:
        return len(self._pressured)

    def slow_readers(self, now: float) -> int:
        """Pressured sessions that still read: took bytes within STALLED_AFTER."""
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
        self.refresh(now)
        if not self._pressured or not self.lagging(connections, now):
            if len(self._blocked) > max(MIN_SLOW, connections // BLOCKED_SHARE):
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
            self.refresh(now)
        self._last_yield = now
