"""NATS through the official asyncio client (nats-py), for greenlets and threads.

One asyncio loop per process runs every NatsBroker's client: in a greenlet
under gevent (its selector is gevent's, so waiting yields to the hub), in a
daemon thread otherwise. Callers hand operations to the loop and wait on an
event of their own world; concurrent callers share one batch, so fifty
greenlets publishing at once cost one wake-up and one confirmation.

"Accepted" needs a round trip, and nats-py's ``flush()`` cannot give it: it
writes its PING before the PUBs still in its pending buffer. So every batch
ends with a marker published to a subject this client subscribes to; the
server handles one connection's commands in order, so the marker coming back
means it has routed everything before it. Markers also settle reconnects: the
first marker on a new connection comes back after whatever nats-py re-sent
from its buffer, so a batch whose marker is missing by then was lost with the
old connection and is sent again (at least once, never silently dropped).

nats-py hands each subscription's messages to a task of its own, which can
reorder messages of different subjects; this module takes its subjects'
messages straight from the parser (``_Client._process_msg``) into one queue,
and one reader greenlet or thread calls ``on_message`` in the server's order.

Subjects are ``flask_realtime.t.<topic>`` with every character but
``[A-Za-z0-9_-:=@#]`` percent-encoded, so a topic is always one literal token:
'.', '*', '>' and spaces in a topic cannot make a wildcard or a second token.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import secrets
import time
import typing as t
import weakref
from collections import deque
from urllib.parse import urlsplit, urlunsplit

from nats import errors as nats_errors
from nats.aio.client import Client as _NatsClient

from .. import _runtime
from ..config import ConfigError, Settings
from ._support import Backoff, OutageBuffer, redact
from .base import BrokerUnavailable, MessageCallback

log = logging.getLogger("flask_realtime")

_TOPICS = "flask_realtime.t."
_MARKERS = "flask_realtime.m."
_SCHEMES = ("nats", "tls", "ws", "wss")

_CONNECT_TIMEOUT = 2.0  # TCP connect and the server's INFO, per attempt
_SETTLE_WAIT = 1.0  # while (re)connecting, a call waits this long before buffering
_CONFIRM_WAIT = 1.0  # a publish returns after this even if unconfirmed
_CALL_LIMIT = 10.0  # safety net: the loop never answered (a bug, not an outage)
_CLOSE_WAIT = 3.0
_PING_INTERVAL = 10  # a silent dead link is noticed after 2 unanswered pings
_WARN_EVERY = 30.0  # repeat "still unreachable" at most this often

# Operations a batch carries: (kind, subject or topic, data).
_PUB, _SUB, _UNSUB, _REPLY, _REQUEST = range(5)

# Broker states, as the loop sees them.
_SYNCING = "syncing"  # connecting, or restoring subscriptions and the buffer
_UP = "up"
_DOWN = "down"
_CLOSED = "closed"

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-:=@#]+")


def _escape(match: re.Match[str]) -> str:
    raw = match.group().encode("utf-8", "surrogatepass")
    return "".join(f"%{byte:02X}" for byte in raw)


@functools.lru_cache(maxsize=65536)
def _subject(topic: str) -> str:
    """The NATS subject of ``topic``: one literal token, distinct per topic."""
    # '%' is escaped too, so the encoding is reversible; "%" alone stands for "".
    return _TOPICS + (_UNSAFE.sub(_escape, topic) or "%")


def _parse_servers(url: str) -> list[str]:
    """The server URLs of ``url`` (comma-separated for a cluster), checked."""
    servers = []
    for part in url.split(","):
        part = part.strip()
        if not part:
            continue
        if "://" not in part:
            part = "nats://" + part
        try:
            parts = urlsplit(part)
            valid = (
                parts.scheme in _SCHEMES and bool(parts.hostname) and parts.port != 0
            )
        except ValueError:  # a port that is not a number
            valid = False
        if not valid:
            raise ConfigError(
                f"not a NATS server URL: {_hide(part)!r} (nats://[user:password@]host:port)"
            )
        servers.append(part)
    if not servers:
        raise ConfigError(
            "the NATS URL is empty (REALTIME_NATS_URL or REALTIME_BROKER_URL)"
        )
    return servers


def _hide(url: str) -> str:
    """``redact`` for NATS, where a lone user name is a token (nats://TOKEN@host)."""
    try:
        parts = urlsplit(url)
        if parts.username is not None and parts.password is None:
            host = parts.netloc.rsplit("@", 1)[1]
            return urlunsplit(parts._replace(netloc=f"***@{host}"))
        return redact(url)
    except ValueError:
        return "<unparsable URL>"


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class _Forked(BaseException):
    """Ends a loop greenlet inherited through fork before it touches a socket."""


def _gevent_selector(pid: int) -> t.Any:
    """gevent's selector, hiding the loop from other greenlets while it waits.

    asyncio keeps "the running loop" per OS thread, and every greenlet shares
    the thread: without this, any greenlet would see this loop as running and
    ``asyncio.run`` would refuse to start anywhere in the process.
    """
    from gevent.selectors import GeventSelector

    get_running = asyncio.events._get_running_loop
    set_running = asyncio.events._set_running_loop

    class Selector(GeventSelector):  # type: ignore[misc]
        def select(self, timeout: float | None = None) -> t.Any:
            running = get_running()
            set_running(None)
            ready = super().select(timeout)
            if os.getpid() != pid:
                # A child of fork woke this parent's loop: its descriptors are
                # the parent's, so stop watching them and end, reading nothing.
                self.close()
                raise _Forked
            set_running(running)
            return ready

    return Selector()


class _LoopRunner:
    """The process's asyncio loop, shared by its NatsBrokers."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.users = 0
        if _runtime.gevent_active():
            self.loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop(
                _gevent_selector(self.pid)
            )
        else:
            self.loop = asyncio.new_event_loop()
        self.worker = _runtime.spawn(self._run)

    def _run(self) -> None:
        loop = self.loop
        try:
            loop.run_forever()
            # nats-py cancels its tasks on close without waiting for them:
            # let them finish, as asyncio.run would, before closing the loop.
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except _Forked:
            return
        loop.close()

    def call(self, func: t.Callable[..., t.Any], *args: t.Any) -> None:
        try:
            self.loop.call_soon_threadsafe(func, *args)
        except RuntimeError:  # the loop is closed: its last broker closed
            raise BrokerUnavailable("the nats broker is closed") from None


_runner: _LoopRunner | None = None
_runner_lock = _runtime.real_lock()
# A child of fork keeps what it inherited referenced and untouched: closing or
# collecting it could unregister the parent's sockets from a shared epoll.
_inherited: list[t.Any] = []
_brokers: weakref.WeakSet[NatsBroker] = weakref.WeakSet()


def _acquire_runner() -> _LoopRunner:
    global _runner
    with _runner_lock:
        if _runner is None or _runner.pid != os.getpid():
            if _runner is not None:
                _inherited.append(_runner)
            _runner = _LoopRunner()
        _runner.users += 1
        return _runner


def _release_runner(runner: _LoopRunner) -> None:
    global _runner
    with _runner_lock:
        runner.users -= 1
        if runner.users > 0 or runner.pid != os.getpid():
            return
        if _runner is runner:
            _runner = None
        runner.loop.call_soon_threadsafe(runner.loop.stop)


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork time would never be released.
    global _runner_lock
    _runner_lock = _runtime.real_lock()
    for broker in list(_brokers):
        broker._lock = _runtime.real_lock()
        broker._start_lock = _runtime.real_lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Client(_NatsClient):
    """nats-py's client, with this broker's subjects taken from the parser.

    ``route(subject, reply, data)`` returns True when it took the message;
    the rest (request replies) go through nats-py as usual.
    """

    def __init__(self, route: t.Callable[[t.Any, t.Any, bytes], bool]) -> None:
        super().__init__()
        self._realtime_route = route

    async def _process_msg(
        self, sid: int, subject: t.Any, reply: t.Any, data: bytes, headers: t.Any
    ) -> None:
        try:
            taken = self._realtime_route(subject, reply, data)
        except Exception:  # an error here would end nats-py's read loop for good
            log.exception("dropped a nats message on %r", bytes(subject))
            return
        if not taken:
            await super()._process_msg(sid, subject, reply, data, headers)


class _Batch:
    """Operations from concurrent callers, sent together, answered together."""

    __slots__ = ("ops", "done", "errors", "born", "result", "timeout")

    def __init__(self) -> None:
        self.ops: list[tuple[int, str, t.Any]] = []
        self.done = _runtime.event()
        self.errors: dict[int, BaseException] | None = None
        self.born = 0.0
        self.result: bytes | None = None
        self.timeout = 0.0

    def fail(self, index: int, exc: BaseException) -> None:
        if self.errors is None:
            self.errors = {}
        self.errors[index] = exc


class _Flight:
    """What went out on a connection before one marker: settled when it returns."""

    __slots__ = ("seq", "pubs", "batch", "waiter", "sent_at")

    def __init__(self, batch: _Batch | None = None) -> None:
        self.seq = 0  # 0: no marker sent (yet)
        self.pubs: list[tuple[str, bytes]] = []
        self.batch = batch
        self.waiter: asyncio.Future[None] | None = None
        self.sent_at = 0.0


class NatsBroker:
    """A node's link to NATS; see :mod:`flask_realtime.brokers.base` for the promises.

    Connects on first use (and again in a child after fork), reconnects with
    backoff, and restores subscriptions and sends the outage buffer, in that
    order, on every reconnection.
    """

    kind = "nats"
    connected = True  # interim, until the new brokers land

    def __init__(self, settings: Settings, on_message: MessageCallback) -> None:
        url = settings.broker_url or settings.nats_url
        self._servers = _parse_servers(url)
        self._where = ", ".join(_hide(server) for server in self._servers)
        self._on_message = on_message
        self._limit = settings.broker_buffer
        self._closed = False
        self._pid: int | None = None
        self._start_lock = _runtime.real_lock()
        self._dispatcher: t.Any = None
        # The topics the node asked for. Kept across fork: the child's node
        # believes in its subscriptions, so its new connection makes them.
        self._wanted: set[str] = set()
        self._reset()
        _brokers.add(self)

    def _reset(self) -> None:
        """Fresh connection state (at start, and in a child after fork)."""
        self._lock = _runtime.real_lock()
        self._open: _Batch | None = None  # filled by callers, taken by the loop
        self._queue: deque[_Batch] = deque()
        self._outage = OutageBuffer(self._limit, self.kind, self._where)
        self._inflight: deque[_Flight] = deque()
        self._subs: dict[str, t.Any] = {}  # topic -> nats-py Subscription
        self._topic_of: dict[bytes, str] = {}  # subject -> topic
        self._inbox: deque[tuple[str, bytes, str | None]] = deque()
        self._wake: t.Any = None
        self._runner: _LoopRunner | None = None
        self._nc: _Client | None = None
        self._marker_sub: t.Any = None
        self._markers = _MARKERS + secrets.token_hex(8)
        self._marker_key = self._markers.encode()
        self._seq = 0
        self._state = _SYNCING
        self._backoff = Backoff()
        self._ever_up = False
        self._warned_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._work: asyncio.Event | None = None
        self._tasks: dict[str, asyncio.Task[t.Any] | None] = {}
        self._requests: set[asyncio.Task[None]] = set()

    # -- the caller's side: any greenlet or thread --------------------------

    def publish(self, topic: str, data: bytes) -> None:
        self._submit([(_PUB, _subject(topic), data)])

    def request(self, topic: str, data: bytes, timeout: float) -> bytes | None:
        runner = self._use()
        batch = _Batch()
        batch.ops.append((_REQUEST, _subject(topic), data))
        batch.timeout = timeout
        runner.call(self._take, batch)
        if not batch.done.wait(timeout + _SETTLE_WAIT + 1.0):
            raise TimeoutError(f"no reply within {timeout} s")
        if batch.errors:
            raise batch.errors[0]
        return batch.result

    def reply(self, reply_to: str, data: bytes) -> None:
        self._submit([(_REPLY, reply_to, data)])

    def subscribe(self, *topics: str) -> None:
        if topics:
            self._submit([(_SUB, topic, None) for topic in topics])

    def unsubscribe(self, *topics: str) -> None:
        if topics:
            self._submit([(_UNSUB, topic, None) for topic in topics])

    def close(self) -> None:
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            runner = self._runner if self._pid == os.getpid() else None
            self._runner = None
        if self._wake is not None:
            self._wake.set()  # the reader sees _closed and ends
        if runner is None:
            return
        done = _runtime.event()
        try:
            runner.call(self._shutdown, done)
        except BrokerUnavailable:
            pass
        else:
            done.wait(_CLOSE_WAIT + 1.0)
        _release_runner(runner)

    def _use(self) -> _LoopRunner:
        """The running loop, started on first use and again after fork."""
        runner = self._runner
        if runner is not None and self._pid == os.getpid() and not self._closed:
            return runner
        with self._start_lock:
            if self._closed:
                raise BrokerUnavailable(
                    f"the {self.kind} broker at {self._where} is closed"
                )
            if self._runner is not None and self._pid == os.getpid():
                return self._runner
            if self._pid is not None:
                # A child of fork: the connection, loop and buffers are the
                # parent's. Leave them be and start anew.
                _inherited.append(self._runner)
                if hasattr(self._dispatcher, "kill"):
                    self._dispatcher.kill(block=False)
                self._reset()
            self._pid = os.getpid()
            self._wake = _runtime.event()
            self._dispatcher = _runtime.spawn(self._dispatch, self._inbox, self._wake)
            runner = _acquire_runner()
            runner.call(self._begin)
            self._runner = runner
            return runner

    def _submit(self, ops: list[tuple[int, str, t.Any]]) -> None:
        runner = self._use()
        with self._lock:
            batch = self._open
            fresh = batch is None
            if batch is None:
                batch = self._open = _Batch()
            first = len(batch.ops)
            batch.ops.extend(ops)
        if fresh:
            try:
                runner.call(self._take, None)
            except BrokerUnavailable:  # closed meanwhile
                with self._lock:
                    if self._open is batch:
                        self._open = None
                raise
        if not batch.done.wait(_CALL_LIMIT):
            raise BrokerUnavailable(
                f"the {self.kind} broker at {self._where} did not answer"
            )
        if batch.errors:
            for index in range(first, first + len(ops)):
                if index in batch.errors:
                    raise batch.errors[index]

    def _dispatch(
        self, inbox: deque[tuple[str, bytes, str | None]], wake: t.Any
    ) -> None:
        """The reader: ``on_message`` for each message, one at a time, in order."""
        on_message = self._on_message
        while True:
            while inbox:
                topic, data, reply_to = inbox.popleft()
                try:
                    on_message(topic, data, reply_to)
                except Exception:
                    log.exception(
                        "on_message failed for a %s message on %r", self.kind, topic
                    )
            if self._closed or self._inbox is not inbox:
                return
            wake.clear()
            if not inbox:
                wake.wait()

    # -- the loop's side ----------------------------------------------------

    def _begin(self) -> None:
        loop = asyncio.get_running_loop()
        self._work = asyncio.Event()
        self._tasks["sender"] = loop.create_task(self._sender())
        self._tasks["connect"] = loop.create_task(self._connect())

    def _take(self, batch: _Batch | None) -> None:
        """A batch (the callers' open one when None) joins the send queue."""
        if batch is None:
            with self._lock:
                batch, self._open = self._open, None
            if batch is None:
                return
        if self._state is _CLOSED:
            self._fail(batch, self._closed_error())
            return
        batch.born = asyncio.get_running_loop().time()
        self._queue.append(batch)
        assert self._work is not None
        self._work.set()

    async def _sender(self) -> None:
        """Sends queued batches in order; parks them briefly while syncing."""
        loop = asyncio.get_running_loop()
        queue, work = self._queue, self._work
        assert work is not None
        while True:
            if not queue:
                work.clear()
                await work.wait()
                continue
            batch = queue[0]
            if self._state is _SYNCING:
                left = batch.born + _SETTLE_WAIT - loop.time()
                if left > 0:
                    work.clear()
                    try:
                        await asyncio.wait_for(work.wait(), left)
                    except asyncio.TimeoutError:
                        pass
                    continue
            queue.popleft()
            nc = self._nc
            try:
                if self._state is not _UP or nc is None or not nc.is_connected:
                    self._offline(batch, 0)
                elif batch.ops[0][0] == _REQUEST:
                    self._ask(nc, batch)
                else:
                    await self._send(nc, batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not stop every later publish
                log.exception("the %s broker failed to send a batch", self.kind)
                self._fail(
                    batch, BrokerUnavailable(f"{self.kind} broker: {_describe(exc)}")
                )

    async def _send(self, nc: _Client, batch: _Batch) -> None:
        flight = _Flight(batch)
        self._inflight.append(flight)
        for index, (kind, name, data) in enumerate(batch.ops):
            try:
                if kind == _PUB:
                    await nc.publish(name, data)
                    flight.pubs.append((name, data))
                elif kind == _SUB:
                    self._wanted.add(name)
                    await self._sub(nc, name)
                elif kind == _UNSUB:
                    self._wanted.discard(name)
                    await self._unsub(name)
                else:
                    await nc.publish(name, data)  # a reply: never buffered
            except (
                nats_errors.OutboundBufferLimitError,
                nats_errors.ConnectionClosedError,
            ):
                # The connection broke under this batch and nats-py would not
                # keep the rest: it waits in our buffer.
                self._offline(batch, index)
                break
            except nats_errors.MaxPayloadError:
                batch.fail(
                    index,
                    ValueError(
                        f"{len(data)} bytes exceed the {self.kind} server's"
                        f" max_payload of {nc.max_payload} bytes"
                    ),
                )
            except nats_errors.BadSubjectError:
                batch.fail(index, ValueError(f"not a NATS subject: {name!r}"))
        await self._mark(nc, flight)

    async def _mark(self, nc: _Client, flight: _Flight) -> None:
        """Publish the marker that settles ``flight`` when it comes back."""
        self._seq += 1
        flight.seq = self._seq
        flight.sent_at = asyncio.get_running_loop().time()
        try:
            await nc.publish(self._markers, b"%d" % flight.seq)
        except nats_errors.Error:
            flight.seq = 0  # never confirmed: resent after reconnecting
        if flight.batch is not None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                _CONFIRM_WAIT, self._check_overdue
            )

    def _check_overdue(self) -> None:
        """Callers never wait past _CONFIRM_WAIT: a silent server is not a hang."""
        self._timer = None
        now = asyncio.get_running_loop().time()
        waiting = overdue = False
        for flight in self._inflight:
            batch = flight.batch
            if batch is None or batch.done.is_set():
                continue
            if now - flight.sent_at >= _CONFIRM_WAIT:
                batch.done.set()
                overdue = True
            else:
                waiting = True
        if overdue:
            self._warn(
                f"the {self.kind} broker at {self._where} has not confirmed"
                f" publishes within {_CONFIRM_WAIT} s"
            )
        if waiting:
            self._timer = asyncio.get_running_loop().call_later(
                0.1, self._check_overdue
            )

    def _confirm(self, seq: int) -> None:
        inflight = self._inflight
        if inflight and inflight[0].seq == seq:
            flight = inflight.popleft()
        else:
            for flight in inflight:
                if flight.seq == seq:
                    inflight.remove(flight)
                    break
            else:
                return  # a marker from before a reconnect, already written off
        if flight.batch is not None:
            flight.batch.done.set()
        if flight.waiter is not None and not flight.waiter.done():
            flight.waiter.set_result(None)

    def _route(self, subject: t.Any, reply: t.Any, data: bytes) -> bool:
        """Runs in nats-py's parser for every message: keep it short."""
        topic = self._topic_of.get(bytes(subject))
        if topic is not None:
            reply_to = reply.decode(errors="surrogateescape") if reply else None
            self._inbox.append((topic, data, reply_to))
            wake = self._wake
            if not wake.is_set():
                wake.set()
            return True
        if subject == self._marker_key:
            if data.isdigit():  # anything else is not ours
                self._confirm(int(data))
            return True
        return False

    def _offline(self, batch: _Batch, start: int) -> None:
        """Without a connection: buffer publishes, record (un)subscriptions."""
        for index in range(start, len(batch.ops)):
            kind, name, data = batch.ops[index]
            if kind == _PUB:
                try:
                    self._outage.add(name, data)
                except BrokerUnavailable as exc:
                    batch.fail(index, exc)
            elif kind == _SUB:
                self._wanted.add(name)
            elif kind == _UNSUB:
                self._wanted.discard(name)
            elif kind == _REQUEST:
                batch.fail(
                    index,
                    BrokerUnavailable(
                        f"the {self.kind} broker at {self._where} is unreachable"
                    ),
                )
            # A reply is dropped: its requester stops waiting before we are back.
        batch.done.set()

    def _ask(self, nc: _Client, batch: _Batch) -> None:
        task = asyncio.get_running_loop().create_task(self._request(nc, batch))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _request(self, nc: _Client, batch: _Batch) -> None:
        _, subject, data = batch.ops[0]
        try:
            message = await nc.request(subject, data, timeout=batch.timeout)
            batch.result = message.data
        except nats_errors.NoRespondersError:
            batch.result = None  # the server says nobody subscribes
        except nats_errors.TimeoutError:
            batch.fail(0, TimeoutError(f"no reply within {batch.timeout} s"))
        except asyncio.CancelledError:
            batch.fail(
                0,
                BrokerUnavailable(
                    f"lost the connection to the {self.kind} broker at {self._where}"
                ),
            )
        except nats_errors.Error as exc:
            batch.fail(
                0, BrokerUnavailable(f"the {self.kind} broker at {self._where}: {exc}")
            )
        finally:
            batch.done.set()

    async def _sub(self, nc: _Client, topic: str) -> None:
        if topic in self._subs:
            return
        subject = _subject(topic)
        self._topic_of[subject.encode()] = topic
        self._subs[topic] = await nc.subscribe(subject)

    async def _unsub(self, topic: str) -> None:
        sub = self._subs.pop(topic, None)
        if sub is None:
            return
        self._topic_of.pop(_subject(topic).encode(), None)
        try:
            await sub.unsubscribe()
        except nats_errors.Error:
            pass  # the connection is gone, and the subscription with it

    # -- connection life ----------------------------------------------------

    async def _connect(self, delay: float = 0.0) -> None:
        """A new client; nats-py retries its first connection forever."""
        if delay:
            await asyncio.sleep(delay)
        self._subs.clear()
        self._topic_of.clear()
        self._marker_sub = None
        nc = self._nc = _Client(self._route)
        try:
            await nc.connect(
                servers=self._servers,
                name=f"flask_realtime pid {os.getpid()}",
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                closed_cb=self._on_closed,
                allow_reconnect=True,
                max_reconnect_attempts=-1,  # never give up, at start or later
                reconnect_time_wait=self._backoff.first,  # then _on_error's backoff
                connect_timeout=_CONNECT_TIMEOUT,  # type: ignore[arg-type]
                ping_interval=_PING_INTERVAL,
                max_outstanding_pings=2,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # nats-py gave up on this client: a new one
            delay = self._backoff.next_delay()
            self._warn(
                f"cannot connect to the {self.kind} broker at {self._where}:"
                f" {_describe(exc)}"
            )
            self._tasks["connect"] = asyncio.get_running_loop().create_task(
                self._connect(delay)
            )
            return
        self._synchronise()

    def _synchronise(self) -> None:
        if self._state is _CLOSED:
            return
        self._state = _SYNCING
        self._backoff.reset()
        self._tasks["sync"] = asyncio.get_running_loop().create_task(self._resync())

    async def _resync(self) -> None:
        """Subscriptions first, then what was lost or buffered, then up."""
        nc = self._nc
        assert nc is not None
        if self._marker_sub is None:
            self._marker_sub = await nc.subscribe(self._markers)
        await self._reconcile(nc)
        # Whatever nats-py re-sent from its own buffer went out before this
        # marker: the flights it confirms arrived, the others were lost.
        await self._fly(nc, self._track(_Flight()))
        while True:
            flight = self._regroup()
            if not flight.pubs and self._subs.keys() == self._wanted:
                break
            await self._reconcile(nc)
            await self._fly(nc, flight)
        self._inflight.clear()
        self._state = _UP
        assert self._work is not None
        self._work.set()
        self._warned_at = None
        log.info(
            "%s the %s broker at %s",
            "reconnected to" if self._ever_up else "connected to",
            self.kind,
            self._where,
        )
        self._ever_up = True

    def _track(self, flight: _Flight) -> _Flight:
        self._inflight.append(flight)
        return flight

    def _regroup(self) -> _Flight:
        """One flight with every unconfirmed then every buffered publish, in order."""
        flight = _Flight()
        for old in self._inflight:
            flight.pubs.extend(old.pubs)
            if old.batch is not None:
                old.batch.done.set()
        flight.pubs.extend(self._outage.drain())
        # Swapped in one step, so a cancelled resync loses nothing.
        self._inflight = deque([flight])
        return flight

    async def _fly(self, nc: _Client, flight: _Flight) -> None:
        flight.waiter = asyncio.get_running_loop().create_future()
        for subject, data in flight.pubs:
            try:
                await nc.publish(subject, data)
            except nats_errors.MaxPayloadError:
                log.error(
                    "dropped a buffered %d-byte message: over the %s max_payload",
                    len(data),
                    self.kind,
                )
        await self._mark(nc, flight)
        await flight.waiter

    async def _reconcile(self, nc: _Client) -> None:
        for topic in [topic for topic in self._wanted if topic not in self._subs]:
            await self._sub(nc, topic)
        for topic in [topic for topic in self._subs if topic not in self._wanted]:
            await self._unsub(topic)

    async def _on_error(self, exc: Exception) -> None:
        nc = self._nc
        if nc is not None and nc.is_connected:
            # Errors on a live connection: permissions, slow consumer. A lost
            # connection is reported by _on_disconnected.
            if not isinstance(
                exc, nats_errors.UnexpectedEOF | nats_errors.StaleConnectionError
            ):
                log.warning(
                    "the %s broker at %s: %s", self.kind, self._where, _describe(exc)
                )
            return
        # A failed connection attempt. nats-py waits reconnect_time_wait
        # before the next one: make that our backoff.
        if nc is not None:
            nc.options["reconnect_time_wait"] = self._backoff.next_delay()
        if self._state is _SYNCING:
            self._go_down()
        self._warn(
            f"cannot reach the {self.kind} broker at {self._where}:"
            f" {_describe(exc)}; retrying"
        )

    async def _on_disconnected(self) -> None:
        if self._state is _CLOSED:
            return
        if self._state is not _DOWN:
            log.warning(
                "lost the connection to the %s broker at %s; reconnecting",
                self.kind,
                self._where,
            )
        self._go_down()

    async def _on_reconnected(self) -> None:
        self._synchronise()

    async def _on_closed(self) -> None:
        if self._state is _CLOSED:
            return
        # nats-py closed this client for good (the server refused it): start
        # another, which re-subscribes everything.
        self._go_down()
        delay = self._backoff.next_delay()
        self._warn(
            f"the {self.kind} broker at {self._where} closed the connection;"
            " reconnecting"
        )
        self._tasks["connect"] = asyncio.get_running_loop().create_task(
            self._connect(delay)
        )

    def _go_down(self) -> None:
        self._state = _DOWN
        sync = self._tasks.pop("sync", None)
        if sync is not None:
            sync.cancel()
        for flight in self._inflight:
            if flight.batch is not None:
                flight.batch.done.set()  # their messages are resent if lost
        for task in list(self._requests):
            task.cancel()
        assert self._work is not None
        self._work.set()

    def _warn(self, message: str) -> None:
        """A WARNING, then at most one per _WARN_EVERY while it lasts."""
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            log.warning("%s", message)

    def _closed_error(self) -> BrokerUnavailable:
        return BrokerUnavailable(f"the {self.kind} broker at {self._where} is closed")

    def _fail(self, batch: _Batch, exc: BaseException) -> None:
        for index in range(len(batch.ops)):
            batch.fail(index, exc)
        batch.done.set()

    def _shutdown(self, done: t.Any) -> None:
        asyncio.get_running_loop().create_task(self._finish(done))

    async def _finish(self, done: t.Any) -> None:
        self._state = _CLOSED
        tasks = [task for task in self._tasks.values() if task is not None]
        tasks.extend(self._requests)
        for task in tasks:
            task.cancel()
        if self._timer is not None:
            self._timer.cancel()
        error = self._closed_error()
        with self._lock:
            batch, self._open = self._open, None
        for queued in [*self._queue, batch]:
            if queued is not None:
                self._fail(queued, error)
        self._queue.clear()
        for flight in self._inflight:
            if flight.batch is not None:
                flight.batch.done.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        nc = self._nc
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), _CLOSE_WAIT)
            except Exception as exc:  # closing a broken link: nothing to save
                log.debug("closing the %s connection: %s", self.kind, _describe(exc))
        done.set()
