"""The writer of kept topics' streams, on the RabbitMQ consumer connection.

A node that publishes, follows or reads a kept topic consumes its inbox
(``_amqp_history.py``), and RabbitMQ lets one consumer at a time receive:
that node is the topic's writer. Its events come to the broker's reader,
which hands them here: the writer numbers them, appends them to the stream
(confirmed), answers the reads' questions that came with them, and keeps a
copy of what it appended (``_amqp_held.py``); the reader acknowledges them
in the inbox after that.

When RabbitMQ makes this node a topic's writer (the writer before it was
lost), the first batch takes the topic over first: a fence on the stream,
a read of the stream's tail up to it (on connections of the writer's own,
several at once), and the events put back in each publisher's order, so
that it numbers on with no gap and no duplicate.

Everything here runs in the broker's reader (the consumer connection's one
driver), except :meth:`StreamWriter.want`, :meth:`StreamWriter.taking_over`
and closing.
"""

from __future__ import annotations

import math
import threading
import time
import typing as t
from dataclasses import dataclass

import pika

from ._amqp import CALL_TIMEOUT, Link, Outgoing
from ._amqp_follow import StreamFollows
from ._amqp_held import HeldTails
from ._amqp_history import (
    StreamHistory,
    Tail,
    inbox_declaration,
    inbox_name,
    marker_properties,
    now_ms,
    stamped_properties,
    stream_declaration,
    unpack,
)
from ._amqp_options import Options
from ._amqp_ready import READY_WAIT, StreamChecks
from ._history import new_epoch
from .interface import Retention

_TAIL_LINKS = 4  # connections a writer taking channels over reads tails on
_TAILS_EACH = 8  # tails a connection reads at least, when several are used
_GATHER = 0.005  # a take-over waits this long at most for more channels

Received = list[tuple[str, bytes, t.Any]]  # topic, body, headers: from inboxes


def _fence(token: str) -> pika.BasicProperties:
    """A writer's fence (no "o": not an event), ``token`` telling it apart."""
    return pika.BasicProperties(headers={"f": token})


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


