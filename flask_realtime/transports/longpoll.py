"""Long-polling: each poll takes what waits since the cursor, or waits for it.

A poll that finds nothing waits in one of two ways:

* **Parked** (gevent, a local poll, a server that lets the view have its
  socket): the view keeps a socket of its own for the answer and returns.
  The poll is then a socket, a read watcher and a timer
  (:class:`_ParkedPoll`): no request context, and no greenlet waits for the
  answer. The delivery path answers it: the whole HTTP response, written
  straight to the socket in one non-blocking ``send``. A broadcast to 1,000
  parked polls thus costs 1,000 sends, not 1,000 greenlets each finishing a
  Flask response. Under pywsgi the connection stays open for the next poll
  (pywsgi reads it, as it reads any idle kept-alive connection); under
  gunicorn's gevent worker the answer closes it (see
  :func:`._socket_session.socket_for_later`).
* **Waiting** (``flask run``, TLS, a poll forwarded by another node): the
  request's greenlet or thread sleeps on the mailbox (:func:`_wait`), and
  the answer is a Flask response.

Both follow the same rules (:func:`_begin`): a poll acknowledges its
cursor, supersedes an older poll of the connection, and counts as the
client being present until it ends.
"""

from __future__ import annotations

import socket
import time
import typing as t
from email.utils import formatdate

from flask import Response, request

from .. import protocol
from .._runtime import gevent_active
from ..connection import Connection, Outbound
from ._http import (
    Answer,
    Finished,
    Refused,
    answer_response,
    cors,
    error_answer,
    identify,
    json_error,
    origin_allowed,
    run_or_forward,
    same_secret,
)
from ._mailbox import Mailbox
from ._socket_session import (
    SLOWCLOSE_GRACE,
    LaterSocket,
    can_answer_later,
    flusher,
    socket_for_later,
)

if t.TYPE_CHECKING:
    from ..node import Node

_CLOSED = "the connection was closed; open a new one"


class PollBox(Mailbox):
    """A mailbox that remembers its polls, for supersession and expiry."""

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self.poll_serial = 0
        self.polling = 0
        self.last_poll = time.monotonic()
        settings = node.settings
        self.expiry = settings.longpoll_expiry
        #: The poll waiting on its own socket, if any (at most one: a newer
        #: poll answers the older one first).
        self.parked: _ParkedPoll | None = None

    def push(self, message: Outbound) -> None:
        super().push(message)
        parked = self.parked
        if parked is not None:
            parked.ready(len(message.json))

    def close(self, code: int, reason: str = "") -> None:
        if self.close_code is not None:
            return
        parked = self.parked
        super().close(code, reason)
        if parked is not None:
            # At once, not at the next idle moment: a closing worker may not
            # have one. Messages still waiting go first, as in _wait.
            parked.flush()

    def tick(self, conn: Connection, now: float, heartbeat: float) -> None:
        self.expire_if_stale(now)

    def expire_if_stale(self, now: float) -> bool:
        """Expire a connection nobody polled for ``expiry`` seconds.

        Checked by the timer and on each use, so that a request arriving
        between two ticks never finds a connection that should be gone.
        """
        if not self.polling and now - self.last_poll > self.expiry:
            self.close(protocol.CLOSE_HEARTBEAT_TIMEOUT, "not polled")
        return self.close_code is not None


def _answer(items: list[tuple[int, bytes]], cursor: int, **extra: t.Any) -> Answer:
    # The stored envelopes are JSON already: joined, not decoded again.
    body = b'{"messages":[' + b",".join(data for _, data in items) + b"]"
    body += b',"cursor":%d' % cursor
    for key, value in extra.items():
        body += b',"%s":%s' % (key.encode(), protocol.encode(value))
    return 200, body + b"}"


def register(node: Node) -> None:
    """Let other nodes hand this one the polls of its connections."""
    node.handle_request("poll", _poll_here)


def poll_view(node: Node, authenticate: t.Callable[..., t.Any] | None) -> Response:
    settings = node.settings
    allowed = settings.allowed_origins
    if "longpolling" not in settings.transports:
        return json_error(404, "the longpolling transport is disabled")
    origin = request.headers.get("Origin")
    if not origin_allowed(origin, allowed):
        return json_error(403, "origin not allowed")
    args = request.args
    connection_id = args.get("connection_id")
    if connection_id is None:
        if node.shutting_down:
            return json_error(503, "server shutting down; connect again")
        return cors(_open(node, authenticate), allowed)
    try:
        cursor = int(args.get("cursor", ""))
    except ValueError:
        return json_error(400, "'cursor' must be an integer")
    token = args.get("token")
    # Only a GET can be parked (a HEAD's answer has no body), and only here
    # (a forwarded poll is answered over the broker).
    if (
        request.method == "GET"
        and gevent_active()
        and node.owns(connection_id)
        and can_answer_later(request.environ)
    ):
        return _poll_or_park(node, connection_id, token, cursor, origin)
    forwarded = {
        "op": "poll",
        "connection_id": connection_id,
        "token": token,
        "cursor": cursor,
    }
    # The owner answers within the poll timeout; the margin covers the trip.
    timeout = settings.longpoll_timeout + 10
    return cors(run_or_forward(node, forwarded, _poll_here, timeout), allowed)


