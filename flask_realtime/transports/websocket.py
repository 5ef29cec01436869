"""The WebSocket endpoint, on whichever WebSocket machinery the server has.

The handshake does not go through Flask's dispatch, which cost about a third
of the server's CPU per connect. :func:`install` puts a small WSGI
middleware in front of the app's own ``wsgi_app``: a GET upgrade request for
the WebSocket path is answered there, without URL routing,
``before_request`` / ``after_request`` hooks, signals or response
processing. A request context is pushed only around the app's
``authenticate`` callback (so ``request`` and the Flask session work there,
and teardown functions run after it); with no callback, none is pushed.
Every other request goes to Flask unchanged, and so does the rare handshake
the middleware leaves alone (see :class:`_Handshake`), which the blueprint's
view serves the same way, hooks included.

The 101 is written by us on every server, with no extension negotiated:

* gevent-websocket's worker (``GeventWebSocketWorker``, ``flask realtime
  serve``): its handler normally answers 101 before the app runs. A small
  hook on its upgrade step leaves upgrades under our prefix to us, so a
  foreign origin or a malformed key gets a real HTTP status, and a bad
  ``Sec-WebSocket-Key`` no longer crashes it.
* ``gunicorn -k gevent`` and ``flask run``: on the socket the server puts in
  the environ (``gunicorn.socket``, ``werkzeug.socket``).
* Any other server: simple-websocket performs the handshake.

Under gevent the 101 and the ``connected`` message leave in one write, and
the socket is then detached from the request: a plain socket and an
event-loop watcher carry the connection, so an idle client costs no
greenlet, no request context and no stack. Without gevent (``flask run``),
a thread per connection reads and another writes.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import hashlib
import inspect
import json
import logging
import os
import socket
import threading
import time
import typing as t
from collections import deque

from flask import Flask, Response, request
from flask.ctx import RequestContext
from werkzeug.exceptions import SecurityError
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import Rule
from werkzeug.wsgi import get_host

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
from ._http import Refused, identify, json_error
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

WSGIEnviron = dict[str, t.Any]
StartResponse = t.Callable[..., t.Any]


# -- installing ----------------------------------------------------------------


def install(
    app: Flask, node: Node, authenticate: t.Callable[[], t.Callable[..., t.Any] | None]
) -> None:
    """Serve ``app``'s WebSocket handshake ahead of Flask's dispatch.

    Called by ``init_app`` after the blueprint is registered. The middleware
    must sit directly on Flask's own ``wsgi_app``: WSGI middleware the app
    wraps around it later (ProxyFix, say) still runs before it. When
    ``app.wsgi_app`` is already wrapped (or overridden) at this point, the
    handshake keeps going through Flask's dispatch to the blueprint's view,
    hooks included, so that the wrapper is not skipped.
    """
    defer_upgrades(node.settings.url_prefix or "/")
    wsgi_app = app.wsgi_app
    if (
        getattr(wsgi_app, "__func__", None) is not Flask.wsgi_app
        or getattr(wsgi_app, "__self__", None) is not app
    ):
        return
    rule = next(iter(app.url_map.iter_rules("realtime.websocket")))
    if "<" in rule.rule:  # pragma: no cover - configured paths are static
        return
    app.wsgi_app = _Handshake(app, wsgi_app, node, authenticate, rule)  # type: ignore[method-assign]


def _is_upgrade(environ: WSGIEnviron) -> bool:
    """A WebSocket upgrade, as Werkzeug's routing decides it."""
    if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
        return False
    return any(
        v.strip(" \t") == "upgrade"
        for v in environ.get("HTTP_CONNECTION", "").lower().split(",")
    )


