"""Streams RabbitMQ has finished making, checked before a node uses them.

RabbitMQ 3.10 answers a stream's ``queue.declare`` at once ("it exists")
while another connection is still making that stream. Touching the stream
on a channel then fails: a consume with PRECONDITION_FAILED ("does not have
a replica on the local node": the stream's member on this RabbitMQ node is
not running yet), a channel error, or, a little earlier, the channel
crashes (``stream_not_found``: the stream coordinator does not know it yet)
and RabbitMQ closes the whole connection with INTERNAL_ERROR; a publish the
same. Several connections declare a new kept topic's stream at once (a
node's reads, its follows and its writer; other nodes), so this happens in
a storm of first subscribes to new channels. On the node's consumer
connection it took down everything that connection carries: every follow,
the writer's inbox consumers and appends, the answers to reads (503s).

So :class:`StreamChecks` checks each stream first on a connection of its
own, made for a batch of checks and closed after it (closing ends its
consumers: no cancel, nothing to settle): a consume there that RabbitMQ
accepts tells the stream runs on this RabbitMQ node. One that fails costs
only that connection; the streams not yet confirmed are checked again
after a short backoff (``_FIRST_DELAY`` doubling to ``_MOST_DELAY``) until
their deadline (``READY_WAIT``), and then given to their users anyway. The
checks run in a greenlet (or thread) of their own while there are any;
whoever asks is told through a callback, from there.
"""

from __future__ import annotations

import logging
import time
import typing as t

import pika.exceptions

from .._runtime import real_lock, sleep, spawn
from ._amqp import CALL_TIMEOUT, Link
from ._support import LinkLost

log = logging.getLogger("flask_realtime")

READY_WAIT = 10.0  # a stream's checks give up after this (then it is used anyway)
_FIRST_DELAY, _MOST_DELAY = 0.01, 0.2  # between failed checks
_AT_ONCE = 100  # consumes per checking connection (each holds a stream reader)
_NOT_FOUND = 404
# A stream declared, then found missing this many times in a row: RabbitMQ
# lost track of it (its stream coordinator; see ``_missing_again``).
STUCK_AFTER = 20

Then = t.Callable[[bool], None]  # True: ready; False: the deadline passed


class StreamChecks:
    """Which streams run on the RabbitMQ node; see the module docstring.

    ``connect()`` opens a connection for a batch of checks."""

    def __init__(self, connect: t.Callable[[], Link]) -> None:
        self._connect = connect
        self.ready: set[str] = set()  # confirmed (until ``forget``)
        self.stuck: set[str] = set()  # declared, then missing again and again
        self.checks = 0  # consumes sent to check (for tests)
        self._lock = real_lock()  # never held across I/O
        self._waiting: dict[str, list[Then]] = {}
        self._since: dict[str, float] = {}
        self._queue: list[str] = []  # to check, in order
        self._missing: dict[str, int] = {}  # NOT_FOUNDs in a row
        self._running = False  # a checker is at work
        self._closed = False

    def when_ready(self, name: str, then: Then) -> None:
        """``then(True)`` once stream ``name`` is ready (at once, here, if
        known to be), ``then(False)`` when it still is not after
        ``READY_WAIT``; from the checker otherwise (any greenlet may ask)."""
        with self._lock:
            known = name in self.ready
            if not known:
                if name not in self._waiting:
                    self._waiting[name] = []
                    self._since[name] = time.monotonic()
                    self._queue.append(name)
                self._waiting[name].append(then)
                start, self._running = not self._running, True
        if known:
            then(True)
        elif start:
            spawn(self._work)

    def forget(self, name: str) -> None:
        """``name`` was deleted (and declared again), or RabbitMQ restarted:
        check it anew before its next use."""
        with self._lock:
            self.ready.discard(name)

    def forget_all(self) -> None:
        with self._lock:
            self.ready.clear()

    def close(self) -> None:
        """No more checks; those waiting are told False."""
        with self._lock:
            self._closed = True
            waiting, self._waiting, self._queue = self._waiting, {}, []
        for thens in waiting.values():
            for then in thens:
                then(False)

    # -- the checker ------------------------------------------------------------------

    def _work(self) -> None:
        delay = _FIRST_DELAY
        try:
            while True:
                with self._lock:
                    batch = self._queue[:_AT_ONCE]
                    del self._queue[:_AT_ONCE]
                    if not batch or self._closed:
                        self._running = False
                        return
                confirmed, code = self._check(batch)
                for name in confirmed:
                    self._settle(name, True)
                failed = batch[len(confirmed) :]
                if not failed:
                    delay = _FIRST_DELAY
                    continue
                log.debug("stream %s is not ready yet (%s)", failed[0], code)
                self._missing_again(failed[0], code)
                with self._lock:
                    self._queue[:0] = failed  # first again, in order
                self._expire()
                sleep(delay)
                delay = min(delay * 2, _MOST_DELAY)
        except BaseException:
            with self._lock:
                self._running = False
            raise

    def _check(self, batch: list[str]) -> tuple[list[str], int | None]:
        """Consume each of ``batch`` on a new connection, in order: those
        RabbitMQ accepted before one failed, and the failure's reply code."""
        confirmed: list[str] = []
        try:
            link = self._connect()
        except Exception as exc:  # noqa: BLE001 - the broker is away: later
            return confirmed, getattr(exc, "reply_code", None)
        try:
            link.call(link.channel.basic_qos, prefetch_count=1)  # streams need one
            for name in batch:
                self.checks += 1
                link.consume_soon(
                    name,
                    {"x-stream-offset": "next"},
                    lambda _tag, name=name: link.wake(confirmed.append(name)),
                )
            link.wait(lambda: len(confirmed) == len(batch), CALL_TIMEOUT)
        except (LinkLost, OSError, pika.exceptions.AMQPError):
            pass  # the failure is in link.code
        finally:
            link.close()
        return confirmed, link.code

    def _missing_again(self, name: str, code: int | None) -> None:
        """A stream this node declared that RabbitMQ then says is missing,
        again and again, is lost: say so once, loudly, with the fix."""
        if code != _NOT_FOUND:
            self._missing.pop(name, None)
            return
        missing = self._missing[name] = self._missing.get(name, 0) + 1
        if missing == STUCK_AFTER and name not in self.stuck:
            self.stuck.add(name)
            log.error(
                "RabbitMQ declared the stream queue %s but then says it does"
                " not exist (%d times in a row): its stream coordinator has"
                " most likely lost track of its streams (a node killed right"
                " after streams were declared). Delete the stream queues"
                " (rabbitmqctl delete_queue) or reset and restart RabbitMQ;"
                " until then this channel's history cannot be read.",
                name,
                missing,
            )

    def _expire(self) -> None:
        """Give up on streams whose deadline passed (their users go on)."""
        now = time.monotonic()
        with self._lock:
            late = [n for n in self._queue if now - self._since[n] >= READY_WAIT]
            self._queue = [n for n in self._queue if n not in late]
        for name in late:
            log.warning(
                "RabbitMQ's stream %s is still not ready after %s s; used anyway",
                name,
                READY_WAIT,
            )
            self._settle(name, False)

    def _settle(self, name: str, ready: bool) -> None:
        with self._lock:
            if ready:
                self.ready.add(name)
                self._missing.pop(name, None)
                self.stuck.discard(name)
            self._since.pop(name, None)
            thens = self._waiting.pop(name, [])
        for then in thens:
            then(ready)
