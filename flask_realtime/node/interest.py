"""Broker subscriptions that follow local interest, written once.

A node subscribes at the broker to a topic (a channel, a user, its own node
topic, a presence channel) when its first local subscriber arrives, and
unsubscribes a short while after the last one leaves, once it has checked
that still nobody here wants the topic. The delay keeps a client that leaves
and comes back (a page reload, a flapping tab) from costing two broker round
trips each time.

Every change of one topic's subscription happens under that topic's guard:
a subscriber holds it from the broker subscription to its entry in the hub,
and the delayed unsubscribe takes it to re-check. So a subscriber never gets
its reply before the broker delivers the topic here, and an unsubscribe
never drops a topic that someone just joined.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import typing as t

from .._runtime import real_lock, sleep, spawn
from ..brokers import BrokerUnavailable

if t.TYPE_CHECKING:
    from ..brokers import Broker

logger = logging.getLogger("flask_realtime")

# How long a topic stays subscribed after its last local subscriber left.
UNSUBSCRIBE_DELAY = 1.0


class _Guards:
    """One lock per topic, existing only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._lock = real_lock()  # the map only; never held across a wait
        self._held: dict[str, list[t.Any]] = {}  # topic -> [lock, holders]

    def __len__(self) -> int:
        return len(self._held)

    @contextlib.contextmanager
    def __call__(self, topic: str) -> t.Iterator[None]:
        with self._lock:
            entry = self._held.get(topic)
            if entry is None:
                # Created now, at run time: gevent's lock once it has patched,
                # so a greenlet waiting for it lets the others run.
                entry = self._held[topic] = [threading.RLock(), 0]
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._held[topic]


class Interest:
    """Which topics this node subscribes to at the broker, and when.

    ``wanted(topic)`` says whether a local subscriber still wants ``topic``
    (the node asks its hub); ``on_dropped(topic)`` runs, under the topic's
    guard, once the broker subscription is gone.
    """

    def __init__(
        self,
        broker: Broker,
        wanted: t.Callable[[str], bool],
        *,
        on_dropped: t.Callable[[str], None] | None = None,
        delay: float = UNSUBSCRIBE_DELAY,
        start: t.Callable[..., t.Any] = spawn,
    ) -> None:
        self._broker = broker
        self._wanted = wanted
        self._on_dropped = on_dropped
        self.delay = delay
        self._start = start  # runs the delayed unsubscribes (a greenlet, a thread)
        self._guard = _Guards()
        self._subscribed: set[str] = set()
        self._lock = real_lock()
        self._due: dict[str, float] = {}  # topic -> when to re-check; oldest first
        self._worker_pid: int | None = None

    def is_subscribed(self, topic: str) -> bool:
        return topic in self._subscribed

    def sizes(self) -> dict[str, int]:
        """Topics subscribed, re-checks due, guards held (0 when idle)."""
        return {
            "topics": len(self._subscribed),
            "due": len(self._due),
            "guards": len(self._guard),
        }

    @contextlib.contextmanager
    def hold(
        self, topic: str, prepare: t.Callable[[], None] | None = None
    ) -> t.Iterator[None]:
        """Subscribe at the broker unless subscribed; hold the topic's guard.

        Add the local subscriber inside the ``with`` block: when the broker
        subscription fails, the block does not run and the error
        (:class:`~flask_realtime.BrokerUnavailable`) reaches the caller;
        when the block fails or adds nobody, the topic is released again.
        ``prepare`` runs first, under the guard, only when a subscription
        is made (a presence replica syncs there).
        """
        with self._guard(topic):
            if topic not in self._subscribed:
                if prepare is not None:
                    prepare()
                try:
                    self._subscribe(topic)
                except BrokerUnavailable:
                    if prepare is not None and self._on_dropped is not None:
                        self._on_dropped(topic)  # undo what prepare() kept
                    raise
            try:
                yield
            finally:
                if not self._wanted(topic):
                    self.release(topic)

    def release(self, topic: str) -> None:
        """The last local subscriber left: unsubscribe after the delay,
        unless someone wants the topic again by then."""
        with self._lock:
            self._due.pop(topic, None)  # re-inserted last: the map stays in order
            self._due[topic] = time.monotonic() + self.delay
            pid = os.getpid()
            if self._worker_pid == pid:
                return
            self._worker_pid = pid
        self._start(self._run_worker)

    def run_due(self, now: float) -> list[str]:
        """Re-check every topic released before ``now - delay``; the topics
        unsubscribed at the broker."""
        dropped = []
        while True:
            with self._lock:
                topic = next(iter(self._due), None)
                if topic is None or self._due[topic] > now:
                    return dropped
                del self._due[topic]
            with self._guard(topic):
                if topic in self._subscribed and not self._wanted(topic):
                    self._subscribed.discard(topic)
                    dropped.append(topic)
                    self._unsubscribe(topic)

    def _run_worker(self) -> None:
        """Sleep until the next re-check is due; end when none is left."""
        while True:
            with self._lock:
                topic = next(iter(self._due), None)
                if topic is None:
                    self._worker_pid = None
                    return
                wait = self._due[topic] - time.monotonic()
            if wait > 0:
                sleep(wait)
            else:
                try:
                    self.run_due(time.monotonic())
                except Exception:  # pragma: no cover - the worker must survive
                    logger.exception("flask_realtime: delayed unsubscribe failed")

    def _subscribe(self, topic: str) -> None:
        try:
            self._broker.subscribe(topic)
        except BrokerUnavailable:
            raise
        except Exception as exc:
            logger.warning("flask_realtime: subscribing to %r failed: %s", topic, exc)
            raise BrokerUnavailable(f"could not subscribe to {topic!r}: {exc}") from exc
        self._subscribed.add(topic)

    def _unsubscribe(self, topic: str) -> None:
        try:
            self._broker.unsubscribe(topic)
        except Exception:
            # The broker re-subscribes only what it has recorded; a failed
            # unsubscribe costs some unwanted traffic, nothing more.
            logger.warning(
                "flask_realtime: unsubscribing %r failed", topic, exc_info=True
            )
        if self._on_dropped is not None:
            self._on_dropped(topic)
