"""RabbitMQ: one exchange, one queue per node, one binding per topic.

Every node (process) declares the exchange (``realtime``, a durable topic
exchange, by default) and a queue of its own, and binds that queue once per
topic it wants. A message goes to the exchange with its topic as the routing
key (see :func:`routing_key`), so RabbitMQ hands it only to the nodes that
asked for it. Topic and direct exchanges both route that way; fanout and
headers are refused at start-up.

pika is not thread-safe, so each of the two connections has one driver at
a time: the *consumer* belongs to the reader, which consumes, acknowledges,
binds and unbinds (other greenlets hand it their (un)bindings through
:meth:`Link.soon`); the *publisher* is driven by the base's one publisher at
a time. Every publish is ``mandatory`` and confirmed: the confirm is the
"accepted" of ``publish`` (RabbitMQ sends it once the message sits in every
queue it routes to, so anything published later queues behind it), and a
message RabbitMQ returns as unroutable reached 0 receivers. A batch pays one
confirm wait. Across a lost connection delivery is at least once: a message
whose confirm the failure took away goes out again from the outage buffer.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import threading
import time
import typing as t
from dataclasses import dataclass

import pika
import pika.exceptions

from .._runtime import event
from ..config import Settings
from ._amqp import CALL_TIMEOUT, Link, Outgoing
from ._amqp_follow import CHANNELS as FOLLOW_CHANNELS
from ._amqp_follow import StreamFollows
from ._amqp_held import HeldTails
from ._amqp_history import (
    StreamHistory,
    Tail,
    arguments,
    inbox_declaration,
    inbox_name,
    inbox_properties,
    marker_properties,
    now_ms,
    stamped_properties,
    unpack,
)
from ._amqp_options import Options
from ._amqp_options import routing_key as routing_key
from ._amqp_ready import READY_WAIT, StreamChecks
from ._history import new_epoch
from ._shared_reads import Answer, Ask, SharedReads
from .base import BrokerBase, LinkLost, MessageCallback
from .interface import Position, Retention

log = logging.getLogger("flask_realtime")

_TICK = 1.0  # the reader looks up at least this often
_NOT_FOUND = 404
_STREAMS_LOST_AFTER = 30.0  # s of NOT_FOUND for a stream at every connect
_STREAMS_LOST = (
    "RabbitMQ has lost its stream queues (NOT_FOUND for a history stream at"
    " every connect for over {after:g} s: most likely its stream coordinator"
    " was not restarted, as after a kill within seconds of the first stream"
    " declared); delete the realtime history stream queues (rabbitmqctl"
    " delete_queue) or reset RabbitMQ, then restart it"
)
_STREAM_PREFETCH = 500  # per stream consumer (RabbitMQ requires one)
_READ_LINKS = 4  # history connections per process at most
_TAIL_LINKS = 4  # connections a writer taking channels over reads tails on
_TAILS_EACH = 8  # tails a connection reads at least, when several are used
_GATHER = 0.005  # a take-over waits this long at most for more channels
# Consecutive events of one kept topic in a batch go as one inbox message,
# up to these many or this size (``_amqp_history.unpack``): below RabbitMQ's
# default queue_index_embed_msgs_below (4 KiB, headers included), a message
# is stored with its queue, not in the shared message store, and confirmed
# in about a third of the time (measured: 0.35 against 1.0 ms).
_PACK_EVENTS, _PACK_BYTES = 1000, 3584


def _fence(token: str) -> pika.BasicProperties:
    """A writer's fence (no "o": not an event), ``token`` telling it apart."""
    return pika.BasicProperties(headers={"f": token})


class _Bound:
    """A subscribe() waiting for the reader's last bind to be confirmed."""

    def __init__(self) -> None:
        self.event = event()

    def wait(self, timeout: float | None = None) -> bool:
        return bool(self.event.wait(timeout))


class _Both:
    """A subscribe() waiting for its bindings and its stream consumers."""

    def __init__(self, *parts: _Bound) -> None:
        self._parts = parts

    def is_set(self) -> bool:
        return all(part.event.is_set() for part in self._parts)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for part in self._parts:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not part.wait(left):
                return False
        return True


