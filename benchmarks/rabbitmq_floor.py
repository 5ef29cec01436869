"""The floor under RabbitMQ history's cost: pika and rabbitmq-server alone.

Issue 10 asks history to keep at least 0.7x the broadcast rate without it;
``history_rate.py`` measures 0.72 on RabbitMQ with a batch's events on one
channel and some 0.35 with them spread over 8 or 50. This script measures
what the shapes of storing per channel cost with no flask_realtime code on
the way (it borrows only the queues' declare arguments, so that they are
the same): one pika IOLoop drives three connections, a publisher, a writer
and a receiver, and the publisher sends batches of B messages of 100 bytes
to C channels (message n of a batch to channel n mod C, as greenlet g
broadcasts to channel g mod C), waiting for a batch's confirms before the
next, as the group commit does:

* ``plain``: persistent, mandatory and confirmed to a topic exchange, a
  routing key per channel, what the broker does without history; the
  receiver's queue (exclusive, prefetch 50) is bound with a wildcard;
* ``stream``: each message confirmed straight to its channel's stream
  queue, with the headers flask_realtime's writer stamps (offset, epoch,
  time, id); the receiver consumes each stream from ``next`` (prefetch
  500, on 8 channels, as the follows do): the least any design that
  stores each channel in a stream of its own and delivers from it pays;
* ``grouped``: the same with the batch's messages sent stream by stream
  (each channel's in their order), as a writer could append a batch;
* ``live``: each message confirmed to its channel's stream, which nobody
  consumes, and once the batch is confirmed, the batch as in ``plain``:
  a design storing per channel that delivers live by the exchange (as
  ``nats_floor.py``'s stored case and flask_realtime on NATS do);
* ``inbox``: flask_realtime's shape. Each run of consecutive messages of
  one channel goes as one message (packed up to 3.5 KiB), persistent and
  confirmed, to the channel's inbox (durable classic queue v2, single
  active consumer); the writer, on its own connection, republishes each
  event to its stream (confirmed) and then acks the inbox, one append in
  flight at a time; the receiver consumes the streams as above;
* ``shared``: the same with one inbox for all the channels, each message
  packing a batch's events whatever their channel (up to 3.5 KiB), what an
  inbox shared by several channels could gain.

The rate is messages over the time from the first publish to the last
arrival at the receiver; CPU per message of this process (pika, all three
connections) and of rabbitmq-server's process tree. Each round runs every
channel count's cases in turn, ``--slices`` times on count / slices messages
each (so that a stall of the shared machine falls on every case), the
order turning from round to round; ratios are to ``plain`` of the same
round and channel count.

Usage::

    .venv/bin/python benchmarks/rabbitmq_floor.py [--count 10000] [--batch 50]
        [--rounds 3] [--slices 5] [--channels 1,50]
        [--cases plain,stream,grouped,live,inbox,shared]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import typing as t
from pathlib import Path

import pika
import pika.spec
from pika.adapters.select_connection import IOLoop

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from benchmarks.loadgen import self_cpu_s, tree_cpu_s  # noqa: E402
from flask_realtime.brokers._amqp_history import (  # noqa: E402
    inbox_declaration,
    stream_declaration,
)
from flask_realtime.brokers.interface import Retention  # noqa: E402
from tests.brokerservers import BrokerServer  # noqa: E402

CASES = ("plain", "stream", "grouped", "live", "inbox", "shared")
RULE = Retention(size=100, ttl=600.0)  # history_rate.py's
PAYLOAD = b'{"offset":50,"type":"event","channel":"chat.room.1",' + b"x" * 47 + b"}"
EXCHANGE = "floor"
# As flask_realtime's broker: a plain queue's prefetch and acks (every half
# of it), a stream consumer's prefetch, the channels stream consumers go on,
# and the size an inbox message packs events up to (below RabbitMQ's 4 KiB
# queue_index_embed_msgs_below).
QUEUE_PREFETCH, STREAM_PREFETCH, FOLLOW_CHANNELS = 50, 500, 8
PACK_BYTES = 3584
TIMEOUT = 120.0  # s for one run

Outgoing = tuple[str, str, bytes, pika.BasicProperties]


class Loop:
    """One pika IOLoop for every connection, run until a condition holds."""

    def __init__(self) -> None:
        self.ioloop = IOLoop()
        self.error: object = None
        self.closing = False
        self._until: t.Callable[[], bool] | None = None

    def wake(self) -> None:
        """Stop the loop if what it runs for has happened (or failed)."""
        if self.error is not None or (self._until is not None and self._until()):
            self.ioloop.stop()

    def failed(self, _source: object, error: object) -> None:
        if not self.closing:
            self.error = error
            self.ioloop.stop()

    def run_until(self, done: t.Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        timer = self.ioloop.call_later(timeout, self.ioloop.stop)
        self._until = done
        try:
            while not done():
                if self.error is not None:
                    raise RuntimeError(f"RabbitMQ: {self.error}")
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"nothing after {timeout} s")
                self.ioloop.start()
        finally:
            self._until = None
            self.ioloop.remove_timeout(timer)

    def connect(self, url: str, name: str) -> pika.SelectConnection:
        params = pika.URLParameters(url)
        params.client_properties = {"connection_name": f"rabbitmq_floor {name}"}
        opened: list[pika.SelectConnection] = []

        def on_open(connection: pika.SelectConnection) -> None:
            opened.append(connection)
            self.wake()

        pika.SelectConnection(
            params,
            on_open_callback=on_open,
            on_open_error_callback=self.failed,
            on_close_callback=self.failed,
            custom_ioloop=self.ioloop,
        )
        self.run_until(lambda: bool(opened), 30)
        return opened[0]

    def channel(self, connection: pika.SelectConnection) -> t.Any:
        channels: list[t.Any] = []

        def on_open(channel: t.Any) -> None:
            channel.add_on_close_callback(self.failed)
            channels.append(channel)
            self.wake()

        connection.channel(on_open_callback=on_open)
        self.run_until(lambda: bool(channels), 30)
        return channels[0]

    def call(self, method: t.Callable[..., t.Any], **kwargs: t.Any) -> t.Any:
        """One synchronous AMQP method: send it, wait for its answer."""
        answers: list[t.Any] = []

        def answered(frame: t.Any) -> None:
            answers.append(frame)
            self.wake()

        method(callback=answered, **kwargs)
        self.run_until(lambda: bool(answers), 30)
        return answers[0]


class Confirms:
    """A channel in confirm mode: what it published, what RabbitMQ confirmed,
    and a callback once everything is."""

    def __init__(self, loop: Loop, channel: t.Any) -> None:
        self.channel = channel
        self.sent = self.low = 0  # every tag up to low is confirmed
        self.returned = 0
        self._above: set[int] = set()  # confirmed one by one past low
        self._then: t.Callable[[], None] | None = None
        loop.call(channel.confirm_delivery, ack_nack_callback=self._confirmed)
        channel.add_on_return_callback(self._returned)

    def publish(self, messages: list[Outgoing], then: t.Callable[[], None]) -> None:
        """Publish ``messages``, mandatory; ``then()`` once all are confirmed."""
        for exchange, key, body, properties in messages:
            self.channel.basic_publish(exchange, key, body, properties, True)
        self.sent += len(messages)
        self._then = then

    def _confirmed(self, frame: t.Any) -> None:
        method = frame.method
        if not isinstance(method, pika.spec.Basic.Ack):
            raise RuntimeError("RabbitMQ refused a message (basic.nack)")
        if method.multiple:
            self.low = max(self.low, method.delivery_tag)
            self._above = {tag for tag in self._above if tag > self.low}
        else:
            self._above.add(method.delivery_tag)
        while self.low + 1 in self._above:
            self.low += 1
            self._above.discard(self.low)
        if self.low == self.sent and self._then is not None:
            then, self._then = self._then, None
            then()

    def _returned(self, *_args: object) -> None:
        self.returned += 1  # unroutable: a queue missing, a bug here


def stream_name(c: int) -> str:
    return f"floor.history.{c}"


def unread_name(c: int) -> str:
    """A stream nobody consumes (``live``: delivery goes by the exchange)."""
    return f"floor.stored.{c}"


def inbox_name(c: int) -> str:
    return f"floor.history.{c}.in"


SHARED_INBOX = "floor.history.shared.in"
PERSISTENT = pika.BasicProperties(delivery_mode=2)  # plain, as the broker's default
INBOX = pika.BasicProperties(delivery_mode=2, headers={"i": "node.1"})
STAMPED = pika.BasicProperties(
    headers={"o": 50, "e": "x" * 16, "t": 1_800_000_000_000, "i": "node.1"}
)


def packed(events: list[tuple[int, bytes]], shared: bool) -> Outgoing:
    """One inbox message carrying ``events`` (channel, body): their bodies
    joined, their sizes (and, shared, their channels) in headers."""
    headers: dict[str, t.Any] = {"i": "node.1", "l": [len(b) for _, b in events]}
    if shared:
        headers["c"] = [c for c, _ in events]
    inbox = SHARED_INBOX if shared else inbox_name(events[0][0])
    body = b"".join(body for _, body in events)
    return ("", inbox, body, pika.BasicProperties(delivery_mode=2, headers=headers))


def batch_of(case: str, batch: int, channels: int) -> list[Outgoing]:
    """What the publisher sends for one batch in ``case``."""
    events = [(n % channels, PAYLOAD) for n in range(batch)]
    if case == "plain":
        return [(EXCHANGE, f"floor.{c}", body, PERSISTENT) for c, body in events]
    if case in ("stream", "grouped"):
        if case == "grouped":  # stream by stream, each channel's in order
            events.sort(key=lambda event: event[0])
        return [("", stream_name(c), body, STAMPED) for c, body in events]
    if case == "live":  # stored; then sent as plain ones (Floor.run)
        return [("", unread_name(c), body, STAMPED) for c, body in events]
    shared = case == "shared"
    runs: list[list[tuple[int, bytes]]] = []
    size = 0
    for c, body in events:
        joins = runs and (shared or runs[-1][-1][0] == c)
        if joins and size + len(body) <= PACK_BYTES:
            runs[-1].append((c, body))
            size += len(body)
        else:
            runs.append([(c, body)])
            size = len(body)
    return [
        packed(run, shared) if shared or len(run) > 1 else single(run[0])
        for run in runs
    ]


def single(event: tuple[int, bytes]) -> Outgoing:
    """One event alone in its channel's inbox (no sizes: not packed)."""
    return ("", inbox_name(event[0]), event[1], INBOX)


