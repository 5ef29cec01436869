"""Reconnection: which close codes allow it, backoff with jitter, giving up.

The policy is PROTOCOL.md's: 40xx means stop, 41xx reconnect with backoff,
42xx make the first attempt at once; anything else (a network loss) backs off.
"""

from __future__ import annotations

import random
import threading
import typing as t

from .. import protocol
from .errors import ConnectError, ConnectionClosed
from .events import Emitter, logger
from .websocket import Opened

# The names the client has always exported for protocol.CLOSE_* ranges.
#: Close codes after which the client must not reconnect.
NO_RECONNECT = protocol.CLOSE_NO_RECONNECT
#: Close codes after which the client reconnects with backoff.
RECONNECT_WITH_BACKOFF = protocol.CLOSE_RECONNECT_WITH_BACKOFF
#: Close codes after which the client reconnects at once.
RECONNECT_AT_ONCE = protocol.CLOSE_RECONNECT_AT_ONCE


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential, capped, with jitter so that clients of a restarted
    server do not all come back in the same instant."""
    ceiling = min(cap, base * 2**attempt)
    return ceiling * random.uniform(0.5, 1.0)


class Reconnection(Emitter):
    """How :class:`RealtimeClient`'s reader comes back after a loss, or stops."""

    # Set by RealtimeClient.__init__.
    reconnect_delay: float
    max_reconnect_delay: float
    max_reconnect_attempts: int | None
    connect_timeout: float
    reconnect_attempts: int
    _stop: threading.Event
    _closing: bool
    _closed: ConnectionClosed | None

    # Provided by RealtimeClient.
    _open: t.Callable[[float], Opened]

    def _reconnect_loop(self, code: int) -> Opened | None:
        """Handshake until one succeeds (None: stopped or gave up for good)."""
        attempt = 0
        while True:
            if self._closing:
                self._final(protocol.CLOSE_NORMAL, "client disconnected")
                return None
            limit = self.max_reconnect_attempts
            if limit is not None and attempt >= limit:
                self._final(code, f"gave up after {attempt} reconnection attempts")
                return None
            if attempt == 0 and code in protocol.CLOSE_RECONNECT_AT_ONCE:
                delay = 0.0
            else:
                delay = self._backoff(attempt)
            self._emit("reconnecting", {"attempt": attempt + 1, "delay": delay})
            if self._stop.wait(delay):
                continue  # disconnect() was called
            attempt += 1
            self.reconnect_attempts += 1
            try:
                ws, welcome = self._open(self.connect_timeout)
            except ConnectionClosed as exc:
                if exc.code in protocol.CLOSE_NO_RECONNECT:
                    self._final(exc.code, exc.reason)
                    return None
                code = exc.code
                continue
            except ConnectError as exc:
                logger.info(
                    "%r: reconnection attempt %d failed: %s", self, attempt, exc
                )
                continue
            if self._closing:
                ws.close(timeout=1)
                continue
            return ws, welcome

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, self.reconnect_delay, self.max_reconnect_delay)

    def _final(self, code: int, reason: str) -> None:
        """Stop for good, telling the ``disconnected`` handlers first."""
        self._emit("disconnected", {"code": code, "reason": reason, "reconnect": False})
        self._finish(code, reason)

    def _finish(self, code: int, reason: str) -> None:
        """Record why the client stopped; blocking calls raise it from now on."""
        with self._cond:
            if self._closed is None:
                self._closed = ConnectionClosed(code, reason)
            self._cond.notify_all()
