"""The WebSocket endpoint, on whichever WebSocket machinery the server has.

* gevent-websocket's worker (``GeventWebSocketWorker``, ``flask realtime
  serve``): its handler normally answers 101 before Flask runs. A small hook
  on its upgrade step defers the upgrade to our view for paths under our
  prefix, so a foreign origin or a malformed key gets a real HTTP status,
  and a bad ``Sec-WebSocket-Key`` no longer crashes it.
* Every other server (``gunicorn -k gevent``, ``flask run``):
  simple-websocket performs the handshake; its reader thread is not started.

After the handshake both paths speak frames through :mod:`._ws_frames`. Under
gevent the socket is then detached from the request: a duplicated file
descriptor and an event-loop watcher carry the connection, so an idle client
costs no greenlet, no request context and no stack. Without gevent
(``flask run``), a thread per connection reads and another writes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import socket
import threading
import time
import typing as t
from _socket import socket as _c_socket
from collections import deque

from flask import Response, request

from .. import protocol
from .._runtime import gevent_active
from .._ws_frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    PING_FRAME,
    FrameError,
    FrameParser,
    MessageTooLarge,
    build_frame,
    close_frame,
    parse_close,
)
from ..connection import Connection, Outbound
from ._http import Refused, identify, json_error, origin_allowed

if t.TYPE_CHECKING:
    from ..node import Node

logger = logging.getLogger("flask_realtime")

_ACCEPT_KEY = "flask_realtime.accept"
_deferred_prefixes: set[str] = set()
_READ_SIZE = 65536
_CLOSE_GRACE = 5.0  # seconds a closing socket may take to flush its close frame
# A client too slow for its queue still has the kernel's buffers to read
# before its close frame (4100) fits: it gets longer.
_SLOW_CLOSE_GRACE = 30.0
_WRITE_CHUNK = 64 * 1024


# -- handshake -----------------------------------------------------------------


def valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False


def defer_upgrades(prefix: str) -> None:
    """Make gevent-websocket leave upgrades under ``prefix`` to our view."""
    try:
        from geventwebsocket.handler import WebSocketHandler
    except ImportError:  # pragma: no cover - gevent-websocket is a dependency
        return
    _deferred_prefixes.add(prefix.rstrip("/") + "/")
    if getattr(WebSocketHandler, "_realtime_hooked", False):
        return
    original_upgrade = WebSocketHandler.upgrade_websocket

    def upgrade_websocket(handler: t.Any) -> t.Any:
        environ = handler.environ
        path = environ.get("PATH_INFO", "")
        if not any(path.startswith(p) for p in _deferred_prefixes):
            key = environ.get("HTTP_SEC_WEBSOCKET_KEY")
            if key is not None and not valid_key(key.strip()):
                # gevent-websocket would raise binascii.Error here.
                handler.start_response("400 Bad Request", [])
                return [b"invalid Sec-WebSocket-Key"]
            return original_upgrade(handler)

        def accept(first_frame: bytes) -> t.Any:
            # The view has checked the request. The 101 and the first frame
            # leave in one write, and gevent-websocket's WebSocket object,
            # which would go unused, is never built.
            key = environ["HTTP_SEC_WEBSOCKET_KEY"].strip()
            handler.socket.sendall(_switching_protocols(key) + first_frame)
            # What pywsgi reads after the view returns: a 101 already sent,
            # a connection not to be reused.
            handler.status = b"101 Switching Protocols"
            handler._orig_status = "101 Switching Protocols"
            handler.code = 101
            handler.headers_sent = True
            handler.close_connection = True
            return handler.socket

        environ[_ACCEPT_KEY] = accept
        return None

    WebSocketHandler.upgrade_websocket = upgrade_websocket  # type: ignore[method-assign]
    WebSocketHandler._realtime_hooked = True  # type: ignore[attr-defined]


_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _switching_protocols(key: str) -> bytes:
    accept = base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


class _NoThread:
    """simple-websocket starts a reader thread; we read frames ourselves."""

    def __init__(self, target: t.Any = None, **kwargs: t.Any) -> None:
        self.name = "unused"

    def start(self) -> None:
        pass


class _Finished(Response):
    """The response a WebSocket view returns once it gave its socket away.

    Each server needs a different way to hear that nothing is left to send.
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        self._mode = mode

    def __call__(self, environ: t.Any, start_response: t.Any) -> t.Any:
        if self._mode == "gunicorn":
            raise StopIteration()
        if self._mode == "werkzeug":
            return super().__call__(environ, start_response)
        return []


