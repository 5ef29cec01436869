"""Connections that own their socket, under gevent.

After its handshake (or response head) a WebSocket or SSE connection leaves
the server's request handling: the session keeps the file descriptor as a
plain C socket, one event-loop watcher reads it, and writes happen when the
node's flusher runs. An idle connection costs no greenlet, no request context
and no stack. Everything about slow clients and backpressure lives here
(see docs/architecture.md).

A parked long poll borrows two pieces: :func:`socket_for_later`, a socket
to answer its request on after the view has returned, and the flusher,
which answers it when a message arrives (see ``longpoll.py``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import typing as t
from _socket import socket as _c_socket
from collections import deque

from .. import protocol
from ..connection import Connection, Outbound

if t.TYPE_CHECKING:
    from ..node import Node

logger = logging.getLogger("flask_realtime")

# Where a server hook leaves ``take(head) -> socket`` for the view: write the
# response head, then hand the socket over (see websocket.defer_upgrades).
TAKE_KEY = "flask_realtime.take"

READ_SIZE = 65536
CLOSE_GRACE = 5.0  # seconds a closing socket may take to flush its last bytes
# A client too slow for its queue still has the kernel's buffers to read
# before its close frame (4100) fits: it gets longer.
SLOWCLOSE_GRACE = 30.0
WRITE_CHUNK = 64 * 1024


def socket_taker(environ: dict[str, t.Any]) -> tuple[t.Any, str] | None:
    """How this server lets a view write its own response and keep the socket:
    ``(take, mode)``, or None where it cannot (then the view streams as usual).
    """
    take = environ.pop(TAKE_KEY, None)
    if take is not None:
        return None if is_tls(take.socket) else (take, "gevent")
    sock = environ.get("gunicorn.socket")
    if sock is not None and not is_tls(sock):

        def take_gunicorn(head: bytes) -> t.Any:
            sock.sendall(head)
            return sock

        return take_gunicorn, "gunicorn"
    return None


class LaterSocket(t.NamedTuple):
    """Where a view answers its request later (see :func:`socket_for_later`)."""

    raw: t.Any  # a non-blocking C socket, the view's own to write and close
    kept_alive: bool  # the server reads the connection's next request itself
    mode: str  # what the view returns: ``Finished(mode)``


def socket_for_later(environ: dict[str, t.Any]) -> LaterSocket | None:
    """A socket on which a view answers its request later, from outside the
    request (a parked long poll), or None where the server cannot allow it.

    Nothing is written now: the status is not known yet. Then:

    * pywsgi (gevent-websocket's worker, ``flask realtime serve``) writes
      nothing for a view that returns ``Finished("gevent")`` without having
      taken the socket, and goes on reading the connection for its next
      request. The view gets a duplicate of the descriptor: the connection
      stays the server's, so keep-alive works, and the answer written on
      the duplicate goes out before the client sends that next request.
      (A client pipelining requests behind a parked poll would get their
      answers first; browsers and proxies do not pipeline.) A re-poll on a new
      TCP connection would cost the worker half as much again as the poll
      cycle itself, or more (docs/benchmarks.md).
    * gunicorn's gevent worker ends the connection on ``Finished("gunicorn")``:
      the view takes the socket over, and its answer closes the connection.

    May raise OSError (no descriptor left, or the client has gone).
    """
    take = environ.get(TAKE_KEY)
    if take is not None:
        sock = take.socket
        if is_tls(sock):
            return None
        del environ[TAKE_KEY]
        raw = _c_socket(sock.family, sock.type, sock.proto, os.dup(sock.fileno()))
        raw.setblocking(False)
        return LaterSocket(raw, _pywsgi_keeps_alive(environ), "gevent")
    sock = environ.get("gunicorn.socket")
    if sock is not None and not is_tls(sock):
        return LaterSocket(take_over(sock), False, "gunicorn")
    return None


def can_answer_later(environ: dict[str, t.Any]) -> bool:
    """Whether :func:`socket_for_later` has a socket to give (cheap)."""
    take = environ.get(TAKE_KEY)
    sock = take.socket if take is not None else environ.get("gunicorn.socket")
    return sock is not None and not is_tls(sock)


def _pywsgi_keeps_alive(environ: dict[str, t.Any]) -> bool:
    """What pywsgi decided from the request (``WSGIHandler.read_request``)."""
    connection = environ.get("HTTP_CONNECTION", "").lower()
    version = environ.get("SERVER_PROTOCOL")
    if version == "HTTP/1.1":
        return connection != "close"
    if version == "HTTP/1.0":
        return connection == "keep-alive"
    return False


def is_tls(sock: t.Any) -> bool:
    """A TLS socket is never taken over: its descriptor carries ciphertext,
    and only the SSL object can write to it."""
    return hasattr(sock, "getpeercert")


def take_over(sock: t.Any) -> t.Any:
    """The connection's socket, out of the server's hands.

    ``detach`` leaves the descriptor open when the server closes its socket
    object at the end of the request. The session keeps a plain C socket
    (gevent's wrapper would add two event watchers it never uses) and waits
    on the event loop itself, only when the socket is full.
    """
    family, kind, proto = sock.family, sock.type, sock.proto
    raw = _c_socket(family, kind, proto, sock.detach())
    raw.setblocking(False)
    return raw


class Flushable(t.Protocol):
    """What the flusher runs: a socket session, or a parked long poll."""

    def flush(self) -> None: ...


class _Flusher:
    """Writes what broadcasts queued, when the event loop has nothing else to do.

    Broadcasts only append frames to queues. The flush runs from an idle
    watcher: with a publisher that comes and goes, that is at once; with a
    saturated loop (a burst, many publishers) messages gather and each socket
    gets several of them in one ``send``, which is where the time goes (a
    loopback ``send`` costs more than everything else a delivery does). A
    timer bounds the wait at ``_MAX_DELAY``; and when more than
    ``_INLINE_BYTES`` wait, the publisher flushes itself, which slows a
    publisher that outruns the CPU.
    """

    _INLINE_BYTES = 512 * 1024
    _MAX_DELAY = 0.002

    def __init__(self) -> None:
        import gevent

        loop = gevent.get_hub().loop
        self._idle = loop.idle()
        self._timer = loop.timer(self._MAX_DELAY)
        self._pending: list[Flushable] = []
        self._pending_bytes = 0
        self._scheduled = False

    def add(self, session: Flushable, size: int) -> None:
        self._pending.append(session)
        self._pending_bytes += size
        if not self._scheduled:
            self._scheduled = True
            self._idle.start(self.flush)
            self._timer.start(self.flush)

    def grew(self, size: int) -> None:
        self._pending_bytes += size
        if self._pending_bytes > self._INLINE_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._scheduled:
            self._scheduled = False
            self._idle.stop()
            self._timer.stop()
        pending = self._pending
        self._pending = []
        self._pending_bytes = 0
        for session in pending:
            session.flush()


_flushers: dict[int, _Flusher] = {}


def flusher() -> _Flusher:
    """This process's flusher (a forked worker gets its own)."""
    return _flusher()


def _flusher() -> _Flusher:
    pid = os.getpid()
    flusher = _flushers.get(pid)
    if flusher is None:
        flusher = _flushers[pid] = _Flusher()
    return flusher


class SocketSession:
    """A connection that owns its socket: a read watcher, a queue, and a
    writer greenlet only while the socket is full.

    Subclasses say how a message is encoded, what to do with bytes the
    client sends, and what to send last: WebSocket frames, or SSE events.
    """

    transport = ""
    conn: Connection

    def __init__(self, node: Node) -> None:
        import gevent

        self.node = node
        self.gauge = node.pressure
        settings = node.settings
        self.max_messages = settings.max_queue_messages
        self.max_bytes = settings.max_queue_bytes
        self.closing = False

        self._gevent = gevent
        self.raw: t.Any = None  # a non-blocking C socket
        self.watcher: t.Any = None
        self.write_watcher: t.Any = None  # only while the socket is full
        self.queue: deque[bytes] = deque()  # whole frames not yet written
        self.queued_bytes = 0
        self.head = b""  # the partly written rest of a write, goes first
        self.scheduled = False
        self.blocked = False  # a writer greenlet waits for the socket
        self.last_progress = 0.0
        self.flusher = _flusher()
        self.draining = False
        self.finished = False

    @property
    def label(self) -> str:
        return self.conn.id

    # hooks -----------------------------------------------------------------

    def encode(self, message: Outbound) -> bytes:
        raise NotImplementedError

    def closing_bytes(self, code: int, reason: str) -> bytes:
        raise NotImplementedError

    def received(self, data: bytes) -> None:
        """Bytes from the client (the default: none are expected)."""

    # lifecycle ---------------------------------------------------------------

    def open(self, user_id: t.Any, user_info: t.Any, **options: t.Any) -> bytes:
        """Register the connection; returns its ``connected`` message, which
        the caller writes (with the response head, in one write)."""
        self.conn = self.node.open(
            self.transport, self, user_id, user_info, welcome=False, **options
        )
        return self.node.welcome(self.conn)

    def attach(self, raw: t.Any) -> None:
        """Start reading and writing on the socket, now that it is ours."""
        self.raw = raw
        self.watcher = self._gevent.get_hub().loop.io(raw.fileno(), 1)
        self.watcher.start(self._readable)
        if self.closing:
            self.flush()
        elif self.queue and not self.scheduled:
            self.scheduled = True
            self.flusher.add(self, self.queued_bytes)

    def abandon(self) -> None:
        """The handshake failed: the connection never existed."""
        self.closing = self.finished = True
        if not self.conn.closed:
            self.node.disconnect(self.conn)

    # writing ---------------------------------------------------------------

    def push(self, message: Outbound) -> None:
        if self.closing:
            return
        frame = self.encode(message)
        self.queue.append(frame)
        size = len(frame)
        self.queued_bytes += size
        if self.blocked:
            self.gauge.queued(size)
            self._check_bounds()
        elif self.scheduled:
            self.flusher.grew(size)
        else:
            self.scheduled = True
            self.flusher.add(self, size)

    def push_frame(self, frame: bytes) -> None:
        if self.closing:
            return
        self.queue.append(frame)
        self.queued_bytes += len(frame)
        if self.blocked:
            self.gauge.queued(len(frame))
        elif not self.scheduled:
            self.scheduled = True
            self.flusher.add(self, len(frame))

    def _check_bounds(self) -> None:
        count, size = len(self.queue), self.queued_bytes
        if count > self.max_messages or size > self.max_bytes:
            logger.warning(
                "flask_realtime: closing %s (4100): %d messages, %d bytes queued;"
                " last write progress %.1f s ago",
                self.conn.id,
                count,
                size,
                time.monotonic() - self.last_progress,
            )
            self.close(protocol.CLOSE_TOO_SLOW, "too slow")
        elif (count > self.max_messages // 2 or size > self.max_bytes // 2) and (
            not self.gauge.is_pressured(self)
        ):
            self.gauge.pressured(self)

    def _relieve(self) -> None:
        self.gauge.relieved(self)

    def flush(self) -> None:
        self.scheduled = False
        if self.blocked or self.finished or not self.queue or self.raw is None:
            return  # (before attach, attach flushes)
        queue = self.queue
        data = queue[0] if len(queue) == 1 else b"".join(queue)
        queue.clear()
        self.queued_bytes = 0
        try:
            sent = self.raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lost()
            return
        if sent < len(data):
            # The unsent tail may end in the middle of a frame: it is kept
            # apart from the queue, which a 4100 close empties.
            self.head = data[sent:]
            self.gauge.queued(len(self.head))
            self.gauge.blocked()
            self.blocked = True
            self.last_progress = time.monotonic()
            self._gevent.spawn(self._write_blocked)
        elif self.closing:
            self._half_close()

    def _next_batch(self) -> bytes:
        """The head, else frames from the queue up to about ``WRITE_CHUNK``."""
        if self.head:
            data, self.head = self.head, b""
            return data
        queue = self.queue
        frames = []
        size = 0
        while queue and size < WRITE_CHUNK:
            frame = queue.popleft()
            frames.append(frame)
            size += len(frame)
        self.queued_bytes -= size
        return b"".join(frames)

    def _write_blocked(self) -> None:
        """Only for a socket that was full: wait for it, then write the rest.

        Batches of about ``WRITE_CHUNK`` keep the queue's length a true
        measure of what waits, and show the node this socket's progress.
        """
        gauge = self.gauge
        data = b""
        try:
            while (self.head or self.queue) and not self.finished:
                data = self._next_batch()
                self._send_all(data)
                gauge.dequeued(len(data), drained=True)
                data = b""
                self.last_progress = time.monotonic()
                if gauge.is_pressured(self) and (
                    len(self.queue) <= self.max_messages // 4
                    and self.queued_bytes <= self.max_bytes // 4
                ):
                    self._relieve()
        except OSError:
            gauge.dequeued(len(data))
            self._lost()
            return
        finally:
            self.blocked = False
            gauge.unblocked()
        self._relieve()
        if self.closing:
            self._half_close()

    def _send_all(self, data: bytes) -> None:
        """Send everything, waiting for the socket to drain when it is full."""
        raw = self.raw
        hub = self._gevent.get_hub()
        view = memoryview(data)
        while view:
            try:
                sent = raw.send(view)
            except BlockingIOError:
                sent = 0
            view = view[sent:]
            if view:
                if self.write_watcher is None:
                    self.write_watcher = hub.loop.io(raw.fileno(), 2)
                hub.wait(self.write_watcher)  # raises if _finish cancels it

    def close(self, code: int, reason: str = "") -> None:
        if self.closing:
            return
        self.closing = True
        self._relieve()
        if self.blocked:
            # Drop what a slow client had not read; its close frame goes next.
            self.gauge.dequeued(self.queued_bytes)
            self.queue.clear()
        frame = self.closing_bytes(code, reason)
        self.queue.append(frame)
        self.queued_bytes = len(frame)
        if self.blocked:
            self.gauge.queued(len(frame))
            self._gevent.spawn_later(SLOWCLOSE_GRACE, self._finish)
        else:
            self.flush()
        self._detach_from_node()

    def _detach_from_node(self) -> None:
        if not self.conn.closed:
            self.node.disconnect(self.conn)

    def _half_close(self) -> None:
        """The close frame is out: stop sending, read and drop until the peer
        closes too. Closing at once could reset the connection while the client
        still has unread frames, and it would never see our last message."""
        if self.draining or self.finished or self.raw is None:
            return
        self.draining = True
        try:
            self.raw.shutdown(socket.SHUT_WR)
        except OSError:
            self._finish()
            return
        self._gevent.spawn_later(CLOSE_GRACE, self._finish)

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._relieve()
        if self.watcher is not None:
            self.watcher.stop()
        if self.blocked:
            self.gauge.dequeued(len(self.head) + self.queued_bytes)
        self.head = b""
        self.queue.clear()
        self.queued_bytes = 0
        if self.write_watcher is not None:
            # A writer waiting on this socket is woken with an error first;
            # the descriptor is closed after that, never under a live watcher
            # (loop callbacks run in order).
            hub = self._gevent.get_hub()
            hub.cancel_wait(self.write_watcher, OSError("connection closed"), True)
            self.write_watcher = None
            hub.loop.run_callback(self._close_socket)
        else:
            self._close_socket()
        if not self.conn.closed:
            self.node.disconnect(self.conn)

    def _close_socket(self) -> None:
        if self.raw is not None:
            try:
                self.raw.close()
            except OSError:  # pragma: no cover
                pass

    def _lost(self) -> None:
        """The peer went away without a close handshake."""
        self.closing = True
        self._finish()

    # reading ---------------------------------------------------------------

    def _readable(self) -> None:
        if self.finished:
            return
        try:
            data = self.raw.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self._lost()
            return
        if not data:
            self._lost()
            return
        if self.closing:
            return  # dropped: we are waiting for the peer to close
        self.received(data)