class _Handshake:
    """The WSGI middleware :func:`install` puts on ``app.wsgi_app``.

    It takes a request only when Flask would route it to the WebSocket view:
    exactly the WebSocket path (``PATH_INFO``), ``GET``, an upgrade, and a
    socket it knows how to take (gevent-websocket's, gunicorn's or
    Werkzeug's). Apps with host or subdomain matching (or, before Flask 3.1,
    a ``SERVER_NAME``), and hosts outside ``TRUSTED_HOSTS``, are left to
    Flask, which answers them as before.
    """

    def __init__(
        self,
        app: Flask,
        wsgi_app: t.Callable[[WSGIEnviron, StartResponse], t.Any],
        node: Node,
        authenticate: t.Callable[[], t.Callable[..., t.Any] | None],
        rule: Rule,
    ) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.node = node
        self.authenticate = authenticate
        self.rule = rule
        # PATH_INFO holds the path's UTF-8 bytes as latin-1 characters.
        self.path = rule.rule.encode("utf-8").decode("latin-1")

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> t.Any:
        if (
            environ.get("PATH_INFO") != self.path
            or environ.get("REQUEST_METHOD") != "GET"
            or "wsgi.websocket" in environ
            or not _is_upgrade(environ)
            or not (
                TAKE_KEY in environ
                or "gunicorn.socket" in environ
                or "werkzeug.socket" in environ
            )
        ):
            return self.wsgi_app(environ, start_response)
        app = self.app
        if (
            app.url_map.host_matching
            or app.subdomain_matching
            # Before Flask 3.1 (which added TRUSTED_HOSTS), SERVER_NAME
            # restricted routing to that host.
            or (app.config.get("SERVER_NAME") and "TRUSTED_HOSTS" not in app.config)
        ):
            return self.wsgi_app(environ, start_response)
        trusted = app.config.get("TRUSTED_HOSTS")
        if trusted is not None:
            try:
                get_host(environ, trusted)
            except SecurityError:
                return self.wsgi_app(environ, start_response)
        try:
            refused, mode = self._handshake(environ, trusted)
        except Exception as exc:
            # As Flask would: log it, the app's 500 handler answers.
            with app.request_context(environ):
                response = app.handle_exception(exc)
            return response(environ, start_response)
        if refused is not None:
            return _error(environ, start_response, *refused)
        if mode == "gunicorn":
            raise StopIteration()  # gunicorn: nothing more to send, close
        if mode == "werkzeug":
            return _Finished(mode)(environ, start_response)
        return []

    def _handshake(
        self, environ: WSGIEnviron, trusted: t.Any
    ) -> tuple[tuple[int, str] | None, str]:
        """``(status, message)`` refusing the upgrade, or how it ended."""
        node = self.node
        refused = _refuse(node, environ, trusted)
        if refused is not None:
            return refused, ""
        refusal: tuple[int, str] | None = None
        user_id = user_info = None
        authenticate = self.authenticate()
        if node.shutting_down:
            # Until the server stops listening, newcomers are sent on at once.
            refusal = (protocol.CLOSE_SHUTDOWN, "server shutting down")
        elif authenticate is not None:
            if _SHORT_CONTEXT:
                context = _HandshakeContext(self.app, environ)
                context.rule = self.rule
            else:  # pragma: no cover - a Flask whose contexts differ
                context = self.app.request_context(environ)
            context.push()
            try:
                user_id, user_info = identify(authenticate)
            except Refused:
                refusal = (protocol.CLOSE_AUTH_FAILED, "authentication failed")
            finally:
                context.pop()
        return None, _accept(node, environ, None, refusal, user_id, user_info)


_UNOPENED: t.Any = object()
# The shortcuts below rely on how Flask 3.0 and 3.1 build a request context.
_SHORT_CONTEXT = hasattr(RequestContext, "match_request") and (
    "session" in inspect.signature(RequestContext.__init__).parameters
)


class _HandshakeContext(RequestContext):
    """The request context ``authenticate`` runs in.

    What Flask's would be, with two shortcuts: the URL is not matched again
    (the middleware found the route: ``request.url_rule`` and
    ``request.endpoint`` are set as routing would set them), and the session
    is opened when it is first used rather than on ``push()``, so a callback
    that identifies users without it (a token, a header) does not pay for
    loading it.
    """

    rule: Rule | None = None

    def __init__(
        self,
        app: Flask,
        environ: WSGIEnviron,
        request: t.Any = None,
        session: t.Any = _UNOPENED,
    ) -> None:
        super().__init__(app, environ, request, session)

    def match_request(self) -> None:
        if self.rule is None:  # pragma: no cover - a copy() of this context
            super().match_request()
        else:
            self.request.url_rule, self.request.view_args = self.rule, {}

    @property
    def session(self) -> t.Any:
        if self._session is _UNOPENED:
            interface = self.app.session_interface
            opened = interface.open_session(self.app, self.request)
            if opened is None:  # (an empty session is falsy, and valid)
                opened = interface.make_null_session(self.app)
            self._session = opened
        self._session.accessed = True  # type: ignore[union-attr]
        return self._session


# -- handshake -----------------------------------------------------------------


def valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False


def defer_upgrades(prefix: str) -> None:
    """Make gevent-websocket leave upgrades under ``prefix`` to us."""
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
            # The response head (a 101, or an SSE stream's head) goes with the
            # first bytes after it, in one write; gevent-websocket's WebSocket
            # object, which would go unused, is never built. Then pywsgi is
            # told a response went out and the connection is not to be reused.
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


