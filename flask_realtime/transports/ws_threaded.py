"""Server adapter: the threaded WebSocket fallback, for ``flask run``.

Werkzeug's development server has no event loop to hand a socket to, and a
TLS socket under gevent must stay inside its SSL object: there the
request's thread (or greenlet) reads frames and a second one writes the
connection's queue. Used only where :mod:`.socket_session` cannot be.
"""

from __future__ import annotations

import socket
import threading
import typing as t

from .. import protocol
from .._runtime import gevent_active
from .._ws_frames import close_frame
from ..connection import Connection, Sink, as_ws_frame
from .socket_session import CLOSE_GRACE, READ_SIZE
from .ws_session import WebSocketProtocol

if t.TYPE_CHECKING:
    from ..node import Node


class ThreadedWebSocket(WebSocketProtocol, Sink):
    """A reader (the request's thread) and a writer thread.

    The bound applies while the writer is inside ``sendall``: only a socket
    that is full makes a client slow, not frames waiting for the writer
    thread to be scheduled.
    """

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
                    conn.backed_up = True
                try:
                    self.sock.sendall(data)
                finally:
                    conn.backed_up = False
                if last:
                    break
            # Close frame sent: half-close, give the reader time to see the
            # peer's close, then cut the connection (see SocketSession).
            self.sock.shutdown(socket.SHUT_WR)
            self.reader_done.wait(CLOSE_GRACE)
        except OSError:
            pass
        finally:
            self.finished = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

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
