"""Transport-agnostic connections, their one bounded outbound queue, and the
seam to the transport that carries them.

The node and the hub only call :meth:`Connection.push`,
:meth:`Connection.push_json`, :meth:`Connection.close` and
:meth:`Connection.tick`. A connection keeps what it was sent in its queue
and tells its :class:`Sink` (the transport adapter) through three calls:
``write`` (bytes are waiting), ``close`` and ``tick``. The adapter moves the
bytes from the queue to the wire: a flusher for a detached WebSocket or SSE
socket, a writer thread, a mailbox that long polls read with a cursor.

The bound is the same for every transport, and so is its rule: while the
wire cannot take more (the adapter sets :attr:`Connection.backed_up`), a
queue past ``REALTIME_MAX_QUEUE_MESSAGES`` messages or
``REALTIME_MAX_QUEUE_BYTES`` bytes closes the connection with 4100.
Every frame counts: events, replies, errors, pings and pongs.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import operator
import sys
import time
import typing as t
from collections import deque

from . import metrics as _metrics
from . import protocol
from ._ws_frames import text_frame

logger = logging.getLogger("flask_realtime")


def user_key(user_id: t.Any) -> str | None:
    """User ids compare by value: ``5`` and ``"5"`` are one user."""
    return None if user_id is None else str(user_id)


class Outbound:
    """One server message, encoded once and framed once per transport kind.

    A broadcast to a thousand WebSocket subscribers builds its frame the first
    time a WebSocket connection asks for it and hands the same bytes to all
    of them.
    """

    __slots__ = ("json", "_ws_frame", "_pusher_frame")

    def __init__(self, json: bytes) -> None:
        self.json = json
        self._ws_frame: bytes | None = None
        self._pusher_frame: bytes | None = None

    @property
    def ws_frame(self) -> bytes:
        frame = self._ws_frame
        if frame is None:
            frame = self._ws_frame = text_frame(self.json)
        return frame

    @property
    def pusher_frame(self) -> bytes:
        """The message in Pusher's protocol (:mod:`.pusher.protocol`), framed
        once for every Pusher recipient (``b""``: nothing for them)."""
        frame = self._pusher_frame
        if frame is None:
            from .pusher.protocol import frame_of

            frame = self._pusher_frame = frame_of(self.json)
        return frame


#: How a message looks on a wire that carries the JSON as it is.
as_json: t.Callable[[Outbound], bytes] = operator.attrgetter("json")
#: How a message looks on a WebSocket: its text frame, built once per message.
as_ws_frame: t.Callable[[Outbound], bytes] = operator.attrgetter("ws_frame")


class Sink(abc.ABC):
    """The seam: what carries one connection's bytes (a transport adapter).

    :meth:`bind` runs when the connection is made, before anything is queued:
    the adapter keeps the connection and sets how messages are encoded
    (:attr:`Connection.encode`), the queue's bound and, where several OS
    threads write, a lock. Then the connection calls:

    * :meth:`write` after each frame it queued: take it to the wire when the
      wire can take it (the flusher, a writer thread, a waiting poll);
    * :meth:`close` once, with :attr:`Connection.closing` already set: send
      what is due and the closing bytes (:meth:`Connection.put_last`), then
      end the wire and tell the node (``node.disconnect``);
    * :meth:`tick` from the node's one timer: heartbeats, keepalives, expiry.

    A sink with :attr:`reports_written` calls ``node.written(conn)`` once its
    wire is done (the close frame written and the socket closed, or the peer
    gone): a shutdown waits for that before the process exits.
    """

    conn: Connection
    reports_written = False

    def bind(self, conn: Connection) -> None:
        self.conn = conn

    @abc.abstractmethod
    def write(self, nbytes: int) -> None:
        """``nbytes`` more wait at the end of the connection's queue."""

    @abc.abstractmethod
    def close(self, code: int, reason: str) -> None:
        """The connection closes with ``code``."""

    @abc.abstractmethod
    def tick(self, now: float, heartbeat: float) -> None:
        """Called every tick of the node's timer (``now``: time.monotonic())."""