def websocket_view(node: Node, authenticate: t.Callable[..., t.Any] | None) -> Response:
    settings = node.settings
    if "websocket" not in settings.transports:
        return json_error(404, "the websocket transport is disabled")
    environ = request.environ
    upgraded = environ.get("wsgi.websocket")  # gevent-websocket without our hook
    if upgraded is None:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return json_error(400, "expected a WebSocket upgrade request")
        key = request.headers.get("Sec-WebSocket-Key", "").strip()
        if not valid_key(key):
            return json_error(400, "invalid Sec-WebSocket-Key")
        if request.headers.get("Sec-WebSocket-Version") != "13":
            response = json_error(426, "only WebSocket version 13 is supported")
            response.headers["Sec-WebSocket-Version"] = "13"
            return response
    origin_ok = origin_allowed(request.headers.get("Origin"), settings.allowed_origins)
    if not origin_ok and upgraded is None:
        return json_error(403, "origin not allowed")

    refusal: tuple[int, str] | None = None
    user_id = user_info = None
    if not origin_ok:
        refusal = (protocol.CLOSE_ORIGIN_NOT_ALLOWED, "origin not allowed")
    elif node.shutting_down:
        # Until the server stops listening, newcomers are sent on at once.
        refusal = (protocol.CLOSE_SHUTDOWN, "server shutting down")
    else:
        try:
            user_id, user_info = identify(authenticate)
        except Refused:
            refusal = (protocol.CLOSE_AUTH_FAILED, "authentication failed")

    # -- the handshake --------------------------------------------------------
    accept = environ.pop(_ACCEPT_KEY, None)
    if accept is not None and refusal is None and gevent_active():
        # gevent-websocket's worker: the fast path, one write for the 101 and
        # the welcome.
        session = _GeventSession(node)
        welcome = session.open(user_id, user_info)
        try:
            sock = accept(build_frame(OP_TEXT, welcome))
        except OSError:
            session.abandon()
            return _Finished("gevent")
        session.attach(_take_over(sock))
        return _Finished("gevent")
    if accept is not None:
        sock = accept(b"")
        mode = "gevent"
    elif upgraded is not None:
        sock = upgraded.handler.socket
        upgraded.closed = True  # it must never write to the socket we take
        environ["wsgi.websocket"] = None
        mode = "gevent"
    else:
        from simple_websocket import Server

        ws = Server(environ, thread_class=_NoThread)
        sock, mode = ws.sock, ws.mode

    if refusal is not None:
        try:
            sock.sendall(close_frame(*refusal))
        except OSError:
            pass
        if mode == "werkzeug":
            sock.close()
        return _Finished(mode)

    if gevent_active():
        session = _GeventSession(node)
        welcome = session.open(user_id, user_info)
        session.push_frame(build_frame(OP_TEXT, welcome))
        session.attach(_take_over(sock))
        return _Finished(mode)
    threaded = _ThreadedSession(node, sock)
    threaded.start(user_id, user_info)
    threaded.run()
    return _Finished(mode)


def _take_over(sock: t.Any) -> t.Any:
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


# -- sessions ------------------------------------------------------------------


