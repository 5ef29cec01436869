"""The RabbitMQ broker's wire: one pika connection, synchronous with deadlines.

:class:`Link` drives pika's SelectConnection through its public API only
(``IOLoop.start``/``stop``, ``call_later``, ``add_callback_threadsafe`` and
the channel's methods), synchronously and with a deadline on every wait, so
no call hangs on a broker that stopped answering. Only one greenlet or
thread drives a link at a time; others may only :meth:`Link.soon` and
:meth:`Link.interrupt`.
"""

from __future__ import annotations

import time
import typing as t
from collections import deque

import pika
import pika.exceptions
import pika.spec
from pika.adapters.select_connection import IOLoop, SelectConnection

from ._amqp_options import CONNECT_TIMEOUT
from ._amqp_stream import Services
from ._support import LinkLost

CALL_TIMEOUT = 5.0  # a declare or a bind
CONFIRM_TIMEOUT = 1.5  # a publish never waits longer on a silent broker
CLOSE_TIMEOUT = 1.0
_CHUNK_MESSAGES, _CHUNK_BYTES = 500, 1 << 20  # one wait each, well within the deadline
_WAITING, _RETURNED = object(), object()  # a message's confirm is still due
_DUE = (_WAITING, _RETURNED)

# (delivery tag, routing key, body, consumer tag, headers): one received.
Delivery = tuple[int, str, bytes, str, "dict[str, t.Any] | None"]
# (exchange, routing key, body, properties): one message to publish.
Outgoing = tuple[str, str, bytes, t.Any]


