"""The WebSocket upgrade: its checks, the 101, and the session that follows.

Shared by the handshake fast path (:mod:`.ws_fastpath`) and the blueprint's
view (:mod:`.websocket`). The 101 is written by us on every server, with no
extension negotiated; the connection then runs on a detached socket under
gevent (:class:`.ws_session.GeventWebSocket`), or on two threads
(:class:`.ws_threaded.ThreadedWebSocket`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import typing as t

from .._runtime import gevent_active
from .._ws_frames import OP_TEXT, build_frame, close_frame
from ..errors import ConnectionRefused
from ..limits import refuse as refuse_connection
from .handoff import TAKE_KEY, is_tls, plain_taker, take_over
from .http import WSGIEnviron, environ_origin_allowed
from .ws_session import GeventWebSocket
from .ws_simple import handshake as simple_websocket_handshake
from .ws_threaded import ThreadedWebSocket

if t.TYPE_CHECKING:
    from ..node import Node

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def valid_key(key: str) -> bool:
    """A ``Sec-WebSocket-Key``: 16 bytes in base64."""
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False


#: The protocol's subprotocol name. Browsers and Node's ``ws`` fail a
#: connection that offered subprotocols when the server selects none of them.
SUBPROTOCOL = "realtime.v1"


def offers_subprotocol(environ: WSGIEnviron) -> bool:
    """Whether the client offered ``realtime.v1`` (others are ignored)."""
    offered = environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "")
    return SUBPROTOCOL in (p.strip() for p in offered.split(","))


def switching_protocols(key: str, subprotocol: bool = False) -> bytes:
    """The 101 response; with ``Sec-WebSocket-Protocol`` when selected."""
    accept = base64.b64encode(
        hashlib.sha1(key.strip().encode("ascii") + _GUID).digest()
    )
    selected = (
        b"Sec-WebSocket-Protocol: " + SUBPROTOCOL.encode() + b"\r\n"
        if subprotocol
        else b""
    )
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
        + accept
        + b"\r\n"
        + selected
        + b"\r\n"
    )


def refuse_upgrade(
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
    if not environ_origin_allowed(environ, settings.allowed_origins, trusted_hosts):
        return 403, "origin not allowed"
    return refuse_connection(node, environ)  # deployment, connection limits


#: Sent with a 426 refusal: the version we speak.
VERSION_HEADER = ("Sec-WebSocket-Version", "13")


def accept(
    node: Node,
    environ: WSGIEnviron,
    upgraded: t.Any,
    refusal: tuple[int, str] | None,
    user_id: t.Any,
    user_info: t.Any,
    *,
    sessions: tuple[t.Callable[..., t.Any], t.Callable[..., t.Any]] | None = None,
    refusal_frame: bytes = b"",
) -> str:
    """Switch protocols and run the connection (or send the refusal's close).

    ``upgraded`` is gevent-websocket's WebSocket where its handler upgraded
    without our hook. Returns how the server is to hear that the response is
    done (see :class:`.http.Finished`). ``sessions``: the detached and the
    threaded session's factories, for another wire format (Pusher's);
    ``refusal_frame``: a frame sent before a refusal's close.
    """
    detached_session, threaded_session = sessions or (
        GeventWebSocket,
        ThreadedWebSocket,
    )
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
            take = plain_taker(sock)
    server_socket = take.socket if take is not None else None
    if upgraded is not None:
        server_socket = upgraded.handler.socket
    detach = gevent_active() and not is_tls(server_socket)
    session = welcome = None
    if refusal is None and detach:
        session = detached_session(node)
        try:
            welcome = build_frame(OP_TEXT, session.open(user_id, user_info))
        except ConnectionRefused as exc:  # by on_connect: closed after the 101
            session.abandon()
            session = None
            refusal = (exc.code, exc.reason)
    welcomed = False
    try:
        if take is not None:
            key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "")
            head = switching_protocols(key, offers_subprotocol(environ))
            sock = take(head + (welcome or b""))
            welcomed = True
        elif upgraded is not None:
            upgraded.closed = True  # it must never write to the socket we take
            environ["wsgi.websocket"] = None
            sock = upgraded.handler.socket
        else:
            sock, mode = simple_websocket_handshake(environ, SUBPROTOCOL)
            detach = detach and not is_tls(sock)
    except OSError:
        if session is not None:
            session.abandon()
        return mode

    if refusal is not None:
        return _refuse(sock, mode, refusal, refusal_frame)
    if session is not None and detach:
        if not welcomed:
            session.conn.push_bytes(t.cast(bytes, welcome))
        session.attach(take_over(sock))
        return mode
    if session is not None:  # pragma: no cover - simple-websocket gave TLS
        session.abandon()
    # No event loop to hand the socket to (flask run), or a TLS socket that
    # must stay in its SSL object: this request's thread (or greenlet) reads,
    # another writes.
    threaded = threaded_session(node, sock)
    try:
        threaded.start(user_id, user_info)
    except ConnectionRefused as exc:
        return _refuse(sock, mode, (exc.code, exc.reason))
    threaded.run()
    return mode


def _refuse(
    sock: t.Any, mode: str, refusal: tuple[int, str], first: bytes = b""
) -> str:
    """Send the refusal's close frame after the 101, and end."""
    try:
        sock.sendall(first + close_frame(*refusal))
    except OSError:
        pass
    if mode == "werkzeug":
        sock.close()
    return mode
