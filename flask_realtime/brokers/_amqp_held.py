"""The RabbitMQ writer's copy of the tails it appended (``_amqp_history.py``).

The writer of a kept topic answers a read's question through the topic's
inbox with the stream's position; it adds the events the read wants when it
holds them all, so that read is one round trip and no scan of the stream.
"""

from __future__ import annotations

import collections
import typing as t

from .interface import Retention

HELD_BYTES = 32 << 20  # the writer's copies of tails, in all
HELD_TOPIC_BYTES = 1 << 20  # and per topic (an answer carries them)


class HeldTails:
    """The writer's copy of the last events it appended to each topic's
    stream (raw bodies, as in the stream), so that it answers a read's
    question with the events the read wants too: one round trip, no scan.

    Per topic, contiguous offsets of one epoch, at most the rule's size and
    ``HELD_TOPIC_BYTES``; ``HELD_BYTES`` in all, the topics appended to
    least lately given up first. What it does not hold from the start a
    read wants (older, or appended before this node took over), the read
    scans the stream for. Used by the writer alone (the reader greenlet).
    """

    def __init__(self) -> None:
        # topic -> (epoch, events: (offset, stamped at, body)), oldest first
        self._topics: collections.OrderedDict[
            str, tuple[str, collections.deque[tuple[int, int, bytes]]]
        ] = collections.OrderedDict()
        self._sizes: dict[str, int] = {}
        self.size = 0  # bytes held in all

    def add(
        self, topic: str, rule: Retention, epoch: str, offset: int, at: int, body: bytes
    ) -> None:
        """One event, as the stream confirmed it (after the topic's last)."""
        held = self._topics.get(topic)
        if (
            held is None
            or held[0] != epoch
            or (held[1] and held[1][-1][0] != offset - 1)
        ):
            self.drop(topic)  # a hole or a new epoch: start again from here
            held = self._topics[topic] = (epoch, collections.deque())
            self._sizes[topic] = 0
        else:
            self._topics.move_to_end(topic)
        events = held[1]
        events.append((offset, at, body))
        self._sizes[topic] += len(body)
        self.size += len(body)
        while len(events) > rule.size or self._sizes[topic] > HELD_TOPIC_BYTES:
            gone = len(events.popleft()[2])
            self._sizes[topic] -= gone
            self.size -= gone
        while self.size > HELD_BYTES:
            self.drop(next(iter(self._topics)))

    def drop(self, topic: str) -> None:
        """Forget ``topic``'s events."""
        if self._topics.pop(topic, None) is not None:
            self.size -= self._sizes.pop(topic)

    def answer(self, topic: str, question: dict[str, t.Any], last: int) -> bytes:
        """What follows the position in the answer to ``question``: the
        events from the first it wants (``w``: an offset; ``n``: the last
        n) to ``last``, packed, when all of them are held; else nothing."""
        held = self._topics.get(topic)
        wants = [int(question["w"])] if "w" in question else []
        if "n" in question:
            wants.append(last - int(question["n"]) + 1)
        if held is None or not wants:
            return b""
        first, events = max(1, min(wants)), held[1]
        if first > last or not events or events[0][0] > first:
            return b""
        packed = [b"\n"]
        for offset, at, body in events:
            if first <= offset <= last:
                packed.append(b"%d %d %d\n%s" % (offset, at, len(body), body))
        return b"".join(packed)


def unpack_held(packed: bytes) -> list[tuple[int, int, bytes]]:
    """The events of an answer (:meth:`HeldTails.answer`), in order."""
    events, start = [], 0
    while start < len(packed):
        end = packed.index(b"\n", start)
        offset, at, size = (int(x) for x in packed[start:end].split(b" "))
        events.append((offset, at, packed[end + 1 : end + 1 + size]))
        start = end + 1 + size
    return events