def _refuse(
    node: Node, environ: WSGIEnviron, trusted_hosts: t.Any
) -> tuple[int, str] | None:
    """The HTTP status refusing an upgrade request before any 101, if any."""
    settings = node.settings
    if "websocket" not in settings.transports:
        return 404, "the websocket transport is disabled"
    if not valid_key(environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()):
        return 400, "invalid Sec-WebSocket-Key"
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION") != "13":
        return 426, "only WebSocket version 13 is supported"
    if not _origin_allowed(environ, settings.allowed_origins, trusted_hosts):
        return 403, "origin not allowed"
    return None


def _origin_allowed(
    environ: WSGIEnviron, allowed: tuple[str, ...], trusted_hosts: t.Any
) -> bool:
    """``_http.origin_allowed`` on the environ: same origin always, others
    when listed (``"*"``: any); no ``Origin`` header passes."""
    origin = environ.get("HTTP_ORIGIN")
    if not origin:
        return True
    origin = origin.rstrip("/")
    if "*" in allowed or origin in allowed:
        return True
    host = get_host(environ, trusted_hosts)
    return origin == f"{environ['wsgi.url_scheme']}://{host}"


def _error(
    environ: WSGIEnviron, start_response: StartResponse, status: int, message: str
) -> list[bytes]:
    """What ``json_error`` answers, without a Flask response object."""
    body = (
        json.dumps(
            {"error": {"code": status, "message": message}}, separators=(",", ":")
        ).encode()
        + b"\n"
    )
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
    ]
    if status == 426:
        headers.append(("Sec-WebSocket-Version", "13"))
    start_response(f"{status} {HTTP_STATUS_CODES[status]}", headers)
    return [body]


class _NoThread:
    """simple-websocket starts a reader thread; we read frames ourselves."""

    def __init__(self, target: t.Any = None, **kwargs: t.Any) -> None:
        self.name = "unused"

    def start(self) -> None:
        pass


def websocket_view(node: Node, authenticate: t.Callable[..., t.Any] | None) -> Response:
    """The handshake through Flask's dispatch, for what the middleware left."""
    environ = request.environ
    if "websocket" not in node.settings.transports:
        return json_error(404, "the websocket transport is disabled")
    upgraded = environ.get("wsgi.websocket")  # gevent-websocket without our hook
    origin_ok = True
    if upgraded is None:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return json_error(400, "expected a WebSocket upgrade request")
        refused = _refuse(node, environ, request.trusted_hosts)
        if refused is not None:
            response = json_error(*refused)
            if refused[0] == 426:
                response.headers["Sec-WebSocket-Version"] = "13"
            return response
    else:
        origin_ok = _origin_allowed(
            environ, node.settings.allowed_origins, request.trusted_hosts
        )

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
    return _Finished(_accept(node, environ, upgraded, refusal, user_id, user_info))


def _accept(
    node: Node,
    environ: WSGIEnviron,
    upgraded: t.Any,
    refusal: tuple[int, str] | None,
    user_id: t.Any,
    user_info: t.Any,
) -> str:
    """Switch protocols and run the connection (or send the refusal's close).

    Returns how the server is to hear that the response is done (see
    ``_http.Finished``).
    """
    take = environ.pop(TAKE_KEY, None)
    mode = "gevent"
    if take is None and upgraded is None:
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            mode = "gunicorn"
        else:
            sock = environ.get("werkzeug.socket")
            mode = "werkzeug"
        if sock is not None:
            take = _plain_taker(sock)
    server_socket = take.socket if take is not None else None
    if upgraded is not None:
        server_socket = upgraded.handler.socket
    detach = gevent_active() and not is_tls(server_socket)
    session = welcome = None
    if refusal is None and detach:
        session = _GeventSession(node)
        welcome = build_frame(OP_TEXT, session.open(user_id, user_info))
    welcomed = False
    try:
        if take is not None:
            key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "")
            sock = take(_switching_protocols(key) + (welcome or b""))
            welcomed = True
        elif upgraded is not None:
            upgraded.closed = True  # it must never write to the socket we take
            environ["wsgi.websocket"] = None
            sock = upgraded.handler.socket
        else:
            from simple_websocket import Server

            ws = Server(environ, thread_class=_NoThread)
            sock, mode = ws.sock, ws.mode
            detach = detach and not is_tls(sock)
    except OSError:
        if session is not None:
            session.abandon()
        return mode

    if refusal is not None:
        try:
            sock.sendall(close_frame(*refusal))
        except OSError:
            pass
        if mode == "werkzeug":
            sock.close()
        return mode
    if session is not None and detach:
        if not welcomed:
            session.push_frame(t.cast(bytes, welcome))
        session.attach(take_over(sock))
        return mode
    if session is not None:  # pragma: no cover - simple-websocket gave TLS
        session.abandon()
    # No event loop to hand the socket to (flask run), or a TLS socket that
    # must stay in its SSL object: this request's thread (or greenlet) reads,
    # another writes.
    threaded = _ThreadedSession(node, sock)
    threaded.start(user_id, user_info)
    threaded.run()
    return mode


