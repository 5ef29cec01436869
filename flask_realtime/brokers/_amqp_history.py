"""History on RabbitMQ: a stream queue per kept topic, read over AMQP 0-9-1.

Each kept topic has a stream queue, ``<queue_prefix>.history.<exchange>.
<routing key>`` (a hash past 255 bytes), declared lazily by whoever needs it
first (a publisher, a subscriber, a reader) with the same arguments:
``x-max-age`` the ttl, ``x-max-length-bytes`` 4 KiB per event of ``size``
(1 MiB at least) in segments of half that. RabbitMQ trims a stream
by whole segments only, so a read also leaves out events past ``size`` and
older than the ttl (by the publishing node's clock, a header ``t`` in ms).

The stream orders the messages and numbers them: a channel's offset is the
stream's own offset (``x-stream-offset``), so publishers on any number of
nodes get distinct offsets in one order without talking to each other, and
every subscriber delivers from a stream consumer, stamping as it delivers,
in that order. Offset 0 is the epoch marker (headers ``m`` and ``e``),
written by whoever finds the stream empty; every event carries the epoch
its publisher read (header ``e``), so the epoch outlives the marker's
segment. Marking an empty stream takes a lock, an exclusive queue
(``<stream>.lock``): two nodes finding it empty at once would otherwise
both write a marker, and the second would take offset 1 from the events.
Offsets are contiguous but for one thing: when RabbitMQ starts a new
segment it writes a chunk of its own that takes an offset and that no
consumer sees (docs/architecture.md).

A read consumes the stream from an offset with a prefetch of
``_READ_CREDIT``; after the consume (and after each ack), a ``basic.qos``
round trip is a fence: RabbitMQ sends what the stream holds up to the
prefetch before it answers, so a round that brought less than the prefetch
reached the end.
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
import time
import typing as t

import pika
import pika.exceptions

from .._runtime import sleep
from ._amqp import Link
from ._amqp_options import Options, routing_key
from ._history import envelope, new_epoch, stamp
from ._support import BrokerUnavailable, LinkLost
from .interface import Position, Retention

_READ_CREDIT = 1000  # a read's prefetch: messages per round trip
_BYTES_PER_EVENT, _MIN_BYTES = 4096, 1 << 20
_LINK_ERRORS = (OSError, pika.exceptions.AMQPError, LinkLost)
_LOCK_WAIT = 5.0  # marking a stream waits this long for another node's lock


class _Locked(Exception):
    """Another node holds the stream's lock (its marker is on the way)."""


class Message(t.NamedTuple):
    offset: int
    headers: dict[str, t.Any]
    body: bytes
    marker: bool


@functools.lru_cache(maxsize=64)
def arguments(rule: Retention) -> dict[str, t.Any]:
    """The stream's declare arguments: every declarer must use the same."""
    most = max(rule.size * _BYTES_PER_EVENT, _MIN_BYTES)
    return {
        "x-queue-type": "stream",
        "x-max-age": f"{max(1, math.ceil(rule.ttl))}s",
        "x-max-length-bytes": most,
        "x-stream-max-segment-size-bytes": most // 2,
    }


@functools.lru_cache(maxsize=4096)
def stream_name(prefix: str, exchange: str, topic: str) -> str:
    """The stream queue of a kept topic (routing keys never contain '.')."""
    name = f"{prefix}.history.{exchange}.{routing_key(topic)}"
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        digest = hashlib.sha256(topic.encode("utf-8", "surrogatepass")).hexdigest()
        name = f"{prefix[:80]}.history.{exchange[:80]}.%H{digest}"
    return name


def _lock_name(name: str) -> str:
    if len(name) <= 200:
        return name + ".lock"
    return f"{name[:150]}.{hashlib.sha256(name.encode()).hexdigest()[:16]}.lock"


def now_ms() -> int:
    return int(time.time() * 1000)


def event_properties(epoch: str, now: int) -> pika.BasicProperties:
    return pika.BasicProperties(headers={"e": epoch, "t": now})


def _marker_properties(epoch: str) -> pika.BasicProperties:
    return pika.BasicProperties(headers={"e": epoch, "m": 1})


