"""One process, no broker server: publishing delivers to this node at once.

History lives in the process (``_Stream``); its epoch is new at every start
of the process, since nothing of it outlives the process.
"""

from __future__ import annotations

import time
from collections import deque

from .._runtime import real_lock
from . import _history
from .interface import MessageCallback, Position, Retention, no_retention


class _Stream:
    """One kept topic: its last offset and the events still kept."""

    __slots__ = ("offset", "last", "events")

    def __init__(self, size: int) -> None:
        self.offset = 0
        self.last = time.monotonic()
        self.events: deque[tuple[float, bytes]] = deque(maxlen=size)

    def kept(self, ttl: float) -> list[tuple[int, bytes]]:
        """(offset, envelope) of the events younger than ``ttl``, oldest first."""
        oldest = time.monotonic() - ttl
        events = [envelope for at, envelope in self.events if at >= oldest]
        first = self.offset - len(events) + 1
        return list(enumerate(events, first))


class NullBroker:
    kind = "null"
    url = "null:"
    connected = True
    links = 1

    def __init__(self, on_message: MessageCallback) -> None:
        self._on_message = on_message
        self._topics: set[str] = set()
        self.retention = no_retention
        self._epoch = _history.new_epoch()
        self._streams: dict[str, _Stream] = {}
        self._created = 0
        # Offsets are taken and delivered under this lock: delivery never
        # yields (the hub queues), so every subscriber sees offset order.
        self._lock = real_lock()

    def publish(self, topic: str, data: bytes) -> int:
        rule = self.retention(topic)
        if rule is not None:
            with self._lock:
                data = self._keep(topic, data, rule)
                return self._deliver(topic, data)
        return self._deliver(topic, data)

    def _deliver(self, topic: str, data: bytes) -> int:
        if topic not in self._topics:
            return 0
        self._on_message(topic, data)
        return 1

    def _keep(self, topic: str, data: bytes, rule: Retention) -> bytes:
        stream = self._stream(topic, rule)
        stream.offset += 1
        stream.last = now = time.monotonic()
        data = _history.stamp(data, stream.offset)
        stream.events.append((now, _history.envelope(data)))
        return data

    def _stream(self, topic: str, rule: Retention) -> _Stream:
        stream = self._streams.get(topic)
        if stream is None or stream.events.maxlen != rule.size:
            self._created += 1
            if self._created % 1024 == 0:
                self._forget_quiet_streams()
            fresh = _Stream(rule.size)
            if stream is not None:  # the rule changed: keep the position
                fresh.offset = stream.offset
                fresh.events.extend(stream.events)
            stream = self._streams[topic] = fresh
        return stream

    def _forget_quiet_streams(self) -> None:
        """Drop streams quiet for longer than a position is kept."""
        oldest = time.monotonic() - _history.POSITION_TTL
        for topic in [k for k, s in self._streams.items() if s.last < oldest]:
            del self._streams[topic]

    def history(
        self, topic: str, *, after: int | None = None, limit: int | None = None
    ) -> tuple[Position, list[bytes] | None]:
        rule = self.retention(topic)
        with self._lock:
            stream = self._streams.get(topic)
            if stream is None or rule is None:
                return Position(0 if stream is None else stream.offset, self._epoch), (
                    [] if after in (None, 0) else None
                )
            position = Position(stream.offset, self._epoch)
            kept = stream.kept(rule.ttl)
        if after is None:
            if limit is not None:
                kept = kept[-limit:] if limit else []
            return position, [envelope for _, envelope in kept]
        if after > position.offset:
            return position, None
        missed = [envelope for offset, envelope in kept if offset > after]
        if len(missed) != position.offset - after:
            return position, None
        return position, missed

    def subscribe(self, *topics: str) -> None:
        self._topics.update(topics)

    def unsubscribe(self, *topics: str) -> None:
        self._topics.difference_update(topics)

    def close(self) -> None:
        self._topics.clear()
