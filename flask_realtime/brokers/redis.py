"""Redis pub/sub: one subscribed connection, one publishing connection.

Two connections because a subscribed connection takes nothing but
(UN)SUBSCRIBE and PING, while a publisher must read PUBLISH's answer (the
number of receivers) to know Redis has the message: that answer is the
"accepted" of ``publish`` and the "nobody listens" of ``request``.
Concurrent publishers share round trips (see ``_submit``).

redis-py opens both connections (URL forms, AUTH, SELECT, TLS, unix
sockets). After the handshake this module speaks RESP2 on the sockets
itself: PUBLISH answers one integer line and a subscribed connection sends
only arrays, and skipping redis-py's general command path makes a publish
1.5 to 2 times faster (measured on loopback).

Channel names are ``flask_realtime:<db>:<topic>``. Redis pub/sub ignores the
database number, so the prefix is what keeps two deployments on one server
with different ``db`` apart; SUBSCRIBE (never PSUBSCRIBE) matches a name
exactly, so no topic can match another. A payload starts with one tag byte:
``m`` a message, ``q<reply_to>\\n`` a request, ``r<reply_to>\\n`` a reply on
the requester's inbox channel (``i:<hex>``, subscribed by every process).

One reader (a greenlet under gevent, a thread otherwise) owns the
subscribed connection: it calls ``on_message``, reconnects with backoff,
re-subscribes, and only then lets buffered messages out.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import typing as t
import weakref
from collections import deque

from redis.backoff import NoBackoff
from redis.connection import Connection, parse_url
from redis.exceptions import RedisError
from redis.retry import Retry

from .._runtime import event, gevent_active, real_lock, sleep, spawn
from ..config import ConfigError, Settings
from ._support import Backoff, OutageBuffer, PendingReplies, redact
from .base import BrokerUnavailable, MessageCallback

log = logging.getLogger("flask_realtime")

_CONNECT_TIMEOUT = 1.0  # TCP connect, so a caller never waits long on a dead host
_IO_TIMEOUT = 1.5  # handshake and a PUBLISH's answer; past it the link is dead
_TICK = 1.0  # the reader wakes this often: close, health check, stuck buffer
_PING_AFTER = 10.0  # an idle subscribed connection gets a PING...
_DEAD_AFTER = 20.0  # ...and is replaced when nothing at all came for this long
_SETTLE_TIMEOUT = 1.5  # the first call waits this long for the first connection
_CONFIRM_TIMEOUT = 5.0  # subscribe() waits this long for Redis's confirmation
_FLUSH_BATCH = 1000  # buffered messages per pipeline when flushing
_SUBSCRIBE_BATCH = 1000  # channels per SUBSCRIBE when restoring after a reconnect
_READ_SIZE = 65536
_BIG_REPLY = 65536  # a reply longer than this is gathered in parts, not re-joined
_SLICE = 0.01  # under gevent, the reader lets the loop cycle after this much work

_PING = b"*1\r\n$4\r\nPING\r\n"


class _Incomplete(Exception):
    """The bytes end inside a reply; ``need`` is where it ends when known."""

    def __init__(self, need: int = 0) -> None:
        self.need = need


class _ReplyError(str):
    """An error reply (``-ERR ...``): a value, so a pipeline's others still count."""


class _LinkLost(Exception):
    """A connection failed; ``counts`` holds the answers read before it did."""

    def __init__(self, message: str, counts: t.Sequence[t.Any] = ()) -> None:
        super().__init__(message)
        self.counts = list(counts)


