"""The publishing half of the broker base: group commit and the outage buffer.

Group commit: the first caller leads. It takes every message queued so far,
sends them as one batch, waits for the broker's acceptance once, and answers
each caller. Callers arriving meanwhile queue up and wait on an event; when
the leader is done it hands the lead to the first of them, which sends the
whole queue. So a lone publisher pays one round trip per message, and many
concurrent ones (greenlets or threads) share round trips, each still
returning only once the broker has accepted its own message.
"""

from __future__ import annotations

import logging
import time
import typing as t

from .._runtime import event, gevent_active, real_lock, sleep, spawn
from ._support import Backoff, BrokerUnavailable, LinkLost, OutageBuffer

if t.TYPE_CHECKING:
    from .base import BrokerBase

log = logging.getLogger("flask_realtime")

_FLUSH_BATCH = 1000  # buffered messages per batch when flushing


class Pending:
    """One message waiting to be sent, and what its caller gets back.

    ``topic`` None is a flush: nothing to send, only the outage buffer.
    """

    __slots__ = ("topic", "data", "event", "lead", "count", "error", "answered")

    def __init__(self, topic: str | None, data: bytes = b"") -> None:
        self.topic = topic
        self.data = data
        self.event: t.Any = None
        self.lead = False  # woken to lead the next batch, not with an answer
        self.count: int | None = None
        self.error: BaseException | None = None
        self.answered = False

    def answer(self, count: int | None) -> None:
        self.count = count
        self.answered = True

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.answered = True

    def result(self) -> int | None:
        if self.error is not None:
            raise self.error
        return self.count


class GroupCommit:
    """Runs ``send(batch)`` for one batch at a time, led by one of its callers.

    ``send`` must answer (or fail) every :class:`Pending` of its batch.
    """

    def __init__(self, send: t.Callable[[list[Pending]], None]) -> None:
        self._send = send
        self._lock = real_lock()  # the queue only; never held across I/O
        self._queue: list[Pending] = []
        self.leading = False

    def submit(self, pending: Pending) -> int | None:
        """Send ``pending`` with whatever else waits; its receiver count."""
        with self._lock:
            follower = self.leading
            if follower:
                pending.event = event()
                self._queue.append(pending)
            else:
                self.leading = True
        if follower:
            pending.event.wait()
            if not pending.lead:
                return pending.result()
        self._lead(pending)
        return pending.result()

    def _lead(self, own: Pending) -> None:
        if gevent_active():
            # Let the runnable greenlets queue their messages first. Without
            # this, a broker that answers before the leader's read would yield
            # keeps every batch at one message.
            sleep(0)
        with self._lock:
            batch, self._queue = self._queue, []
        if not own.lead:
            batch.insert(0, own)
        try:
            self._send(batch)
        except BaseException as exc:
            # A bug or a killed greenlet: nobody may wait forever.
            failure = exc if isinstance(exc, Exception) else RuntimeError(str(exc))
            for pending in batch:
                if not pending.answered:
                    pending.fail(failure)
            if not isinstance(exc, Exception):
                raise
        finally:
            for pending in batch:
                if pending is not own and pending.event is not None:
                    pending.event.set()
            with self._lock:
                after = self._queue[0] if self._queue else None
                if after is None:
                    self.leading = False
                else:
                    after.lead = True
            if after is not None:
                after.event.set()


class Outbox:
    """What a broker publishes: sent in batches, or buffered while it cannot be.

    Messages wait in the bounded outage buffer while the broker is down (or
    a send failed, until a backoff passes); any batch sends the buffer first,
    so order holds across an outage.
    """

    def __init__(self, broker: BrokerBase, limit: int) -> None:
        self._broker = broker
        self._commits = GroupCommit(self._send)
        self._buffer = OutageBuffer(limit)
        self._retry_at = 0.0  # a send failed: buffer until then
        self._backoff = Backoff()
        self._warned = False

    def publish(self, topic: str, data: bytes) -> int | None:
        return self._commits.submit(Pending(topic, data))

    def flush_soon(self) -> None:
        """Send the buffer from a greenlet (or thread) of its own."""
        if len(self._buffer):
            spawn(self._commits.submit, Pending(None))

    def link_up(self) -> None:
        """The broker (re)connected: retry at once, whatever failed before."""
        self._retry_at = 0.0
        self._backoff.reset()
        self.flush_soon()

    @property
    def buffered(self) -> int:
        """Messages in the outage buffer (the metric of its depth)."""
        return len(self._buffer)

    def stuck(self) -> bool:
        """Messages wait, nobody publishes to take them, and a retry is due."""
        return (
            bool(len(self._buffer))
            and not self._commits.leading
            and time.monotonic() >= self._retry_at
        )

    def _send(self, batch: list[Pending]) -> None:
        """Send ``batch`` after anything buffered, or buffer it (the leader)."""
        broker = self._broker
        sending = [pending for pending in batch if pending.topic is not None]
        if broker._closed:
            error = BrokerUnavailable(
                f"the {broker.kind} broker at {broker.url} is closed"
            )
            for pending in sending:
                pending.fail(error)
            return
        if not broker.connected or time.monotonic() < self._retry_at:
            self._park(sending)
            return
        counts: t.Sequence[int | None | Exception] | None = None
        try:
            while len(self._buffer):
                self._flush_buffer()
            if sending:
                counts = broker._send_batch([(p.topic, p.data) for p in sending])  # type: ignore[misc]
        except Exception as exc:
            accepted = exc.accepted if isinstance(exc, LinkLost) else 0
            for pending in sending[:accepted]:
                pending.answer(None)
            self._failed(exc)
            self._park(sending[accepted:])
            return
        self._backoff.reset()
        self._warned = False
        for n, pending in enumerate(sending):
            count = None if counts is None else counts[n]
            if isinstance(count, Exception):
                pending.fail(
                    BrokerUnavailable(
                        f"the {broker.kind} broker at {broker.url} refused"
                        f" a message: {count}"
                    )
                )
            else:
                pending.answer(count)

    def _flush_buffer(self) -> None:
        """One chunk of the buffer; what was not accepted goes back in front."""
        chunk = self._buffer.take(_FLUSH_BATCH)
        try:
            self._broker._send_batch(chunk)
        except Exception as exc:
            accepted = exc.accepted if isinstance(exc, LinkLost) else 0
            self._buffer.put_back(chunk[accepted:])
            raise
        log.debug(
            "sent %d buffered messages to the %s broker", len(chunk), self._broker.kind
        )

    def _park(self, batch: list[Pending]) -> None:
        for pending in batch:
            if self._buffer.add(pending.topic, pending.data):  # type: ignore[arg-type]
                pending.answer(None)
            else:
                broker = self._broker
                pending.fail(
                    BrokerUnavailable(
                        f"the {broker.kind} broker at {broker.url} is unreachable and"
                        f" {self._buffer.limit} messages already wait for it"
                        " (REALTIME_BROKER_BUFFER)"
                    )
                )

    def _failed(self, exc: BaseException) -> None:
        """One WARNING per failure while connected; the retries log at DEBUG."""
        broker = self._broker
        self._retry_at = time.monotonic() + self._backoff.next_delay()
        if self._warned or not broker.connected:
            log.debug("publishing to the %s broker failed: %s", broker.kind, exc)
            return
        self._warned = True
        log.warning(
            "publishing to the %s broker at %s failed (%s); buffering",
            broker.kind,
            broker.url,
            exc,
        )
