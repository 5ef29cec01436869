"""Server-Sent Events: one long response per connection, client messages by POST."""

from __future__ import annotations

import typing as t

from flask import Response, request, stream_with_context

from .. import protocol
from .._runtime import gevent_active
from ..connection import Connection, Outbound
from ..errors import ConnectionRefused
from .handoff import socket_taker, take_over
from .http import (
    Finished,
    Refused,
    cors,
    cors_lines,
    identify,
    json_error,
    refuse_stream,
)
from .mailbox import Mailbox
from .socket_session import SocketSession

if t.TYPE_CHECKING:
    from ..node import Node

_RETRY_MS = 2000
# A stream carries at least a comment this often (proxies close idle
# streams), and half the heartbeat when that is shorter. (The node's timer
# ticks often enough for it: see ``KEEPALIVE`` in the node.)
KEEPALIVE = 10.0
_KEEPALIVE_COMMENT = b": keepalive\n\n"
# The zero-length chunk that ends a chunked body (RFC 9112, 7.1).
_LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body (RFC 9112, 7.1).

    Written by hand because the session writes its socket itself, past the
    server: each write is one chunk, so a client reading the body through a
    buffering library (urllib3, ``requests``) has every event as it comes.
    """
    return b"%x\r\n%b\r\n" % (len(data), data)


def wants_chunked(environ: t.Mapping[str, t.Any]) -> bool:
    """HTTP/1.1 and later read a chunked body; HTTP/1.0 only one that ends
    with the connection."""
    version = environ.get("SERVER_PROTOCOL", "")
    return version.startswith("HTTP/") and version[5:] >= "1.1"


class SSESession(SocketSession):
    """An SSE stream on a socket of its own (under gevent).

    Each connection numbers its events (the ``id:`` cursor); the JSON is the
    broadcast's, encoded once. The read watcher notices a closed page at
    once: the browser closes the connection, recv returns nothing.
    """

    transport = "sse"

    def __init__(self, node: Node, chunked: bool) -> None:
        super().__init__(node)
        self.chunked = chunked
        self.seq = 0
        self.seq_at_tick = 0
        self.quiet_since = 0.0
        self.keepalive = min(KEEPALIVE, node.settings.heartbeat / 2)

    def frame(self, data: bytes) -> bytes:
        """What goes on the wire for ``data`` of the event stream."""
        return chunk(data) if self.chunked else data

    def encode(self, message: Outbound) -> bytes:
        # Once per subscriber of a broadcast: :func:`chunk` written out here
        # (two calls less: -0.3 us per delivery, about a tenth of its cost).
        self.seq += 1
        event = b"id: %d\ndata: %b\n\n" % (self.seq, message.json)
        if self.chunked:
            return b"%x\r\n%b\r\n" % (len(event), event)
        return event

    def closing_bytes(self, code: int, reason: str) -> bytes:
        comment = b": closed %d\n\n" % code
        return chunk(comment) + _LAST_CHUNK if self.chunked else comment

    def tick(self, now: float, heartbeat: float) -> None:
        if self.seq != self.seq_at_tick:
            self.seq_at_tick = self.seq
            self.quiet_since = now
        elif now - self.quiet_since >= self.keepalive:
            self.quiet_since = now
            self.conn.push_bytes(self.frame(_KEEPALIVE_COMMENT))


def _head(allowed: tuple[str, ...], chunked: bool) -> bytes:
    """The response head of a stream the session writes itself.

    Chunked for HTTP/1.1 clients: a body with neither a length nor chunks
    ends only with the connection, and clients that read it through a
    buffer (urllib3 fills 64 KiB) would see nothing until that much came.
    An HTTP/1.0 client gets the body that ends with the connection.
    """
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
        b"Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n"
        + (b"Transfer-Encoding: chunked\r\n" if chunked else b"")
        + cors_lines(request.headers.get("Origin"), allowed)
        + b"\r\n"
    )


def _subscribe_initial(node: Node, conn: Connection, names: list[str]) -> None:
    """The channels of the query are subscribed like client subscribes; their
    replies (and refusals, as error events) come first on the stream."""
    for name in names:
        message = protocol.encode({"type": "subscribe", "channel": name})
        refusal = node.admit(conn, message)
        if refusal is not None:
            conn.push_json(refusal)
        else:  # the reply first, then the events of a channel with history
            node.receive(conn, message, push_reply=True)


def sse_view(node: Node, authenticate: t.Callable[..., t.Any] | None) -> Response:
    settings = node.settings
    refused = refuse_stream(node, "sse")
    if refused is not None:
        return refused
    try:
        user_id, user_info = identify(authenticate)
    except Refused:
        return cors(json_error(401, "authentication failed"), settings.allowed_origins)
    names = [n for n in request.args.get("channels", "").split(",") if n]

    taker = socket_taker(request.environ) if gevent_active() else None
    if taker is not None:
        take, mode = taker
        chunked = wants_chunked(request.environ)
        session = SSESession(node, chunked)
        try:
            opened = session.open(user_id, user_info, with_token=True)
        except ConnectionRefused as exc:  # by on_connect
            session.abandon()
            return cors(json_error(403, exc.reason), settings.allowed_origins)
        welcome = session.encode(Outbound(opened))
        _subscribe_initial(node, session.conn, names)
        try:
            sock = take(
                _head(settings.allowed_origins, chunked)
                + session.frame(b"retry: %d\n\n" % _RETRY_MS)
                + welcome
            )
        except OSError:
            session.abandon()
            return Finished(mode)
        session.attach(take_over(sock))
        return Finished(mode)
    try:
        response = _stream(node, user_id, user_info, names)
    except ConnectionRefused as exc:  # by on_connect
        response = json_error(403, exc.reason)
    return cors(response, settings.allowed_origins)


def _stream(node: Node, user_id: t.Any, user_info: t.Any, names: list[str]) -> Response:
    """For servers that cannot hand their socket over (flask run): a streamed
    response, one greenlet or thread per connection, reading a mailbox."""
    box = Mailbox(node)
    conn = node.open("sse", box, user_id, user_info, with_token=True)
    _subscribe_initial(node, conn, names)
    keepalive = min(KEEPALIVE, node.settings.heartbeat / 2)

    def stream() -> t.Iterator[bytes]:
        try:
            yield f"retry: {_RETRY_MS}\n\n".encode()
            while True:
                items = box.take()
                if items:
                    box.ack(items[-1][0])
                    yield b"".join(
                        b"id: %d\ndata: %s\n\n" % (seq, data) for seq, data in items
                    )
                    continue
                if box.close_code is not None:
                    yield b": closed %d\n\n" % box.close_code
                    return
                box.wait(keepalive)
                if not box.pending and box.close_code is None:
                    yield _KEEPALIVE_COMMENT
        finally:
            conn.close(protocol.CLOSE_GOING_AWAY)

    response = Response(stream_with_context(stream()), mimetype="text/event-stream")
    # The server closes the body once its last bytes are written (or the
    # client is gone): a shutdown waits for that (``Sink.reports_written``).
    response.call_on_close(lambda: node.written(conn))
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response
