"""Exceptions shared across layers, in one place that imports nothing above it.

Transports catch what the node raises through these names, so that no
transport imports a broker module. :class:`BrokerUnavailable` is defined
with the brokers (they import nothing above them) and re-exported here.
"""

from __future__ import annotations

from .brokers.base import BrokerUnavailable as BrokerUnavailable


class ConnectionRefused(Exception):
    """Raise in an ``on_connect`` function to refuse the connection.

    A WebSocket is closed with ``code`` (3000-4999; 4003 unless given, and
    in 4000-4099 the clients do not reconnect); an SSE stream or a long
    poll that opens a connection is answered 403 with ``reason``.
    """

    def __init__(self, reason: str = "refused", code: int = 4003) -> None:
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"code must be an int, got {code!r}")
        if not 3000 <= code <= 4999:
            raise ValueError(f"code must be between 3000 and 4999, got {code}")
        super().__init__(reason)
        self.reason = reason or "refused"
        self.code = code


__all__ = ["BrokerUnavailable", "ConnectionRefused"]