@dataclass
class _Sequence:
    """A kept topic's numbering while this node is its writer."""

    last: int  # the last offset in the stream (0: the marker; -1: empty)
    epoch: str | None  # None: the stream is empty, a marker goes first
    skip: frozenset[str]  # ids appended lately by the writers before us
    # An offset of ours and its stream offset, read at the take-over: the
    # stream's offsets grow at least as fast as ours from there.
    anchor: tuple[int, int]

    def below(self) -> int:
        """A lower bound of the stream offset of ``last``."""
        return self.anchor[1] + self.last - self.anchor[0]


def _id_order(ident: str) -> tuple[str, int]:
    """An event id, ``<node>.<counter>``, as a sort key."""
    node, _, count = ident.rpartition(".")
    return node, int(count)


class RabbitMQBroker(BrokerBase):
    """Topics over a RabbitMQ exchange; see the module docstring."""

    kind = "rabbitmq"
    link_errors = (OSError, pika.exceptions.AMQPError)

    def __init__(self, settings: Settings, on_message: MessageCallback) -> None:
        self._options = Options(settings)
        prefetch = self._options.prefetch
        self._ack_every = max(1, prefetch // 2) if prefetch else 100
        self._topic_of: dict[str, str] = {}  # routing key -> topic
        self._queue = ""
        self._bound: set[str] = set()  # keys bound to a queue that outlives us
        self._consumer: Link | None = None
        self._publisher: Link | None = None
        # Held by the publisher's driver; gevent's lock once gevent patched.
        self._pub_lock = threading.Lock()
        self._waiting: set[_Bound] = set()
        self._history = StreamHistory(self._options, self._want, self._taking_over)
        # Reads at once go on up to _READ_LINKS connections (each opened
        # when first needed): a read waits on its round trips, not on others.
        self._readers = [self._history] + [
            StreamHistory(self._options, self._want, self._taking_over)
            for _ in range(_READ_LINKS - 1)
        ]
        self._took_over = 0.0  # when the writer last took channels over
        self._taking = False  # and whether it is taking some over now
        self._next_reader = itertools.count()
        # Reads of a topic at once share one (a recovery storm).
        self._shared = SharedReads(self._read_round)
        # The writer's own reads of tails (a read may be waiting for it),
        # on up to _TAIL_LINKS connections at once.
        self._tail_readers = [
            StreamHistory(self._options, self._want) for _ in range(_TAIL_LINKS)
        ]
        self._tails = self._tail_readers[0]
        self._inbox_calls = 0  # inbox consumes asked for, not yet answered
        # Streams checked before the consumer connection uses them.
        self._checks = StreamChecks(self._checking_link)
        # Kept topics' streams followed (``_amqp_follow.py``).
        self._streams = self._stream_follows()
        self._not_found_since: float | None = None  # see _streams_lost
        self._streams_lost_after = _STREAMS_LOST_AFTER  # (tests set less)
        self._said_streams_lost = False
        # Writing (module docstring of _amqp_history): the topics whose inbox
        # this node consumes, inbox consumer tag -> topic, the numbering of
        # those it is the active writer of, inboxes declared by the publisher.
        self._writes: set[str] = set()
        self._writing: dict[str, str] = {}
        self._sequences: dict[str, _Sequence] = {}
        self._held = HeldTails()  # the last events of those, for reads
        self._inboxes: set[str] = set()
        self._ids = itertools.count()
        self._node = new_epoch()
        super().__init__(self._options.url, settings.broker_buffer, on_message)

    def _link(self, role: str) -> Link:
        o = self._options
        link = Link(o.parameters(role), o.password)
        try:
            link.call(
                link.channel.exchange_declare,
                exchange=o.exchange,
                exchange_type=o.exchange_type,
                durable=True,
                passive=o.exchange.startswith("amq."),  # exist, may not be declared
            )
        except BaseException:
            link.abandon()
            raise
        return link

    def _checking_link(self) -> Link:
        """A connection for a batch of stream checks (``_amqp_ready.py``)."""
        return Link(self._options.parameters("checks"), self._options.password)

    # -- the consumer (the reader's) ---------------------------------------------

    def _connect(self, topics: list[str]) -> None:
        o = self._options
        link = self._link("consumer")
        self._checks.forget_all()  # RabbitMQ may have restarted
        try:
            if not (o.keeps_queue and self._queue):
                self._queue, self._bound = o.queue_name(), set()
            channel = link.channel
            link.call(
                channel.queue_declare,
                queue=self._queue,
                durable=o.durable,
                exclusive=o.exclusive,
                auto_delete=o.auto_delete,
            )
            link.call(channel.basic_qos, prefetch_count=o.prefetch)
            kept = [topic for topic in topics if self.retention(topic) is not None]
            topics = [topic for topic in topics if self.retention(topic) is None]
            self._topic_of = {routing_key(topic): topic for topic in topics}
            for key in self._bound - self._topic_of.keys():  # given up while away
                link.call(
                    channel.queue_unbind,
                    queue=self._queue,
                    exchange=o.exchange,
                    routing_key=key,
                )
            self._bound &= self._topic_of.keys()
            done = _Bound()
            self._bind(link, list(self._topic_of), done)
            link.wait(lambda: bool(done.event.is_set()), CALL_TIMEOUT)
            link.consume(self._queue)
            # Consumers made from now on, of streams; 0 (no limit) is refused.
            link.call(channel.basic_qos, prefetch_count=_STREAM_PREFETCH)
            self._streams.connected(
                link.open_channels(FOLLOW_CHANNELS, _STREAM_PREFETCH), _STREAM_PREFETCH
            )
            # New consumers of the inboxes: where the numbering is, read anew.
            self._writing, self._sequences = {}, {}
            self._inbox_calls = 0
            self._held = HeldTails()
            link.enable_confirms()  # the writer appends to streams here
            writes = sorted(self._writes)
            self._consume_inboxes(link, writes)
            done = _Bound()
            self._follow(link, kept, done)
            link.wait(lambda: bool(done.event.is_set()), READY_WAIT + CALL_TIMEOUT)
        except BaseException as exc:
            link.abandon()
            if self._streams_lost(link):
                lost = _STREAMS_LOST.format(after=self._streams_lost_after)
                raise LinkLost(f"{link.error}; {lost}") from exc
            raise
        self._not_found_since = None
        self._consumer = link
        missed = self._writes.difference(writes)  # wanted meanwhile
        if missed:
            link.soon(lambda: self._consume_inboxes(link, sorted(missed)))

    def _streams_lost(self, link: Link) -> bool:
        """After a failed connect: whether RabbitMQ has lost its streams.

        Right after a restart RabbitMQ answers NOT_FOUND for every stream
        until its stream coordinator restarted them (under a second here).
        A RabbitMQ killed within a second or two of the first stream ever
        declared on it restarts without its coordinator: NOT_FOUND for good,
        and this node can never connect (docs/architecture.md, "RabbitMQ",
        "Restarts"). A kept channel's stream still missing at every connect
        after ``_streams_lost_after`` s (30) is taken for that: one ERROR with the
        operator's fix, and the reason the health check then gives."""
        if link.code != _NOT_FOUND or ".history." not in (link.error or ""):
            self._not_found_since = None
            return False
        now = time.monotonic()
        if self._not_found_since is None:
            self._not_found_since = now
        if now - self._not_found_since < self._streams_lost_after:
            return False
        if not self._said_streams_lost:
            self._said_streams_lost = True
            lost = _STREAMS_LOST.format(after=self._streams_lost_after)
            log.error("RabbitMQ at %s: %s (%s)", self.url, lost, link.error)
        return True

    def _bind(self, link: Link, keys: list[str], done: _Bound) -> None:
        """In the reader: bind ``keys``; ``done`` is set once they are in place."""
        if not keys or link.error is not None:
            self._release(done)
            return
        queue, exchange = self._queue, self._options.exchange
        # Without a callback pika sends a bind nowait: all go in one stream,
        # and the last one's answer comes after every one of them.
        for key in keys[:-1]:
            link.channel.queue_bind(queue, exchange, key)

        def bound(_frame: object) -> None:
            self._release(done)
            link.wake()  # a wait for it in the reader returns

        link.channel.queue_bind(queue, exchange, keys[-1], callback=bound)
        if self._options.keeps_queue:
            self._bound.update(keys)

    def _stream_follows(self) -> StreamFollows:
        """The consumer connection's stream consumers (``_amqp_follow.py``)."""
        return StreamFollows(
            self._checks,
            self._history.name,
            lambda topic: self.retention(topic),  # the node sets it later
            self._deliver,
            self._written,
            self._soon,
        )

    def _follow(self, link: Link, topics: list[str], done: _Bound) -> None:
        """In the reader: follow the streams of ``topics`` (each has a
        writer: this node becomes one); ``done`` once all are followed."""
        if topics and link.error is None:
            self._consume_inboxes(link, topics, follows=True)
        self._streams.follow(link, topics, lambda: self._release(done))

    def _written(self, topic: str) -> int | None:
        """The last offset this node appended to ``topic``'s stream, when it
        is its writer (None: it is not)."""
        sequence = self._sequences.get(topic)
        return None if sequence is None else sequence.last

    def _want(self, topic: str) -> None:
        """Make this node one of ``topic``'s writers (from any greenlet):
        whoever publishes, follows or reads a kept topic, so it has one."""
        if topic in self._writes:
            return
        self._writes.add(topic)
        link = self._consumer
        if link is None:
            return  # _connect consumes it
        if self._in_reader():
            self._consume_inboxes(link, [topic])
        else:
            link.soon(lambda: self._consume_inboxes(link, [topic]))

    def _consume_inboxes(
        self, link: Link, topics: list[str], follows: bool = False
    ) -> None:
        """In the reader: consume the inboxes of ``topics`` (one consumer of
        each at a time receives: RabbitMQ's single active consumer), and
        declare their streams, on the stream consumers' channels (RabbitMQ
        makes a new stream in some milliseconds: on several channels at
        once), unless their ``follows`` do."""
        if link.error is not None:
            return
        for topic in topics:
            rule = self.retention(topic)
            if rule is None or topic in self._writing.values():
                continue
            self._writes.add(topic)  # again after a reconnect
            name = self._history.name(topic)
            if not follows:
                self._streams.declare(name, rule)
            link.channel.queue_declare(**inbox_declaration(inbox_name(name)))
            self._inbox_calls += 1
            tag = link.consume_soon(inbox_name(name), None, self._inbox_consumed)
            self._writing[tag] = topic

    def _inbox_consumed(self, _tag: str) -> None:
        self._inbox_calls -= 1

    def _gather(self, link: Link, new: set[str]) -> None:
        """Before taking ``new`` over: let the inbox consumes asked for
        meanwhile (a storm of new channels) be answered, up to
        ``_GATHER`` s, and take over every new channel whose events or
        questions have come by then in the same round."""
        link.wait(lambda: self._inbox_calls <= 0, _GATHER, expire=False)
        for delivery in link.deliveries:
            topic = self._writing.get(delivery[3])
            if topic is not None and topic not in self._sequences:
                new.add(topic)

    def _read_tails(self, wanted: list[tuple[str, Retention, str]]) -> dict[str, Tail]:
        """The tails of ``wanted``, on up to ``_TAIL_LINKS`` connections at
        once (RabbitMQ answers a channel's consumes one after another)."""
        parts = min(len(self._tail_readers), math.ceil(len(wanted) / _TAILS_EACH))
        if parts <= 1:
            return self._tails.tails(wanted)
        found: dict[str, Tail] = {}
        failed: list[BaseException] = []

        def read(n: int) -> None:
            try:
                found.update(self._tail_readers[n].tails(wanted[n::parts]))
            except BaseException as exc:  # raised below, in the writer
                failed.append(exc)

        workers = [threading.Thread(target=read, args=(n,)) for n in range(parts)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if failed:
            raise failed[0]
        return found

    def _take_over(self, link: Link, received: list[tuple[str, bytes, t.Any]]) -> int:
        """Before appending, for each topic of ``received`` this node just
        became the writer of: fence the stream, read its tail, and put the
        events RabbitMQ gives back (the last writer's unacknowledged ones,
        which may come after newer ones) into publishing order. The highest
        delivery tag taken from ``link.deliveries`` meanwhile (0: none),
        below any delivery left there."""
        new = {topic for topic, _, _ in received if topic not in self._sequences}
        if not new:
            return 0
        self._took_over, self._taking = time.monotonic(), True
        try:
            self._gather(link, new)
            taken = self._fence_and_read(link, received, new)
        finally:
            self._took_over, self._taking = time.monotonic(), False
        return taken

    def _fence_and_read(
        self, link: Link, received: list[tuple[str, bytes, t.Any]], new: set[str]
    ) -> int:
        """The take-over of ``new`` (see :meth:`_take_over`)."""
        rules: dict[str, Retention] = {}
        for topic in sorted(new):
            rule = self.retention(topic)
            if rule is not None:
                rules[topic] = rule
        # A fence first on each stream (its own, ``f``), all in one batch:
        # the writer before us may have appends still on their way to the
        # stream (its confirms timed out, say), queued ahead of ours; once
        # the fence is confirmed they are in, and the tail read up to the
        # fence sees them (and their ids).
        fences = {topic: new_epoch() for topic in rules}
        topics = list(rules)
        for _ in range(3):  # then the tail read fails: reconnect, try again
            if not topics:
                break
            self._await_ready(link, topics)
            counts = link.publish(
                [
                    ("", self._history.name(topic), b"", _fence(fences[topic]))
                    for topic in topics
                ]
            )
            topics = [topic for topic, n in zip(topics, counts, strict=True) if n == 0]
            for topic in topics:  # returned: the stream is gone, declare it
                self._checks.forget(self._history.name(topic))
                link.call(
                    link.channel.queue_declare,
                    queue=self._history.name(topic),
                    durable=True,
                    arguments=arguments(rules[topic]),
                )
        tails = self._read_tails(
            [(topic, rule, fences[topic]) for topic, rule in rules.items()]
        )
        for topic, tail in tails.items():
            self._held.drop(topic)  # from the next event on, in order
            last = -1 if tail.last is None else tail.last
            self._sequences[topic] = _Sequence(
                last, tail.epoch, tail.ids, (last, tail.position)
            )
        # What arrived meanwhile for them joins this batch.
        taken, kept = 0, []
        for delivery in link.deliveries:
            topic = self._writing.get(delivery[3], "")
            if topic in new:
                received.extend(
                    (topic, body, headers)
                    for body, headers in unpack(delivery[2], delivery[4])
                )
                taken = max(taken, delivery[0])
            else:
                kept.append(delivery)
        if taken:
            link.deliveries.clear()
            link.deliveries.extend(kept)
            # The caller acks up to ``taken`` with multiple: never past what
            # is still to be handled on this channel (another topic's events,
            # not yet appended: a crash then would lose them; streams'
            # deliveries come on channels of their own).
            here = [d[0] for d in kept if not self._streams.owns(d[3])]
            if here:
                taken = min(taken, here[0] - 1)
        for topic in new:  # each publisher's events in its order again
            slots = [
                n
                for n, (name, _, headers) in enumerate(received)
                if name == topic and headers and "i" in headers
            ]
            items = sorted(
                (received[n] for n in slots),
                key=lambda item: _id_order(item[2]["i"]),
            )
            for n, item in zip(slots, items, strict=True):
                received[n] = item
        return taken

    def _await_ready(self, link: Link, topics: list[str]) -> None:
        """In the reader, before appending to the streams of ``topics``:
        wait until each is ready (``_amqp_ready.py``; a publish to a stream
        RabbitMQ is still making closes the connection)."""
        left = [0]

        def checked() -> None:
            left[0] -= 1
            link.wake()

        for topic in topics:
            name = self._history.name(topic)
            if name not in self._checks.ready:
                left[0] += 1
                self._checks.when_ready(name, lambda _ok: self._soon(link, checked))
        if left[0] > 0:
            link.wait(lambda: left[0] <= 0, READY_WAIT + CALL_TIMEOUT)

    @staticmethod
    def _soon(link: Link, callback: t.Callable[[], None]) -> None:
        """``callback`` in ``link``'s driver (from the stream checker)."""
        try:
            link.soon(callback)
        except Exception:  # noqa: BLE001 - its loop is closed: it is gone
            pass

    def _taking_over(self) -> bool:
        """Whether this node's writer is taking channels over now (or took
        some over within the last second): a read waiting for its answer
        waits on (``StreamHistory._await``)."""
        return self._taking or time.monotonic() - self._took_over < 1.0

    def _append(self, link: Link, received: list[tuple[str, bytes, t.Any]]) -> int:
        """In the reader, as the active writer: number ``received`` (topic,
        body, headers, from the inboxes, in order), append them to their
        streams, answer the reads' questions; the caller then acks them, up
        to the delivery tag returned too (0: only what it gave)."""
        taken = self._take_over(link, received)
        outgoing: list[Outgoing] = []
        topic_of: list[str] = []  # of each outgoing message
        answers: list[tuple[str, dict[str, t.Any], str, int]] = []
        now = now_ms()
        for topic, body, headers in received:
            rule = self.retention(topic)
            if rule is None:
                continue
            name = self._history.name(topic)
            sequence = self._sequences[topic]
            if sequence.epoch is None:
                sequence.epoch, sequence.last = new_epoch(), 0
                sequence.anchor = (0, 0)  # a new stream: the marker first
                outgoing.append(("", name, b"", marker_properties(sequence.epoch)))
                topic_of.append(topic)
            headers = headers or {}
            if "s" in headers:  # a read's question: answered once appended
                answer = f"{sequence.last} {sequence.epoch} {sequence.below()}"
                answers.append((topic, headers, answer, sequence.last))
                continue
            ident = headers.get("i")
            if ident is not None and ident in sequence.skip:
                continue  # appended already by the writer before us
            sequence.last += 1
            properties = stamped_properties(sequence.last, sequence.epoch, now, ident)
            outgoing.append(("", name, body, properties))
            topic_of.append(topic)
        counts = link.publish(outgoing) if outgoing else []
        self._hold(outgoing, topic_of, counts)
        gone = {topic_of[n] for n, count in enumerate(counts) if count == 0}
        if gone:
            # Streams deleted under us: declared anew, these go to them again
            # under a new epoch (what went to the old ones went with them).
            for topic in gone:
                self._sequences.pop(topic, None)
                self._checks.forget(self._history.name(topic))
                rule = self.retention(topic)
                link.call(
                    link.channel.queue_declare,
                    queue=self._history.name(topic),
                    durable=True,
                    arguments=arguments(t.cast(Retention, rule)),
                )
            taken = max(
                taken, self._append(link, [r for r in received if r[0] in gone])
            )
        for topic, question, text, last in answers:
            if topic not in gone:
                body = text.encode() + self._held.answer(topic, question, last)
                properties = pika.BasicProperties(headers={"s": question["s"]})
                link.send("", question["reply-to"], body, properties)
        return taken

    def _hold(
        self, outgoing: list[Outgoing], topic_of: list[str], counts: list[t.Any]
    ) -> None:
        """Keep what was appended in the writer's copy of each tail (the
        events the stream confirmed, in order; any other outcome empties
        the topic's copy, the stream then answers for it)."""
        for topic, (_, _, body, properties), count in zip(
            topic_of, outgoing, counts, strict=True
        ):
            headers = properties.headers
            if count is not None:
                self._held.drop(topic)
            elif "m" not in headers:
                rule = t.cast(Retention, self.retention(topic))
                self._held.add(
                    topic, rule, headers["e"], headers["o"], headers["t"], body
                )

    def _release(self, done: _Bound) -> None:
        self._waiting.discard(done)
        done.event.set()

    def _unbind(self, link: Link, keys: list[str]) -> None:
        if link.error is None:
            for key in keys:
                link.channel.queue_unbind(self._queue, self._options.exchange, key)
            self._bound.difference_update(keys)

    def _subscribe(self, topics: list[str]) -> _Bound | None:
        link = self._consumer
        if link is None:
            raise LinkLost("not connected")
        kept = [topic for topic in topics if self.retention(topic) is not None]
        keys = [routing_key(topic) for topic in topics if topic not in kept]
        self._topic_of.update(
            (routing_key(topic), topic) for topic in topics if topic not in kept
        )
        bound, followed = _Bound(), _Bound()
        done = _Both(bound, followed)

        def start() -> None:
            self._bind(link, keys, bound)
            self._follow(link, kept, followed)

        if self._in_reader():
            # on_message, or catching up after connecting: the reader drives
            # the link, so it can wait here (deliveries meanwhile queue up in
            # order), and what on_message publishes next finds the binding.
            start()
            link.wait(done.is_set, READY_WAIT + CALL_TIMEOUT)
            return None
        self._waiting.update((bound, followed))
        link.soon(start)
        if self._consumer is not link:  # gone meanwhile: nobody would set it
            bound.event.set()
            followed.event.set()
        return done

    def _unsubscribe(self, topics: list[str]) -> None:
        link = self._consumer
        if link is None:
            raise LinkLost("not connected")
        kept = [topic for topic in topics if self.retention(topic) is not None]
        keys = [routing_key(topic) for topic in topics if topic not in kept]
        self._streams.stop_delivering(kept)

        def stop() -> None:
            self._unbind(link, keys)
            self._streams.unfollow(kept)

        link.soon(stop)

    def _read(self) -> None:
        link = self._consumer
        ticked = time.monotonic()
        every = _STREAM_PREFETCH // 2
        while link is not None:
            now = time.monotonic()
            if now - ticked >= _TICK:  # busy or idle
                ticked = now
                if not self._tick():
                    return
                self._streams.sweep(link, now, busy=bool(self._waiting))
            link.receive(max(0.0, ticked + _TICK - now))
            unacked = last = 0
            received: list[tuple[str, bytes, t.Any]] = []  # from inboxes
            while link.deliveries and self._consumer is link:
                number, key, body, tag, headers = link.deliveries.popleft()
                if self._streams.received(tag, number, body, headers, every):
                    continue  # a kept topic's stream, on a channel of its own
                last = number
                if tag in self._writing:
                    topic = self._writing[tag]
                    received.extend((topic, *event) for event in unpack(body, headers))
                else:
                    topic = self._topic_of.get(key)
                    if topic is not None:  # else unsubscribed since it was routed
                        self._deliver(topic, body)
                unacked += 1
                if unacked >= self._ack_every:
                    if received:
                        last = max(last, self._append(link, received))
                        received = []
                    link.channel.basic_ack(last, multiple=True)
                    unacked = 0
            if self._consumer is not link:
                raise LinkLost("the connection was closed")
            if received:
                last = max(last, self._append(link, received))
                unacked += 1
            if unacked:
                link.channel.basic_ack(last, multiple=True)
            self._streams.acknowledge(link)

    # -- the publisher (one driver at a time) ----------------------------------------

    def _send_batch(
        self, messages: list[tuple[str, bytes]]
    ) -> list[int | None | Exception]:
        with self._pub_lock:
            link = self._publisher
            try:
                if link is None:
                    link = self._link("publisher")
                    link.enable_confirms()
                    self._publisher = link
                    self._inboxes = set()
                counts = self._publish(link, messages)
                self._republish(link, messages, counts)
            except BaseException as exc:
                if link is not None:
                    link.close()
                if self._publisher is link:
                    self._publisher = None
                if isinstance(exc, LinkLost) or not isinstance(exc, Exception):
                    raise
                raise LinkLost(str(exc) or type(exc).__name__) from exc
            if self._publisher is not link or self._closed:
                link.close()  # disconnected meanwhile
            return counts

    def _publish(
        self, link: Link, messages: list[tuple[str, bytes]]
    ) -> list[int | None | Exception]:
        """Publish ``messages`` (packed, see :meth:`_outgoing`): the result
        of each, and on a failure how many of them, in order, were accepted."""
        outgoing, sent_in = self._outgoing(link, messages)
        try:
            counts = link.publish(outgoing)
        except LinkLost as exc:
            # Accepted: the messages before the first one of a pack that was not.
            exc.accepted = bisect.bisect_left(sent_in, exc.accepted)
            raise
        return [counts[n] for n in sent_in]

    def _outgoing(
        self, link: Link, messages: list[tuple[str, bytes]]
    ) -> tuple[list[Outgoing], list[int]]:
        """The batch as published: kept topics to their inboxes (declared
        first), each with an id, consecutive events of one topic packed in
        one message; the rest to the exchange. And for each message, the
        index of the one it goes in (never decreasing)."""
        o = self._options
        outgoing: list[Outgoing] = []
        sent_in: list[int] = []
        pack: list[bytes] = []  # the events of outgoing[at], if kept
        packed, at, last_topic = 0, -1, None
        for topic, data in messages:
            rule = self.retention(topic)
            if rule is None:
                outgoing.append((o.exchange, routing_key(topic), data, o.properties))
                sent_in.append(len(outgoing) - 1)
                last_topic = None
                continue
            ident = f"{self._node}.{next(self._ids)}"
            if (
                topic == last_topic
                and len(pack) < _PACK_EVENTS
                and packed + len(data) <= _PACK_BYTES
            ):
                pack.append(data)
                packed += len(data)
                sent_in.append(at)
                continue
            self._seal(outgoing, at, pack)
            inbox = inbox_name(self._history.name(topic))
            if inbox not in self._inboxes:
                link.call(link.channel.queue_declare, **inbox_declaration(inbox))
                self._inboxes.add(inbox)
                self._want(topic)
            outgoing.append(("", inbox, data, inbox_properties(ident)))
            at = len(outgoing) - 1
            sent_in.append(at)
            pack, packed, last_topic = [data], len(data), topic
        self._seal(outgoing, at, pack)
        return outgoing, sent_in

    @staticmethod
    def _seal(outgoing: list[Outgoing], at: int, pack: list[bytes]) -> None:
        """``outgoing[at]``, the first event of ``pack``, carries them all."""
        if len(pack) < 2:
            return
        exchange, inbox, _, properties = outgoing[at]
        sizes = [len(data) for data in pack]
        outgoing[at] = (
            exchange,
            inbox,
            b"".join(pack),
            inbox_properties(properties.headers["i"], sizes),
        )

    def _republish(
        self,
        link: Link,
        messages: list[tuple[str, bytes]],
        counts: list[int | None | Exception],
    ) -> None:
        """Kept messages returned unroutable: their inbox was deleted, so
        they go again (in order) once it is declared again."""
        again = [
            n
            for n, (topic, _) in enumerate(messages)
            if counts[n] == 0 and self.retention(topic) is not None
        ]
        if not again:
            return
        for n in again:
            self._inboxes.discard(inbox_name(self._history.name(messages[n][0])))
        retried = self._publish(link, [messages[n] for n in again])
        for n, count in zip(again, retried, strict=True):
            counts[n] = count

    def _read_history(
        self, topic: str, after: int | None, limit: int | None
    ) -> tuple[Position, list[bytes] | None]:
        if self.retention(topic) is None:
            return self._history.read(topic, None, after, limit)
        return self._shared.read(topic, after, limit)

    @property
    def history_rounds(self) -> int:
        """Questions to the writers for this node's history reads: a storm
        of reads of one topic shares a few (for tests and benchmarks)."""
        return self._shared.rounds

    @property
    def history_scans(self) -> int:
        """Stream scans made for this node's history reads: none when the
        writer's copy of the tail has what they want."""
        return sum(reader.scans for reader in self._readers)

    def _read_round(self, topic: str, close: t.Callable[[], list[Ask]]) -> list[Answer]:
        """One round of ``topic``'s reads (``_shared_reads.py``) on an idle
        history connection, or in turn on one."""
        idle = [reader for reader in self._readers if not reader.busy()]
        if idle:
            reader = idle[0]
        else:
            reader = self._readers[next(self._next_reader) % len(self._readers)]
        rule = self.retention(topic)
        assert rule is not None
        return reader.read_many(topic, rule, close)

    # -- closing, forks ---------------------------------------------------------------

    def _disconnect(self) -> None:
        consumer, publisher = self._consumer, self._publisher
        self._publisher = None
        if consumer is not None:
            if self._in_reader():
                self._consumer = None
                self._close_consumer(consumer)
            else:
                consumer.interrupt()  # the reader closes it on its way out
        if publisher is not None:
            if self._pub_lock.acquire(blocking=False):
                try:
                    publisher.close()
                finally:
                    self._pub_lock.release()
            else:
                publisher.interrupt()  # its driver closes it
        for reader in self._readers:
            reader.close()
        for reader in self._tail_readers:
            reader.close()
        if self._closed:
            self._checks.close()
        waiting, self._waiting = self._waiting, set()
        for done in waiting:
            done.event.set()  # recorded: bound again on reconnect

    def _close_consumer(self, link: Link) -> None:
        if self._closed and self._options.keeps_queue and link.error is None:
            # Its name dies with this broker, so nobody would read it again.
            try:
                link.interrupted = False
                link.call(link.channel.queue_delete, queue=self._queue)
            except Exception:
                pass
        link.close()

    def _drop_after_fork(self) -> None:
        # The child's copies of the sockets are dropped, never used or shut down.
        self._consumer = self._publisher = None
        self._pub_lock = threading.Lock()
        self._waiting = set()
        self._queue, self._bound = "", set()
        for reader in self._readers:
            reader.drop()
        for reader in self._tail_readers:
            reader.drop()
        self._inbox_calls = 0
        self._shared = SharedReads(self._read_round)  # the parent's rounds
        self._checks = StreamChecks(self._checking_link)
        self._streams = self._stream_follows()
        self._writes, self._writing = set(), {}
        self._sequences, self._inboxes = {}, set()
        self._held = HeldTails()
        self._node = new_epoch()  # ids unique per process