class _Session:
    """Reads frames into the node, writes the node's messages as frames."""

    conn: Connection

    def __init__(self, node: Node) -> None:
        self.node = node
        settings = node.settings
        self.parser = FrameParser(settings.max_message_size)
        self.max_messages = settings.max_queue_messages
        self.max_bytes = settings.max_queue_bytes
        self.closing = False

    def start(self, user_id: t.Any, user_info: t.Any) -> None:
        self.conn = self.node.open("websocket", self, user_id, user_info)  # type: ignore[arg-type]

    def push(self, message: Outbound) -> None:
        raise NotImplementedError

    def push_frame(self, frame: bytes) -> None:
        raise NotImplementedError

    def close(self, code: int, reason: str = "") -> None:
        raise NotImplementedError

    def tick(self, conn: Connection, now: float, heartbeat: float) -> None:
        idle = now - conn.last_seen
        if idle > 2 * heartbeat:
            self.close(protocol.CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout")
        elif idle >= heartbeat:
            self.push_frame(PING_FRAME)

    def data_received(self, data: bytes) -> list[bytes]:
        """Parse frames; answer control frames; return admitted text messages."""
        conn = self.conn
        conn.last_seen = time.monotonic()
        try:
            frames = self.parser.feed(data)
        except MessageTooLarge as exc:
            self.push_frame(
                build_frame(
                    OP_TEXT,
                    protocol.error(
                        protocol.TOO_LARGE,
                        f"message too large (limit {exc.limit} bytes)",
                    ),
                )
            )
            self.close(protocol.CLOSE_TOO_LARGE, "message too large")
            return []
        except FrameError as exc:
            self.close(exc.code, exc.reason)
            return []
        texts: list[bytes] = []
        for opcode, payload in frames:
            if opcode == OP_TEXT:
                refusal = self.node.admit(conn, payload)
                if refusal is None:
                    texts.append(payload)
                else:
                    self.push_frame(build_frame(OP_TEXT, refusal))
            elif opcode == OP_PING:
                self.push_frame(build_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                code = parse_close(payload)
                self.close(protocol.CLOSE_NORMAL if code == 1005 else code, "")
                break
            elif opcode == OP_BINARY:
                self.push_frame(
                    build_frame(
                        OP_TEXT,
                        protocol.error(
                            protocol.BAD_REQUEST, "binary frames are not supported"
                        ),
                    )
                )
            # pongs only refresh last_seen
        return texts

    def handle_text(self, payload: bytes) -> None:
        reply = self.node.receive(self.conn, payload)
        if reply is not None:
            self.push_frame(build_frame(OP_TEXT, reply))


class _Flusher:
    """Writes what broadcasts queued, once per pass of the event loop.

    Broadcasts only append frames to queues; the flush runs when the
    publishing greenlet yields, so several messages for one socket leave in
    one ``send``. When a flush is overdue by more than ``_INLINE_BYTES`` the
    publisher does it itself, which slows a publisher that outruns the CPU.
    """

    _INLINE_BYTES = 512 * 1024

    def __init__(self) -> None:
        import gevent

        self._loop = gevent.get_hub().loop
        self._pending: list[_GeventSession] = []
        self._pending_bytes = 0
        self._scheduled = False

    def add(self, session: _GeventSession, size: int) -> None:
        self._pending.append(session)
        self._pending_bytes += size
        if not self._scheduled:
            self._scheduled = True
            self._loop.run_callback(self.flush)

    def grew(self, size: int) -> None:
        self._pending_bytes += size
        if self._pending_bytes > self._INLINE_BYTES:
            self.flush()

    def flush(self) -> None:
        pending = self._pending
        self._pending = []
        self._pending_bytes = 0
        self._scheduled = False
        for session in pending:
            session.flush()


_flushers: dict[int, _Flusher] = {}


def _flusher() -> _Flusher:
    pid = os.getpid()
    flusher = _flushers.get(pid)
    if flusher is None:
        flusher = _flushers[pid] = _Flusher()
    return flusher


class _GeventSession(_Session):
    """A detached socket: a read watcher, a queue, a writer only when blocked."""

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        import gevent

        self._gevent = gevent
        self.raw: t.Any = None  # a non-blocking C socket
        self.watcher: t.Any = None
        self.write_watcher: t.Any = None  # only while the socket is full
        self.queue: deque[bytes] = deque()  # whole frames not yet written
        self.queued_bytes = 0
        self.head = b""  # the partly written rest of a write, goes first
        self.scheduled = False
        self.blocked = False  # a writer greenlet waits for the socket
        self.pressured = False  # queue past half its bound (see Node.pressured)
        self.last_progress = 0.0
        self.inbox: deque[bytes] = deque()
        self.worker: t.Any = None
        self.flusher = _flusher()
        self.draining = False
        self.finished = False

    def open(self, user_id: t.Any, user_info: t.Any) -> bytes:
        """Register the connection; returns its ``connected`` message, which
        the caller writes (with the handshake, when it can)."""
        self.conn = self.node.open("websocket", self, user_id, user_info, welcome=False)
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
        frame = message.ws_frame
        self.queue.append(frame)
        size = len(frame)
        self.queued_bytes += size
        if self.blocked:
            self.node.backlog_bytes += size
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
            self.node.backlog_bytes += len(frame)
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
        elif not self.pressured and (
            count > self.max_messages // 2 or size > self.max_bytes // 2
        ):
            self.pressured = True
            self.node.pressured.add(self)

    def _relieve(self) -> None:
        if self.pressured:
            self.pressured = False
            self.node.pressured.discard(self)

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
            self.node.backlog_bytes += len(self.head)
            self.node.blocked_sessions += 1
            self.blocked = True
            self.last_progress = time.monotonic()
            self._gevent.spawn(self._write_blocked)
        elif self.closing:
            self._half_close()

    def _next_batch(self) -> bytes:
        """The head, else frames from the queue up to about ``_WRITE_CHUNK``."""
        if self.head:
            data, self.head = self.head, b""
            return data
        queue = self.queue
        frames = []
        size = 0
        while queue and size < _WRITE_CHUNK:
            frame = queue.popleft()
            frames.append(frame)
            size += len(frame)
        self.queued_bytes -= size
        return b"".join(frames)

    def _write_blocked(self) -> None:
        """Only for a socket that was full: wait for it, then write the rest.

        Batches of about ``_WRITE_CHUNK`` keep the queue's length a true
        measure of what waits, and show the node this socket's progress.
        """
        node = self.node
        data = b""
        try:
            while (self.head or self.queue) and not self.finished:
                data = self._next_batch()
                self._send_all(data)
                node.backlog_bytes -= len(data)
                node.drained_bytes += len(data)
                data = b""
                self.last_progress = time.monotonic()
                if self.pressured and (
                    len(self.queue) <= self.max_messages // 4
                    and self.queued_bytes <= self.max_bytes // 4
                ):
                    self._relieve()
        except OSError:
            node.backlog_bytes -= len(data)
            self._lost()
            return
        finally:
            self.blocked = False
            node.blocked_sessions -= 1
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
            self.node.backlog_bytes -= self.queued_bytes
            self.queue.clear()
        frame = close_frame(code, reason)
        self.queue.append(frame)
        self.queued_bytes = len(frame)
        if self.blocked:
            self.node.backlog_bytes += len(frame)
            self._gevent.spawn_later(_SLOW_CLOSE_GRACE, self._finish)
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
        self._gevent.spawn_later(_CLOSE_GRACE, self._finish)

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._relieve()
        if self.watcher is not None:
            self.watcher.stop()
        if self.blocked:
            self.node.backlog_bytes -= len(self.head) + self.queued_bytes
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
            data = self.raw.recv(_READ_SIZE)
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
        texts = self.data_received(data)
        if texts:
            self.inbox.extend(texts)
            if self.worker is None:
                self.worker = self._gevent.spawn(self._drain)

    def _drain(self) -> None:
        """Client messages run in a greenlet: authorizers and handlers may block."""
        try:
            while self.inbox and not self.conn.closed:
                self.handle_text(self.inbox.popleft())
        except Exception:  # pragma: no cover - receive() handles app errors
            logger.exception("flask_realtime: error handling a client message")
        finally:
            self.worker = None
            if self.inbox and not self.conn.closed:
                self.worker = self._gevent.spawn(self._drain)


class _ThreadedSession(_Session):
    """For servers without gevent (``flask run``): a reader and a writer thread."""

    def __init__(self, node: Node, sock: socket.socket) -> None:
        super().__init__(node)
        self.sock = sock
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.cond = threading.Condition()
        self.reader_done = threading.Event()
        self.sending = False  # the writer is inside sendall
        self.finished = False

    def push(self, message: Outbound) -> None:
        self.push_frame(message.ws_frame)

    def push_frame(self, frame: bytes, *, final: bool = False) -> None:
        with self.cond:
            if self.closing and not final:
                return
            self.queue.append(frame)
            self.queued_bytes += len(frame)
            # Only a socket that is full makes a client slow; frames waiting
            # for the writer thread to be scheduled do not.
            over = self.sending and (
                len(self.queue) > self.max_messages
                or self.queued_bytes > self.max_bytes
            )
            self.cond.notify()
        if over and not final:
            self.close(protocol.CLOSE_TOO_SLOW, "too slow")

    def close(self, code: int, reason: str = "") -> None:
        with self.cond:
            if self.closing:
                return
            self.closing = True
            if code == protocol.CLOSE_TOO_SLOW:
                # What a slow client had not read is dropped; the rest (an
                # error explaining the close, say) still goes before the close.
                self.queue.clear()
                self.queued_bytes = 0
        self.push_frame(close_frame(code, reason), final=True)
        if not self.conn.closed:
            self.node.disconnect(self.conn)

    def _writer(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.finished:
                        self.cond.wait()
                    if not self.queue:
                        return
                    data = b"".join(self.queue)
                    self.queue.clear()
                    self.queued_bytes = 0
                    closing = self.closing
                    self.sending = True
                try:
                    self.sock.sendall(data)
                finally:
                    self.sending = False
                if closing:
                    break
            # Close frame sent: half-close, give the reader time to see the
            # peer's close, then cut the connection (see _half_close above).
            self.sock.shutdown(socket.SHUT_WR)
            self.reader_done.wait(_CLOSE_GRACE)
        except OSError:
            pass
        finally:
            self.finished = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def run(self) -> None:
        writer = threading.Thread(target=self._writer, daemon=True)
        writer.start()
        try:
            while not self.finished:
                try:
                    data = self.sock.recv(_READ_SIZE)
                except OSError:
                    break
                if not data:
                    break
                if self.closing:
                    continue  # dropped: waiting for the peer to close
                for text in self.data_received(data):
                    self.handle_text(text)
        finally:
            self.reader_done.set()
            with self.cond:
                self.finished = True
                self.cond.notify()
            if not self.conn.closed:
                self.node.disconnect(self.conn)
            writer.join(_CLOSE_GRACE)
            try:
                self.sock.close()
            except OSError:  # pragma: no cover
                pass
