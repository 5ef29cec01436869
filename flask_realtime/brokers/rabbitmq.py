"""RabbitMQ: one exchange, one queue per node, one binding per topic.

Every node (process) declares the exchange (``realtime``, a durable topic
exchange, by default) and a queue of its own, and binds that queue once per
topic it wants. A message goes to the exchange with its topic as the routing
key, so RabbitMQ hands it only to the nodes that asked for that topic. Topic
and direct exchanges both route that way; fanout (every message to every
node) and headers (an imitation of direct) are refused at start-up.

pika is not thread-safe, and two greenlets driving one connection at once
corrupt it. So each of the two connections has one driver at a time:

- the *consumer* connection belongs to the reader (a greenlet, or a thread
  without gevent). It consumes, acknowledges, binds and unbinds; other
  greenlets hand it their subscriptions and wait for its answer.
- the *publisher* connection is driven by one publisher at a time, the
  leader. Publishing is a group commit: callers queue their messages, the
  leader sends everything queued so far in one write and waits for the
  broker's confirms, and the next leader takes what queued meanwhile; so
  concurrent publishers share round trips.

A confirm is what makes "accepted when publish returns" true: RabbitMQ sends
it once the message sits in every queue it routes to, so anything published
later, over any connection, queues behind it. Without confirms a message can
still be in a socket buffer, or in the broker's backlog for this connection,
when ``publish`` returns, and a later message from another process can
overtake it. The price is a round trip per batch.

Across a lost connection delivery is at least once: a message whose confirm
the failure took away is sent again from the outage buffer.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import typing as t
import weakref
from collections import deque
from urllib.parse import quote, urlsplit

import pika
import pika.channel
import pika.connection
import pika.exceptions
import pika.frame
import pika.spec
from pika.adapters.select_connection import IOLoop, SelectConnection

from .._runtime import event, gevent_active, real_lock, sleep, spawn
from ..config import ConfigError, Settings
from ._support import Backoff, OutageBuffer, PendingReplies, redact
from .base import BrokerUnavailable, MessageCallback

logger = logging.getLogger("flask_realtime")

_CONNECT_TIMEOUT = 2.0  # TCP (and TLS) and the AMQP handshake, all told
_CALL_TIMEOUT = 5.0  # a declare or a bind
_CONFIRM_TIMEOUT = 1.5  # a publish never waits longer on a silent broker
_WAIT_TIMEOUT = 10.0  # subscribe() waits for the reader at most this long
_CLOSE_TIMEOUT = 2.0
_IDLE = 1.0  # the reader looks up at least this often
_FLUSH_CHUNK = 256  # buffered messages sent per confirmed batch on reconnect
# One batch stays well inside the confirm deadline; the rest goes next.
_BATCH_MESSAGES = 500
_BATCH_BYTES = 1 << 20

# What a broken or silent connection raises, from pika or from the socket.
_FAILURES = (pika.exceptions.AMQPError, OSError)

# What to do with a message when the publisher connection is down.
_BUFFER, _REFUSE = "buffer", "refuse"
_STALE_AFTER = 0.1  # an idle publisher connection is checked before use


def routing_key(topic: str) -> str:
    """The routing key of ``topic``: one literal word, never a pattern.

    A topic exchange splits keys on '.', and '*' and '#' are wildcards in
    binding keys; escaping them (and '%', the escape itself) turns every
    topic into one word that matches only itself, on topic and direct
    exchanges alike. A key past AMQP's 255 bytes becomes a hash, marked by
    '%H', which the escaping never produces.
    """
    key = (
        topic.replace("%", "%25")
        .replace(".", "%2E")
        .replace("*", "%2A")
        .replace("#", "%23")
    )
    if len(key) > 63 and len(key.encode("utf-8", "surrogatepass")) > 255:
        digest = hashlib.sha256(topic.encode("utf-8", "surrogatepass"))
        key = "%H" + digest.hexdigest()
    return key


class _Down(Exception):
    """A connection or its channel failed, or the broker stopped answering."""


def _nothing() -> None:
    pass


class _Outgoing:
    """One message on its way to the broker, and what became of it."""

    __slots__ = (
        "topic",
        "key",
        "data",
        "properties",
        "mandatory",
        "when_down",
        "done",
        "returned",
        "error",
        "wake",
        "lead",
    )

    def __init__(
        self,
        topic: str,
        data: bytes,
        properties: pika.BasicProperties,
        when_down: str = _BUFFER,
        mandatory: bool = False,
    ) -> None:
        self.topic = topic
        self.key = routing_key(topic)
        self.data = data
        self.properties = properties
        self.mandatory = mandatory
        self.when_down = when_down
        self.done = False
        self.returned = False  # mandatory, and no queue was bound to its key
        self.error: BaseException | None = None
        self.wake: t.Any = None  # set while another publisher leads
        self.lead = False  # made the next leader


class _Connection(SelectConnection):
    """pika's SelectConnection, writing a batch of messages in one piece.

    pika hands the transport every frame on its own (three per message:
    method, header, body) and the transport sends each with its own
    ``send()``. While ``collect`` is on, the frames are gathered and written
    as one buffer, one system call for a whole batch. Should pika rename the
    hook, nothing is gathered and it simply writes as before.
    """

    _gathered: list[bytes] | None = None

    def collect(self) -> None:
        self._gathered = []

    def write_collected(self) -> None:
        gathered, self._gathered = self._gathered, None
        if gathered:
            super()._output_marshaled_frames([b"".join(gathered)])

    def _output_marshaled_frames(self, marshaled_frames: t.Sequence[bytes]) -> None:
        if self._gathered is None:
            super()._output_marshaled_frames(marshaled_frames)
        else:
            self._gathered.extend(marshaled_frames)


class _Link:
    """One AMQP connection and its channel, driven by one party at a time.

    A thin synchronous layer over pika's SelectConnection with a private
    IOLoop: ``wait`` pumps the loop until a condition holds or a deadline
    passes, so no call hangs on a broker that stopped answering (pika's
    BlockingConnection waits without deadlines). Under gevent the loop's
    poll is gevent's, so waiting yields to other greenlets.
    """

    def __init__(self, params: pika.connection.Parameters) -> None:
        self.error: object = None
        self.deliveries: deque[tuple[int, str, pika.BasicProperties, bytes]] = deque()
        self._published = 0
        self.used = time.monotonic()
        self._unconfirmed: dict[int, _Outgoing] = {}
        self._mandatory: dict[str, _Outgoing] = {}
        self.ioloop = IOLoop()
        self.ioloop.activate_poller()
        opened: list[t.Any] = []
        try:
            self.connection = _Connection(
                params,
                on_open_callback=opened.append,
                on_open_error_callback=self._on_failure,
                on_close_callback=self._on_failure,
                custom_ioloop=self.ioloop,
            )
            self.wait(lambda: bool(opened), _CONNECT_TIMEOUT)
            self.connection.channel(on_open_callback=opened.append)
            self.wait(lambda: len(opened) > 1, _CALL_TIMEOUT)
        except BaseException:
            self.abandon()
            raise
        self.channel: pika.channel.Channel = opened[1]
        self.channel.add_on_close_callback(self._on_failure)
        self.channel.add_on_cancel_callback(self._on_cancel)

    def _on_failure(self, _source: object, reason: object) -> None:
        if self.error is None:
            self.error = reason

    def _on_cancel(self, _frame: object) -> None:
        # The broker cancels a consumer whose queue was deleted under it.
        self._on_failure(None, "the broker cancelled the consumer (queue deleted?)")

    def wait(self, done: t.Callable[[], bool], timeout: float) -> None:
        """Pump the connection until ``done()``; _Down when it fails or
        ``timeout`` passes (which also marks the connection unusable)."""
        deadline = time.monotonic() + timeout
        timer = self.ioloop.call_later(timeout, _nothing)
        try:
            while not done():
                if self.error is not None:
                    raise _Down(self.error)
                if time.monotonic() >= deadline:
                    self.error = f"no answer from the broker within {timeout} s"
                    raise _Down(self.error)
                self.ioloop.poll()
                self.ioloop.process_timeouts()
        finally:
            self.ioloop.remove_timeout(timer)

    def pump(self, timeout: float) -> None:
        """One round of I/O: returns on traffic, on ``interrupt`` or after
        ``timeout``."""
        timer = self.ioloop.call_later(timeout, _nothing)
        try:
            self.ioloop.poll()
            self.ioloop.process_timeouts()
        finally:
            self.ioloop.remove_timeout(timer)

    def stale(self) -> bool:
        """After a pause, take in what the broker said meanwhile: True when
        it closed the connection."""
        if self.error is None and time.monotonic() - self.used > _STALE_AFTER:
            self.pump(0)
        self.used = time.monotonic()
        if self.error is not None:
            self.abandon()
            return True
        return False

    def interrupt(self) -> None:
        """Make a ``pump`` running in another greenlet or thread return."""
        try:
            self.ioloop.add_callback_threadsafe(_nothing)
        except Exception:  # closed meanwhile: nobody to wake
            pass

    def call(self, method: t.Callable[..., t.Any], **kwargs: t.Any) -> t.Any:
        """A synchronous AMQP method: send it and wait for its answer."""
        answers: list[t.Any] = []
        method(callback=answers.append, **kwargs)
        self.wait(lambda: bool(answers), _CALL_TIMEOUT)
        return answers[0]

    def on_delivery(
        self,
        _channel: object,
        method: pika.spec.Basic.Deliver,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        # Kept for the reader to hand out after the I/O round, outside
        # pika's stack, so on_message may call back into the broker.
        self.deliveries.append(
            (method.delivery_tag, method.routing_key, properties, body)
        )

    def enable_confirms(self) -> None:
        self.call(self.channel.confirm_delivery, ack_nack_callback=self._on_confirm)
        self.channel.add_on_return_callback(self._on_return)

    def publish(self, exchange: str, items: list[_Outgoing]) -> None:
        """Send ``items`` in one go and wait for the broker's confirm of each."""
        channel = self.channel
        self.connection.collect()
        try:
            for item in items:
                channel.basic_publish(
                    exchange, item.key, item.data, item.properties, item.mandatory
                )
                self._published += 1
                self._unconfirmed[self._published] = item
                if item.mandatory:
                    self._mandatory[item.properties.reply_to] = item
        finally:
            self.connection.write_collected()
        self.wait(lambda: not self._unconfirmed, _CONFIRM_TIMEOUT)

    def _on_confirm(self, frame: pika.frame.Method[t.Any]) -> None:
        method = frame.method
        accepted = isinstance(method, pika.spec.Basic.Ack)
        last = method.delivery_tag
        if method.multiple:
            tags = [tag for tag in self._unconfirmed if tag <= last]
        else:
            tags = [last]
        for tag in tags:
            item = self._unconfirmed.pop(tag, None)
            if item is None:
                continue
            if item.mandatory:
                self._mandatory.pop(item.properties.reply_to, None)
            if not accepted:
                item.error = BrokerUnavailable(
                    "RabbitMQ refused the message (basic.nack)"
                )
            item.done = True

    def _on_return(
        self,
        _channel: object,
        _method: object,
        properties: pika.BasicProperties,
        _body: bytes,
    ) -> None:
        # RabbitMQ returns an unroutable mandatory message before its ack.
        item = self._mandatory.get(properties.reply_to or "")
        if item is not None:
            item.returned = True

    def close(self) -> None:
        """Say goodbye to the broker (briefly), then free the resources."""
        try:
            if self.connection.is_open:
                self.connection.close()
                deadline = time.monotonic() + _CLOSE_TIMEOUT
                while not self.connection.is_closed and time.monotonic() < deadline:
                    self.pump(0.1)
        except Exception:
            pass
        self.abandon()

    def abandon(self) -> None:
        """Free the loop without a word to the broker (it is gone or silent)."""
        try:
            self.ioloop.close()
        except Exception:
            pass


