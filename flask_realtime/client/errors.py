"""The client's exceptions: one base class, one subclass per way a call fails."""

from __future__ import annotations

import typing as t


class RealtimeError(Exception):
    """Base class of the client's errors."""


class ConnectError(RealtimeError):
    """The WebSocket could not be opened (network error or refused handshake).

    ``status`` is the HTTP status of a refused handshake, else None.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConnectionClosed(RealtimeError):
    """The connection ended and the client will not reconnect.

    ``code`` is the WebSocket close code, e.g. 4001 when the server refused to
    authenticate the connection.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        text = f"the connection was closed with code {code}"
        if reason:
            text += f" ({reason})"
        super().__init__(text)
        self.code = code
        self.reason = reason


class NotConnected(RealtimeError):
    """A message could not be sent: no connection is open (yet, or any more)."""


class ServerError(RealtimeError):
    """The server answered a request with an ``error`` message."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        channel: str | None = None,
        data: t.Mapping[str, t.Any] | None = None,
    ) -> None:
        where = f" on {channel!r}" if channel else ""
        super().__init__(f"server error {code}{where}: {message}")
        self.code = code
        self.message = message
        self.channel = channel
        self.data = dict(data or {})

    @classmethod
    def from_data(
        cls: type[_E], data: t.Mapping[str, t.Any], channel: str | None = None
    ) -> _E:
        """The error an ``error`` envelope's ``data`` describes; a code that is
        not a number reads as 0 rather than failing the reader."""
        return cls(
            _int(data.get("code")),
            str(data.get("message", "")),
            channel=channel,
            data=data,
        )


_E = t.TypeVar("_E", bound=ServerError)


class SubscriptionError(ServerError):
    """The server refused a subscription (``code`` 401, 403, 400, ...)."""


class RealtimeTimeout(RealtimeError, TimeoutError):
    """What was awaited did not happen in time."""


def _int(value: t.Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