def _parse(buf: bytes, pos: int) -> tuple[t.Any, int]:
    """One RESP2 reply starting at ``pos``: (value, position after it)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete()
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        size = int(buf[pos + 1 : end])
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        if stop + 2 > len(buf):
            raise _Incomplete(stop + 2)
        return buf[end + 2 : stop], stop + 2
    if kind == 42:  # * array
        count = int(buf[pos + 1 : end])
        pos = end + 2
        items = []
        for _ in range(count):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 58:  # : integer
        return int(buf[pos + 1 : end]), end + 2
    if kind == 45:  # - error
        return _ReplyError(buf[pos + 1 : end].decode("utf-8", "replace")), end + 2
    if kind == 43:  # + simple string
        return buf[pos + 1 : end], end + 2
    raise _LinkLost(f"unexpected bytes from the server: {buf[pos : pos + 40]!r}")


def _command(*args: bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    parts.extend(b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args)
    return b"".join(parts)


def _publish_command(channel: bytes, tag: bytes, data: bytes) -> bytes:
    # One formatting step: this runs for every message.
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b%b\r\n" % (
        len(channel),
        channel,
        len(tag) + len(data),
        tag,
        data,
    )


class _Link:
    """One connection: opened by redis-py, then spoken to directly."""

    __slots__ = ("conn", "sock")

    def __init__(self, conn: Connection) -> None:
        conn.connect()
        # redis-py keeps the socket in ``_sock`` in every version since 2.x.
        sock = getattr(conn, "_sock", None)
        if sock is None:
            raise RedisError("redis-py connected but exposes no socket")
        self.conn = conn
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def publish(self, commands: list[bytes]) -> list[t.Any]:
        """Send PUBLISH commands as one pipeline; their answers, in order."""
        answers: list[t.Any] = []
        try:
            self.sock.sendall(commands[0] if len(commands) == 1 else b"".join(commands))
            buf = b""
            while len(answers) < len(commands):
                chunk = self.sock.recv(_READ_SIZE)
                if not chunk:
                    raise OSError("connection closed by the server")
                buf = buf + chunk if buf else chunk
                pos = 0
                try:
                    while pos < len(buf):
                        answer, pos = _parse(buf, pos)
                        answers.append(answer)
                except _Incomplete:
                    pass
                buf = buf[pos:]
        except OSError as exc:
            raise _LinkLost(str(exc) or type(exc).__name__, answers) from exc
        return answers

    def close(self) -> None:
        # redis-py shuts the socket down only in the process that opened it,
        # so a forked child closes its copy without cutting off the parent.
        try:
            self.conn.disconnect()
        except Exception:  # closing a broken socket may fail; it is gone either way
            pass


class _Entry:
    """One command for the publishing connection, and its caller's answer."""

    __slots__ = ("topic", "command", "keep", "fresh", "event", "lead", "count", "error")

    def __init__(
        self, topic: str, command: bytes | None, keep: bool, fresh: bool = False
    ) -> None:
        self.topic = topic
        self.command = command  # None: nothing to send, only flush the buffer
        self.keep = keep  # buffer while Redis is unreachable (requests are not)
        self.fresh = fresh  # open a new publishing connection first
        self.event: t.Any = None
        self.lead = False  # woken to lead the next pipeline, not with an answer
        self.count: t.Any = None
        self.error: BaseException | None = None

    def result(self) -> int | None:
        if self.error is not None:
            raise self.error
        return t.cast("int | None", self.count)


class _Subscribing:
    """A subscribe() call waiting for Redis to confirm each of its channels."""

    __slots__ = ("remaining", "event")

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.event = event()


_RESUBSCRIBE = object()  # a confirmation the reader waits for after connecting