class StreamHistory:
    """The reads of kept topics, and their epochs for publishers, on a
    connection of their own (a read never waits behind a batch)."""

    def __init__(self, options: Options) -> None:
        self._options = options
        self.reset()

    def reset(self) -> None:
        """Fresh per-process state: at start, and in a forked child."""
        self._link: Link | None = None
        # Held across round trips: a gevent lock once gevent patched threading.
        self._lock = threading.Lock()

    def name(self, topic: str) -> str:
        o = self._options
        return stream_name(o.queue_prefix, o.exchange, topic)

    # -- what the broker asks -------------------------------------------------

    def epoch(self, topic: str, rule: Retention) -> str:
        """The epoch the topic's next event carries (a new stream gets one)."""
        return self._run(lambda link: self._position(link, topic, rule)[1])

    def read(
        self, topic: str, rule: Retention | None, after: int | None, limit: int | None
    ) -> tuple[Position, list[bytes] | None]:
        """``Broker.history`` (see ``interface.py``)."""
        if rule is None:  # nothing is kept: no stream to read
            return Position(0, new_epoch()), ([] if after in (None, 0) else None)
        return self._run(lambda link: self._read(link, topic, rule, after, limit))

    def close(self) -> None:
        """Close the connection (any greenlet; a read in progress then fails)."""
        link = self._link
        if link is None:
            return
        if self._lock.acquire(blocking=False):
            try:
                self._link = None
                link.close()
            finally:
                self._lock.release()
        else:
            link.interrupt()  # the reader closes it

    def drop(self) -> None:
        """In a forked child: forget the parent's connection without I/O."""
        self.reset()

    # -- reading ------------------------------------------------------------------

    def _run(self, work: t.Callable[[Link], t.Any]) -> t.Any:
        deadline = time.monotonic() + _LOCK_WAIT
        while True:
            try:
                return self._run_once(work)
            except _Locked:  # RabbitMQ closed the channel: a new link, again
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(
                        "another node held a stream's lock too long"
                    ) from None
                sleep(0.02)

    def _run_once(self, work: t.Callable[[Link], t.Any]) -> t.Any:
        with self._lock:
            link = self._link
            try:
                if link is None:
                    link = self._open()
                return work(link)
            except _Locked:
                if link is not None:
                    link.close()
                self._link = None
                raise
            except _LINK_ERRORS as exc:
                if link is not None:
                    link.close()
                self._link = None
                raise BrokerUnavailable(
                    f"reading RabbitMQ history failed: {exc or type(exc).__name__}"
                ) from exc

    def _open(self) -> Link:
        o = self._options
        link = Link(o.parameters("history"), o.password)
        try:
            link.enable_confirms()
            link.call(link.channel.basic_qos, prefetch_count=_READ_CREDIT)
        except BaseException:
            link.abandon()
            raise
        self._link = link
        return link

    def _read(
        self,
        link: Link,
        topic: str,
        rule: Retention,
        after: int | None,
        limit: int | None,
    ) -> tuple[Position, list[bytes] | None]:
        offset, epoch, tail = self._position(link, topic, rule)
        position = Position(offset, epoch)
        if after is None:
            count = rule.size if limit is None else min(limit, rule.size)
            if count <= 0 or offset == 0:
                return position, []
            start = max(1, offset - count + 1)
        else:
            if after > offset or offset - after > rule.size:
                return position, None  # beyond the stream, or trimmed by size
            if after == offset:
                return position, []
            start = after + 1
        found = tail
        if not found or found[0].offset > start:
            found = self._scan(link, self.name(topic), start, offset)
        found = [m for m in found if start <= m.offset <= offset]
        oldest = now_ms() - rule.ttl * 1000
        events = [m for m in found if not m.marker and m.headers.get("t", 0) >= oldest]
        if after is not None:
            # A segment's first chunk takes an offset no consumer sees: the
            # first message may be one past ``start`` and nothing is missing.
            complete = bool(found) and found[0].offset <= start + 1
            if not complete or len(events) < sum(not m.marker for m in found):
                return position, None
        return position, [envelope(stamp(m.body, m.offset)) for m in events]

    def _position(
        self, link: Link, topic: str, rule: Retention
    ) -> tuple[int, str, list[Message]]:
        """The latest offset, the epoch and the last messages read on the
        way; declares the stream, and marks an empty one with a new epoch."""
        name = self.name(topic)
        link.call(
            link.channel.queue_declare,
            queue=name,
            durable=True,
            arguments=arguments(rule),
        )
        for _ in range(3):
            tail = self._scan(link, name, "last")
            events = [m for m in tail if not m.marker]
            if events:
                return tail[-1].offset, events[-1].headers["e"], tail
            whole = self._scan(link, name, "first") if tail else []
            if whole:
                first, events = whole[0], [m for m in whole if not m.marker]
                if first.offset == 0 and first.marker:
                    epoch = first.headers["e"]
                elif events:  # the marker's segment is gone
                    epoch = events[-1].headers["e"]
                else:
                    epoch = first.headers["e"]
                return whole[-1].offset, epoch, whole
            # Empty: mark it, under the lock (and look again once held).
            lock = _lock_name(name)
            try:
                link.call(
                    link.channel.queue_declare,
                    queue=lock,
                    exclusive=True,
                    auto_delete=True,
                )
            except LinkLost as exc:
                if "RESOURCE_LOCKED" in str(exc):
                    raise _Locked() from exc
                raise
            try:
                if not self._scan(link, name, "first"):
                    marker = ("", name, b"", _marker_properties(new_epoch()))
                    if link.publish([marker]) == [0]:
                        raise LinkLost(f"the stream {name} vanished")
            finally:
                if link.error is None:
                    link.call(link.channel.queue_delete, queue=lock)
        raise LinkLost(f"the stream {name} stays empty")

    def _scan(
        self, link: Link, name: str, start: int | str, stop: int | None = None
    ) -> list[Message]:
        """The stream's messages from ``start`` (an offset, "first", "last")
        to its end, or to offset ``stop`` at least."""
        found: list[Message] = []
        tag = link.consume(name, {"x-stream-offset": start})
        last_tag = 0
        try:
            while True:
                link.call(link.channel.basic_qos, prefetch_count=_READ_CREDIT)
                got = 0
                while link.deliveries:
                    last_tag, _key, body, consumer, headers = link.deliveries.popleft()
                    if consumer != tag or not headers:
                        continue
                    offset = int(headers["x-stream-offset"])
                    found.append(Message(offset, headers, body, "m" in headers))
                    got += 1
                if last_tag:
                    link.channel.basic_ack(last_tag, multiple=True)
                if got < _READ_CREDIT or (
                    stop is not None and found and found[-1].offset >= stop
                ):
                    return found
        finally:
            link.call(link.channel.basic_cancel, consumer_tag=tag)
            if link.deliveries:  # arrived after the end: settle them too
                link.channel.basic_ack(link.deliveries[-1][0], multiple=True)
                link.deliveries.clear()