class Link:
    """One AMQP connection and its channel, made synchronous with deadlines."""

    def __init__(self, params: pika.connection.Parameters, password: str) -> None:
        self.error: str | None = None
        self.code: int | None = None  # the broker's reply code of the error
        self.interrupted = False
        self.deliveries: deque[Delivery] = deque()
        self.channel: t.Any = None
        self._retiring: set[t.Any] = set()  # channels closed on purpose
        self._password = password
        self._done: t.Callable[[], bool] | None = None
        self._tag = 0  # the channel's last delivery tag
        self._batch: list[tuple[str, str, bytes, t.Any]] = []
        self._results: list[t.Any] = []
        self._first = self._low = self._unconfirmed = 0
        self._ioloop = IOLoop()
        self._services = Services(self._ioloop)
        self.connection = SelectConnection(
            params,
            on_open_callback=lambda c: c.channel(on_open_callback=self._opened),
            on_open_error_callback=self._failed,
            on_close_callback=self._failed,
            custom_ioloop=self._services,
        )
        try:
            self.wait(lambda: self.channel is not None, CONNECT_TIMEOUT)
        except BaseException:
            self.abandon()
            raise

    # -- driving the loop (the link's one driver) ------------------------------

    def wait(
        self, done: t.Callable[[], bool], timeout: float, expire: bool = True
    ) -> None:
        """Run the loop until ``done()``; LinkLost when the link fails or is
        interrupted, and when ``timeout`` passes if ``expire`` (the link is
        then dead: the broker stopped answering)."""
        deadline = time.monotonic() + timeout
        timer = self._ioloop.call_later(timeout, self._ioloop.stop)
        self._done = done
        try:
            while not done():
                if self.error is not None or self.interrupted:
                    raise LinkLost(self.error or "closed")
                if time.monotonic() >= deadline:
                    if not expire:
                        return
                    self.error = f"no answer from the broker within {timeout} s"
                    raise LinkLost(self.error)
                self._ioloop.start()
        finally:
            self._done = None
            self._ioloop.remove_timeout(timer)

    def call(self, method: t.Callable[..., t.Any], **kwargs: t.Any) -> t.Any:
        """One synchronous AMQP method: send it, wait for its answer."""
        answers: list[t.Any] = []
        method(callback=lambda frame: self.wake(answers.append(frame)), **kwargs)
        self.wait(lambda: bool(answers), CALL_TIMEOUT)
        return answers[0]

    def receive(self, timeout: float) -> None:
        """Run the loop until messages arrive (in ``deliveries``) or ``timeout``."""
        self.wait(lambda: bool(self.deliveries), timeout, expire=False)

    def consume(self, queue: str, arguments: dict[str, t.Any] | None = None) -> str:
        """Consume ``queue`` into ``deliveries``; the consumer tag."""
        tags: list[str] = []
        self.consume_soon(queue, arguments, lambda tag: self.wake(tags.append(tag)))
        self.wait(lambda: bool(tags), CALL_TIMEOUT)
        return tags[0]

    def consume_soon(
        self,
        queue: str,
        arguments: dict[str, t.Any] | None,
        done: t.Callable[[str], None],
        channel: t.Any = None,
    ) -> str:
        """Ask to consume ``queue`` (on ``channel``, by default the link's
        own); ``done(tag)`` once RabbitMQ confirmed."""
        tag: str = (channel or self.channel).basic_consume(
            queue,
            self._delivered,
            arguments=arguments,
            callback=lambda frame: done(frame.method.consumer_tag),
        )
        return tag

    def open_channels(self, count: int, prefetch: int) -> list[t.Any]:
        """``count`` more channels, each with a ``prefetch`` per consumer.

        RabbitMQ runs each channel apart: methods sent on several channels
        are answered in parallel, one channel's one after another (a stream
        consume takes it some milliseconds). Their deliveries go to
        ``deliveries`` too; a delivery tag is its channel's."""
        opened: list[t.Any] = []
        for _ in range(count):
            self.connection.channel(on_open_callback=self._opened_more(opened))
        self.wait(lambda: len(opened) == count, CALL_TIMEOUT)
        settled: list[object] = []
        for channel in opened:
            channel.basic_qos(
                prefetch_count=prefetch,
                callback=lambda frame: self.wake(settled.append(frame)),
            )
        self.wait(lambda: len(settled) == count, CALL_TIMEOUT)
        return opened

    def _opened_more(self, opened: list[t.Any]) -> t.Callable[[t.Any], None]:
        def opened_one(channel: t.Any) -> None:
            self._watch(channel)
            opened.append(channel)
            self.wake()

        return opened_one

    def enable_confirms(self) -> None:
        self.call(self.channel.confirm_delivery, ack_nack_callback=self._confirmed)
        self.channel.add_on_return_callback(self._returned)

    def publish(self, messages: list[Outgoing]) -> list[int | None | Exception]:
        """Publish ``(exchange, key, data, properties)``, mandatory, and wait
        for their confirms: once per chunk, not per message. A message
        RabbitMQ returned as unroutable counts 0 receivers; one it refused
        (nack) is an Exception."""
        done: list[int | None | Exception] = []
        while len(done) < len(messages):
            end, size, limit = len(done), 0, len(done) + _CHUNK_MESSAGES
            while end < min(limit, len(messages)) and size <= _CHUNK_BYTES:
                size += len(messages[end][2])
                end += 1
            try:
                done += self._publish_chunk(messages[len(done) : end])
            except LinkLost as exc:
                exc.accepted += len(done)
                raise
        return done

    def _publish_chunk(self, chunk: list[Outgoing]) -> list[t.Any]:
        self._batch, self._results = chunk, [_WAITING] * len(chunk)
        self._first, self._low, self._unconfirmed = self._tag + 1, 0, len(chunk)
        try:
            for exchange, key, data, properties in chunk:  # one write: _amqp_stream
                self.channel.basic_publish(exchange, key, data, properties, True)
                self._tag += 1
            self.wait(lambda: not self._unconfirmed, CONFIRM_TIMEOUT)
        except Exception as exc:
            self.error = self.error or str(exc) or type(exc).__name__
            due = [n for n, result in enumerate(self._results) if result in _DUE]
            raise LinkLost(self.error, due[0] if due else len(chunk)) from exc
        return self._results

    def _confirmed(self, frame: t.Any) -> None:
        method = frame.method
        value = None
        if not isinstance(method, pika.spec.Basic.Ack):
            value = RuntimeError("RabbitMQ refused the message (basic.nack)")
        last = method.delivery_tag - self._first
        for n in range(self._low if method.multiple else last, last + 1):
            result = self._results[n] if 0 <= n < len(self._results) else None
            if result in _DUE:
                self._results[n] = 0 if result is _RETURNED and value is None else value
                self._unconfirmed -= 1
        while self._low < len(self._results) and self._results[self._low] not in _DUE:
            self._low += 1
        self.wake()

    def _returned(self, _ch: t.Any, method: t.Any, _props: t.Any, body: bytes) -> None:
        # RabbitMQ returns an unroutable mandatory message before confirming
        # it, in publishing order: the first unconfirmed one that matches.
        for n in range(self._low, len(self._results)):
            returned = (method.exchange, method.routing_key, body)
            if self._results[n] is _WAITING and self._batch[n][:3] == returned:
                self._results[n] = _RETURNED
                return

    def consume_replies(self) -> str:
        """Receive RabbitMQ's direct replies (``amq.rabbitmq.reply-to``)
        into ``deliveries``, without acks; the consumer tag."""
        tags: list[str] = []
        self.channel.basic_consume(
            "amq.rabbitmq.reply-to",
            self._delivered,
            auto_ack=True,
            callback=lambda frame: self.wake(tags.append(frame.method.consumer_tag)),
        )
        self.wait(lambda: bool(tags), CALL_TIMEOUT)
        return tags[0]

    def send(self, exchange: str, key: str, data: bytes, properties: t.Any) -> None:
        """Publish without waiting (nor mandatory): a reply. Counted, so the
        confirms of later batches still match on a confirming channel."""
        self.channel.basic_publish(exchange, key, data, properties)
        self._tag += 1

    def _delivered(self, _ch: t.Any, method: t.Any, props: t.Any, body: bytes) -> None:
        headers = props.headers
        if props.reply_to:  # a request: where its answer goes, with its headers
            headers = {**(headers or {}), "reply-to": props.reply_to}
        self.deliveries.append(
            (
                method.delivery_tag,
                method.routing_key,
                body,
                method.consumer_tag,
                headers,
            )
        )
        if len(self.deliveries) == 1:
            self.wake()

    # -- state changes -----------------------------------------------------------

    def _opened(self, channel: t.Any) -> None:
        self._watch(channel)
        self.channel = channel
        self.wake()

    def _watch(self, channel: t.Any) -> None:
        """A channel closed, or a consumer of it cancelled by the broker,
        fails the link."""
        channel.add_on_close_callback(self._failed)
        channel.add_on_cancel_callback(
            lambda _frame: self._failed(None, "the broker cancelled the consumer")
        )

    def close_channel(self, channel: t.Any) -> None:
        """Close one of :meth:`open_channels`' channels without failing the
        link: its consumers end with it, and what reaches them after is
        dropped by pika (a channel that is closing rejects nothing)."""
        self._retiring.add(channel)
        channel.close()

    def _failed(self, _source: object, reason: object) -> None:
        if _source in self._retiring:
            self._retiring.discard(_source)
            if isinstance(reason, pika.exceptions.ChannelClosedByClient):
                return  # closed by close_channel
        if self.error is None:
            self.code = getattr(reason, "reply_code", None)
            text = str(reason) or repr(reason)
            self.error = text.replace(self._password, "***") if self._password else text
        self._ioloop.stop()

    def wake(self, _: object = None) -> None:
        """Let a wait return once its condition holds."""
        if self._done is not None and self._done():
            self._ioloop.stop()

    def later(self, delay: float, callback: t.Callable[[], None]) -> None:
        """Run ``callback`` in the link's driver after ``delay`` s (while it
        drives the loop)."""
        self._ioloop.call_later(delay, callback)

    # -- from any greenlet or thread -----------------------------------------------

    def soon(self, callback: t.Callable[[], None]) -> None:
        """Run ``callback`` in the link's driver, on its next turn of the loop."""
        self._ioloop.add_callback_threadsafe(callback)

    def interrupt(self) -> None:
        """Make the driver's current or next wait fail (the driver closes it)."""
        self.interrupted = True
        try:
            self._ioloop.add_callback_threadsafe(self._ioloop.stop)
        except Exception:  # its loop is closed already
            pass

    # -- the end (the driver) -------------------------------------------------------

    def close(self) -> None:
        """Say goodbye to the broker briefly, then free the loop."""
        try:
            if self.error is None and self.connection.is_open:
                self.connection.close()
                self.interrupted = False
                self.wait(lambda: self.connection.is_closed, CLOSE_TIMEOUT)
        except Exception:  # it is going away either way
            pass
        self.abandon()

    def abandon(self) -> None:
        """Free the loop and socket without a word to the broker (gone, or silent)."""
        try:
            self._services.abort()
            self._ioloop.close()
        except Exception:
            pass