class RedisBroker:
    """Topics on Redis pub/sub; see the module docstring for the wire format."""

    kind = "redis"

    def __init__(self, settings: Settings, on_message: MessageCallback) -> None:
        self._on_message = on_message
        self._buffer_limit = settings.broker_buffer
        if settings.broker_url:
            self.url = redact(settings.broker_url)
            try:
                options = parse_url(settings.broker_url)
            except ValueError as exc:
                raise ConfigError(f"REALTIME_BROKER_URL={self.url!r}: {exc}") from None
        else:
            config = settings.redis
            options = {"host": config["host"], "port": config["port"]}
            options["db"] = config["db"]
            if config["password"]:
                options["password"] = config["password"]
            auth = ":***@" if config["password"] else ""
            self.url = f"redis://{auth}{config['host']}:{config['port']}/{config['db']}"
        self._connection_class = options.pop("connection_class", Connection)
        # Ours win over the URL's query: the promises depend on them.
        options.update(
            protocol=2,
            socket_connect_timeout=_CONNECT_TIMEOUT,
            socket_timeout=_IO_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._options = options
        self._prefix = f"flask_realtime:{options.get('db', 0)}:"
        self._closed = False
        self._channels: dict[bytes, str] = {}  # subscribed channel -> topic
        self._generation = 0
        self._reset()
        _live.add(self)

    def _reset(self) -> None:
        """Fresh per-process state: at start, and in a forked child."""
        self._pid = os.getpid()
        self._generation += 1  # a reader greenlet copied by fork sees it and stops
        self._lock = real_lock()  # pipeline state only; never held across I/O
        # Guards writes to the subscribed socket, which may block: a gevent
        # lock once gevent has patched threading, an OS lock otherwise.
        self._write_lock = threading.Lock()
        self._confirm_lock = real_lock()
        self._confirming: dict[bytes, deque[t.Any]] = {}
        self._resubscribing = 0
        self._replies = PendingReplies()
        self._inbox = (self._prefix + self._replies.inbox).encode()
        self._buffer = OutageBuffer(self._buffer_limit, self.kind, self.url)
        self._queue: list[_Entry] = []
        self._leading = False
        self._sub: _Link | None = None
        self._pub: _Link | None = None
        self._pub_retry_at = 0.0
        self._pub_backoff = Backoff()
        self._ready = False  # subscriptions in place: publishing may go out
        self._started = False
        self._settled: t.Any = None  # set once the first connection is up or failed
        self._wake: t.Any = None
        self._reader: t.Any = None
        self._reader_ident: int | None = None

    # -- the Broker interface ------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ready

    def publish(self, topic: str, data: bytes) -> int | None:
        self._ensure()
        command = _publish_command((self._prefix + topic).encode(), b"m", data)
        return self._submit(_Entry(topic, command, keep=True))

    def request(self, topic: str, data: bytes, timeout: float) -> bytes | None:
        self._ensure()
        if threading.get_ident() == self._reader_ident:
            # The answer would arrive on the connection this call blocks.
            raise RuntimeError("request() cannot wait inside on_message")
        reply_to, slot = self._replies.new()
        head = b"q%b\n" % reply_to.encode()
        command = _publish_command((self._prefix + topic).encode(), head, data)
        try:
            receivers = self._submit(_Entry(topic, command, keep=False))
        except BaseException:
            self._replies.forget(reply_to)
            raise
        if not receivers:
            self._replies.forget(reply_to)
            return None
        return self._replies.wait(reply_to, slot, timeout)

    def reply(self, reply_to: str, data: bytes) -> None:
        self._ensure()
        inbox = reply_to.partition("#")[0]
        head = b"r%b\n" % reply_to.encode()
        command = _publish_command((self._prefix + inbox).encode(), head, data)
        self._submit(_Entry(inbox, command, keep=True))

    def subscribe(self, *topics: str) -> None:
        if not topics:
            return
        self._ensure()
        channels = [(self._prefix + topic).encode() for topic in topics]
        waiter = _Subscribing(len(channels))
        # The topic set changes under the same lock as the socket writes, so
        # Redis sees (un)subscriptions in the order the set records them.
        with self._write_lock:
            self._channels.update(zip(channels, topics, strict=True))
            link = self._sub
            if link is None:
                return  # recorded: the reader subscribes when it connects
            with self._confirm_lock:
                for channel in channels:
                    self._confirming.setdefault(channel, deque()).append(waiter)
            try:
                link.send(_command(b"SUBSCRIBE", *channels))
            except OSError:
                link.close()  # the reader sees it, reconnects and re-subscribes
                return
        if threading.get_ident() == self._reader_ident:
            return  # only the reader reads the confirmation: it cannot wait here
        if not waiter.event.wait(_CONFIRM_TIMEOUT):
            log.warning(
                "the %s broker at %s did not confirm a subscription within %s s",
                self.kind,
                self.url,
                _CONFIRM_TIMEOUT,
            )

    def unsubscribe(self, *topics: str) -> None:
        if not topics:
            return
        if self._pid != os.getpid():
            self._after_fork()
        channels = [(self._prefix + topic).encode() for topic in topics]
        # No wait for Redis: the reader drops messages of channels that are
        # no longer in the set, so nothing arrives after this returns.
        with self._write_lock:
            for channel in channels:
                self._channels.pop(channel, None)
            link = self._sub
            if link is not None:
                try:
                    link.send(_command(b"UNSUBSCRIBE", *channels))
                except OSError:
                    link.close()

    def close(self) -> None:
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._wake is not None:
            self._wake.set()
        if self._sub is not None:
            self._link_down(self._sub)
        if self._pub is not None:
            self._pub.close()
        reader = self._reader
        if reader is not None and threading.get_ident() != self._reader_ident:
            reader.join(2 * _TICK)

    # -- starting, and forks -----------------------------------------------

    def _ensure(self) -> None:
        """Start on first use and wait (briefly) for the first connection."""
        if self._pid != os.getpid():
            self._after_fork()
        if self._started:
            return
        with self._lock:
            if self._closed:
                raise BrokerUnavailable(
                    f"the {self.kind} broker at {self.url} is closed"
                )
            starting = self._settled is None
            if starting:
                self._settled = event()
                self._wake = event()
        if starting:
            self._reader = spawn(self._read_forever, self._generation)
        # So a script's first publish goes out instead of into the buffer.
        self._settled.wait(_SETTLE_TIMEOUT)
        self._started = True

    def _after_fork(self) -> None:
        """Drop the parent's connections in this child without touching them.

        Runs right after ``os.fork`` (see the end of the module); the pid
        check on every call covers a fork that bypassed ``os.fork``.
        """
        for link in (self._sub, self._pub):
            if link is not None:
                link.close()  # the child's copy of the socket only
        # Subscriptions stay (this process's node still wants them); buffered
        # messages and waiting requests were the parent's.
        self._reset()

    def _current(self, generation: int) -> bool:
        return not self._closed and generation == self._generation

    # -- publishing: one pipeline at a time, led by one of its callers ------

    def _submit(self, entry: _Entry) -> int | None:
        """Send ``entry`` with whatever else waits; the receiver count.

        The first caller leads: it sends its command, reads the answer and
        returns. Callers arriving meanwhile queue up; when the leader is done
        it wakes the first of them, which sends the whole queue as one
        pipeline. So a lone publisher pays one round trip, and many
        concurrent ones share round trips, each still returning only once
        Redis has answered for its own message.
        """
        with self._lock:
            follower = self._leading
            if follower:
                entry.event = event()
                self._queue.append(entry)
            else:
                self._leading = True
        if follower:
            entry.event.wait()
            if not entry.lead:
                return entry.result()
        self._lead(entry)
        return entry.result()

    def _lead(self, own: _Entry) -> None:
        if gevent_active():
            # Let the other runnable greenlets queue their messages first:
            # Redis often answers before the leader's read would yield, and a
            # leader that never yields sends one message per round trip.
            sleep(0)
        with self._lock:
            batch, self._queue = self._queue, []
        if not own.lead:
            batch.insert(0, own)
        try:
            self._run(batch)
        except BaseException as exc:
            # A bug or a killed greenlet: nobody may wait forever.
            for entry in batch:
                if entry.error is None and entry.count is None:
                    entry.error = (
                        exc
                        if isinstance(exc, Exception)
                        else BrokerUnavailable("the publishing greenlet was killed")
                    )
            if not isinstance(exc, Exception):
                raise
        finally:
            for entry in batch:
                if entry is not own and entry.event is not None:
                    entry.event.set()
            with self._lock:
                after = self._queue[0] if self._queue else None
                if after is None:
                    self._leading = False
                else:
                    after.lead = True
            if after is not None:
                after.event.set()

    def _run(self, batch: list[_Entry]) -> None:
        """Send ``batch`` after anything buffered, or buffer it."""
        sending = [entry for entry in batch if entry.command is not None]
        if self._closed:
            closed = BrokerUnavailable(
                f"the {self.kind} broker at {self.url} is closed"
            )
            for entry in sending:
                entry.error = closed
            return
        if not self._ready:
            self._park(sending)
            return
        link = self._pub
        fresh = any(entry.fresh for entry in batch)
        answers: list[t.Any] = []
        try:
            if link is not None and fresh:
                self._pub = None
                link.close()
                link = None
            if not sending and not len(self._buffer):
                return  # a process that only subscribes needs no second connection
            if link is None:
                if not fresh and time.monotonic() < self._pub_retry_at:
                    self._park(sending)
                    return
                link = self._pub = _Link(self._connection("pub"))
                self._pub_backoff.reset()
            if len(self._buffer):
                self._flush_buffer(link)
            if sending:
                answers = link.publish([t.cast(bytes, e.command) for e in sending])
        except (_LinkLost, OSError, RedisError) as exc:
            if isinstance(exc, _LinkLost):
                answers = exc.counts
            self._drop_pub(link, exc)
            self._answer(sending, answers)
            self._park(sending[len(answers) :])
            return
        self._answer(sending, answers)

    def _answer(self, entries: list[_Entry], answers: list[t.Any]) -> None:
        for entry, answer in zip(entries, answers, strict=False):
            if isinstance(answer, _ReplyError):
                entry.error = BrokerUnavailable(
                    f"the {self.kind} broker at {self.url} refused PUBLISH: {answer}"
                )
            else:
                entry.count = answer

    def _park(self, entries: list[_Entry]) -> None:
        """Keep messages for later; requests fail (nobody could answer)."""
        for entry in entries:
            try:
                if not entry.keep:
                    raise BrokerUnavailable(
                        f"the {self.kind} broker at {self.url} is unreachable"
                    )
                self._buffer.add(entry.topic, t.cast(bytes, entry.command))
            except BrokerUnavailable as exc:
                entry.error = exc

    def _flush_buffer(self, link: _Link) -> None:
        # The leader owns the buffer: nobody adds while this runs, and what
        # was not sent goes back in its place, oldest first.
        pending = list(self._buffer.drain())
        sent = 0
        try:
            while sent < len(pending):
                chunk = pending[sent : sent + _FLUSH_BATCH]
                try:
                    link.publish([command for _, command in chunk])
                except _LinkLost as exc:
                    sent += len(exc.counts)
                    raise _LinkLost(str(exc)) from exc
                sent += len(chunk)
        finally:
            for topic, command in pending[sent:]:
                self._buffer.add(topic, command)
        log.debug("sent %d buffered messages to the %s broker", sent, self.kind)

    def _drop_pub(self, link: _Link | None, exc: BaseException) -> None:
        if link is not None:
            link.close()
        if self._pub is link:
            self._pub = None
        self._pub_retry_at = time.monotonic() + self._pub_backoff.next_delay()
        if self._ready:
            log.warning(
                "publishing to the %s broker at %s failed (%s); buffering",
                self.kind,
                self.url,
                exc,
            )

    def _connection(self, role: str) -> Connection:
        options = {"client_name": f"flask_realtime-{role}", **self._options}
        return self._connection_class(**options)  # type: ignore[no-any-return]

    # -- the reader: the subscribed connection, reconnection ----------------

    def _read_forever(self, generation: int) -> None:
        self._reader_ident = threading.get_ident()
        backoff = Backoff()
        warned = False  # one WARNING per outage; the retries log at DEBUG
        while self._current(generation):
            try:
                link = _Link(self._connection("sub"))
            except (OSError, RedisError) as exc:
                if not self._current(generation):
                    break
                if warned:
                    log.debug("%s broker at %s: %s", self.kind, self.url, exc)
                else:
                    log.warning(
                        "cannot connect to the %s broker at %s (%s); retrying",
                        self.kind,
                        self.url,
                        exc,
                    )
                    warned = True
                self._settled.set()
                self._pause(backoff.next_delay())
                continue
            problem: Exception | None = None
            try:
                self._serve(link, generation)
            except Exception as exc:
                problem = exc
            was_ready = self._ready and self._sub is link
            self._link_down(link)
            if not self._current(generation):
                break
            self._settled.set()
            if was_ready:
                backoff.reset()
                warned = False
            if problem is not None and not isinstance(
                problem, (_LinkLost, OSError, RedisError)
            ):
                log.error("the %s broker's reader failed", self.kind, exc_info=problem)
            if not warned:
                log.warning(
                    "lost the connection to the %s broker at %s (%s); reconnecting",
                    self.kind,
                    self.url,
                    problem,
                )
                warned = True
            self._pause(backoff.next_delay())

    def _pause(self, seconds: float) -> None:
        wake = self._wake
        if wake is not None:
            wake.wait(seconds)

    def _serve(self, link: _Link, generation: int) -> None:
        """Subscribe everything on a new connection, then read it until it fails."""
        link.sock.settimeout(_TICK)
        with self._write_lock:
            if not self._current(generation):
                link.close()
                return
            self._sub = link
            channels = [self._inbox, *self._channels]
            with self._confirm_lock:
                for channel in channels:
                    self._confirming.setdefault(channel, deque()).append(_RESUBSCRIBE)
                self._resubscribing = len(channels)
            for n in range(0, len(channels), _SUBSCRIBE_BATCH):
                link.send(_command(b"SUBSCRIBE", *channels[n : n + _SUBSCRIBE_BATCH]))
        self._read(link, generation)

    def _read(self, link: _Link, generation: int) -> None:
        sock = link.sock
        # gevent's recv returns without yielding while data waits: under a
        # backlog the reader would starve every other greenlet (the writers
        # to the clients among them). So after a slice of work without a
        # wait, between two messages, it sleeps a moment: sleep(0) would not
        # let the loop run timers and I/O.
        cooperative = gevent_active()
        resumed = time.monotonic()
        data = b""  # received, not parsed yet
        parts: list[bytes] = []  # a long reply still arriving
        have = need = 0
        last = checked = time.monotonic()
        pinged = False
        while self._current(generation):
            before = time.monotonic()
            try:
                chunk = sock.recv(_READ_SIZE)
            except TimeoutError:
                idle = time.monotonic() - last
                if idle > _DEAD_AFTER:
                    raise _LinkLost(f"no answer for {idle:.0f} s") from None
                if idle > _PING_AFTER and not pinged:
                    with self._write_lock:
                        link.send(_PING)
                    pinged = True
                checked = time.monotonic()
                self._flush_if_stuck()
                continue
            if not chunk:
                raise _LinkLost("connection closed by the server")
            last = time.monotonic()
            if last - before > 0.0005:
                resumed = last  # recv waited, so the loop ran meanwhile
            pinged = False
            if last - checked > _TICK:  # busy: no timeout comes to do it
                checked = last
                self._flush_if_stuck()
            if need:
                parts.append(chunk)
                have += len(chunk)
                if have < need:
                    continue
                data = b"".join(parts)
                parts = []
                need = 0
            elif data:
                data += chunk
            else:
                data = chunk
            pos = 0
            try:
                while pos < len(data):
                    reply, pos = _parse(data, pos)
                    self._dispatch(reply)
                    if cooperative and time.monotonic() - resumed > _SLICE:
                        sleep(0.0001)
                        resumed = time.monotonic()
            except _Incomplete as incomplete:
                if incomplete.need - pos > _BIG_REPLY:
                    # Gather the rest before parsing again, not re-joining
                    # a growing buffer on every read.
                    parts = [data[pos:]]
                    have = len(data) - pos
                    need = incomplete.need - pos
                    pos = len(data)
            data = data[pos:]

    def _dispatch(self, reply: t.Any) -> None:
        if type(reply) is not list or not reply:
            raise _LinkLost(f"unexpected answer {reply!r:.80}")
        kind = reply[0]
        if kind == b"message":
            channel, payload = reply[1], reply[2]
            topic = self._channels.get(channel)
            if topic is not None:
                if payload[:1] == b"m":
                    self._deliver(topic, payload[1:], None)
                elif payload[:1] == b"q":
                    newline = payload.find(b"\n")
                    reply_to = payload[1:newline].decode("ascii", "replace")
                    self._deliver(topic, payload[newline + 1 :], reply_to)
            elif channel == self._inbox and payload[:1] == b"r":
                newline = payload.find(b"\n")
                reply_to = payload[1:newline].decode("ascii", "replace")
                self._replies.resolve(reply_to, payload[newline + 1 :])
        elif kind == b"subscribe":
            self._confirmed(reply[1])
        # "unsubscribe" and PING's "pong" need nothing.

    def _deliver(self, topic: str, data: bytes, reply_to: str | None) -> None:
        try:
            self._on_message(topic, data, reply_to)
        except Exception:
            log.exception("on_message failed for a %s message on %s", self.kind, topic)

    def _confirmed(self, channel: bytes) -> None:
        with self._confirm_lock:
            waiting = self._confirming.get(channel)
            who = waiting.popleft() if waiting else None
            if waiting is not None and not waiting:
                del self._confirming[channel]
        if who is _RESUBSCRIBE:
            self._resubscribing -= 1
            if self._resubscribing == 0:
                self._became_ready()
        elif who is not None:
            who.remaining -= 1
            if who.remaining == 0:
                who.event.set()

    def _became_ready(self) -> None:
        """Every subscription is back: flush the buffer, then publish freely."""
        self._ready = True
        # A fresh publishing connection: the old one may lead to a server
        # that has gone. Buffered messages go first, so this node gets its
        # own messages too.
        self._submit(_Entry("", None, keep=False, fresh=True))
        log.info("connected to the %s broker at %s", self.kind, self.url)
        self._settled.set()

    def _flush_if_stuck(self) -> None:
        """Messages buffered when only the publishing connection failed."""
        if (
            self._ready
            and len(self._buffer)
            and not self._leading
            and time.monotonic() >= self._pub_retry_at
        ):
            self._submit(_Entry("", None, keep=False))

    def _link_down(self, link: _Link) -> None:
        waiting: list[t.Any] = []
        with self._write_lock:
            if self._sub is link:
                self._sub = None
                self._ready = False
                with self._confirm_lock:
                    waiting = [w for queue in self._confirming.values() for w in queue]
                    self._confirming.clear()
                    self._resubscribing = 0
        link.close()
        for waiter in waiting:
            if waiter is not _RESUBSCRIBE:
                waiter.event.set()  # recorded: restored on reconnect


_live: weakref.WeakSet[RedisBroker] = weakref.WeakSet()


def _forget_parent_connections() -> None:
    # At once, not on first use: under gevent the reader greenlet survives
    # the fork and would read the parent's messages off the shared socket.
    for broker in list(_live):
        broker._after_fork()


os.register_at_fork(after_in_child=_forget_parent_connections)
