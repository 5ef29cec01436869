"""Live delivery of kept channels without a hole: gaps filled from history.

The broker delivers a kept channel's events in offset order, but only
while its link is up: what was published while this node's subscription
was being restored (a Redis restart, a dropped connection) is stored and
never delivered here. So the node follows each kept channel it receives:
the next event must carry the last offset plus one. On any other offset
the channel's live events are held (bounded) while the missing ones are
read from the broker's history, then the missing and the held ones go out
in order. A broker link that came back (``Broker.links`` changed) is
checked the same way, for the events published just before it came back
that no newer event would reveal.

When the history cannot fill the hole (the stream's epoch changed, the
events were trimmed, the broker stays unreachable, too much piled up
meanwhile), the channel's local subscribers are closed with 4200: they
reconnect at once, resubscribe with ``since``, and are told
``recovered: false`` only when that is what happened.
"""

from __future__ import annotations

import logging
import time
import typing as t

from .. import protocol
from .._runtime import real_lock, sleep, spawn
from ..brokers._history import offset_of
from ..brokers.interface import Position
from ..connection import Outbound
from . import topics

if t.TYPE_CHECKING:
    from . import Node

log = logging.getLogger("flask_realtime")

# Live events held per channel while its hole is read; past it, subscribers
# are closed (they recover from the history themselves).
HELD_LIMIT = 10_000
# How long a hole may take to fill while the broker is unreachable.
FILL_DEADLINE = 30.0
# After a subscribe's read, events at or below its position may still come
# (stored before the read, delivered after it): not a hole, not a restart.
_LATE = 10.0


class _Stream:
    """What this node knows of one kept channel's stream."""

    __slots__ = ("last", "epoch", "late_until", "held")

    def __init__(self, position: Position) -> None:
        self.last = position.offset  # the latest offset delivered here
        self.epoch = position.epoch
        self.late_until = time.monotonic() + _LATE
        # While a hole is being filled: live events, in arrival order.
        self.held: list[tuple[int, Outbound, str | None]] | None = None


class Continuity:
    """The node's kept channels, each followed by offset (see the module)."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._streams: dict[str, _Stream] = {}
        # Channels received but not followed yet (a subscribe's read is on
        # its way): the highest offset delivered, where following starts.
        self._loose: dict[str, int] = {}
        self._lock = real_lock()
        self._links = node.broker.links

    def seed(self, name: str, position: Position) -> None:
        """A subscribe read ``position``: follow the channel from there (if
        not followed yet), or check it when its epoch is not the one known."""
        with self._lock:
            stream = self._streams.get(name)
            if stream is None:
                stream = self._streams[name] = _Stream(position)
                stream.last = max(stream.last, self._loose.pop(name, 0))
                return
            if stream.epoch == position.epoch or stream.held is not None:
                return
            stream.held = []
        spawn(self._fill, name, stream)

    def forget(self, name: str) -> None:
        """The node no longer receives the channel."""
        with self._lock:
            self._streams.pop(name, None)
            self._loose.pop(name, None)

    def deliver(self, name: str, message: Outbound, exclude: str | None) -> None:
        """A live event of kept channel ``name``, from the broker's reader."""
        offset = offset_of(message.json)
        if offset is None:  # unstamped: the channel was not kept when sent
            self._node.hub.deliver_channel(name, message, exclude)
            return
        with self._lock:
            stream = self._streams.get(name)
            if stream is not None:
                held = stream.held
                if held is not None:
                    if len(held) < HELD_LIMIT:
                        held.append((offset, message, exclude))
                        return
                    stream.held = None  # too much: the subscribers recover
                    self._streams.pop(name, None)
                    overflow = True
                elif offset == stream.last + 1:
                    stream.last = offset
                    overflow = False
                elif offset <= stream.last and time.monotonic() < stream.late_until:
                    return  # late: a read gave it already (a subscribe's, a fill's)
                else:  # a hole, or an old offset long after any read: check
                    stream.held = [(offset, message, exclude)]
                    spawn(self._fill, name, stream)
                    return
            else:
                overflow = False
                if offset > self._loose.get(name, 0):
                    self._loose[name] = offset
        if overflow:  # the hole stays: nothing after it goes out
            self._restart(name, "too many events held while filling a gap")
            return
        self._node.hub.deliver_channel(name, message, exclude)

    def check_links(self) -> None:
        """From the node's timer: after the broker's link came back, check
        every followed channel for events published while it was down."""
        links = self._node.broker.links
        if links == self._links:
            return
        self._links = links
        with self._lock:
            idle = [
                (name, stream)
                for name, stream in self._streams.items()
                if stream.held is None
            ]
            for _, stream in idle:
                stream.held = []
        for name, stream in idle:
            spawn(self._fill, name, stream)

    def _fill(self, name: str, stream: _Stream) -> None:
        """Read what the channel missed since ``stream.last``, deliver it,
        then what was held meanwhile, in offset order."""
        hub = self._node.hub
        while True:
            read_from = stream.last
            events = self._read(name, stream)
            if events is None:
                return
            last = read_from
            for envelope in events:
                offset = offset_of(envelope)
                if offset is not None and offset > last:
                    last = offset
                    hub.deliver_channel(name, Outbound(envelope))
            # Then the held events, round by round: what arrives while a
            # round is delivered is held for the next, so nothing overtakes.
            hole = False
            while not hole:
                with self._lock:
                    held = stream.held or []
                    if not held:
                        stream.last = last
                        stream.held = None
                        # What the read gave may still come live: dropped.
                        stream.late_until = time.monotonic() + _LATE
                        return
                    stream.held = []
                for i, (offset, message, exclude) in enumerate(held):
                    if offset == last + 1:
                        last = offset
                        hub.deliver_channel(name, message, exclude)
                    elif offset > last:  # another hole: read again from here
                        with self._lock:
                            stream.last = last
                            stream.held = held[i:] + (stream.held or [])
                        hole = True
                        break
                    # else: delivered already (the read had it, same epoch)

    def _read(self, name: str, stream: _Stream) -> list[bytes] | None:
        """The events after ``stream.last``, retried while the broker is
        unreachable; None (the subscribers closed) when they cannot be had."""
        broker = self._node.broker
        deadline = time.monotonic() + FILL_DEADLINE
        pause = 0.05
        while self._streams.get(name) is stream:
            try:
                position, events = broker.history(
                    topics.channel(name), after=stream.last
                )
            except Exception as exc:
                if time.monotonic() + pause > deadline:
                    log.warning("a gap in channel %r could not be read: %s", name, exc)
                    break
                sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            if self._streams.get(name) is not stream:
                return None  # forgotten while reading
            if events is not None and position.epoch == stream.epoch:
                return events
            break
        else:
            return None  # forgotten meanwhile: nobody here receives it
        self._drop(name, stream)
        return None

    def _drop(self, name: str, stream: _Stream) -> None:
        with self._lock:
            if self._streams.get(name) is stream:
                del self._streams[name]
        self._restart(name, "its stream cannot be continued")

    def _restart(self, name: str, why: str) -> None:
        """Close the channel's local subscribers: they resubscribe with
        ``since`` and learn from the reply whether they recovered."""
        log.info("closing the subscribers of channel %r: %s", name, why)
        for target in self._node.hub.subscribers(name):
            conn = getattr(target, "conn", target)  # a Recovering stand-in
            conn.close(protocol.CLOSE_SHUTDOWN, "resubscribe")
