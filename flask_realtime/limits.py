"""Who may open a connection, checked before the upgrade; and the rate limits
each connection gets.

Every transport calls :func:`refuse` with the request's WSGI environ before
it answers a WebSocket upgrade, starts an SSE stream or opens a long-poll
connection. It refuses, as ``(status, message)`` for a JSON answer:

* 503 when the deployment cannot work (:mod:`.deployment`);
* 503 when the node holds ``REALTIME_MAX_CONNECTIONS`` connections;
* 429 when the client's address holds ``REALTIME_MAX_CONNECTIONS_PER_IP``.

The address is ``REMOTE_ADDR``, which is ``request.remote_addr``: the
proxy's own address unless the app trusts it with ProxyFix, which rewrites
it from ``X-Forwarded-For``. Counts cover every transport, and a connection
counts from ``Node.open`` until ``Node.disconnect``. A handshake that passed
the check counts for its address until it opens, for at most
:data:`PENDING_FOR` seconds, so that a burst of concurrent handshakes (whose
``authenticate`` may wait on I/O in between) cannot slip past the limit
together. The address reaches ``Node.open`` through a context variable set
by :func:`refuse`: the check and the open run in one greenlet (or thread),
with no server API between them to carry it.
"""

from __future__ import annotations

import contextvars
import sys
import time
import typing as t
from collections import deque

from . import deployment
from . import metrics as _metrics
from .ratelimit import RateLimiter, SharedLimiter, UserBuckets

if t.TYPE_CHECKING:
    from .config import Settings
    from .connection import Connection
    from .node import Node

#: Seconds a handshake that passed the check counts for its address before
#: it opens (a refused or abandoned one stops counting then).
PENDING_FOR = 10.0

# The address of the connection this greenlet (or thread) is opening.
_opening: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "flask_realtime_opening", default=None
)


class Admission:
    """A node's connection counts, by address, and its users' rate buckets."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.open = 0
        self.by_address: dict[str, int] = {}
        # connection id -> (address, user key): what to give back at the end.
        self._held: dict[str, tuple[str | None, str | None]] = {}
        # address -> when its handshakes in flight passed the check
        self._pending: dict[str, deque[float]] = {}
        self._swept = time.monotonic()
        self.users = UserBuckets(settings.user_messages_per_minute)

    def _in_flight(self, address: str, now: float) -> int:
        """Handshakes of ``address`` that passed the check and have not opened."""
        if now - self._swept > PENDING_FOR:  # forget the abandoned ones
            self._swept = now
            for other in list(self._pending):
                if other != address:
                    self._in_flight_of(other, now)
        return self._in_flight_of(address, now)

    def _in_flight_of(self, address: str, now: float) -> int:
        times = self._pending.get(address)
        if times is None:
            return 0
        while times and now - times[0] > PENDING_FOR:
            times.popleft()
        if not times:
            del self._pending[address]
        return len(times)

    def refusal(self, environ: t.Mapping[str, t.Any]) -> tuple[int, str] | None:
        settings = self.settings
        problem = deployment.request_problem(settings, environ)
        if problem is not None:
            return 503, problem
        limit = settings.max_connections
        if limit is not None and self.open >= limit:
            return 503, f"this server is full ({limit} connections); try another"
        address = environ.get("REMOTE_ADDR") or None
        limit = settings.max_connections_per_ip
        if address is not None and limit is not None:
            now = time.monotonic()
            held = self.by_address.get(address, 0) + self._in_flight(address, now)
            if held >= limit:
                return 429, f"too many connections from {address} (limit {limit})"
            self._pending.setdefault(address, deque()).append(now)
        _opening.set(address)
        return None

    def opened(self, conn: Connection) -> None:
        """Count ``conn`` (under the address :meth:`refusal` saw) and give it
        its rate limiter."""
        address = _opening.get()
        if address is not None:
            _opening.set(None)
            # One string per address, not one per connection (kept in _held).
            address = sys.intern(address)
            self.by_address[address] = self.by_address.get(address, 0) + 1
            times = self._pending.get(address)
            if times:  # no longer in flight: open
                times.popleft()
                if not times:
                    del self._pending[address]
        self.open += 1
        _metrics.opened(conn)
        settings = self.settings
        user = None
        if settings.rate_limit_enabled:
            own = RateLimiter(settings.messages_per_minute)
            if conn.user_key is None:
                conn.rate = own
            else:
                user = conn.user_key
                conn.rate = SharedLimiter(own, self.users.take(user))
        self._held[conn.id] = (address, user)

    def closed(self, conn: Connection) -> None:
        """``conn`` is gone: its slot is free (once, however often called)."""
        held = self._held.pop(conn.id, None)
        if held is None:
            return
        address, user = held
        self.open -= 1
        _metrics.disconnected(conn)
        if address is not None:
            left = self.by_address.get(address, 1) - 1
            if left > 0:
                self.by_address[address] = left
            else:
                self.by_address.pop(address, None)
        if user is not None:
            self.users.give_back(user)


def refuse(node: Node, environ: t.Mapping[str, t.Any]) -> tuple[int, str] | None:
    """The JSON status refusing a new connection here, if any (see the module)."""
    refusal = node.admission.refusal(environ)
    _metrics.refused(refusal)
    return refusal