class Writer:
    """Consumes the inboxes; appends what they bring to the streams
    (confirmed), then acks: one append in flight at a time."""

    def __init__(self, loop: Loop, connection: pika.SelectConnection) -> None:
        self.loop = loop
        channel = loop.channel(connection)
        self.confirms = Confirms(loop, channel)
        loop.call(channel.basic_qos, prefetch_count=STREAM_PREFETCH)
        self.channel = channel
        self._waiting: list[Outgoing] = []
        self._last_tag = 0
        self._busy = False

    def consume(self, inbox: str, channel_of: int | None) -> None:
        """Consume ``inbox``: its events go to stream ``channel_of``, or,
        shared, each to its own channel's (header ``c``)."""

        def on_message(_ch: t.Any, method: t.Any, props: t.Any, body: bytes) -> None:
            headers = props.headers or {}
            sizes = headers.get("l") or [len(body)]
            targets = headers.get("c") or [channel_of] * len(sizes)
            start = 0
            for size, c in zip(sizes, targets, strict=True):
                event = body[start : start + size]
                self._waiting.append(("", stream_name(c), event, STAMPED))
                start += size
            self._last_tag = method.delivery_tag
            if not self._busy:  # after what this read brought along
                self._busy = True
                self.loop.ioloop.add_callback(self._append)

        self.loop.call(
            self.channel.basic_consume, queue=inbox, on_message_callback=on_message
        )

    def _append(self) -> None:
        outgoing, self._waiting = self._waiting, []
        tag = self._last_tag
        self.confirms.publish(outgoing, lambda: self._appended(tag))

    def _appended(self, tag: int) -> None:
        self.channel.basic_ack(tag, multiple=True)
        if self._waiting:
            self._append()
        else:
            self._busy = False


