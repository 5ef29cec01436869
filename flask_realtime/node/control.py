"""Request/reply between processes, on nothing but publish and subscribe.

Every payload the node publishes starts with one tag byte:

- ``m<header>\\n<body>``: a plain message (the header names who to skip or
  which connection it is for; see the node);
- ``q<reply_to>\\n<body>``: a request; whoever answers publishes the reply
  to the inbox topic that ``reply_to`` names (:meth:`Control.request`
  takes the first reply, :meth:`Control.gather` every one);
- ``r<reply_to>\\n<body>``: a reply, published to the requester's inbox;
- ``?``: a probe, which every node ignores: a request still waiting
  publishes one now and then to the request's topic, and a broker that
  counts nobody there means the node that took the request is gone (killed
  just before, while the broker still counted it).

Each process has one inbox topic, ``i:<hex>``, new after a fork (a child
sharing its parent's inbox would take the parent's replies), subscribed on
the process's first request. Brokers carry these bytes verbatim; they know
nothing of requests.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import threading
import time
import typing as t

from .._runtime import event, real_lock, sleep
from ..brokers import BrokerUnavailable
from . import topics

if t.TYPE_CHECKING:
    from ..brokers import Broker

logger = logging.getLogger("flask_realtime")

MESSAGE = b"m"
REQUEST = b"q"
REPLY = b"r"
PROBE = b"?"

# A request without its reply probes its topic after this long, then at
# doubling intervals up to the maximum: a long poll waits 30 s on its owner.
_FIRST_PROBE = 0.5
_MAX_PROBE_INTERVAL = 5.0
_UP_POLL = 0.05  # a first request looks this often for the first connection
# A first gather() waits this long for the broker's first connection.
GATHER_CONNECT = 5.0

OnMessage = t.Callable[[str, bytes], None]
OnRequest = t.Callable[[str, bytes, str], None]


def message(header: bytes, body: bytes) -> bytes:
    """A plain message: ``m<header>\\n<body>``."""
    return b"".join((MESSAGE, header, b"\n", body))


def split_message(data: bytes) -> tuple[bytes, bytes]:
    """``(header, body)`` of a plain message."""
    newline = data.find(b"\n")
    return data[1:newline], data[newline + 1 :]


def _split_addressed(data: bytes) -> tuple[str, bytes]:
    newline = data.find(b"\n")
    if newline < 1:
        raise ValueError("no reply address")
    return data[1:newline].decode("ascii"), data[newline + 1 :]


class _Waiter:
    """One request waiting for its first reply."""

    __slots__ = ("done", "data")

    def __init__(self) -> None:
        self.done = event()
        self.data = b""


class _Gatherer:
    """One request collecting every reply (see :meth:`Control.gather`)."""

    __slots__ = ("done", "replies", "expected")

    def __init__(self) -> None:
        self.done = event()
        self.replies: list[bytes] = []
        self.expected: int | None = None

    def add(self, data: bytes) -> None:
        """One more reply (under the control's lock)."""
        self.replies.append(data)
        self._check()

    def expect(self, count: int | None) -> None:
        """The broker's receiver count, once the request is published."""
        self.expected = count
        self._check()

    def _check(self) -> None:
        if self.expected is not None and len(self.replies) >= self.expected:
            self.done.set()


class Control:
    """The node's side of the broker: framing, requests and their replies.

    ``on_plain(topic, data)`` gets plain messages (tag byte included, see
    :func:`split_message`); ``on_request(topic, body, reply_to)`` gets
    requests, and whoever handles one answers with :meth:`reply`.
    """

    def __init__(
        self,
        make_broker: t.Callable[[OnMessage], Broker],
        on_plain: OnMessage,
        on_request: OnRequest,
    ) -> None:
        self._on_plain = on_plain
        self._on_request = on_request
        self._pid = 0
        self._inbox = ""
        self._inbox_subscribed = False
        self._serial = itertools.count(1)
        self._waiting: dict[str, _Waiter | _Gatherer] = {}
        self._lock = real_lock()  # the waiting map and the per-process reset
        self._subscribe_lock: t.Any = None
        self._delivering: int | None = None  # the thread (greenlet) in on_message
        self._was_up = 0  # the pid of the process that saw the broker up
        self.broker = make_broker(self.on_message)

    # -- what the broker brings ------------------------------------------------

    def on_message(self, topic: str, data: bytes) -> None:
        """The broker's callback: route one payload by its tag byte."""
        previous = self._delivering
        self._delivering = threading.get_ident()
        try:
            tag = data[:1]
            if tag == MESSAGE:
                self._on_plain(topic, data)
            elif tag == REQUEST:
                reply_to, body = _split_addressed(data)
                self._on_request(topic, body, reply_to)
            elif tag == REPLY:
                reply_to, body = _split_addressed(data)
                self._resolve(reply_to, body)
            elif tag == PROBE:
                pass  # counted by the broker, which is all it is for
            else:
                logger.warning("flask_realtime: untagged payload on %r dropped", topic)
        except (ValueError, UnicodeDecodeError):
            logger.warning("flask_realtime: malformed payload on %r dropped", topic)
        finally:
            self._delivering = previous

    def delivering(self) -> bool:
        """True inside :meth:`on_message`, in the broker's reader: nothing
        there may wait for the broker, which would wait on itself."""
        return self._delivering == threading.get_ident()

    # -- requests ------------------------------------------------------------

    def request(self, topic: str, data: bytes, timeout: float) -> bytes | None:
        """Send ``data`` to the subscribers of ``topic``; the first reply.

        ``None`` when the broker says nobody subscribes to ``topic``: at
        once, or, while no reply has come, as soon as a probe finds nobody
        left (the subscriber died with the request); ``TimeoutError`` when
        no reply came within ``timeout`` seconds of the call (a subscriber
        that froze, or was cut off with its connection open, still counts
        at the broker and never answers);
        :class:`~flask_realtime.BrokerUnavailable` at once while this
        process cannot reach the broker, never because of a subscriber.
        """
        deadline = time.monotonic() + timeout
        if self.delivering():
            # The reply would arrive through the reader this call blocks.
            raise RuntimeError("request() cannot wait inside on_message")
        inbox = self._subscribed_inbox()
        if not self._connected(deadline):
            # Never buffered for later: it would run after its requester
            # gave up (a forwarded POST run twice, say).
            raise BrokerUnavailable(
                f"the {self.broker.kind} broker is unreachable; no request sent"
            )
        reply_to = f"{inbox}#{next(self._serial)}"
        waiter = _Waiter()
        with self._lock:
            self._waiting[reply_to] = waiter
        try:
            head = b"".join((REQUEST, reply_to.encode(), b"\n"))
            if self.broker.publish(topic, head + data) == 0:
                return None
            if not self._wait_or_probe(waiter, topic, deadline, timeout):
                return None
            return waiter.data
        finally:
            with self._lock:
                self._waiting.pop(reply_to, None)

    def gather(
        self, topic: str, data: bytes, window: float
    ) -> tuple[list[bytes], int | None]:
        """Send ``data`` to every subscriber of ``topic``; every reply.

        Returns ``(replies, counted)``. ``counted`` is the number of
        receivers the broker reported (Redis counts them), and the call
        returns as soon as that many replied; without a count (RabbitMQ,
        NATS) it collects for ``window`` seconds after publishing, which is
        also the most it waits for a counted receiver that never answers (a
        frozen node). Raises :class:`~flask_realtime.BrokerUnavailable` when
        the broker cannot be reached (after waiting up to
        ``GATHER_CONNECT`` seconds for a first connection).
        """
        if self.delivering():
            raise RuntimeError("gather() cannot wait inside on_message")
        self.check_connected()
        inbox = self._subscribed_inbox()
        reply_to = f"{inbox}#{next(self._serial)}"
        gatherer = _Gatherer()
        with self._lock:
            self._waiting[reply_to] = gatherer
        try:
            head = b"".join((REQUEST, reply_to.encode(), b"\n"))
            counted = self.broker.publish(topic, head + data)
            deadline = time.monotonic() + window
            with self._lock:
                gatherer.expect(counted)
            gatherer.done.wait(max(0.0, deadline - time.monotonic()))
        finally:
            with self._lock:
                self._waiting.pop(reply_to, None)
                replies = list(gatherer.replies)
        return replies, counted

    def check_connected(self) -> None:
        """Raise :class:`~flask_realtime.BrokerUnavailable` unless the broker
        is up, after waiting up to ``GATHER_CONNECT`` seconds for a first
        connection: a script that publishes and exits must not leave its
        message in the outage buffer."""
        self._subscribed_inbox()  # starts the connection, as a first request does
        if not self._connected(time.monotonic() + GATHER_CONNECT):
            raise BrokerUnavailable(
                f"the {self.broker.kind} broker at {self.broker.url} is unreachable"
            )

    def _connected(self, deadline: float) -> bool:
        """Whether the broker is up; a process's first request waits for the
        first connection (up to its deadline), which a script or a task
        starting on a loaded host may still be making: slow is not down."""
        if self.broker.connected:
            self._was_up = os.getpid()
            return True
        if self._was_up == os.getpid():
            return False  # it was up and went down: an outage, say so at once
        while time.monotonic() < deadline:
            sleep(_UP_POLL)
            if self.broker.connected:
                self._was_up = os.getpid()
                return True
        return False

    def _wait_or_probe(
        self, waiter: _Waiter, topic: str, deadline: float, timeout: float
    ) -> bool:
        """Wait for the reply; False once a probe finds nobody on ``topic``."""
        pause = _FIRST_PROBE
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply to a request on {topic!r} in {timeout} s")
            if waiter.done.wait(min(pause, remaining)):
                return True
            if self.broker.connected and self.broker.publish(topic, PROBE) == 0:
                # Nobody left to answer; a reply that came meanwhile still counts.
                return bool(waiter.done.is_set())
            pause = min(pause * 2, _MAX_PROBE_INTERVAL)

    def reply(self, reply_to: str, data: bytes) -> None:
        """Answer a request (any greenlet or thread, any time)."""
        inbox = reply_to.partition("#")[0]
        head = b"".join((REPLY, reply_to.encode(), b"\n"))
        self.broker.publish(inbox, head + data)

    def _resolve(self, reply_to: str, data: bytes) -> None:
        with self._lock:
            waiter = self._waiting.get(reply_to)
            if isinstance(waiter, _Gatherer):
                waiter.add(data)  # it keeps collecting
                return
            self._waiting.pop(reply_to, None)
        if waiter is not None:  # else answered already, or given up on
            waiter.data = data
            waiter.done.set()

    def _subscribed_inbox(self) -> str:
        """This process's inbox, subscribed at the broker before first use."""
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._inbox = topics.inbox(secrets.token_hex(8))
                self._inbox_subscribed = False
                self._waiting = {}
                # Created here, at run time: gevent's lock once it has patched.
                self._subscribe_lock = threading.Lock()
            inbox, lock = self._inbox, self._subscribe_lock
        if not self._inbox_subscribed:
            with lock:
                if not self._inbox_subscribed:
                    self.broker.subscribe(inbox)
                    self._inbox_subscribed = True
        return inbox