class Connection:
    """One client connection, whatever carries it.

    Authorizers and event handlers receive it. The public part, read-only:

    - ``id``: the connection's id, unique in the cluster (what
      :meth:`Realtime.send` takes, and the clients' ``connectionId``)
    - ``user_id``, ``user_info``: what the authenticate function returned
      (``None`` for an anonymous connection)
    - ``transport``: ``"websocket"``, ``"sse"``, ``"longpolling"`` or
      ``"memory"``

    The rest is the node's and the transports' own.
    """

    __slots__ = (
        "id",
        "user_id",
        "user_info",
        "user_key",
        "transport",
        "channels",
        "connected_at",
        "last_seen",
        "token",
        "sink",
        "rate",
        "closed",
        "close_code",
        "close_reason",
        "refused",
        # the outbound queue
        "queue",
        "queued_bytes",
        "max_messages",
        "max_bytes",
        "backed_up",
        "closing",
        "encode",
        "lock",
        "__weakref__",
    )

    def __init__(
        self,
        connection_id: str,
        transport: str,
        sink: Sink,
        user_id: t.Any = None,
        user_info: t.Any = None,
    ) -> None:
        self.id = connection_id
        self.transport = transport
        self.sink = sink
        self.user_id = user_id
        self.user_info = user_info
        self.user_key = user_key(user_id)
        self.channels: set[str] = set()
        self.connected_at = int(time.time())
        self.last_seen = time.monotonic()
        self.token: str | None = None
        self.rate: t.Any = None
        self.closed = False  # the node has forgotten it
        #: The code and reason of the close the server made or echoed (None:
        #: the peer went away without one); ``on_disconnect`` reports them.
        self.close_code: int | None = None
        self.close_reason = ""
        self.refused = False  # by on_connect: it never connected for the app
        #: Whole frames not yet handed to the wire, oldest first.
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.max_messages = sys.maxsize
        self.max_bytes = sys.maxsize
        #: Set by the sink while the wire takes nothing: the bound applies.
        self.backed_up = False
        #: No more frames are queued (the closing bytes go in by put_last).
        self.closing = False
        #: Message -> bytes for this wire; the sink may replace it in bind().
        self.encode: t.Callable[[Outbound], bytes] = as_json
        #: Only where OS threads share the connection (no gevent): held while
        #: the queue changes. None on the fast path.
        self.lock: t.Any = None
        sink.bind(self)

    # -- what the node and the hub call -----------------------------------------

    def push(self, message: Outbound) -> None:
        """Queue one message (a broadcast calls this once per subscriber)."""
        if self.lock is not None:
            if not self.closing:
                self.push_bytes(self.encode(message))
            return
        # The fast path, :meth:`_put` written out: no lock, no extra call.
        if self.closing:
            return
        data = self.encode(message)
        self.queue.append(data)
        size = len(data)
        self.queued_bytes += size
        self.sink.write(size)
        if self.backed_up and (
            len(self.queue) > self.max_messages or self.queued_bytes > self.max_bytes
        ):
            self._too_slow()

    def push_json(self, json: bytes) -> None:
        self.push(Outbound(json))

    def push_bytes(self, data: bytes) -> None:
        """Queue bytes already framed for this wire (a pong, a keepalive)."""
        lock = self.lock
        if lock is None:
            over = self._put(data)
        else:
            with lock:
                over = self._put(data)
        if over:
            self._too_slow()  # outside the lock: closing tells the node

    def close(self, code: int, reason: str = "") -> None:
        """Close with ``code``: what is queued goes first, then the close."""
        with self.locked():  # (threads: one of two racing closes wins)
            if self.closing:
                return
            self.closing = True
            self.close_code = code
            self.close_reason = reason
        _metrics.closed(code)
        self.sink.close(code, reason)

    def tick(self, now: float, heartbeat: float) -> None:
        """Heartbeats and expiry, from the node's one timer."""
        self.sink.tick(now, heartbeat)

    # -- the bound, written once ----------------------------------------------------

    def _put(self, data: bytes) -> bool:
        """Queue ``data``; whether the queue is now over its bound."""
        if self.closing:
            return False
        self.queue.append(data)
        size = len(data)
        self.queued_bytes += size
        self.sink.write(size)
        return self.backed_up and (
            len(self.queue) > self.max_messages or self.queued_bytes > self.max_bytes
        )

    def _too_slow(self) -> None:
        logger.warning(
            "flask_realtime: closing %s (4100): %d messages, %d bytes queued",
            self.id,
            len(self.queue),
            self.queued_bytes,
        )
        self.close(protocol.CLOSE_TOO_SLOW, "too slow")

    def past(self, fraction: int) -> bool:
        """Whether the queue holds more than 1/``fraction`` of its bound."""
        return (
            len(self.queue) > self.max_messages // fraction
            or self.queued_bytes > self.max_bytes // fraction
        )

    # -- what sinks call ------------------------------------------------------------

    def limit(self, max_messages: int, max_bytes: int) -> None:
        """Set the queue's bound (REALTIME_MAX_QUEUE_MESSAGES / _BYTES)."""
        self.max_messages = max_messages
        self.max_bytes = max_bytes

    def locked(self) -> t.ContextManager[t.Any]:
        """The queue's lock where threads share it, else nothing to hold."""
        return self.lock if self.lock is not None else contextlib.nullcontext()

    def take(self) -> bytes:
        """Everything queued, as one string of bytes; the queue is then empty."""
        queue = self.queue
        data = queue[0] if len(queue) == 1 else b"".join(queue)
        queue.clear()
        self.queued_bytes = 0
        return data

    def take_some(self, limit: int) -> bytes:
        """Whole frames from the front, up to about ``limit`` bytes."""
        queue = self.queue
        frames = []
        size = 0
        while queue and size < limit:
            frame = queue.popleft()
            frames.append(frame)
            size += len(frame)
        self.queued_bytes -= size
        return b"".join(frames)

    def drop(self) -> int:
        """Forget what is queued (a slow client's unread frames); the bytes."""
        dropped = self.queued_bytes
        self.queue.clear()
        self.queued_bytes = 0
        return dropped

    def put_last(self, data: bytes) -> None:
        """Queue the closing bytes, after :attr:`closing` is set (unbounded)."""
        self.queue.append(data)
        self.queued_bytes += len(data)

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.user_id!r} via {self.transport}>"
