"""Server adapter: long polls parked on a socket of their own, under gevent.

A poll that finds nothing, on a server that lets the view keep a socket for
its answer (pywsgi, gunicorn's gevent worker: see
:func:`.handoff.socket_for_later`), returns at once and leaves a socket, a
read watcher and a timer (:class:`ParkedPoll`): no request context, and no
greenlet waits for the answer. The delivery path answers it with the whole
HTTP response, written straight to the socket in one non-blocking ``send``
when the node's flusher runs. A broadcast to 1,000 parked polls thus costs
1,000 sends, not 1,000 greenlets each finishing a Flask response.
"""

from __future__ import annotations

import socket
import time
import typing as t
from email.utils import formatdate

from .flusher import flusher
from .handoff import LaterSocket
from .http import error_answer
from .pollbox import CLOSED, PollBox, answer
from .socket_session import SLOWCLOSE_GRACE

# Werkzeug's reason phrases, so that both paths answer alike.
_STATUS_LINES = {200: b"HTTP/1.1 200 OK\r\n", 404: b"HTTP/1.1 404 NOT FOUND\r\n"}
_date: list[t.Any] = [0, b""]


def _http_date() -> bytes:
    """The ``Date`` header's value, formatted once a second."""
    now = int(time.time())
    if _date[0] != now:
        _date[0], _date[1] = now, formatdate(now, usegmt=True).encode()
    return t.cast(bytes, _date[1])


class ParkedPoll:
    """A poll waiting on a socket of its own: the socket, a read watcher that
    notices a client going away, and a timer for the poll timeout.

    It ends once, in one of four ways: a message arrives (:meth:`ready`,
    answered when the node's flusher runs, so that a burst goes out in one
    answer), the box closes (404), a newer poll supersedes it, or the
    timeout passes. The answer is a whole HTTP/1.1 response, with the
    headers the Flask path would have sent.

    A client that goes away while parked has its socket closed at once; the
    poll itself ends as it would have in a greenlet (a message, a newer poll,
    the timeout), so the connection expires no sooner than before, and
    messages nobody read stay in the box for the client's next poll.
    """

    __slots__ = (
        "box",
        "raw",
        "kept_alive",
        "cursor",
        "head",
        "io",
        "timer",
        "scheduled",
        "done",
        "flusher",
    )

    def __init__(
        self,
        box: PollBox,
        later: LaterSocket,
        cursor: int,
        cors: bytes,
        timeout: float,
    ) -> None:
        import gevent

        self.box = box
        self.raw: t.Any = later.raw  # None once answered, or the client left
        self.kept_alive = later.kept_alive
        self.cursor = cursor
        # The headers after Content-Length, but for the Date. Said outright
        # either way, which HTTP/1.0 clients need for keep-alive.
        self.head = cors + (
            b"Connection: keep-alive\r\n"
            if later.kept_alive
            else b"Connection: close\r\n"
        )
        self.scheduled = False
        self.done = False
        self.flusher = flusher()
        loop = gevent.get_hub().loop
        self.io = loop.io(later.raw.fileno(), 1)
        self.io.start(self._readable)
        self.timer = loop.timer(timeout)
        self.timer.start(self._timed_out)

    def ready(self, size: int) -> None:
        """A message arrived: answer when the flusher runs (within ~2 ms)."""
        if self.done:
            return
        if self.scheduled:
            self.flusher.grew(size)
        else:
            self.scheduled = True
            self.flusher.add(self, size)

    def flush(self) -> None:
        self.scheduled = False
        if self.done:
            return
        box = self.box
        items = box.take()
        if items:
            self._finish(*answer(items, items[-1][0]))
        elif box.close_code is not None:
            self._finish(*error_answer(404, CLOSED))

    def supersede(self) -> None:
        self._finish(*answer([], self.cursor, superseded=True))

    def _timed_out(self) -> None:
        self._finish(*answer([], self.cursor))

    def _readable(self) -> None:
        raw = self.raw
        if raw is None:
            return
        try:
            if self.kept_alive:
                # The server reads this connection too: look, do not take.
                data = raw.recv(1, socket.MSG_PEEK)
            else:
                data = raw.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_socket()
        elif self.kept_alive:
            # A request behind the poll (pipelining): the server's to read.
            # Watching on would only see it again and again.
            self.io.stop()
        # Otherwise junk from a client that cannot send another request on
        # this connection: dropped.

    def _drop_socket(self) -> None:
        self.io.stop()
        raw, self.raw = self.raw, None
        if raw is not None:
            raw.close()

    def _finish(self, status: int, body: bytes) -> None:
        if self.done:
            return
        self.done = True
        self.timer.stop()
        box = self.box
        if box.parked is self:
            box.parked = None
        box.end_poll()
        raw = self.raw
        if raw is None:
            box.answered()
            return  # the client left: the messages stay for its next poll
        self.io.stop()
        self.raw = None
        data = b"%sContent-Type: application/json\r\nContent-Length: %d\r\n%s" % (
            _STATUS_LINES[status],
            len(body),
            self.head,
        )
        data += b"Date: %s\r\n\r\n%s" % (_http_date(), body)
        try:
            sent = raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            raw.close()
            box.answered()
            return
        if sent == len(data):
            # With keep-alive this closes only our duplicate descriptor.
            raw.close()
            box.answered()
        else:
            # A large answer on a full socket: the rest waits in a greenlet.
            import gevent

            gevent.spawn(_send_rest, raw, data[sent:], box)


def _send_rest(raw: t.Any, rest: bytes, box: PollBox) -> None:
    """Write the tail of an answer, then close; a client that reads nothing
    for ``SLOWCLOSE_GRACE`` seconds loses it (its next poll gets it again)."""
    from gevent.socket import wait_write

    view = memoryview(rest)
    try:
        while view:
            try:
                view = view[raw.send(view) :]
            except BlockingIOError:
                wait_write(raw.fileno(), timeout=SLOWCLOSE_GRACE)
    except OSError:  # including the timeout
        pass
    finally:
        raw.close()
        box.answered()
