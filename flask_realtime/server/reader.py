"""A connection's incoming bytes, read only until a deadline.

pywsgi reads a request's head and body through one buffered file on the
socket, and would wait forever for bytes that never come: an idle socket,
a head sent one byte at a time, a chunked body that never ends. The handler
sets a deadline on this reader for each phase of a request; a read past it
raises :class:`ReadTimedOut`. The socket's own timeout is left alone, so
the application's writes are never cut short by a read deadline.
"""

from __future__ import annotations

import io
import time
import typing as t

from werkzeug.exceptions import RequestTimeout


class ReadTimedOut(TimeoutError, RequestTimeout):
    """A read past its deadline.

    A :class:`TimeoutError` for the server (pywsgi gives up on a body it was
    discarding, the handler closes the connection), and werkzeug's 408
    :class:`~werkzeug.exceptions.RequestTimeout` for an application that was
    reading the body: Flask answers it as an HTTP error, not a crash.
    """

    def __init__(self) -> None:
        TimeoutError.__init__(self, "the client did not send the request in time")
        RequestTimeout.__init__(self)


class DeadlineReader(io.RawIOBase):
    """The socket's bytes until :attr:`deadline` (a ``time.monotonic()``
    value, or None for no limit)."""

    def __init__(self, sock: t.Any) -> None:
        super().__init__()
        self.sock = sock
        self.deadline: float | None = None
        #: Set once a read was refused: the request's bytes are no longer in
        #: step, so the connection must not serve another one.
        self.expired = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: t.Any) -> int:
        deadline = self.deadline
        if deadline is None:
            return self.sock.recv_into(buffer)  # type: ignore[no-any-return]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self.expired = True
            raise ReadTimedOut()
        # gevent's socket waits on the event loop for at most its timeout;
        # restored at once, so that writes keep the socket's own setting.
        previous = self.sock.gettimeout()
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv_into(buffer)  # type: ignore[no-any-return]
        except TimeoutError:
            self.expired = True
            raise ReadTimedOut() from None
        finally:
            self.sock.settimeout(previous)
