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

Kept topics (with history, ``_amqp_history.py``) are not bound: a publish
goes to the topic's inbox instead (a batch's events of one topic packed in
one message, :meth:`RabbitMQBroker._outgoing`). The consumer connection
follows their streams (``_amqp_follow.py``) and carries this node's writer,
which appends the events of the inboxes it receives to their streams
(``_amqp_writer.py``); reads go on connections of their own, in rounds
shared by the reads of one topic (``_shared_reads.py``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import typing as t

import pika
import pika.exceptions

from .._runtime import event
from ..config import Settings
from ._amqp import CALL_TIMEOUT, Link, Outgoing
from ._amqp_follow import CHANNELS as FOLLOW_CHANNELS
from ._amqp_follow import StreamFollows
from ._amqp_history import (
    StreamHistory,
    inbox_declaration,
    inbox_name,
    inbox_properties,
    unpack,
)
from ._amqp_options import Options
from ._amqp_options import routing_key as routing_key
from ._amqp_ready import READY_WAIT, StreamChecks
from ._amqp_writer import StreamWriter
from ._history import grouped, new_epoch
from ._shared_reads import Answer, Ask, SharedReads
from .base import BrokerBase, LinkLost, MessageCallback
from .interface import Position

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
# The events of one kept topic in a batch go as one inbox message,
# up to these many or this size (``_amqp_history.unpack``): below RabbitMQ's
# default queue_index_embed_msgs_below (4 KiB, headers included), a message
# is stored with its queue, not in the shared message store, and confirmed
# in about a third of the time (measured: 0.35 against 1.0 ms).
_PACK_EVENTS, _PACK_BYTES = 1000, 3584


class _Kept(bytes):
    """A kept message, and whether RabbitMQ confirmed it already: a batch
    sends each topic's events together, so a lost connection can leave it
    confirmed behind a message that was not. The outbox then sends both
    again (it takes back all from the first one not accepted); this one is
    answered without going out twice."""

    confirmed = False


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
        # Reads at once go on up to _READ_LINKS connections (each opened
        # when first needed): a read waits on its round trips, not on others.
        self._readers = [self._history_reader() for _ in range(_READ_LINKS)]
        self._history = self._readers[0]
        self._next_reader = itertools.count()
        # Reads of a topic at once share one (a recovery storm).
        self._shared = SharedReads(self._read_round)
        # Streams checked before the consumer connection uses them.
        self._checks = StreamChecks(self._checking_link)
        # Kept topics' streams followed (``_amqp_follow.py``).
        self._streams = self._stream_follows()
        # And written, from their inboxes (``_amqp_writer.py``).
        self._writer = self._stream_writer()
        self._not_found_since: float | None = None  # see _streams_lost
        self._streams_lost_after = _STREAMS_LOST_AFTER  # (tests set less)
        self._said_streams_lost = False
        # The kept topics' inboxes declared by the publisher.
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
            self._writer.connected()
            link.enable_confirms()  # the writer appends to streams here
            writes = sorted(self._writer.writes)
            self._writer.consume_inboxes(link, writes)
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
        missed = self._writer.writes.difference(writes)  # wanted meanwhile
        if missed:
            link.soon(lambda: self._writer.consume_inboxes(link, sorted(missed)))

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

    def _history_reader(self) -> StreamHistory:
        """A connection for history reads (``_amqp_history.py``): they ask
        this node's writer, made anew in a forked child."""
        return StreamHistory(
            self._options,
            lambda topic: self._writer.want(topic),
            lambda: self._writer.taking_over(),
        )

    def _stream_follows(self) -> StreamFollows:
        """The consumer connection's stream consumers (``_amqp_follow.py``)."""
        return StreamFollows(
            self._checks,
            self._history.name,
            lambda topic: self.retention(topic),  # the node sets it later
            self._deliver,
            lambda topic: self._writer.written(topic),  # made after these
            self._soon,
        )

    def _stream_writer(self) -> StreamWriter:
        """This node's writer of kept topics (``_amqp_writer.py``), on the
        consumer connection."""
        return StreamWriter(
            self._options,
            self._history.name,
            lambda topic: self.retention(topic),  # the node sets it later
            self._checks,
            self._streams,
            lambda: self._consumer,
            self._in_reader,
            self._soon,
        )

    def _follow(self, link: Link, topics: list[str], done: _Bound) -> None:
        """In the reader: follow the streams of ``topics`` (each has a
        writer: this node becomes one); ``done`` once all are followed."""
        if topics and link.error is None:
            self._writer.consume_inboxes(link, topics, follows=True)
        self._streams.follow(link, topics, lambda: self._release(done))

    @staticmethod
    def _soon(link: Link, callback: t.Callable[[], None]) -> None:
        """``callback`` in ``link``'s driver (from the stream checker)."""
        try:
            link.soon(callback)
        except Exception:  # noqa: BLE001 - its loop is closed: it is gone
            pass

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
                topic = self._writer.topic_of(tag)  # an inbox's: to append
                if topic is not None:
                    received.extend((topic, *event) for event in unpack(body, headers))
                else:
                    topic = self._topic_of.get(key)
                    if topic is not None:  # else unsubscribed since it was routed
                        self._deliver(topic, body)
                unacked += 1
                if unacked >= self._ack_every:
                    if received:
                        last = max(last, self._writer.append(link, received))
                        received = []
                    link.channel.basic_ack(last, multiple=True)
                    unacked = 0
            if self._consumer is not link:
                raise LinkLost("the connection was closed")
            if received:
                last = max(last, self._writer.append(link, received))
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

    def publish(self, topic: str, data: bytes) -> int | None:
        if self.retention(topic) is not None:
            data = _Kept(data)  # a resend of a confirmed one is then told apart
        return super().publish(topic, data)

    def _publish(
        self, link: Link, messages: list[tuple[str, bytes]]
    ) -> list[int | None | Exception]:
        """Publish ``messages`` (packed, see :meth:`_outgoing`): the result
        of each, and on a failure how many of them, in order, were accepted."""
        outgoing, sent_in = self._outgoing(link, messages)
        try:
            counts = link.publish(outgoing)
        except LinkLost as exc:
            confirmed = exc.accepted  # the first of ``outgoing``
            for n, at in enumerate(sent_in):
                if at < confirmed and isinstance(messages[n][1], _Kept):
                    messages[n][1].confirmed = True  # type: ignore[attr-defined]
            # Accepted: the messages before the first one that was not.
            exc.accepted = next(
                (n for n, at in enumerate(sent_in) if at >= confirmed), len(sent_in)
            )
            raise
        return [None if at < 0 else counts[at] for at in sent_in]

    def _outgoing(
        self, link: Link, messages: list[tuple[str, bytes]]
    ) -> tuple[list[Outgoing], list[int]]:
        """The batch as published: kept topics to their inboxes (declared
        first), each event with an id, a topic's events packed in one message
        where the topic first comes in the batch (``_history.grouped``); the
        rest to the exchange, in place. And for each message the index of
        the one it goes in (-1: confirmed in an earlier send)."""
        o = self._options
        sending = [
            n
            for n, (_, data) in enumerate(messages)
            if not getattr(data, "confirmed", False)
        ]
        kept = [self.retention(topic) is not None for topic, _ in messages]
        order = grouped([messages[n][0] if kept[n] else None for n in sending])
        outgoing: list[Outgoing] = []
        sent_in = [-1] * len(messages)
        pack: list[bytes] = []  # the events of outgoing[-1], if kept
        packed, last_topic = 0, None
        for n in (sending[i] for i in order):
            topic, data = messages[n]
            counter = next(self._ids) if kept[n] else 0  # every kept event's
            if (
                kept[n]
                and topic == last_topic
                and len(pack) < _PACK_EVENTS
                and packed + len(data) <= _PACK_BYTES
            ):
                pack.append(data)  # its id is implied: the first's + k
                packed += len(data)
                sent_in[n] = len(outgoing) - 1
                continue
            self._seal(outgoing, pack)
            pack, packed, last_topic = [], 0, None
            if not kept[n]:
                outgoing.append((o.exchange, routing_key(topic), data, o.properties))
                sent_in[n] = len(outgoing) - 1
                continue
            inbox = inbox_name(self._history.name(topic))
            if inbox not in self._inboxes:
                link.call(link.channel.queue_declare, **inbox_declaration(inbox))
                self._inboxes.add(inbox)
                self._writer.want(topic)
            ident = f"{self._node}.{counter}"
            outgoing.append(("", inbox, data, inbox_properties(ident)))
            sent_in[n] = len(outgoing) - 1
            pack, packed, last_topic = [data], len(data), topic
        self._seal(outgoing, pack)
        return outgoing, sent_in

    @staticmethod
    def _seal(outgoing: list[Outgoing], pack: list[bytes]) -> None:
        """``outgoing[-1]``, the first event of ``pack``, carries them all."""
        if len(pack) < 2:
            return
        exchange, inbox, _, properties = outgoing[-1]
        sizes = [len(data) for data in pack]
        outgoing[-1] = (
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
        for n, (_, data) in enumerate(messages):
            if isinstance(data, _Kept) and counts[n] is None:
                data.confirmed = True  # in its inbox: not to be sent twice
        try:
            retried = self._publish(link, [messages[n] for n in again])
        except LinkLost as exc:
            # Accepted: the batch's messages before the first one of
            # ``again`` that was not (all others before it were, at once).
            exc.accepted = (
                again[exc.accepted] if exc.accepted < len(again) else len(counts)
            )
            raise
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
        self._writer.close()
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
        self._shared = SharedReads(self._read_round)  # the parent's rounds
        self._checks = StreamChecks(self._checking_link)
        self._streams = self._stream_follows()
        self._writer = self._stream_writer()  # its tails' connections too
        self._inboxes = set()
        self._node = new_epoch()  # ids unique per process
