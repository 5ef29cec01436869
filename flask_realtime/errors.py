"""Exceptions shared across layers, in one place that imports nothing above it.

Transports catch what the node raises through these names, so that no
transport imports a broker module. :class:`BrokerUnavailable` is defined
with the brokers (they import nothing above them) and re-exported here.
"""

from __future__ import annotations

from .brokers.base import BrokerUnavailable as BrokerUnavailable

__all__ = ["BrokerUnavailable", "Rejected"]


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
