"""Server adapter: the threaded WebSocket fallback, for ``flask run``.

Werkzeug's development server has no event loop to hand a socket to, and a
TLS socket under gevent must stay inside its SSL object: there the
request's thread (or greenlet) reads frames and a second one writes the
connection's queue. Used only where :mod:`.socket_session` cannot be.
"""

from __future__ import annotations

import socket
import threading
import time
import typing as t

from .. import protocol
from .._runtime import gevent_active
from .._ws_frames import close_frame
from ..connection import Connection, Sink, as_ws_frame
from .handoff import is_tls
from .socket_session import CLOSE_GRACE, READ_SIZE, SLOWCLOSE_GRACE
from .ws_session import WebSocketProtocol

if t.TYPE_CHECKING:
    from ..node import Node


class ThreadedWebSocket(WebSocketProtocol, Sink):
    """A reader (the request's thread) and a writer thread.

    The bound applies while the writer is inside ``sendall``: only a socket
    that is full makes a client slow, not frames waiting for the writer
    thread to be scheduled.
    """

    reports_written = True

    def __init__(self, node: Node, sock: socket.socket) -> None:
        self.node = node
        self.start_protocol(node)
        self.sock = sock
        lock = threading.RLock()
        self._lock = lock
        self.cond = threading.Condition(lock)
        self.reader_done = threading.Event()
        self.final_queued = False  # the close frame is in the queue
        self.finished = False
        self.last_read = time.monotonic()
        # A send that must not wait: on plain sockets where the OS has it
        # (not on TLS sockets, which refuse send flags).
        self.dontwait = (
            hasattr(socket, "MSG_DONTWAIT")
            and not is_tls(sock)
            and sock.gettimeout() is None  # (a timeout would make it wait)
        )

    def bind(self, conn: Connection) -> None:
        super().bind(conn)
        settings = self.node.settings
        conn.limit(settings.max_queue_messages, settings.max_queue_bytes)
        conn.encode = as_ws_frame
        if not gevent_active():
            # Broadcasts, the reader and the timer push from threads of
            # their own: the queue changes under the writer's lock.
            conn.lock = self._lock

    def start(self, user_id: t.Any, user_info: t.Any) -> None:
        self.node.open("websocket", self, user_id, user_info)

    # the seam --------------------------------------------------------------------

    def write(self, nbytes: int) -> None:
        with self.cond:
            self.cond.notify()

    def close(self, code: int, reason: str) -> None:
        conn = self.conn
        with self.cond:
            if code == protocol.CLOSE_TOO_SLOW:
                # What a slow client had not read is dropped; the rest (an
                # error explaining the close, say) still goes before the close.
                conn.drop()
            conn.put_last(close_frame(code, reason))
            self.final_queued = True
            self.cond.notify()
        if not conn.closed:
            self.node.disconnect(conn)

    # the threads -----------------------------------------------------------------

    def _writer(self) -> None:
        conn = self.conn
        try:
            while True:
                with self.cond:
                    while not conn.queue and not self.finished:
                        self.cond.wait()
                    if not conn.queue:
                        return
                    data = conn.take()
                    last = self.final_queued
                self._send(data)
                if last:
                    break
            # Close frame sent: half-close, give the reader time to see the
            # peer's close, then cut the connection (see SocketSession).
            self.sock.shutdown(socket.SHUT_WR)
            self._linger()
        except OSError:
            pass
        finally:
            self.finished = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _send(self, data: bytes) -> None:
        """Send ``data``; the queue's bound applies only while the socket is full.

        A first send that must not wait (``MSG_DONTWAIT``) tells a full socket
        from a writer thread that was merely slow to be scheduled: on a busy
        host, the reader could queue past the bound while the writer waited
        for the GIL with room in the socket, and close a client that reads.
        """
        conn = self.conn
        view = memoryview(data)
        if self.dontwait:
            try:
                view = view[self.sock.send(view, socket.MSG_DONTWAIT) :]
            except BlockingIOError:
                pass
            if not view:
                return
        conn.backed_up = True
        try:
            self.sock.sendall(view)
        finally:
            conn.backed_up = False

    def _linger(self) -> None:
        """After our close frame: wait for the peer's close while it still sends.

        A client that was sending when it was closed (a flood of pings, say)
        must get to read the close frame; cutting the connection under it
        would reset it instead. A silent peer gets ``CLOSE_GRACE``; one still
        sending, up to ``SLOWCLOSE_GRACE``.
        """
        give_up = time.monotonic() + SLOWCLOSE_GRACE
        while not self.reader_done.wait(CLOSE_GRACE / 10):
            now = time.monotonic()
            if now > give_up or now - self.last_read > CLOSE_GRACE:
                return

    def run(self) -> None:
        """Read until the peer or the writer ends the connection."""
        conn = self.conn
        writer = threading.Thread(target=self._writer, daemon=True)
        writer.start()
        try:
            while not self.finished:
                try:
                    data = self.sock.recv(READ_SIZE)
                except OSError:
                    break
                if not data:
                    break
                self.last_read = time.monotonic()
                if conn.closing:
                    continue  # dropped: waiting for the peer to close
                for text in self.data_received(data):
                    self.handle_text(text)
                self.close_if_pending()
        finally:
            self.reader_done.set()
            with self.cond:
                self.finished = True
                self.cond.notify()
            if not conn.closed:
                self.node.disconnect(conn)
            writer.join(CLOSE_GRACE)
            try:
                self.sock.close()
            except OSError:  # pragma: no cover
                pass
            self.node.written(conn)