class _Process:
    """Everything that belongs to one process: after a fork the child starts
    a new one and leaves the parent's connections alone."""

    def __init__(self, topics: dict[str, str], buffer: OutageBuffer) -> None:
        self.pid = os.getpid()
        # Guards the fields below; never held across I/O, so an OS lock is
        # safe under gevent too.
        self.lock = real_lock()
        # -- subscriptions: routing key -> topic, what the node wants
        self.topics = topics
        self.replies = PendingReplies()
        self.inbox_key = routing_key(self.replies.inbox)
        self.wants_consumer = bool(topics)
        # idle (never needed), connecting (first attempt), up, down
        self.consumer_state = "connecting" if topics else "idle"
        self.dirty = bool(topics)  # topics changed since the reader bound them
        self.waiters: list[t.Any] = []  # subscribe() calls waiting for the reader
        # -- publishing
        self.pending: list[_Outgoing] = []
        self.leading = False  # a publisher is sending a batch
        self.pub_down = False
        self.buffer = buffer  # published while down, oldest first
        self.inflight: list[tuple[str, bytes]] = []  # taken from the buffer
        # The leader and the reader's flush take turns on the publisher
        # connection; the holder does I/O, so under gevent the lock is gevent's.
        self.pub_lock = threading.Lock()
        self.pub_link: _Link | None = None
        # -- the reader, and what only it touches
        self.worker: t.Any = None
        self.worker_ident: int | None = None
        self.wake = event()
        self.consumer: _Link | None = None
        self.bound: set[str] = set()
        # Bound on a queue that outlived its connection; unbound if unwanted.
        self.leftover: set[str] = set()
        self.queue = ""
        self.failing: set[str] = set()  # roles whose outage was logged