def _open(node: Node, authenticate: t.Callable[..., t.Any] | None) -> Response:
    try:
        user_id, user_info = identify(authenticate)
    except Refused:
        return json_error(401, "authentication failed")
    box = PollBox(node)
    conn = node.open("longpolling", box, user_id, user_info, with_token=True)
    box.conn = conn
    items = box.take()
    return answer_response(_answer(items, items[-1][0] if items else 0))


def _begin(
    node: Node, connection_id: t.Any, token: t.Any, cursor: t.Any
) -> PollBox | Answer:
    """Check a poll and start it: its box, or the error answer.

    From here until :func:`_end` the poll counts as the client being there
    (the connection cannot expire), and it is the connection's only poll:
    an older one is answered ``superseded`` now.
    """
    conn = node.connection(connection_id)
    if conn is None or conn.transport != "longpolling":
        return error_answer(404, "unknown or expired connection; open a new one")
    if not same_secret(token, conn.token):
        return error_answer(403, "wrong or missing token")
    box = t.cast(PollBox, conn.sink)
    if box.expire_if_stale(time.monotonic()):
        return error_answer(404, "the connection expired; open a new one")
    if not isinstance(cursor, int) or cursor < 0 or cursor > box.seq:
        return error_answer(400, f"'cursor' must be between 0 and {box.seq}")

    box.ack(cursor)
    box.poll_serial += 1
    box.wake()  # an older poll still waiting gives way to this one
    parked = box.parked
    if parked is not None:
        parked.supersede()
    box.polling += 1
    box.last_poll = time.monotonic()
    conn.last_seen = box.last_poll
    return box


def _end(box: PollBox) -> None:
    box.polling -= 1
    box.last_poll = time.monotonic()


def _poll_here(node: Node, forwarded: dict[str, t.Any]) -> Answer:
    """A poll that waits in its own greenlet or thread, answered as
    (status, body): under ``flask run``, and for polls forwarded by other
    nodes."""
    cursor = forwarded["cursor"]
    box = _begin(node, forwarded["connection_id"], forwarded.get("token"), cursor)
    if isinstance(box, tuple):
        return box
    return _wait(node, box, cursor)


def _wait(node: Node, box: PollBox, cursor: int) -> Answer:
    """The rest of a begun poll, in this greenlet or thread."""
    serial = box.poll_serial
    try:
        deadline = time.monotonic() + node.settings.longpoll_timeout
        while True:
            if box.poll_serial != serial:
                return _answer([], cursor, superseded=True)
            items = box.take()
            if items:
                return _answer(items, items[-1][0])
            if box.close_code is not None:
                return error_answer(404, _CLOSED)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _answer([], cursor)
            box.wait(remaining)
    finally:
        _end(box)


def _poll_or_park(
    node: Node, connection_id: str, token: t.Any, cursor: int, origin: str | None
) -> Response:
    """A local poll under gevent: answered now through Flask when it can be,
    parked on a socket of its own otherwise."""
    allowed = node.settings.allowed_origins
    box = _begin(node, connection_id, token, cursor)
    if isinstance(box, tuple):
        return cors(answer_response(box), allowed)
    items = box.take()
    if items or box.close_code is not None:
        _end(box)
        if items:
            answer = _answer(items, items[-1][0])
        else:
            answer = error_answer(404, _CLOSED)
        return cors(answer_response(answer), allowed)
    try:
        later = socket_for_later(request.environ)
    except OSError:  # no descriptor to spare, or the client is gone
        later = None
    if later is None:
        return cors(answer_response(_wait(node, box, cursor)), allowed)
    box.parked = _ParkedPoll(
        box,
        later,
        cursor,
        _cors_head(origin, allowed),
        node.settings.longpoll_timeout,
    )
    return Finished(later.mode)


# -- parked polls ----------------------------------------------------------------


def _cors_head(origin: str | None, allowed: tuple[str, ...]) -> bytes:
    """The header lines :func:`._http.cors` would add to this request's answer."""
    if origin and ("*" in allowed or origin.rstrip("/") in allowed):
        return (
            b"Access-Control-Allow-Origin: " + origin.encode("latin-1") + b"\r\n"
            b"Access-Control-Allow-Credentials: true\r\nVary: Origin\r\n"
        )
    return b""


# Werkzeug's reason phrases, so that both paths answer alike.
_STATUS_LINES = {200: b"HTTP/1.1 200 OK\r\n", 404: b"HTTP/1.1 404 NOT FOUND\r\n"}
_date: list[t.Any] = [0, b""]


def _http_date() -> bytes:
    """The ``Date`` header's value, formatted once a second."""
    now = int(time.time())
    if _date[0] != now:
        _date[0], _date[1] = now, formatdate(now, usegmt=True).encode()
    return t.cast(bytes, _date[1])


class _ParkedPoll:
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
            self._finish(*_answer(items, items[-1][0]))
        elif box.close_code is not None:
            self._finish(*error_answer(404, _CLOSED))

    def supersede(self) -> None:
        self._finish(*_answer([], self.cursor, superseded=True))

    def _timed_out(self) -> None:
        self._finish(*_answer([], self.cursor))

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
        _end(box)
        raw = self.raw
        if raw is None:
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
            return
        if sent == len(data):
            # With keep-alive this closes only our duplicate descriptor.
            raw.close()
        else:
            # A large answer on a full socket: the rest waits in a greenlet.
            import gevent

            gevent.spawn(_send_rest, raw, data[sent:])


def _send_rest(raw: t.Any, rest: bytes) -> None:
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
