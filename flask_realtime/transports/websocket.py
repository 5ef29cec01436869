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
import socket
import threading
import time
import typing as t
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
from ._http import Finished as _Finished
from ._http import Refused, identify, json_error, origin_allowed
from ._socket_session import (
    CLOSE_GRACE,
    READ_SIZE,
    TAKE_KEY,
    SocketSession,
    is_tls,
    take_over,
)

if t.TYPE_CHECKING:
    from ..node import Node

logger = logging.getLogger("flask_realtime")

_deferred_prefixes: set[str] = set()


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

        def take(head: bytes) -> t.Any:
            # The view writes the response head itself (a 101, or an SSE
            # stream's head) with the first bytes after it, in one write;
            # gevent-websocket's WebSocket object, which would go unused, is
            # never built. Then pywsgi is told a response went out and the
            # connection is not to be reused.
            handler.socket.sendall(head)
            status = head[9 : head.index(b"\r\n")]
            handler.status = status
            handler._orig_status = status.decode("latin-1")
            handler.code = int(status[:3])
            handler.headers_sent = True
            handler.close_connection = True
            return handler.socket

        take.socket = handler.socket  # type: ignore[attr-defined]
        environ[TAKE_KEY] = take
        return None

    WebSocketHandler.upgrade_websocket = upgrade_websocket  # type: ignore[method-assign]
    WebSocketHandler._realtime_hooked = True  # type: ignore[attr-defined]


_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _switching_protocols(key: str) -> bytes:
    accept = base64.b64encode(
        hashlib.sha1(key.strip().encode("ascii") + _GUID).digest()
    )
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
    take = environ.pop(TAKE_KEY, None)
    server_socket = take.socket if take is not None else environ.get("gunicorn.socket")
    detach = gevent_active() and not is_tls(server_socket)
    session = welcome = None
    if refusal is None and detach:
        session = _GeventSession(node)
        welcome = build_frame(OP_TEXT, session.open(user_id, user_info))
    try:
        sock, mode, welcomed = _handshake(environ, take, upgraded, welcome)
    except OSError:
        if session is not None:
            session.abandon()
        return _Finished("gevent")

    if refusal is not None:
        try:
            sock.sendall(close_frame(*refusal))
        except OSError:
            pass
        if mode == "werkzeug":
            sock.close()
        return _Finished(mode)
    if session is not None:
        if not welcomed:
            session.push_frame(t.cast(bytes, welcome))
        session.attach(take_over(sock))
        return _Finished(mode)
    # No event loop to hand the socket to (flask run), or a TLS socket that
    # must stay in its SSL object: this request's thread (or greenlet) reads,
    # another writes.
    threaded = _ThreadedSession(node, sock)
    threaded.start(user_id, user_info)
    threaded.run()
    return _Finished(mode)


def _handshake(
    environ: dict[str, t.Any], take: t.Any, upgraded: t.Any, welcome: bytes | None
) -> tuple[t.Any, str, bool]:
    """Answer the upgrade with whatever the server offers: ``(socket, mode,
    welcomed)``. Under gevent-websocket's worker the 101 and the welcome leave
    in one write (``welcomed``)."""
    if take is not None:
        key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "")
        return take(_switching_protocols(key) + (welcome or b"")), "gevent", True
    if upgraded is not None:
        upgraded.closed = True  # it must never write to the socket we take
        environ["wsgi.websocket"] = None
        return upgraded.handler.socket, "gevent", False
    from simple_websocket import Server

    ws = Server(environ, thread_class=_NoThread)
    return ws.sock, ws.mode, False


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


class _GeventSession(SocketSession, _Session):
    """A WebSocket on a socket of its own (see :mod:`._socket_session`)."""

    transport = "websocket"

    def __init__(self, node: Node) -> None:
        SocketSession.__init__(self, node)
        _Session.__init__(self, node)
        self.inbox: deque[bytes] = deque()
        self.worker: t.Any = None

    def encode(self, message: Outbound) -> bytes:
        return message.ws_frame

    def closing_bytes(self, code: int, reason: str) -> bytes:
        return close_frame(code, reason)

    def received(self, data: bytes) -> None:
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
            writer.join(CLOSE_GRACE)
            try:
                self.sock.close()
            except OSError:  # pragma: no cover
                pass