# Guards the creation of a process's state; replaced in a forked child,
# where another thread may have held it at the fork.
_state_lock = real_lock()
_brokers: weakref.WeakSet[RabbitMQBroker] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _state_lock
    _state_lock = real_lock()
    for broker in list(_brokers):
        broker._stop_inherited_reader()


os.register_at_fork(after_in_child=_after_fork_in_child)


class RabbitMQBroker:
    """Topics over a RabbitMQ exchange; see the module docstring."""

    kind = "rabbitmq"
    connected = True  # interim, until the new brokers land

    def __init__(self, settings: Settings, on_message: MessageCallback) -> None:
        options = settings.rabbitmq
        self._exchange = options["exchange"]
        self._exchange_type = options["exchange_type"]
        if self._exchange_type not in ("topic", "direct"):
            # fanout copies every message to every queue, so a node would get
            # every topic and request() could never learn that nobody
            # listens; headers could only imitate direct, more slowly.
            raise ConfigError(
                "REALTIME_RABBITMQ['exchange_type'] must be 'topic' or 'direct'"
                f" (got {self._exchange_type!r}): topics are routed by exact"
                " routing key, which a fanout exchange ignores and a headers"
                " exchange only imitates"
            )
        if not self._exchange:
            raise ConfigError(
                "REALTIME_RABBITMQ['exchange'] must name an exchange: the"
                " default exchange cannot route to bound queues"
            )
        self._prefetch = options["prefetch_count"]
        if not 0 <= self._prefetch <= 65535:
            raise ConfigError(
                "REALTIME_RABBITMQ['prefetch_count'] must be 0 (no limit)"
                f" to 65535, got {self._prefetch!r}"
            )
        self._ack_every = max(1, self._prefetch // 2) if self._prefetch else 100
        self._queue_prefix = options["queue_prefix"]
        if self._queue_prefix.startswith("amq."):
            raise ConfigError(
                "REALTIME_RABBITMQ['queue_prefix'] must not start with 'amq.'"
                " (RabbitMQ reserves those names)"
            )
        self._durable = options["queue_durable"]
        self._exclusive = options["queue_exclusive"]
        self._auto_delete = options["queue_auto_delete"]
        # A queue that neither the connection nor its consumer takes with
        # it keeps its name across reconnects, so nothing sent meanwhile is
        # lost; the others get a fresh name each time, since the broker may
        # not have noticed yet that the old connection is gone.
        self._queue_outlives_connection = not (self._exclusive or self._auto_delete)
        delivery_mode = 2 if options["persistent_messages"] else 1
        self._delivery_mode = delivery_mode
        self._plain = pika.BasicProperties(delivery_mode=delivery_mode)

        self._url = settings.broker_url
        if self._url is not None:
            if urlsplit(self._url).scheme not in ("amqp", "amqps"):
                raise ConfigError(
                    "REALTIME_BROKER_URL must be an amqp:// or amqps:// URL for"
                    f" RabbitMQ, got {redact(self._url)!r}"
                )
            self._password = urlsplit(self._url).password or ""
            where = self._url
        else:
            self._password = options["password"]
            where = (
                f"amqp://{quote(options['user'], safe='')}:"
                f"{quote(options['password'], safe='')}@{options['host']}:"
                f"{options['port']}/{quote(options['vhost'], safe='')}"
            )
        self._options = options
        self._where = redact(where)
        self._buffer_size = settings.broker_buffer
        self._on_message = on_message
        self._closed = False
        self._proc: _Process | None = None
        _brokers.add(self)

    # -- the interface ------------------------------------------------------

    def publish(self, topic: str, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        self._send(self._process(), _Outgoing(topic, data, self._plain))

    def request(self, topic: str, data: bytes, timeout: float) -> bytes | None:
        p = self._process()
        if p.worker_ident == threading.get_ident():
            # The answer would arrive through this very reader, which would
            # be busy waiting for it.
            raise RuntimeError("request() cannot be called from on_message")
        with p.lock:
            down = p.pub_down or bool(p.inflight) or bool(p.buffer)
        if down:
            raise BrokerUnavailable(self._unreachable())
        if p.consumer_state != "up" or p.inbox_key not in p.topics:
            # Replies come to this process's inbox, through the reader.
            self._subscribe(p, [p.replies.inbox])
        if p.consumer_state != "up":
            raise BrokerUnavailable(self._unreachable())
        reply_to, slot = p.replies.new()
        properties = pika.BasicProperties(
            delivery_mode=self._delivery_mode, reply_to=reply_to
        )
        # mandatory: with no queue bound to the key, RabbitMQ returns the
        # message (before confirming it), which means nobody can answer.
        item = _Outgoing(topic, data, properties, _REFUSE, mandatory=True)
        try:
            self._send(p, item)
        except BaseException:
            p.replies.forget(reply_to)
            raise
        if item.returned:
            p.replies.forget(reply_to)
            return None
        return p.replies.wait(reply_to, slot, timeout)

    def reply(self, reply_to: str, data: bytes) -> None:
        if not reply_to.startswith("i:") or "#" not in reply_to:
            return
        try:
            # Buffered like a publish while the broker is down: the
            # requester may still be waiting when it comes back.
            self._send(self._process(), self._outgoing(reply_to, data))
        except BrokerUnavailable:
            logger.debug("flask_realtime: reply dropped: %s", self._unreachable())

    def subscribe(self, *topics: str) -> None:
        self._subscribe(self._process(), topics)

    def unsubscribe(self, *topics: str) -> None:
        p = self._process()
        with p.lock:
            if not p.wants_consumer:
                return
            for topic in topics:
                key = routing_key(topic)
                if key != p.inbox_key:
                    p.topics.pop(key, None)
        self._sync(p)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        p = self._proc
        if p is None or p.pid != os.getpid():
            return  # a forked child never touches the parent's connections
        self._nudge(p)
        worker = p.worker
        if worker not in (None, True) and p.worker_ident != threading.get_ident():
            worker.join(_CLOSE_TIMEOUT * 2)
        self._release_waiters(p)
        if p.pub_lock.acquire(timeout=_CLOSE_TIMEOUT):
            try:
                link, p.pub_link = p.pub_link, None
                if link is not None:
                    link.close()
            finally:
                p.pub_lock.release()
        lost = len(p.buffer) + len(p.inflight)
        if lost:
            logger.warning(
                "flask_realtime: %d messages for the rabbitmq broker at %s were"
                " never sent (closed while it was unreachable)",
                lost,
                self._where,
            )

    # -- per-process state --------------------------------------------------

    def _process(self) -> _Process:
        p = self._proc
        if p is not None and p.pid == os.getpid():
            return p
        with _state_lock:
            p = self._proc
            if p is None or p.pid != os.getpid():
                # A forked child keeps what the node subscribed to (its hub
                # came along) and drops the parent's connections unclosed.
                inherited = {}
                if p is not None:
                    inherited = {k: v for k, v in p.topics.items() if k != p.inbox_key}
                buffer = OutageBuffer(self._buffer_size, self.kind, self._where)
                p = _Process(inherited, buffer)
                self._proc = p
        return p

    def _stop_inherited_reader(self) -> None:
        """In a forked child, before anything else runs: a reader thread
        stays behind in the parent, but a reader greenlet comes along, and
        it must never read from the sockets it shares with the parent."""
        p = self._proc
        worker = None if p is None else p.worker
        if worker not in (None, True) and hasattr(worker, "kill"):
            try:
                worker.kill(block=False)  # raised in it before it polls again
            except Exception:
                pass

    def _alive(self, p: _Process) -> bool:
        return not self._closed and self._proc is p and p.pid == os.getpid()

    def _unreachable(self) -> str:
        return f"the rabbitmq broker at {self._where} is unreachable"

    def _parameters(self, role: str) -> pika.connection.Parameters:
        if self._url is not None:
            params: pika.connection.Parameters = pika.URLParameters(self._url)
        else:
            o = self._options
            params = pika.ConnectionParameters(
                host=o["host"],
                port=o["port"],
                virtual_host=o["vhost"],
                credentials=pika.PlainCredentials(o["user"], o["password"]),
            )
        # Retries and their pace are ours (Backoff); a connection attempt
        # must fail fast so that publish never hangs.
        params.connection_attempts = 1
        params.retry_delay = 0
        params.socket_timeout = _CONNECT_TIMEOUT
        params.stack_timeout = _CONNECT_TIMEOUT
        if role == "publisher":
            # Nobody pumps an idle publisher connection, so it could not
            # answer heartbeats and the broker would drop it; a dead one is
            # found by the next publish instead (socket error or no confirm).
            params.heartbeat = 0
        params.client_properties = {
            "connection_name": f"flask_realtime {role} {socket.gethostname()}"
            f" pid {os.getpid()}"
        }
        return params

    def _report_failure(self, p: _Process, role: str, error: object) -> None:
        reason = str(error) or type(error).__name__
        if self._password:
            reason = reason.replace(self._password, "***")
        if role in p.failing:
            logger.debug(
                "flask_realtime: rabbitmq broker at %s (%s): %s",
                self._where,
                role,
                reason,
            )
            return
        p.failing.add(role)
        logger.warning(
            "flask_realtime: cannot use the rabbitmq broker at %s (%s connection):"
            " %s; retrying",
            self._where,
            role,
            reason,
        )

    def _report_connected(self, p: _Process, role: str) -> None:
        again = role in p.failing
        p.failing.discard(role)
        logger.info(
            "flask_realtime: %s to the rabbitmq broker at %s (%s connection)",
            "reconnected" if again else "connected",
            self._where,
            role,
        )

    # -- publishing ---------------------------------------------------------

    def _send(self, p: _Process, item: _Outgoing) -> None:
        """Hand ``item`` to the broker and return once it confirmed it (or,
        while the broker is down, once the outage buffer holds it)."""
        if self._closed:
            raise BrokerUnavailable(f"the rabbitmq broker at {self._where} is closed")
        with p.lock:
            if p.pub_down or p.inflight or p.buffer:
                # Behind what already waits, so order holds after reconnect.
                self._hold(p, item)
                return
            p.pending.append(item)
            leader = not p.leading
            if leader:
                p.leading = True
            else:
                item.wake = event()
        if not leader:
            self._follow(p, item)
        if not item.done:
            self._lead(p)
        if item.error is not None:
            raise item.error

    def _follow(self, p: _Process, item: _Outgoing) -> None:
        """Wait while the leader sends ``item``, or until it makes us the
        next leader. Followers wait on their own event, not on a lock, so a
        leader that publishes again at once cannot starve them."""
        try:
            item.wake.wait()
        except BaseException:  # killed while waiting: pass the lead on
            with p.lock:
                wake = None
                if item.lead and not item.done:
                    others = [i for i in p.pending if i is not item]
                    if others:
                        others[0].lead = True
                        wake = others[0].wake
                    else:
                        p.leading = False
                    if item in p.pending:
                        p.pending.remove(item)
            if wake is not None:
                wake.set()
            raise

    def _lead(self, p: _Process) -> None:
        """Send everything queued in one batch, then wake its publishers and
        hand the lead to the first publisher that queued meanwhile."""
        batch: list[_Outgoing] = []
        if gevent_active():
            # Let greenlets that are ready to run (those the last batch woke,
            # typically) queue first, so they ride in this batch, not the
            # next. (A thread's sleep(0) gives the CPU away: not there.)
            sleep(0)
        try:
            with p.pub_lock:  # shared with the reader's flush after an outage
                with p.lock:
                    batch = _take_batch(p.pending)
                self._publish_batch(p, batch)
        finally:
            with p.lock:
                wake = None
                if p.pending:
                    p.pending[0].lead = True
                    wake = p.pending[0].wake
                else:
                    p.leading = False
            for item in batch:
                if item.wake is not None:
                    item.wake.set()
            if wake is not None:
                wake.set()

    def _outgoing(self, address: str, data: bytes) -> _Outgoing:
        """A publish to a topic, or a reply to ``i:<inbox>#<n>``: the form
        both take in the outage buffer."""
        if address.startswith("i:") and "#" in address:
            properties = pika.BasicProperties(
                delivery_mode=self._delivery_mode, correlation_id=address
            )
            item = _Outgoing(address, data, properties)
            item.key = routing_key(address.partition("#")[0])  # the inbox
            return item
        return _Outgoing(address, data, self._plain)

    def _hold(self, p: _Process, item: _Outgoing) -> None:
        """What becomes of a message while the publisher is down (p.lock held)."""
        item.done = True
        if item.when_down == _BUFFER:
            p.buffer.add(item.topic, item.data)
        elif item.when_down == _REFUSE:
            raise BrokerUnavailable(self._unreachable())

    def _publish_batch(self, p: _Process, batch: list[_Outgoing]) -> None:
        """Send what publishers queued (p.pub_lock held)."""
        if p.pub_down:  # lost by another publisher since these were queued
            self._publisher_lost(p, batch, None)
            return
        link = p.pub_link
        try:
            if link is not None and link.stale():
                # Closed while idle (a server restart, an operator). Into
                # the buffer rather than a new connection at once: the
                # reader may have to re-subscribe first, for the node to
                # get its own messages.
                self._publisher_lost(p, batch, link.error)
                return
            if link is None:  # first use in this process
                link = p.pub_link = self._open_publisher(p)
            link.publish(self._exchange, batch)
        except Exception as exc:  # pika's, the socket's, or a deadline
            self._publisher_lost(p, [i for i in batch if not i.done], exc)
        finally:
            for item in batch:  # interrupted (GreenletExit): nobody may hang
                if not item.done:
                    item.error = BrokerUnavailable("publishing was interrupted")
                    item.done = True

    def _open_publisher(self, p: _Process) -> _Link:
        link = _Link(self._parameters("publisher"))
        try:
            self._declare_exchange(link)
            link.enable_confirms()
        except BaseException:
            link.abandon()
            raise
        self._report_connected(p, "publisher")
        return link

    def _declare_exchange(self, link: _Link) -> None:
        link.call(
            link.channel.exchange_declare,
            exchange=self._exchange,
            exchange_type=self._exchange_type,
            durable=True,
            # amq.* exchanges exist on every vhost and may not be declared.
            passive=self._exchange.startswith("amq."),
        )

    def _publisher_lost(
        self, p: _Process, unsent: list[_Outgoing], error: object
    ) -> None:
        """Buffer ``unsent`` (p.pub_lock held) and leave reconnecting to the
        reader, which flushes the buffer once it has re-subscribed."""
        link, p.pub_link = p.pub_link, None
        if link is not None:
            link.abandon()
        with p.lock:
            p.pub_down = True
            for item in unsent:
                try:
                    self._hold(p, item)
                except BrokerUnavailable as exc:
                    item.error = exc
        if error is not None:
            self._report_failure(p, "publisher", error)
        self._start_worker(p)
        self._nudge(p)

    def _restore_publisher(self, p: _Process) -> None:
        """Reconnect the publisher and send what the outage buffer holds, in
        order; publishers keep buffering until it is empty."""
        with p.pub_lock:
            if p.pub_link is None:
                p.pub_link = self._open_publisher(p)
            link = p.pub_link
            while True:
                with p.lock:
                    if not p.inflight:
                        p.inflight = _take(p.buffer, _FLUSH_CHUNK)
                    if not p.inflight:
                        p.pub_down = False
                        return
                    chunk = [self._outgoing(*item) for item in p.inflight]
                try:
                    link.publish(self._exchange, chunk)
                except BaseException:
                    p.pub_link = None
                    link.abandon()
                    raise
                refused = sum(1 for item in chunk if item.error is not None)
                if refused:
                    logger.warning(
                        "flask_realtime: the rabbitmq broker refused %d buffered"
                        " messages",
                        refused,
                    )
                with p.lock:
                    p.inflight = []

    # -- subscriptions ------------------------------------------------------

    def _subscribe(self, p: _Process, topics: t.Iterable[str]) -> None:
        with p.lock:
            for topic in topics:
                p.topics[routing_key(topic)] = topic
            if not p.wants_consumer:
                p.wants_consumer = True
                p.consumer_state = "connecting"
        self._sync(p)

    def _sync(self, p: _Process) -> None:
        """Have the reader bind and unbind until the broker matches p.topics;
        wait for it unless the broker is known to be down."""
        if self._closed:
            return
        if p.worker_ident == threading.get_ident():
            # on_message subscribing: the reader is us, between deliveries.
            link = p.consumer
            if link is not None:
                try:
                    self._reconcile(p, link)
                except (_Down, *_FAILURES):
                    pass  # the reader's loop sees the failure next
            return
        waiter = None
        with p.lock:
            p.dirty = True
            if p.consumer_state != "down":
                waiter = event()
                p.waiters.append(waiter)
        self._start_worker(p)
        self._nudge(p)
        if waiter is not None:
            waiter.wait(_WAIT_TIMEOUT)

    def _reconcile(self, p: _Process, link: _Link) -> None:
        """Bind what is wanted and unbind what is not (the reader only)."""
        with p.lock:
            waiters, p.waiters = p.waiters, []
            wanted = set(p.topics)
            p.dirty = False
        try:
            channel = link.channel
            stale = [key for key in p.bound | p.leftover if key not in wanted]
            fresh = [key for key in wanted if key not in p.bound]
            if stale:
                done: list[t.Any] = []
                for key in stale:
                    channel.queue_unbind(
                        p.queue, self._exchange, key, callback=done.append
                    )
                link.wait(lambda: len(done) == len(stale), _CALL_TIMEOUT)
                p.bound.difference_update(stale)
            p.leftover.clear()
            if fresh:
                # Without a callback pika sends binds nowait, so they go in
                # one stream; the last one's answer comes after all of them.
                for key in fresh[:-1]:
                    channel.queue_bind(p.queue, self._exchange, key)
                link.call(
                    channel.queue_bind,
                    queue=p.queue,
                    exchange=self._exchange,
                    routing_key=fresh[-1],
                )
                p.bound.update(fresh)
            with p.lock:
                p.consumer_state = "up"
        finally:
            for waiter in waiters:
                waiter.set()

    # -- the reader ---------------------------------------------------------

    def _start_worker(self, p: _Process) -> None:
        with p.lock:
            if p.worker is not None or not self._alive(p):
                return
            p.worker = True  # claimed; the handle replaces it below
        p.worker = spawn(self._run, p)

    def _nudge(self, p: _Process) -> None:
        p.wake.set()
        link = p.consumer
        if link is not None:
            link.interrupt()

    def _release_waiters(self, p: _Process) -> None:
        with p.lock:
            waiters, p.waiters = p.waiters, []
        for waiter in waiters:
            waiter.set()

    def _run(self, p: _Process) -> None:
        """The reader: keeps the consumer connection, hands deliveries to
        on_message, and restores the publisher after an outage."""
        p.worker_ident = threading.get_ident()
        consumer_backoff, publisher_backoff = Backoff(), Backoff()
        consumer_at = publisher_at = 0.0  # earliest next attempt
        try:
            while self._alive(p):
                p.wake.clear()
                now = time.monotonic()
                if p.wants_consumer and p.consumer is None and now >= consumer_at:
                    try:
                        self._open_consumer(p)
                        consumer_backoff.reset()
                    except (_Down, *_FAILURES) as exc:
                        self._consumer_lost(p, exc)
                        consumer_at = time.monotonic() + consumer_backoff.next_delay()
                now = time.monotonic()
                if p.pub_down and now >= publisher_at and self._resubscribed(p):
                    try:
                        self._restore_publisher(p)
                        publisher_backoff.reset()
                    except (_Down, *_FAILURES) as exc:
                        self._report_failure(p, "publisher", exc)
                        publisher_at = time.monotonic() + publisher_backoff.next_delay()
                due = [_IDLE]
                if p.wants_consumer and p.consumer is None:
                    due.append(consumer_at - now)
                elif p.pub_down:
                    due.append(publisher_at - now)
                timeout = max(0.0, min(due))
                link = p.consumer
                if link is None:
                    p.wake.wait(timeout)
                    continue
                try:
                    self._serve(p, link, timeout)
                except (_Down, *_FAILURES) as exc:
                    self._consumer_lost(p, exc)
                    consumer_at = time.monotonic() + consumer_backoff.next_delay()
        finally:
            self._finish(p)

    def _serve(self, p: _Process, link: _Link, timeout: float) -> None:
        """One round of the reader: bind what changed, read, deliver."""
        if p.dirty:
            self._reconcile(p, link)
        link.pump(timeout)
        self._dispatch(p, link)
        if link.error is not None:
            raise _Down(link.error)

    def _resubscribed(self, p: _Process) -> bool:
        """Whether the outage buffer may go out: the node's subscriptions are
        in place (or it has none), so it gets its own messages back."""
        if not p.wants_consumer:
            return True
        link = p.consumer
        if link is None:
            return False
        try:
            # A close from the broker may be waiting unread (one outage
            # often takes both connections): take it in first.
            self._serve(p, link, 0)
        except (_Down, *_FAILURES) as exc:
            self._consumer_lost(p, exc)
            return False
        return True

    def _open_consumer(self, p: _Process) -> None:
        if self._queue_outlives_connection and p.queue:
            queue = p.queue
        else:
            # host and pid help an operator reading `rabbitmqctl list_queues`.
            queue = (
                f"{self._queue_prefix}.{socket.gethostname()[:40]}.{p.pid}."
                f"{os.urandom(4).hex()}"
            )
        link = _Link(self._parameters("consumer"))
        try:
            channel = link.channel
            self._declare_exchange(link)
            link.call(
                channel.queue_declare,
                queue=queue,
                durable=self._durable,
                exclusive=self._exclusive,
                auto_delete=self._auto_delete,
            )
            link.call(channel.basic_qos, prefetch_count=self._prefetch)
            link.call(
                channel.basic_consume,
                queue=queue,
                on_message_callback=link.on_delivery,
            )
            p.queue = queue
            p.consumer = link
            p.bound = set()
            self._reconcile(p, link)
        except BaseException:
            p.consumer = None
            link.abandon()
            raise
        self._report_connected(p, "consumer")

    def _consumer_lost(self, p: _Process, error: object) -> None:
        link, p.consumer = p.consumer, None
        if link is not None:
            link.abandon()
        if self._queue_outlives_connection:
            p.leftover |= p.bound
        p.bound = set()
        with p.lock:
            p.consumer_state = "down"
        self._release_waiters(p)  # they return: recorded, bound on reconnect
        self._report_failure(p, "consumer", error)

    def _dispatch(self, p: _Process, link: _Link) -> None:
        """Hand what arrived to on_message, in order, then acknowledge it."""
        deliveries = link.deliveries
        unacked = last = 0
        while deliveries:
            tag, key, properties, body = deliveries.popleft()
            if key == p.inbox_key:
                if properties.correlation_id:
                    p.replies.resolve(properties.correlation_id, body)
            else:
                # Unknown keys were unsubscribed since the broker routed them.
                topic = p.topics.get(key)
                if topic is not None:
                    try:
                        self._on_message(topic, body, properties.reply_to)
                    except Exception:
                        logger.exception(
                            "flask_realtime: handling a message on %r failed", topic
                        )
            last = tag
            unacked += 1
            if unacked >= self._ack_every:
                self._ack(link, last)
                unacked = 0
        if unacked:
            self._ack(link, last)

    def _ack(self, link: _Link, tag: int) -> None:
        try:
            link.channel.basic_ack(tag, multiple=True)
        except _FAILURES:
            pass  # the connection is going; the loop notices

    def _finish(self, p: _Process) -> None:
        if p.pid != os.getpid():
            return  # a forked copy of this reader: the parent's, not ours
        link, p.consumer = p.consumer, None
        self._release_waiters(p)
        if link is None:
            return
        if self._queue_outlives_connection and link.error is None:
            # Its name dies with this process, so nobody would read it again.
            try:
                link.call(link.channel.queue_delete, queue=p.queue)
            except (_Down, *_FAILURES):
                pass
        link.close()


def _take_batch(pending: list[_Outgoing]) -> list[_Outgoing]:
    """The oldest queued messages, up to a batch's worth, out of ``pending``."""
    size = count = 0
    for item in pending:
        if count and (count == _BATCH_MESSAGES or size > _BATCH_BYTES):
            break
        count += 1
        size += len(item.data)
    batch = pending[:count]
    del pending[:count]
    return batch


def _take(buffer: OutageBuffer, n: int) -> list[tuple[str, bytes]]:
    """Up to ``n`` of the oldest buffered messages, removed from the buffer."""
    taken: list[tuple[str, bytes]] = []
    # drain() removes an item only when asked for the next one, so stopping
    # at the (n+1)th leaves that one in place.
    for item in buffer.drain():
        if len(taken) == n:
            break
        taken.append(item)
    return taken