def _plain_taker(sock: t.Any) -> t.Callable[[bytes], t.Any]:
    """``take(head)`` for a server that hands the app its socket."""

    def take(head: bytes) -> t.Any:
        sock.sendall(head)
        return sock

    take.socket = sock  # type: ignore[attr-defined]
    return take


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
        self.scheduled_messages = False  # on the runner, or being run

    def encode(self, message: Outbound) -> bytes:
        return message.ws_frame

    def closing_bytes(self, code: int, reason: str) -> bytes:
        return close_frame(code, reason)

    def received(self, data: bytes) -> None:
        texts = self.data_received(data)
        if texts:
            self.inbox.extend(texts)
            if not self.scheduled_messages:
                self.scheduled_messages = True
                _runner().schedule(self)

    def drain(self) -> None:
        """Client messages run in a greenlet: authorizers and handlers may block."""
        try:
            while self.inbox and not self.conn.closed:
                self.handle_text(self.inbox.popleft())
        except Exception:  # pragma: no cover - receive() handles app errors
            logger.exception("flask_realtime: error handling a client message")
        finally:
            self.scheduled_messages = False
            if self.inbox and not self.conn.closed:
                self.scheduled_messages = True
                _runner().schedule(self)


class _Runner:
    """Greenlets that run client messages, reused from one connection to the next.

    Each connection's messages run in order in a greenlet, because authorizers
    and handlers are app code and may block. Spawning a greenlet for every
    batch costs about 13 µs here, more than the rest of handling a
    ``subscribe`` (Python 3.11 gives each new greenlet a fresh frame stack,
    allocated and freed again), so a finished worker waits for more work
    instead of exiting, and one worker takes connection after connection.

    A handler that blocks must not hold up other connections: a worker that
    starts on a connection while others wait makes sure another worker is on
    its way (``coming``), which takes over if this one blocks. Each batch runs
    in a fresh ``contextvars`` context, as it did in a greenlet of its own.
    Up to ``KEEP`` idle workers are kept.
    """

    KEEP = 64

    def __init__(self) -> None:
        import gevent
        from gevent.hub import Waiter

        self._hub = gevent.get_hub()
        self._spawn = gevent.spawn
        self._waiter = Waiter
        self.ready: deque[_GeventSession] = deque()
        self.idle: list[t.Any] = []  # the Waiters of parked workers
        self.coming = 0  # workers spawned or woken, not yet at ``ready``
        self.spawned = 0  # workers started in all (for tests)

    def schedule(self, session: _GeventSession) -> None:
        self.ready.append(session)
        if not self.coming:
            self._call_worker()

    def _call_worker(self) -> None:
        self.coming += 1
        if self.idle:
            self._hub.loop.run_callback(self.idle.pop().switch, None)
        else:
            self.spawned += 1
            self._spawn(self._work)

    def _work(self) -> None:
        ready = self.ready
        while True:
            self.coming -= 1
            while ready:
                session = ready.popleft()
                if ready and not self.coming:
                    self._call_worker()  # for the others, should this one block
                contextvars.Context().run(session.drain)
            if len(self.idle) >= self.KEEP:
                return
            waiter = self._waiter(self._hub)
            self.idle.append(waiter)
            try:
                waiter.get()
            except BaseException:
                # Killed while parked (the process is exiting): if it had been
                # called already, another worker comes in its place.
                if waiter in self.idle:
                    self.idle.remove(waiter)
                else:
                    self.coming -= 1
                    if ready and not self.coming:
                        self._call_worker()
                raise


_runners: dict[int, _Runner] = {}


def _runner() -> _Runner:
    pid = os.getpid()
    runner = _runners.get(pid)
    if runner is None:
        runner = _runners[pid] = _Runner()
    return runner


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
