"""The base that keeps a broker's promises (see ``interface.py``).

:class:`BrokerBase` owns everything a networked broker needs besides its
wire: the reader and its reconnection with backoff (one warning per outage,
retries at DEBUG), restoring every subscription before anything buffered or
new goes out, the bounded outage buffer, fork safety, and group commit of
concurrent publishes. A backend fills the methods of ``interface.Backend``.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from .._runtime import gevent_active, real_lock, sleep
from ._forks import watch
from ._outbox import Outbox
from ._reader import Reader
from ._support import BrokerUnavailable as BrokerUnavailable
from ._support import LinkLost as LinkLost
from ._support import redact
from .interface import Backend, Position, no_retention
from .interface import Broker as Broker
from .interface import MessageCallback as MessageCallback

log = logging.getLogger("flask_realtime")

_SETTLE_TIMEOUT = 1.5  # the first call waits this long for the first connection
_CONFIRM_TIMEOUT = 5.0  # subscribe() waits this long for the broker's answer
_SLICE = 0.01  # under gevent, the reader lets the loop cycle after this much work
_WAITED = 0.0005  # a pause between two deliveries this long: the reader waited


class BrokerBase(Backend):
    """The machinery of a networked broker; subclasses fill in the wire."""

    kind = ""
    link_errors: tuple[type[BaseException], ...] = (OSError,)
    #: Why the link is down, for the health check (None while it is up).
    problem: str | None = None
    links = 0
    #: Which topics the broker keeps (see ``interface.Broker``); the node's.
    retention = staticmethod(no_retention)

    def __init__(
        self, url: str, buffer_limit: int, on_message: MessageCallback
    ) -> None:
        self.url = redact(url)
        self._on_message = on_message
        self._buffer_limit = buffer_limit
        self._topics: set[str] = set()
        self._closed = False
        self._reset()
        watch(self)

    def _reset(self) -> None:
        """Fresh per-process state: at start, and in a forked child."""
        self._pid = os.getpid()
        self._lock = real_lock()  # start and close; never held across I/O
        # Orders changes of the topic set with the messages that tell the
        # broker; may be held across a socket write (a gevent lock once
        # gevent has patched threading).
        self._sub_lock = threading.Lock()
        self._outbox = Outbox(self, self._buffer_limit)
        self._up = False
        self._started = False
        self._reader: Reader | None = None
        self._delivered = self._busy_since = 0.0

    @property
    def connected(self) -> bool:
        return self._up

    @property
    def buffered(self) -> int:
        """Messages waiting for the broker in the outage buffer."""
        return self._outbox.buffered

    # -- the Broker interface -------------------------------------------------

    def publish(self, topic: str, data: bytes) -> int | None:
        self._start()
        return self._outbox.publish(topic, data)

    def subscribe(self, *topics: str) -> None:
        if not topics:
            return
        self._start()
        with self._sub_lock:
            self._topics.update(topics)
            if not self._up:
                return  # recorded: the reader subscribes when it connects
            try:
                waiting = self._subscribe(list(topics))
            except Exception as exc:
                self._link_broken(exc)
                return
        if waiting is None or self._in_reader():
            return  # only the reader reads the answer: it cannot wait here
        if not waiting.wait(_CONFIRM_TIMEOUT):
            log.warning(
                "the %s broker at %s did not confirm a subscription within %s s",
                self.kind,
                self.url,
                _CONFIRM_TIMEOUT,
            )

    def history(
        self, topic: str, *, after: int | None = None, limit: int | None = None
    ) -> tuple[Position, list[bytes] | None]:
        self._start()
        if not self._up:
            raise BrokerUnavailable(
                f"the {self.kind} broker at {self.url} is unreachable:"
                " its history cannot be read"
            )
        return self._read_history(topic, after, limit)

    def unsubscribe(self, *topics: str) -> None:
        if not topics:
            return
        self._check_fork()
        # No wait for the broker: _deliver drops messages of topics no longer
        # in the set, so nothing arrives after this returns.
        with self._sub_lock:
            self._topics.difference_update(topics)
            if not self._up:
                return
            try:
                self._unsubscribe(list(topics))
            except Exception as exc:
                self._link_broken(exc)

    def close(self) -> None:
        self._check_fork()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._up = False
        self._disconnect()
        if self._reader is not None:
            self._reader.stop()

    # -- for the backend ------------------------------------------------------

    def _deliver(self, topic: str, data: bytes) -> None:
        """Hand one message to the node, unless its topic was unsubscribed."""
        if topic not in self._topics:
            return
        started = time.monotonic()
        if started - self._delivered > _WAITED:
            self._busy_since = started  # the reader waited: the loop ran meanwhile
        try:
            self._on_message(topic, data)
        except Exception:
            log.exception("on_message failed for a %s message on %s", self.kind, topic)
        self._delivered = time.monotonic()
        if self._delivered - self._busy_since > _SLICE and gevent_active():
            # A backlog never makes the reader wait, and then it would starve
            # every other greenlet (the writers to the clients among them).
            sleep(0.0001)  # not sleep(0): let the loop run timers and I/O
            self._delivered = self._busy_since = time.monotonic()

    def _tick(self) -> bool:
        """The reader's periodic call: flush a stuck buffer; False: stop reading."""
        if not self._reading():
            return False
        if self._up and self._outbox.stuck():
            self._outbox.flush_soon()
        return True

    def _in_reader(self) -> bool:
        reader = self._reader
        return reader is not None and reader.current()

    # -- the reader's steps (see _reader.py) ---------------------------------------

    def _start(self) -> None:
        """Start on first use and wait (briefly) for the first connection."""
        self._check_fork()
        if self._started:
            return
        with self._lock:
            if self._closed:
                raise BrokerUnavailable(
                    f"the {self.kind} broker at {self.url} is closed"
                )
            reader, starting = self._reader, self._reader is None
            if starting:
                reader = self._reader = Reader(self)
        if starting:
            reader.start()
        # So a script's first publish goes out instead of into the buffer.
        reader.settled.wait(_SETTLE_TIMEOUT)
        self._started = True

    def _reading(self) -> bool:
        """Whether the calling reader should go on (not closed, not forked away)."""
        return not self._closed and self._in_reader()

    def _go_up(self) -> None:
        """Connect with every topic subscribed, catch up with (un)subscriptions
        made meanwhile, and only then let publishing go out."""
        with self._sub_lock:
            subscribed = set(self._topics)
        self._connect(sorted(subscribed))
        with self._sub_lock:
            if self._topics - subscribed:
                self._subscribe(sorted(self._topics - subscribed))
            if subscribed - self._topics:
                self._unsubscribe(sorted(subscribed - self._topics))
            if not self._reading():
                raise LinkLost("closed while connecting")
            self._up = True
            self.links += 1

    def _go_down(self) -> None:
        with self._sub_lock:
            self._up = False
        self._disconnect()

    def _link_broken(self, exc: BaseException) -> None:
        """A write failed outside the reader: the reader reconnects."""
        log.debug("the %s broker's connection failed: %s", self.kind, exc)
        self._up = False
        self._disconnect()

    # -- forks ------------------------------------------------------------------

    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            self._after_fork()

    def _after_fork(self) -> None:
        """Drop the parent's connections and reader in this child, lazily reconnect.

        Runs right after ``os.fork`` (see ``_forks.py``); the pid check
        on every call covers a fork that bypassed ``os.fork``. Subscriptions stay
        (this process's node still wants them); buffered messages were the
        parent's.
        """
        if self._pid == os.getpid():
            return
        if self._reader is not None:
            self._reader.abandon()
        self._drop_after_fork()
        self._reset()