class Receiver:
    """Counts what arrives: from its queue and from the streams it consumes,
    acknowledging as flask_realtime's reader does (every half of the
    prefetch, and after each read)."""

    def __init__(self, loop: Loop, connection: pika.SelectConnection) -> None:
        self.loop = loop
        self.got = 0
        self.want = 0
        self.last_at = 0.0
        self._unacked: dict[t.Any, tuple[int, int]] = {}  # channel: count, tag
        self._ack_soon = False
        self.queue_channel = loop.channel(connection)
        self.stream_channels = [
            loop.channel(connection) for _ in range(FOLLOW_CHANNELS)
        ]
        loop.call(self.queue_channel.basic_qos, prefetch_count=QUEUE_PREFETCH)
        for channel in self.stream_channels:
            loop.call(channel.basic_qos, prefetch_count=STREAM_PREFETCH)

    def expect(self, count: int) -> None:
        self.got, self.want = 0, count

    def consume_queue(self, queue: str) -> None:
        self._consume(self.queue_channel, queue, None, QUEUE_PREFETCH // 2)

    def consume_stream(self, c: int) -> None:
        channel = self.stream_channels[c % FOLLOW_CHANNELS]
        self._consume(
            channel, stream_name(c), {"x-stream-offset": "next"}, STREAM_PREFETCH // 2
        )

    def _consume(
        self, channel: t.Any, queue: str, arguments: dict[str, t.Any] | None, every: int
    ) -> None:
        def on_message(ch: t.Any, method: t.Any, _props: t.Any, _body: bytes) -> None:
            count = self._unacked.get(ch, (0, 0))[0] + 1
            if count >= every:
                ch.basic_ack(method.delivery_tag, multiple=True)
                self._unacked.pop(ch, None)
            else:
                self._unacked[ch] = (count, method.delivery_tag)
                if not self._ack_soon:
                    self._ack_soon = True
                    self.loop.ioloop.add_callback(self._acknowledge)
            self.got += 1
            if self.got == self.want:
                self.last_at = time.perf_counter()
                self.loop.wake()

        self.loop.call(
            channel.basic_consume,
            queue=queue,
            on_message_callback=on_message,
            arguments=arguments,
        )

    def _acknowledge(self) -> None:
        self._ack_soon = False
        unacked, self._unacked = self._unacked, {}
        for channel, (_, tag) in unacked.items():
            channel.basic_ack(tag, multiple=True)


class Floor:
    """The three connections, the exchange and the queues of up to
    ``channels`` channels, declared once."""

    def __init__(self, url: str, channels: int) -> None:
        self.loop = loop = Loop()
        publisher = loop.connect(url, "publisher")
        channel = loop.channel(publisher)
        self.confirms = Confirms(loop, channel)
        loop.call(
            channel.exchange_declare,
            exchange=EXCHANGE,
            exchange_type="topic",
            durable=True,
        )
        for c in range(channels):
            loop.call(channel.queue_declare, **stream_declaration(stream_name(c), RULE))
            loop.call(channel.queue_declare, **stream_declaration(unread_name(c), RULE))
            loop.call(channel.queue_declare, **inbox_declaration(inbox_name(c)))
        loop.call(channel.queue_declare, **inbox_declaration(SHARED_INBOX))
        self.writer = Writer(loop, loop.connect(url, "writer"))
        for c in range(channels):
            self.writer.consume(inbox_name(c), c)
        self.writer.consume(SHARED_INBOX, None)
        self.receiver = Receiver(loop, loop.connect(url, "receiver"))
        frame = loop.call(
            self.receiver.queue_channel.queue_declare,
            queue="",
            exclusive=True,
            auto_delete=True,
        )
        queue = frame.method.queue
        loop.call(
            self.receiver.queue_channel.queue_bind,
            queue=queue,
            exchange=EXCHANGE,
            routing_key="floor.*",
        )
        self.receiver.consume_queue(queue)
        for c in range(channels):
            self.receiver.consume_stream(c)

    def run(self, case: str, count: int, batch: int, channels: int) -> float:
        """Seconds from the first publish to the last arrival."""
        outgoing = batch_of(case, batch, channels)
        live = batch_of("plain", batch, channels)
        batches = count // batch
        sent = [0]

        def next_batch() -> None:
            if sent[0] < batches:
                sent[0] += 1
                then = send_live if case == "live" else next_batch
                self.confirms.publish(outgoing, then)

        def send_live() -> None:
            self.confirms.publish(live, next_batch)

        self.receiver.expect(batches * batch)
        started = time.perf_counter()
        next_batch()
        self.loop.run_until(lambda: self.receiver.got >= self.receiver.want, TIMEOUT)
        returned = self.confirms.returned + self.writer.confirms.returned
        assert returned == 0, f"{returned} message(s) returned unroutable"
        return self.receiver.last_at - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slices", type=int, default=5)
    parser.add_argument("--channels", default="1,50")
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    counts = [int(c) for c in args.channels.split(",")]
    cases = args.cases.split(",")
    assert cases[0] == "plain" and set(cases) <= set(CASES), cases
    server = BrokerServer("rabbitmq", Path(tempfile.mkdtemp(prefix="rabbitmq-floor-")))
    server.start()
    assert server.process is not None
    root = server.process.pid
    # (case, channels): per round, (messages/s, ratio, Python µs, server µs)
    found: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}
    try:
        floor = Floor(server.url, max(counts))
        # The streams running, the writer active, RabbitMQ past its start.
        warm = max(args.batch, args.count // 5 // args.batch * args.batch)
        for case in cases:
            for channels in counts:
                floor.run(case, warm, args.batch, channels)
        # Each round runs the cases in turn, a slice of count each time, so
        # that a stall of the shared machine falls on all of them alike.
        share = max(args.batch, args.count // args.slices // args.batch * args.batch)
        done = share * args.slices
        for round_ in range(args.rounds):
            turn = round_ % len(cases)
            for channels in counts:
                spent = {case: [0.0, 0.0, 0.0] for case in cases}  # s, ours, theirs
                for _ in range(args.slices):
                    for case in cases[turn:] + cases[:turn]:
                        cpu = (self_cpu_s(), tree_cpu_s(root))
                        spent[case][0] += floor.run(case, share, args.batch, channels)
                        spent[case][1] += self_cpu_s() - cpu[0]
                        spent[case][2] += tree_cpu_s(root) - cpu[1]
                plain = done / spent["plain"][0]
                for case in cases:
                    elapsed, ours, theirs = spent[case]
                    rate = done / elapsed
                    row = (rate, rate / plain, ours / done * 1e6, theirs / done * 1e6)
                    found.setdefault((case, channels), []).append(row)
                    print(
                        f"round {round_ + 1}, {channels:2} channel(s), {case:7}:"
                        f" {rate:7.0f} messages/s (x{row[1]:.2f}); CPU per message:"
                        f" Python {row[2]:4.0f} µs, rabbitmq-server {row[3]:4.0f} µs",
                        flush=True,
                    )
        print(f"\n{args.rounds} rounds, batches of {args.batch}: min to max")
        print(
            "| case | channels | messages/s | ratio to plain (median) |"
            " Python CPU a message | rabbitmq-server CPU a message |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        forms = ("{:,.0f}", "{:.2f}", "{:.0f} µs", "{:.0f} µs")
        for channels in counts:
            for case in cases:
                rows = found[(case, channels)]
                cells = []
                for k, form in enumerate(forms):
                    low, high = min(r[k] for r in rows), max(r[k] for r in rows)
                    cells.append(f"{form.format(low)} to {form.format(high)}")
                cells[1] += f" ({statistics.median(r[1] for r in rows):.2f})"
                print(f"| {case} | {channels} | " + " | ".join(cells) + " |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