class StreamWriter:
    """One node's writing of kept topics; see the module docstring.

    ``name(topic)`` is a kept topic's stream, ``retention(topic)`` its rule;
    ``checks`` tells which streams run, ``streams`` are the consumer
    connection's stream consumers (a writer's streams are declared on their
    channels); ``consumer()`` is the consumer connection (None: none now),
    ``in_reader()`` whether the caller is its driver, and ``soon(link,
    callback)`` runs a callback in the link's driver from the stream checker.
    """

    def __init__(
        self,
        options: Options,
        name: t.Callable[[str], str],
        retention: t.Callable[[str], Retention | None],
        checks: StreamChecks,
        streams: StreamFollows,
        consumer: t.Callable[[], Link | None],
        in_reader: t.Callable[[], bool],
        soon: t.Callable[[Link, t.Callable[[], None]], None],
    ) -> None:
        self._name = name
        self._retention = retention
        self._checks = checks
        self._streams = streams
        self._consumer = consumer
        self._in_reader = in_reader
        self._soon = soon
        # The topics whose inbox this node consumes, inbox consumer tag ->
        # topic, the numbering of those it is the active writer of.
        self.writes: set[str] = set()
        self._writing: dict[str, str] = {}
        self._sequences: dict[str, _Sequence] = {}
        self._held = HeldTails()  # the last events of those, for reads
        self._inbox_calls = 0  # inbox consumes asked for, not yet answered
        self._took_over = 0.0  # when the writer last took channels over
        self._taking = False  # and whether it is taking some over now
        # The writer's own reads of tails (a read may be waiting for it),
        # on up to _TAIL_LINKS connections at once.
        self._tail_readers = [
            StreamHistory(options, self.want) for _ in range(_TAIL_LINKS)
        ]
        self._tails = self._tail_readers[0]

    def connected(self) -> None:
        """A new consumer connection: new consumers of the inboxes, so
        where the numbering is is read anew."""
        self._writing, self._sequences = {}, {}
        self._inbox_calls = 0
        self._held = HeldTails()

    def close(self) -> None:
        """Close the connections tails are read on (any greenlet)."""
        for reader in self._tail_readers:
            reader.close()

    def topic_of(self, tag: str) -> str | None:
        """The topic whose inbox consumer ``tag`` is (None: no inbox's)."""
        return self._writing.get(tag)

    def written(self, topic: str) -> int | None:
        """The last offset this node appended to ``topic``'s stream, when it
        is its writer (None: it is not)."""
        sequence = self._sequences.get(topic)
        return None if sequence is None else sequence.last

    def want(self, topic: str) -> None:
        """Make this node one of ``topic``'s writers (from any greenlet):
        whoever publishes, follows or reads a kept topic, so it has one."""
        if topic in self.writes:
            return
        self.writes.add(topic)
        link = self._consumer()
        if link is None:
            return  # the broker's connect consumes it
        if self._in_reader():
            self.consume_inboxes(link, [topic])
        else:
            link.soon(lambda: self.consume_inboxes(link, [topic]))

    def consume_inboxes(
        self, link: Link, topics: list[str], follows: bool = False
    ) -> None:
        """Consume the inboxes of ``topics`` (one consumer of each at a time
        receives: RabbitMQ's single active consumer), and declare their
        streams, on the stream consumers' channels (RabbitMQ makes a new
        stream in some milliseconds: on several channels at once), unless
        their ``follows`` do."""
        if link.error is not None:
            return
        for topic in topics:
            rule = self._retention(topic)
            if rule is None or topic in self._writing.values():
                continue
            self.writes.add(topic)  # again after a reconnect
            name = self._name(topic)
            if not follows:
                self._streams.declare(name, rule)
            link.channel.queue_declare(**inbox_declaration(inbox_name(name)))
            self._inbox_calls += 1
            tag = link.consume_soon(inbox_name(name), None, self._inbox_consumed)
            self._writing[tag] = topic

    def _inbox_consumed(self, _tag: str) -> None:
        self._inbox_calls -= 1

    def taking_over(self) -> bool:
        """Whether this node's writer is taking channels over now (or took
        some over within the last second): a read waiting for its answer
        waits on (``StreamHistory._await``)."""
        return self._taking or time.monotonic() - self._took_over < 1.0

    # -- appending -------------------------------------------------------------

    def append(self, link: Link, received: Received) -> int:
        """As the active writer: number ``received`` (topic, body, headers,
        from the inboxes, in order), append them to their streams, answer
        the reads' questions; the caller then acks them, up to the delivery
        tag returned too (0: only what it gave)."""
        taken = self._take_over(link, received)
        outgoing: list[Outgoing] = []
        topic_of: list[str] = []  # of each outgoing message
        answers: list[tuple[str, dict[str, t.Any], str, int]] = []
        now = now_ms()
        for topic, body, headers in received:
            rule = self._retention(topic)
            if rule is None:
                continue
            name = self._name(topic)
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
                rule = t.cast(Retention, self._retention(topic))
                self._declare_again(link, topic, rule)
            taken = max(taken, self.append(link, [r for r in received if r[0] in gone]))
        for topic, question, text, last in answers:
            if topic not in gone:
                body = text.encode() + self._held.answer(topic, question, last)
                properties = pika.BasicProperties(headers={"s": question["s"]})
                link.send("", question["reply-to"], body, properties)
        return taken

    def _declare_again(self, link: Link, topic: str, rule: Retention) -> None:
        """Declare ``topic``'s stream anew (an append to it came back: it was
        deleted), waiting for the answer; it is checked before it is used."""
        name = self._name(topic)
        self._checks.forget(name)
        link.call(link.channel.queue_declare, **stream_declaration(name, rule))

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
                rule = t.cast(Retention, self._retention(topic))
                self._held.add(
                    topic, rule, headers["e"], headers["o"], headers["t"], body
                )

    # -- taking over -----------------------------------------------------------

    def _take_over(self, link: Link, received: Received) -> int:
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

    def _fence_and_read(self, link: Link, received: Received, new: set[str]) -> int:
        """The take-over of ``new`` (see :meth:`_take_over`)."""
        rules: dict[str, Retention] = {}
        for topic in sorted(new):
            rule = self._retention(topic)
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
                    ("", self._name(topic), b"", _fence(fences[topic]))
                    for topic in topics
                ]
            )
            topics = [topic for topic, n in zip(topics, counts, strict=True) if n == 0]
            for topic in topics:  # returned: the stream is gone, declare it
                self._declare_again(link, topic, rules[topic])
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
        """Before appending to the streams of ``topics``: wait until each is
        ready (``_amqp_ready.py``; a publish to a stream RabbitMQ is still
        making closes the connection)."""
        left = [0]

        def checked() -> None:
            left[0] -= 1
            link.wake()

        for topic in topics:
            name = self._name(topic)
            if name not in self._checks.ready:
                left[0] += 1
                self._checks.when_ready(name, lambda _ok: self._soon(link, checked))
        if left[0] > 0:
            link.wait(lambda: left[0] <= 0, READY_WAIT + CALL_TIMEOUT)

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
