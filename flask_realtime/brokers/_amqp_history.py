"""History on RabbitMQ: a stream queue per kept topic, one writer at a time.

Each kept topic has a stream queue, ``<queue_prefix>.history.<exchange>.
<routing key>`` (a hash past 255 bytes), and an inbox, ``<stream>.in``: a
durable classic queue (version 2) with a single active consumer. Publishers on every
node send the topic's events to the inbox (persistent, confirmed, each with
an id ``i``; a batch's events of one topic in one message, see
:func:`unpack`); every node that publishes, follows or reads the topic consumes
the inbox, and RabbitMQ lets one of them at a time receive. That one is the
channel's writer (``_amqp_writer.py``): it numbers the events itself, ``o``
= the last number in the stream + 1, stamps the epoch ``e`` and its clock
``t`` (ms), appends them to the stream, and acknowledges them in the inbox
once the stream confirmed them. So offsets are contiguous and in one order however many
nodes publish, and the stream's own offsets (which skip one at each new
segment: RabbitMQ writes a chunk of its own there) are only where to start
reading.

A writer that dies leaves its unacknowledged events to the next consumer,
back at the head of the inbox in their order; the new writer first reads the
stream's tail (the last number, the epoch, the ids written lately) and skips
the events the dead one appended but did not acknowledge: no gap, no
duplicate at the hand-over. An empty stream gets a marker first (``o`` 0,
``m``) with a new epoch; a reader finding a stream empty asks the writer
for it through the inbox (an ``m`` message), so the epoch is fixed before
any event and by one node only.

Streams are declared with the same arguments by everyone: ``x-max-age`` the
ttl, ``x-max-length-bytes`` 4 KiB per event of ``size`` (1 MiB at least) in
segments of half that. RabbitMQ trims a stream by whole segments only, so a
read also leaves out events past ``size`` and older than the ttl.

A read consumes the stream with a prefetch of ``_READ_CREDIT``; after the
consume (and after each ack), a ``basic.qos`` round trip is a fence:
RabbitMQ sends what the stream holds up to the prefetch before it answers,
so a round that brought less than the prefetch reached the end. A read of
the tail is then three round trips (consume, fence, cancel) once the stream
is declared on the link, after the writer's answer (one more). Reads of
one topic at once share one question and one scan (``read_many``; the
rounds are in ``_shared_reads.py``), and the writer answers with the events
they want when its copy of the tail (``_amqp_held.py``) has them all: then
the read is that one round trip.
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

from .._runtime import event
from ._amqp import CALL_TIMEOUT, Link
from ._amqp_held import unpack_held
from ._amqp_options import Options, routing_key
from ._history import envelope, new_epoch, stamp
from ._shared_reads import Answer, Ask
from ._support import BrokerUnavailable, LinkLost
from .interface import Position, Retention

_READ_CREDIT = 1000  # a read's prefetch: messages per round trip
_BYTES_PER_EVENT, _MIN_BYTES = 4096, 1 << 20
_LINK_ERRORS = (OSError, pika.exceptions.AMQPError, LinkLost)
_SYNC_WAIT = 5.0  # a read waits this long for the writer's answer
_SYNC_WAIT_MOST = 30.0  # or this long while this node's writer takes over
_TURN = 0.05  # a reader drives the link for others this long at most at once
_SLACK = 8  # stream offsets a read starts early (skipped ones, a duplicate)
TAIL_IDS = 1000  # ids a new writer looks back over: more than it may hold
_TAILS_AT_ONCE = 100  # streams whose tails a writer taking over reads at once
# One consumer at a time receives (the stream's one writer). Version 2 of
# classic queues (RabbitMQ 3.10+) confirms a persistent message of a few KiB
# in about half the time version 1 takes (docs/architecture.md, "RabbitMQ").
INBOX_ARGUMENTS = {"x-single-active-consumer": True, "x-queue-version": 2}


class Message(t.NamedTuple):
    offset: int  # ours, contiguous ("o")
    position: int  # the stream's ("x-stream-offset"), where to read from
    headers: dict[str, t.Any]
    body: bytes
    marker: bool


def _stored(headers: dict[str, t.Any], body: bytes) -> Message | None:
    """A scanned stream message of ours (an event, or a writer's fence with
    offset -1), or None for anything else."""
    if "o" not in headers and "f" not in headers:
        return None
    return Message(
        int(headers.get("o", -1)),
        int(headers["x-stream-offset"]),
        headers,
        body,
        "m" in headers or "f" in headers,
    )


def _start(
    offset: int, rule: Retention, after: int | None, limit: int | None
) -> int | None:
    """The first offset a read at position ``offset`` wants: 0 for none,
    None when what it asks for is gone (beyond the stream, trimmed by size)."""
    if after is None:
        count = rule.size if limit is None else min(limit, rule.size)
        return 0 if count <= 0 or offset == 0 else max(1, offset - count + 1)
    if after > offset or offset - after > rule.size:
        return None
    return 0 if after == offset else max(1, after + 1)


class Tail(t.NamedTuple):
    """What a new writer needs: the last number, the epoch, recent ids."""

    last: int | None  # None: the stream is empty
    epoch: str | None
    ids: frozenset[str]
    position: int  # the stream offset of the last one (0 when empty)


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
    if len(name.encode("utf-8", "surrogatepass")) > 252:  # room for ".in"
        digest = hashlib.sha256(topic.encode("utf-8", "surrogatepass")).hexdigest()
        name = f"{prefix[:80]}.history.{exchange[:80]}.%H{digest}"
    return name


def stream_declaration(name: str, rule: Retention) -> dict[str, t.Any]:
    """``queue_declare``'s arguments for stream ``name``: durable, with the
    :func:`arguments` every declarer must use."""
    return {"queue": name, "durable": True, "arguments": arguments(rule)}


def inbox_name(stream: str) -> str:
    """The inbox of a stream: where publishers send, the writer consumes."""
    return stream + ".in"


def inbox_declaration(inbox: str) -> dict[str, t.Any]:
    """``queue_declare``'s arguments for an inbox: durable, and one consumer
    at a time receives (the stream's one writer)."""
    return {"queue": inbox, "durable": True, "arguments": INBOX_ARGUMENTS}


def now_ms() -> int:
    return int(time.time() * 1000)


def inbox_properties(
    ident: str, sizes: list[int] | None = None
) -> pika.BasicProperties:
    """Events on their way to the writer: persistent, with the id of the
    first; several in one message (``sizes``, see :func:`unpack`)."""
    headers: dict[str, t.Any] = {"i": ident}
    if sizes is not None:
        headers["l"] = sizes
    return pika.BasicProperties(delivery_mode=2, headers=headers)


def unpack(body: bytes, headers: dict[str, t.Any] | None) -> list[tuple[bytes, t.Any]]:
    """The events of one inbox message, each with its own headers.

    A publisher sends the events of a batch for one topic as one inbox
    message: their bodies joined, their sizes in ``l``, the id
    of the first in ``i`` (the others follow it: ``<node>.<counter + k>``).
    RabbitMQ then stores, confirms, delivers and acks one message, not one
    per event, and the stream still gets one message per event, with its
    own id. A message without ``l`` is one event (or a read's question)."""
    sizes = headers.get("l") if headers else None
    if not sizes:
        return [(body, headers)]
    node, _, first = headers["i"].rpartition(".")  # type: ignore[index]
    events, start = [], 0
    for k, size in enumerate(sizes):
        events.append((body[start : start + size], {"i": f"{node}.{int(first) + k}"}))
        start += size
    return events


def stamped_properties(
    offset: int, epoch: str, now: int, ident: str | None
) -> pika.BasicProperties:
    headers: dict[str, t.Any] = {"o": offset, "e": epoch, "t": now}
    if ident is not None:
        headers["i"] = ident
    return pika.BasicProperties(headers=headers)


def marker_properties(epoch: str) -> pika.BasicProperties:
    return pika.BasicProperties(headers={"o": 0, "e": epoch, "m": 1})


class StreamHistory:
    """The reads of kept topics, and the tails their writers start from, on
    a connection of their own (a read never waits behind a batch)."""

    def __init__(
        self,
        options: Options,
        want: t.Callable[[str], None],
        taking_over: t.Callable[[], bool] = lambda: False,
    ) -> None:
        self._options = options
        self._want = want  # this node becomes a writer candidate of a topic
        self._taking_over = taking_over  # this node's writer takes over now
        self.reset()

    def reset(self) -> None:
        """Fresh per-process state: at start, and in a forked child."""
        self._link: Link | None = None
        self._declared: set[str] = set()  # on this link
        self._asked = 0  # the last sync's number
        self._replies = ""  # the consumer tag of the writers' answers
        # Questions out on this link, by number: the link they went on and
        # the event their reader waits on; the answers come in any order,
        # whoever drives the link files them (``_file``).
        self._questions: dict[int, tuple[Link, t.Any]] = {}
        self._answers: dict[int, bytes] = {}
        # Held across round trips: a gevent lock once gevent patched threading.
        self._lock = threading.Lock()
        self.scans = 0  # stream scans for reads (for tests and benchmarks)

    def name(self, topic: str) -> str:
        o = self._options
        return stream_name(o.queue_prefix, o.exchange, topic)

    # -- what the broker asks -------------------------------------------------

    def read(
        self, topic: str, rule: Retention | None, after: int | None, limit: int | None
    ) -> tuple[Position, list[bytes] | None]:
        """``Broker.history`` (see ``interface.py``)."""
        if rule is None:  # nothing is kept: no stream to read
            return Position(0, new_epoch()), ([] if after in (None, 0) else None)
        return self.read_many(topic, rule, lambda: [(after, limit)])[0]

    def read_many(
        self, topic: str, rule: Retention, close: t.Callable[[], list[Ask]]
    ) -> list[Answer]:
        """Several reads of ``topic`` with one position and one scan: the
        reads ``close()`` returns, called right before the position is
        asked for (``_shared_reads.py``)."""
        self._want(topic)
        name = self.name(topic)
        asked = self._run(lambda link: self._ask(link, name, rule, close))
        try:
            answer = self._await(asked, name)
        finally:
            self._questions.pop(asked, None)
            self._answers.pop(asked, None)
        return self._read(name, rule, close, answer)

    def tails(self, wanted: list[tuple[str, Retention, str]]) -> dict[str, Tail]:
        """For a writer taking over ``(topic, rule, fence)``s: each stream's
        last number, its epoch and the ids of its last ``TAIL_IDS`` events,
        read up to the fence the writer appended (its ``f`` header), which
        comes after anything the writer before it appended.

        The streams of ``_TAILS_AT_ONCE`` topics are read at once, their
        round trips overlapping: hundreds of new channels becoming active
        at once on a node (a storm of first subscribes) cost a few round
        trips, not ~20 ms each one after another, while reads wait for
        their writer's answer."""
        found: dict[str, Tail] = {}
        for first in range(0, len(wanted), _TAILS_AT_ONCE):
            chunk = wanted[first : first + _TAILS_AT_ONCE]
            found.update(self._run(functools.partial(self._tails, wanted=chunk)))
        return found

    def busy(self) -> bool:
        """Whether a read or a tail holds the connection now."""
        return self._lock.locked()

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
        with self._lock:
            try:
                return self._drive(work)
            finally:
                self._pass_turn()

    def _drive(self, work: t.Callable[[Link], t.Any]) -> t.Any:
        """``work(link)`` holding the lock; a failure gives the link up."""
        link = self._link
        try:
            if link is None:
                link = self._open()
            return work(link)
        except _LINK_ERRORS as exc:
            if link is not None:
                link.close()
            self._link = None
            for _, waiting in list(self._questions.values()):
                waiting.set()  # their answers are gone with the link
            raise BrokerUnavailable(
                f"reading RabbitMQ history failed: {exc or type(exc).__name__}"
            ) from exc

    def _pass_turn(self) -> None:
        """Leaving the link: wake a reader still waiting for its answer, to
        drive the link in turn (nobody reads the answers otherwise)."""
        for number, (_, waiting) in list(self._questions.items()):
            if number not in self._answers:
                waiting.set()
                return

    def _file(self, link: Link) -> None:
        """The writers' answers among ``link``'s deliveries, to their
        readers; what else is there is late (a scan's, cancelled)."""
        while link.deliveries:
            _tag, _key, body, consumer, headers = link.deliveries.popleft()
            if consumer == self._replies:
                self._file_one(body, headers)

    def _scanned(
        self, link: Link
    ) -> t.Iterator[tuple[int, bytes, str, dict[str, t.Any] | None]]:
        """``link``'s deliveries from stream scans (delivery tag, body,
        consumer, headers); the writers' answers among them are filed."""
        while link.deliveries:
            delivery_tag, _key, body, consumer, headers = link.deliveries.popleft()
            if consumer == self._replies:
                self._file_one(body, headers)  # no ack: those go without
                continue
            yield delivery_tag, body, consumer, headers

    def _file_one(self, body: bytes, headers: dict[str, t.Any] | None) -> None:
        number = headers.get("s") if headers else None
        question = self._questions.get(number)  # type: ignore[arg-type]
        if question is not None and body:
            self._answers[t.cast(int, number)] = body
            question[1].set()

    def _open(self) -> Link:
        o = self._options
        link = Link(o.parameters("history"), o.password)
        try:
            link.call(link.channel.basic_qos, prefetch_count=_READ_CREDIT)
            self._replies = link.consume_replies()
        except BaseException:
            link.abandon()
            raise
        self._link, self._declared = link, set()
        return link

    def _declare(self, link: Link, name: str, rule: Retention) -> None:
        if name not in self._declared:
            link.call(link.channel.queue_declare, **stream_declaration(name, rule))
            self._declared.add(name)

    def _read(
        self,
        name: str,
        rule: Retention,
        close: t.Callable[[], list[Ask]],
        answer: bytes,
    ) -> list[Answer]:
        line, newline, packed = answer.partition(b"\n")
        last, epoch, bound = line.decode().split(" ")
        offset, below = int(last), int(bound)
        held = unpack_held(packed) if newline else None
        asks = close()  # closed already: the same reads
        position = Position(offset, epoch)
        starts = [_start(offset, rule, after, limit) for after, limit in asks]
        wanted = [start for start in starts if start is not None and start > 0]
        if not wanted:
            return [(position, [] if start is not None else None) for start in starts]
        start = min(wanted)
        if held is not None and held and held[0][0] <= start:
            events = held  # the writer's copy: what the stream holds
        else:
            found = self._run(
                lambda link: self._scan_from(link, name, offset, below, start)
            )
            events = [
                (m.offset, m.headers.get("t", 0), m.body) for m in found if not m.marker
            ]
        oldest = now_ms() - rule.ttl * 1000
        fresh: list[tuple[int, bytes]] = []  # in order, each offset once
        for number, at, body in events:  # an event written twice is kept once
            if start <= number <= offset:
                if not fresh or number > fresh[-1][0]:
                    if at >= oldest:
                        fresh.append((number, envelope(stamp(body, number))))
                    else:  # too old: a hole, told by the count below
                        fresh.append((number, b""))
        answers: list[Answer] = []
        for (after, _limit), first_wanted in zip(asks, starts, strict=True):
            if first_wanted is None or first_wanted == 0:
                answers.append((position, [] if first_wanted is not None else None))
                continue
            mine = [(o, e) for o, e in fresh if o >= first_wanted and e]
            if after is not None and (
                len(mine) != offset - after or (mine and mine[0][0] != first_wanted)
            ):
                answers.append((position, None))  # some are gone (trimmed, old)
            else:
                answers.append((position, [e for _, e in mine]))
        return answers

    def _scan_from(
        self, link: Link, name: str, offset: int, below: int, start: int
    ) -> list[Message]:
        """The stream's messages from (at most a few before) our ``start``
        to our ``offset`` at least."""
        # ``below``: the writer's lower bound of the stream offset of
        # ``offset``; ours trail the stream's by the skipped ones, so
        # ``start`` sits at least this far along the stream.
        self.scans += 1
        found = self._scan(link, name, max(0, below - (offset - start)), until=offset)
        first = next((m.offset for m in found if m.offset >= 0), None)
        if first is None or first > start:
            self.scans += 1
            found = self._scan(link, name, "first", until=offset)
        return found

    def _ask(
        self,
        link: Link,
        name: str,
        rule: Retention,
        close: t.Callable[[], list[Ask]],
    ) -> int:
        """Ask the stream's writer, through its inbox, for the last offset
        and the epoch: it answers once it has appended everything published
        before the question (marking an empty stream first), so a read sees
        every event whose publish returned before it. Also a lower bound of
        the stream offset of the last (where a read may start), and the
        events the reads want when the writer holds them all. The question's
        number: its answer comes to :meth:`_await`."""
        inbox = inbox_name(name)
        if inbox not in self._declared:
            # Without waiting for the answers (a storm's first reads of many
            # channels paid two round trips each, one read after another on
            # the link): the question goes behind them on this channel, so
            # RabbitMQ has made the inbox when it routes it.
            link.channel.queue_declare(**stream_declaration(name, rule))
            link.channel.queue_declare(**inbox_declaration(inbox))
            self._declared.update((name, inbox))
        self._asked += 1
        asked = self._asked
        asks = close()  # the reads the answer serves began before the question
        headers: dict[str, t.Any] = {"s": asked}
        froms = [after + 1 for after, _ in asks if after is not None]
        if froms:
            headers["w"] = min(froms)  # the first one wanted
        counts = [
            rule.size if limit is None else min(limit, rule.size)
            for after, limit in asks
            if after is None
        ]
        if counts and max(counts) > 0:
            headers["n"] = max(counts)  # the last n wanted
        question = pika.BasicProperties(
            reply_to="amq.rabbitmq.reply-to", headers=headers
        )
        self._questions[asked] = (link, event())
        link.send("", inbox, b"", question)
        return asked

    def _await(self, asked: int, name: str) -> bytes:
        """The answer to question ``asked`` (``_SYNC_WAIT`` at most).

        The link is not held meanwhile: the reads of many channels have
        their questions out at once (a writer taking over hundreds of new
        channels then does so in a few rounds, not one channel per round),
        and one of their readers at a time drives the link, filing every
        answer that comes for whom it is."""
        link, waiting = self._questions[asked]
        started = time.monotonic()
        deadline = started + _SYNC_WAIT
        while asked not in self._answers:
            now = time.monotonic()
            left = deadline - now
            if left <= 0 and self._taking_over() and now - started < _SYNC_WAIT_MOST:
                # This node's writer is taking channels over (a storm of new
                # ones, say): the answer may be behind those; wait on.
                left = _TURN
                deadline = now + left
            if left <= 0:
                self._declared.discard(inbox_name(name))  # deleted, perhaps
                raise BrokerUnavailable(f"the writer of {name} did not answer")
            if self._link is not link:
                raise BrokerUnavailable("the history connection was lost")
            if not self._lock.acquire(blocking=False):
                waiting.wait(min(left, _TURN))
                waiting.clear()
                continue
            try:
                if asked not in self._answers and self._link is link:
                    self._drive(functools.partial(self._listen, left=left))
            finally:
                self._lock.release()
                self._pass_turn()
        return self._answers[asked]

    def _listen(self, link: Link, left: float) -> None:
        """Drive ``link`` until answers come (``_TURN`` at most), filing them."""
        link.receive(min(left, _TURN))
        self._file(link)

    def _tails(
        self, link: Link, wanted: list[tuple[str, Retention, str]]
    ) -> dict[str, Tail]:
        names = [self.name(topic) for topic, _, _ in wanted]
        for name, (_, rule, _) in zip(names, wanted, strict=True):
            if name not in self._declared:  # nowait: an error closes the link
                link.channel.queue_declare(**stream_declaration(name, rule))
                self._declared.add(name)
        fences = [fence for _, _, fence in wanted]
        # The last chunk, to the fence: the whole tail when it holds enough
        # ids or begins the stream (a new stream: the fence alone, at 0).
        scans = self._scan_to_fences(
            link,
            [(name, "last", fence) for name, fence in zip(names, fences, strict=True)],
        )
        again = [
            n
            for n, (began, found) in enumerate(scans)
            if began > 0 and len(found) < TAIL_IDS
        ]
        if again:  # from far enough back, to the fence again
            starts = [
                max(0, scans[n][1][-1].position - TAIL_IDS - _SLACK) for n in again
            ]
            more = self._scan_to_fences(
                link,
                [
                    (names[n], start, fences[n])
                    for n, start in zip(again, starts, strict=True)
                ],
            )
            for n, scan in zip(again, more, strict=True):
                scans[n] = scan
        tails = {}
        for (topic, _, _), (_, found) in zip(wanted, scans, strict=True):
            numbered = [m for m in found if m.offset >= 0]
            if not numbered:
                tails[topic] = Tail(None, None, frozenset(), 0)  # fences only
                continue
            last = numbered[-1]
            ids = frozenset(m.headers["i"] for m in numbered if "i" in m.headers)
            tails[topic] = Tail(last.offset, last.headers["e"], ids, last.position)
        return tails

    def _scan_to_fences(
        self, link: Link, scans: list[tuple[str, int | str, str]]
    ) -> list[tuple[int, list[Message]]]:
        """Several streams at once, each ``(name, start, fence)`` from its
        ``start`` to the message whose ``f`` is ``fence``: for each, the
        stream offset it began at and its messages of ours (events,
        markers, fences) up to that fence."""
        index: dict[str, int] = {}
        found: list[list[Message]] = [[] for _ in scans]
        began = [-1] * len(scans)
        done = [False] * len(scans)
        missing = len(scans)
        for n, (name, start, _) in enumerate(scans):
            # pika sends each consume once the one before it is answered.
            tag = link.consume_soon(name, {"x-stream-offset": start}, lambda _: None)
            index[tag] = n
        deadline = time.monotonic() + CALL_TIMEOUT
        try:
            while True:
                last_tag = 0
                for delivery_tag, body, consumer, headers in self._scanned(link):
                    last_tag = delivery_tag
                    n = index.get(consumer, -1)
                    if n < 0 or not headers or done[n]:
                        continue  # not of these scans, or past the fence
                    if began[n] < 0:
                        began[n] = int(headers["x-stream-offset"])
                    message = _stored(headers, body)
                    if message is None:
                        continue  # not ours
                    found[n].append(message)
                    if headers.get("f") == scans[n][2]:
                        done[n] = True
                        missing -= 1
                if last_tag:
                    link.channel.basic_ack(last_tag, multiple=True)
                if not missing:
                    return list(zip(began, found, strict=True))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LinkLost("reading the tails of streams fell short")
                link.receive(min(left, 0.05))
        finally:
            if link.error is None and index:
                # pika rejects what a consumer receives between its cancel
                # and the answer, which a stream takes for an error: wait for
                # every answer (pika then forgets the consumer) before more
                # is appended. (pika calls every cancel's callback at the
                # first answer: the consumers it still has tell, looked at
                # every few ms.)
                for tag in index:
                    link.channel.basic_cancel(tag, callback=lambda _frame: None)
                ends = time.monotonic() + CALL_TIMEOUT

                def cancelled() -> bool:
                    return index.keys().isdisjoint(link.channel.consumer_tags)

                while not cancelled():
                    if time.monotonic() > ends:
                        raise LinkLost("cancelling the tails' consumers timed out")
                    link.wait(cancelled, 0.005, expire=False)
            if link.deliveries:  # arrived after the end: settle them too
                late = [d[0] for d in link.deliveries if d[3] != self._replies]
                if late:
                    link.channel.basic_ack(late[-1], multiple=True)
                self._file(link)

    def _scan(
        self,
        link: Link,
        name: str,
        start: int | str,
        stop: int | None = None,
        until: int | None = None,
        one: bool = False,
    ) -> list[Message]:
        """The stream's messages from ``start`` (a stream offset, "first",
        "last") to its end; and, waiting for them, to stream offset ``stop``
        or our offset ``until`` at least, or one message at least (``one``).

        The ``basic.qos`` fence is not a promise that RabbitMQ has read the
        stream from disk that far: a scan that must reach a known point
        waits for it (up to ``CALL_TIMEOUT``; then the link is given up)."""
        found: list[Message] = []
        highest = -1
        tag = link.consume(name, {"x-stream-offset": start})
        last_tag = 0
        deadline = time.monotonic() + CALL_TIMEOUT

        def reached() -> bool:
            if stop is not None:
                return bool(found) and found[-1].position >= stop
            if until is not None:
                return highest >= until
            return bool(found) or not one

        try:
            fence = True
            while True:
                if fence:
                    link.call(link.channel.basic_qos, prefetch_count=_READ_CREDIT)
                got = 0
                for delivery_tag, body, consumer, headers in self._scanned(link):
                    last_tag = delivery_tag
                    if consumer != tag or not headers:
                        continue  # a cancelled scan's, or not ours
                    got += 1
                    message = _stored(headers, body)
                    if message is None:
                        continue  # not ours
                    highest = max(highest, message.offset)
                    found.append(message)
                if last_tag:
                    link.channel.basic_ack(last_tag, multiple=True)
                    last_tag = 0
                if stop is None and until is None and not one and got < _READ_CREDIT:
                    return found  # the fence: as far as the stream went
                if reached():
                    return found
                fence = got >= _READ_CREDIT
                if not fence:  # short of a known point: more is on its way
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise LinkLost(f"reading the stream {name} fell short")
                    link.receive(min(left, 0.05))
        finally:
            if link.error is None:
                link.call(link.channel.basic_cancel, consumer_tag=tag)
            if link.deliveries:  # arrived after the end: settle them too
                late = [d[0] for d in link.deliveries if d[3] != self._replies]
                if late:
                    link.channel.basic_ack(late[-1], multiple=True)
                self._file(link)
