"""History and recovery on the node: a subscribe that hands over from the
channel's stored events to live delivery without a gap or a duplicate.

A subscribe to a channel with history (``REALTIME_HISTORY``) goes:

1. hold the channel's broker topic (``.interest``), as every subscribe;
2. register the connection in the hub behind a :class:`Recovering`
   stand-in, which buffers the channel's live events (bounded like the
   connection's queue: past it, 4100);
3. read the stream from the broker: its position P, and the events after
   ``since`` when the client gave one in P's epoch;
4. without yielding: the ``subscribed`` reply when it goes on the
   connection's own stream (WebSocket), the replayed events, then the held
   live events with an offset above P (those at or below it were replayed,
   or come before what the client asked for);
5. the stand-in stays in the hub as a filter: an event at or below P can
   still arrive (stored before the read, delivered after it, when the
   broker's reader lags) and is dropped; the first event above P goes
   through, and since delivery follows offsets nothing older can come
   after it, so the connection then takes its deliveries itself.

Why no event is lost or doubled: the broker stores an event before it
delivers it, so every event delivered after step 2 and not in the history
read at step 3 has an offset above P, and reaches the buffer or, after
step 4, the connection; every event up to P is in the read, and none of
them reaches the connection after it. A subscribe
without ``since`` goes the same way with nothing to replay, so that no
event at or below the position in its reply follows the reply.
"""

from __future__ import annotations

import time
import typing as t

from .. import protocol
from .._runtime import real_lock
from ..brokers import Broker
from ..brokers._history import offset_of
from ..brokers.interface import Position, Retention, RetentionLookup
from ..channels import ChannelRules
from ..connection import Connection, Outbound
from . import topics

if t.TYPE_CHECKING:
    from . import Node

# After the hand-over, how long an event at or below the position may still
# arrive from the broker (stored before the history read, delivered after
# it): past that, a lower offset is a stream that started again (a new
# epoch) and goes through.
LATE_DELIVERY = 10.0


class Recovering:
    """Stands in the hub for a recovering connection: holds the channel's
    live events until :meth:`settle` has pushed the replay before them,
    then drops the late ones a broker delivers after its history read gave
    them (offset at or below the position) until a newer event shows that
    none can follow, and only then hands the channel to the connection."""

    __slots__ = ("conn", "id", "buffer", "size", "lock", "last", "until", "done")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.id = conn.id  # the hub skips an event's sender by id
        self.buffer: list[Outbound] | None = []
        self.size = 0
        self.lock = real_lock()
        self.last: int | None = None  # after settle: the position, until passed
        self.until = 0.0
        self.done: t.Callable[[], None] = _nothing

    def push(self, message: Outbound) -> None:
        with self.lock:
            buffer = self.buffer
            if buffer is not None:
                buffer.append(message)
                self.size += len(message.json)
                conn = self.conn
                if len(buffer) <= conn.max_messages and self.size <= conn.max_bytes:
                    return
                self.buffer = None  # over the queue's bound: 4100 below
        if buffer is None:
            last = self.last
            if last is not None:
                offset = offset_of(message.json)
                if offset is not None:
                    if offset <= last and time.monotonic() < self.until:
                        return  # delivered late: replayed, or before the position
                    # Delivery is in offset order: nothing older can follow.
                    self.last = None
                    self.done()
            self.conn.push(message)
            return
        self.conn.close(protocol.CLOSE_TOO_SLOW, "too slow")

    def settle(
        self,
        reply: bytes | None,
        replay: list[bytes],
        last: int,
        done: t.Callable[[], None],
    ) -> bool:
        """Push ``reply`` (when given), ``replay``, then what was held with
        an offset above ``last`` (or none: presence events); ``done`` once
        an event above ``last`` went through. False when the connection
        overflowed or closed meanwhile.

        Nothing is pushed under the lock (a push that overflows closes the
        connection, and the node may then publish a presence leave and
        wait); what arrives meanwhile is held and pushed in the next round,
        and only an empty round ends the holding.
        """
        conn = self.conn
        if reply is not None:
            conn.push_json(reply)
        for envelope in replay:
            conn.push_json(envelope)
        passed = False  # an event above ``last`` went through
        while True:
            with self.lock:
                held = self.buffer
                if held is None:
                    return False  # overflowed: closed with 4100
                if not held or conn.closing:
                    if not passed:  # late ones may follow: filter until then
                        self.last, self.done = last, done
                        self.until = time.monotonic() + LATE_DELIVERY
                    self.buffer = None
                    break
                self.buffer = []
                self.size = 0
            for message in held:
                offset = offset_of(message.json)
                if offset is None or offset > last:
                    passed = passed or offset is not None
                    conn.push(message)
        if passed:
            done()
        return not conn.closing


def _nothing() -> None:
    pass


def configure(
    broker: Broker, rules: ChannelRules, history: t.Iterable[tuple[str, int, float]]
) -> None:
    """``REALTIME_HISTORY`` into the rules, and ``broker.retention`` (before
    the broker's first use): only channel topics are kept, as rules say."""
    rules.set_history(history)
    if rules.keeps_history:  # else the broker's default, the cheapest
        broker.retention = retention_lookup(rules)


def retention_lookup(rules: ChannelRules) -> RetentionLookup:
    prefix, rule = topics.CHANNEL, rules.retention

    def retention(topic: str) -> Retention | None:
        return rule(topic[2:]) if topic.startswith(prefix) else None

    return retention


def position_data(position: Position) -> dict[str, t.Any]:
    return {"offset": position.offset, "epoch": position.epoch}


def recover(
    node: Node,
    conn: Connection,
    name: str,
    stand_in: Recovering,
    since: tuple[int, str] | None,
    data: dict[str, t.Any],
    request_id: t.Any,
    push_reply: bool,
) -> bytes | None:
    """Steps 3 and 4 (the connection is in the hub behind ``stand_in``);
    the reply to return, or None when it went on the stream (or nothing
    did: the connection closed). ``data``: the reply's data so far."""
    topic = topics.channel(name)
    try:
        if since is None:
            position, events = node.broker.history(topic, limit=0)
        else:
            position, events = node.broker.history(topic, after=since[0])
    except Exception:
        node.hub.unsubscribe(conn, name)
        node.left_channel(conn, name)
        raise  # BrokerUnavailable: the client is told 503 and may retry
    node.continuity.seed(name, position)
    data["position"] = position_data(position)
    replay: list[bytes] = []
    if since is not None:
        recovered = since[1] == position.epoch and events is not None
        data["recovered"] = recovered
        if recovered:
            replay = t.cast("list[bytes]", events)
    reply = protocol.subscribed(name, request_id, data)

    def done() -> None:
        node.hub.settle(conn, name)

    if not stand_in.settle(
        reply if push_reply else None, replay, position.offset, done
    ):
        return None
    return None if push_reply else reply


def history(broker: Broker, name: str, limit: int | None) -> list[dict[str, t.Any]]:
    """The kept events of channel ``name``, oldest first (``Channel.history``)."""
    _, events = broker.history(topics.channel(name), limit=limit)
    kept = []
    for envelope in events or ():
        event = protocol.loads(envelope)
        item = {k: event[k] for k in ("offset", "event", "data")}
        if "user_id" in event:  # a relayed client event: who sent it
            item["user_id"] = event["user_id"]
        kept.append(item)
    return kept


def position(broker: Broker, name: str) -> dict[str, t.Any]:
    """Channel ``name``'s stream position (``Channel.position``)."""
    return position_data(broker.history(topics.channel(name), limit=0)[0])
