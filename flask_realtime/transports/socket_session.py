"""Server adapter: a connection on a detached socket, under gevent.

After its handshake (or response head) a WebSocket or SSE connection leaves
the server's request handling (:mod:`.handoff`): the session keeps the file
descriptor as a plain C socket, one event-loop watcher reads it, and the
node's flusher (:mod:`.flusher`) writes each socket's queued frames with one
non-blocking ``send``. An idle connection costs no greenlet, no request
context and no stack. Used wherever gevent runs and the server lets the
socket go; elsewhere the endpoints fall back to threads or streaming.

The queue and its bound are the connection's (:mod:`..connection`). This
adapter moves bytes from it to the wire, and reports sockets that are full
to the node's pressure gauge (``node.pressure``), which slows publishers
when clients as a whole cannot keep up.
"""

from __future__ import annotations

import socket
import time
import typing as t

from ..connection import Connection, Outbound, Sink
from ..protocol import CLOSE_TOO_SLOW
from .flusher import flusher
from .progress import Progress

if t.TYPE_CHECKING:
    from ..node import Node

READ_SIZE = 65536
CLOSE_GRACE = 5.0  # seconds a closing socket may take to flush its last bytes
# A client too slow for its queue still has the kernel's buffers to read
# before its close frame (4100) fits: it gets longer.
SLOWCLOSE_GRACE = 30.0
WRITE_CHUNK = 64 * 1024


class SocketSession(Progress, Sink):
    """A connection that owns its socket: a read watcher, and a writer
    greenlet only while the socket is full.

    Subclasses say how a message is encoded (:meth:`encode`), what to do
    with bytes the client sends, and what to send last: WebSocket frames,
    or SSE events.
    """

    transport = ""
    reports_written = True

    def __init__(self, node: Node) -> None:
        import gevent

        self.node = node
        self.gauge = node.pressure
        self._gevent = gevent
        self.raw: t.Any = None  # a non-blocking C socket
        self.watcher: t.Any = None
        self.write_watcher: t.Any = None  # only while the socket is full
        self.head = b""  # the partly written rest of a write, goes first
        self.scheduled = False  # on the flusher's list
        self.last_progress = 0.0
        self.flusher = flusher()
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

    def bind(self, conn: Connection) -> None:
        super().bind(conn)
        settings = self.node.settings
        conn.limit(settings.max_queue_messages, settings.max_queue_bytes)
        conn.encode = self.encode

    def open(self, user_id: t.Any, user_info: t.Any, **options: t.Any) -> bytes:
        """Register the connection; returns its ``connected`` message, which
        the caller writes (with the response head, in one write)."""
        conn = self.node.open(
            self.transport, self, user_id, user_info, welcome=False, **options
        )
        return self.node.welcome(conn)

    def attach(self, raw: t.Any) -> None:
        """Start reading and writing on the socket, now that it is ours."""
        self.raw = raw
        self.watcher = self._gevent.get_hub().loop.io(raw.fileno(), 1)
        self.watcher.start(self._readable)
        conn = self.conn
        if conn.closing:
            self.flush()
        elif conn.queue and not self.scheduled:
            self.scheduled = True
            self.flusher.add(self, conn.queued_bytes)

    def abandon(self) -> None:
        """The handshake failed: the connection never existed."""
        self.conn.closing = self.finished = True
        self._detach_from_node()
        self.node.written(self.conn)

    # writing (the seam) -------------------------------------------------------

    def write(self, nbytes: int) -> None:
        # (A session is never both on the flusher's list and backed up: the
        # flush that finds the socket full takes it off the list.)
        if self.scheduled:
            self.flusher.grew(nbytes)
        elif self.conn.backed_up:
            # The socket is full: the writer greenlet takes it from here.
            self.gauge.queued(nbytes)
            if self.conn.past(2) and not self.gauge.is_pressured(self):
                self.gauge.pressured(self)
        else:
            self.scheduled = True
            self.flusher.add(self, nbytes)

    def flush(self) -> None:
        self.scheduled = False
        conn = self.conn
        if conn.backed_up or self.finished or not conn.queue or self.raw is None:
            return  # (before attach, attach flushes)
        data = conn.take()
        try:
            sent = self.raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lost()
            return
        self.sent += sent
        if sent < len(data):
            # The unsent tail may end in the middle of a frame: it is kept
            # apart from the queue, which a 4100 close empties.
            self.head = data[sent:]
            self.gauge.queued(len(self.head))
            self.gauge.blocked(self)
            conn.backed_up = True
            self.filled(time.monotonic())
            self._gevent.spawn(self._write_blocked)
        elif conn.closing:
            self._half_close()

    def _next_batch(self) -> bytes:
        """The head, else frames from the queue up to about ``WRITE_CHUNK``."""
        if self.head:
            data, self.head = self.head, b""
            return data
        return self.conn.take_some(WRITE_CHUNK)

    def _write_blocked(self) -> None:
        """Only for a socket that was full: wait for it, then write the rest.

        Batches of about ``WRITE_CHUNK`` keep the queue's length a true
        measure of what waits, and show the node this socket's progress.
        """
        gauge = self.gauge
        conn = self.conn
        data = b""
        try:
            while (self.head or conn.queue) and not self.finished:
                data = self._next_batch()
                self._send_all(data)
                gauge.dequeued(len(data), drained=True)
                data = b""
                now = self.last_progress = time.monotonic()
                if gauge.is_pressured(self):  # one ioctl a batch, not a frame
                    gauge.report(self, self.lag(now))
        except OSError:
            gauge.dequeued(len(data))
            self._lost()
            return
        finally:
            conn.backed_up = False
            gauge.unblocked(self)
        if gauge.is_pressured(self):  # relieved once under a quarter behind
            gauge.report(self, self.lag(time.monotonic()))
        if conn.closing:
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
            self.sent += sent
            view = view[sent:]
            if view:
                if self.write_watcher is None:
                    self.write_watcher = hub.loop.io(raw.fileno(), 2)
                hub.wait(self.write_watcher)  # raises if _finish cancels it

    # closing -------------------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        conn = self.conn
        self.gauge.relieved(self)
        self.gauge.unblocked(self)  # it takes no more: the gauge forgets it
        if conn.backed_up and code == CLOSE_TOO_SLOW:
            # Drop what a slow client had not read; its close frame goes next.
            # Any other close (4200 at shutdown, say) sends what is queued
            # first: the queue is bounded, and the close waits its turn.
            self.gauge.dequeued(conn.drop())
        frame = self.closing_bytes(code, reason)
        conn.put_last(frame)
        if conn.backed_up:
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
        conn = self.conn
        self.gauge.relieved(self)
        if self.watcher is not None:
            self.watcher.stop()
        if conn.backed_up:
            self.gauge.dequeued(len(self.head) + conn.queued_bytes)
        self.head = b""
        conn.drop()
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
        self._detach_from_node()
        self.node.written(conn)

    def _close_socket(self) -> None:
        if self.raw is not None:
            try:
                self.raw.close()
            except OSError:  # pragma: no cover
                pass

    def _lost(self) -> None:
        """The peer went away without a close handshake."""
        self.conn.closing = True
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
        if self.conn.closing:
            return  # dropped: we are waiting for the peer to close
        self.received(data)
