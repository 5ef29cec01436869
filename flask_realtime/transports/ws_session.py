"""A WebSocket connection's protocol work: frames in, the node's answers out.

:class:`WebSocketProtocol` is what every WebSocket session does with the
client's bytes, whatever carries them; :class:`GeventWebSocket` carries
them on a detached socket under gevent (:mod:`.socket_session`), and
:class:`~.ws_threaded.ThreadedWebSocket` with two threads elsewhere.
"""

from __future__ import annotations

import logging
import time
import typing as t
from collections import deque

from .. import protocol
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
from ..connection import Connection, Outbound, as_ws_frame
from .socket_session import SocketSession
from .ws_runner import runner

if t.TYPE_CHECKING:
    from ..node import Node

logger = logging.getLogger("flask_realtime")


class WebSocketProtocol:
    """Reads frames into the node; answers control frames; heartbeats.

    A close the client asks for, or one its bad frame calls for, waits in
    :attr:`pending_close` until the text messages that came before it have
    been handled (:meth:`close_if_pending`): nothing sent before a close is
    lost, and nothing after it is read.
    """

    conn: Connection
    node: Node

    def start_protocol(self, node: Node) -> None:
        settings = node.settings
        self.parser = FrameParser(
            settings.max_message_size,
            settings.max_message_fragments,
            settings.fragment_timeout,
        )
        #: ``(code, reason, frame to send first)`` once the client is done.
        self.pending_close: tuple[int, str, bytes] | None = None

    def tick(self, now: float, heartbeat: float) -> None:
        conn = self.conn
        idle = now - conn.last_seen
        if idle > 2 * heartbeat:
            conn.close(protocol.CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout")
            return
        try:
            self.parser.check_deadline(now)
        except FrameError as exc:
            conn.close(exc.code, exc.reason)
            return
        if idle >= heartbeat:
            conn.push_bytes(PING_FRAME)

    def data_received(self, data: bytes) -> list[bytes]:
        """Parse frames; answer control frames; return admitted text messages.

        A close (asked for, or due to a bad frame) is left pending: the
        caller handles the returned messages, then :meth:`close_if_pending`.
        """
        conn = self.conn
        if self.pending_close is not None:
            return []  # nothing after a close frame, or a bad frame, counts
        conn.last_seen = time.monotonic()
        failure: FrameError | None = None
        try:
            frames = self.parser.feed(data)
        except FrameError as exc:
            frames, failure = exc.frames, exc
        texts: list[bytes] = []
        for opcode, payload in frames:
            if opcode == OP_TEXT:
                refusal = self.node.admit(conn, payload)
                if refusal is None:
                    texts.append(payload)
                else:
                    conn.push_bytes(self.error_frame(refusal))
            elif opcode == OP_PING:
                conn.push_bytes(build_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                # The client's code is echoed; none (1005) is answered 1000.
                code = parse_close(payload)
                self.pending_close = (
                    protocol.CLOSE_NORMAL if code == 1005 else code,
                    "",
                    b"",
                )
                return texts
            elif opcode == OP_BINARY:
                conn.push_bytes(
                    self.error_frame(
                        protocol.error(
                            protocol.BAD_REQUEST, "binary frames are not supported"
                        )
                    )
                )
            # pongs only refresh last_seen
        if isinstance(failure, MessageTooLarge):
            self.pending_close = (
                protocol.CLOSE_TOO_LARGE,
                "message too large",
                self.error_frame(
                    protocol.error(
                        protocol.TOO_LARGE,
                        f"message too large (limit {failure.limit} bytes)",
                    )
                ),
            )
        elif failure is not None:
            self.pending_close = (failure.code, failure.reason, b"")
        return texts

    def error_frame(self, envelope: bytes) -> bytes:
        """An error envelope the session makes itself, framed for the wire
        (another wire format, Pusher's, overrides it)."""
        return build_frame(OP_TEXT, envelope)

    def close_if_pending(self) -> None:
        """Close as the client asked (or its bad frame requires), now that
        the messages it sent before are handled."""
        pending = self.pending_close
        if pending is None or self.conn.closing:
            return
        code, reason, first = pending
        if first:
            self.conn.push_bytes(first)
        self.conn.close(code, reason)

    def handle_text(self, payload: bytes) -> None:
        # The reply on the stream, before the events a subscribe recovers.
        self.node.receive(self.conn, payload, push_reply=True)


class GeventWebSocket(WebSocketProtocol, SocketSession):
    """A WebSocket on a socket of its own (see :mod:`.socket_session`).

    Frames are read in the event loop; the text messages they carry run in
    order in a greenlet of the :mod:`.ws_runner` pool.
    """

    transport = "websocket"

    def __init__(self, node: Node) -> None:
        SocketSession.__init__(self, node)
        self.start_protocol(node)
        self.inbox: deque[bytes] = deque()
        self.scheduled_messages = False  # on the runner, or being run

    def bind(self, conn: Connection) -> None:
        super().bind(conn)
        conn.encode = as_ws_frame  # one frame per broadcast, shared

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
                runner().schedule(self)
        elif not self.scheduled_messages:
            self.close_if_pending()  # (else drain closes, once the inbox is done)

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
                runner().schedule(self)
            elif not self.inbox:
                self.close_if_pending()
