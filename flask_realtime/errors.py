"""Exceptions shared across layers, in one place that imports nothing above it.

Transports catch what the node raises through these names, so that no
transport imports a broker module. :class:`BrokerUnavailable` is defined
with the brokers (they import nothing above them) and re-exported here.
"""

from __future__ import annotations

from .brokers.base import BrokerUnavailable as BrokerUnavailable


class Rejected(Exception):
    """Raise in an event handler (``@realtime.on``) to refuse a client event.

    The sender gets an ``error`` with ``code`` and ``message``, as
    ``abort(code, description)`` answers a Flask request: 403 unless said
    otherwise (400 for data that does not validate, 404 for what does not
    exist, 409 for a conflict, ...). With the event's ``id``, the error
    answers it: the clients reject the send's promise or raise.

    :param message: what the sender is told.
    :param code: the error code, from 400 to 499.
    """

    def __init__(self, message: str = "event refused", code: int = 403) -> None:
        if type(code) is not int or not 400 <= code <= 499:
            raise ValueError(f"a rejection's code is from 400 to 499, not {code!r}")
        super().__init__(message)
        self.message = message
        self.code = code


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


__all__ = ["BrokerUnavailable", "ConnectionRefused", "Rejected"]
