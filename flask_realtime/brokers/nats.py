"""NATS through nats-py's public API: one connection, one subscription per topic.

nats-py is asyncio only: its loop runs in a thread of its own
(:mod:`._nats_loop`) and the base's reader takes messages from an inbox, in
the server's order (see :mod:`._nats_link`). Subjects are
``flask_realtime.t.<topic>``, a topic always one literal token
(:func:`._nats_link.subject`).

"Accepted" needs a round trip, and ``flush()`` cannot give it (it writes its
PING ahead of the PUBs still in nats-py's buffer). So a batch ends with a
marker published to this connection's control subject; the server handles a
connection's commands in order, so the marker coming back means everything
before it was routed. Each message carries a reply subject on the control
subscription too: the server answers one that nobody subscribes to with an
empty "503" message there, ahead of the marker, and publish returns 0 for
it. Without its marker within a second a batch returns unconfirmed (a
frozen server that thaws delivers it once); lost with its connection, it is
sent again on reconnect: at least once, never silently dropped.

Kept topics (history) go through JetStream instead: ``_nats_history.py``.
A batch that holds one waits for JetStream's acknowledgements as well as
its marker; what JetStream did not acknowledge in time is sent again by the
base (at least once, too).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import typing as t
from urllib.parse import urlsplit, urlunsplit

from nats import errors as nats_errors

from ..config import ConfigError, Settings
from ._nats_history import NatsHistory
from ._nats_link import LOST, Link, Messages, Unconfirmed, escape
from ._nats_loop import LoopThread, Signal
from ._support import redact
from .base import BrokerBase, BrokerUnavailable, LinkLost, MessageCallback
from .interface import Position

log = logging.getLogger("flask_realtime")

_SCHEMES = ("nats", "tls", "ws", "wss")
_CONNECT_TIMEOUT = 2.0  # TCP connect and the server's INFO, per attempt
_CONFIRM_WAIT = 1.0  # a batch returns unconfirmed after this
_CHECK_WAIT = 2.0  # connecting or subscribing waits this long for its marker
_STORE_WAIT = 3.0  # a batch with kept topics: JetStream stores it within this
_READ_WAIT = 5.0  # a history read answers within this
_LOOP_WAIT = 5.0  # beyond those: the loop never answered (a bug, not an outage)
_PING_INTERVAL = 10  # a silent dead link is noticed after 2 unanswered pings
_TICK = 1.0  # the reader looks up at least this often
_SLICE = 1000  # messages the reader delivers between two looks at the clock
# A child of fork keeps the parent's loop referenced and untouched: closing
# it would unregister the parent's sockets from their shared epoll.
_inherited: list[t.Any] = []


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


def _parse_servers(url: str) -> list[str]:
    """The server URLs of ``url`` (comma-separated for a cluster), checked."""
    servers = []
    for part in filter(None, (part.strip() for part in url.split(","))):
        part = part if "://" in part else "nats://" + part
        try:
            parts = urlsplit(part)
            valid = parts.scheme in _SCHEMES and bool(parts.hostname)
            valid = valid and parts.port != 0
        except ValueError:  # a port that is not a number
            valid = False
        if not valid:
            raise ConfigError(
                f"not a NATS server URL: {_hide(part)!r}"
                " (nats://[user:password@]host:port)"
            )
        servers.append(part)
    if not servers:
        raise ConfigError(
            "the NATS URL is empty (REALTIME_NATS_URL or REALTIME_BROKER_URL)"
        )
    return servers


class NatsBroker(BrokerBase):
    """Topics as NATS subjects; see the module docstring."""

    kind = "nats"
    link_errors = (OSError, nats_errors.Error, asyncio.TimeoutError)

    def __init__(self, settings: Settings, on_message: MessageCallback) -> None:
        self._servers = _parse_servers(settings.broker_url or settings.nats_url)
        self._loop: LoopThread | None = None
        self._link: Link | None = None
        self._unconfirmed = Unconfirmed()  # the loop thread's
        self._history = NatsHistory()  # the loop thread's
        url = ", ".join(_hide(server) for server in self._servers)
        super().__init__(url, settings.broker_buffer, on_message)
        self.url = url  # redact() alone would show a token

    def publish(self, topic: str, data: bytes) -> int | None:
        link = self._link
        if link is not None and link.nc.is_connected:
            if len(data) > link.nc.max_payload:
                raise ValueError(
                    f"{len(data)} bytes exceed the nats server's max_payload"
                    f" of {link.nc.max_payload} bytes"
                )
        return super().publish(topic, data)

    # -- the reader's --------------------------------------------------------------

    def _connect(self, topics: list[str]) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = LoopThread()
        link = self._link = Link(self._unconfirmed)
        attempts = 2 * len(self._servers)  # nats-py tries each server twice
        limit = attempts * _CONNECT_TIMEOUT + _CHECK_WAIT + _LOOP_WAIT
        loop.run(self._open(link, topics), limit)

    async def _open(self, link: Link, topics: list[str]) -> None:
        try:
            await link.nc.connect(
                servers=self._servers,  # a list: nats-py takes no commas
                name=f"flask_realtime pid {os.getpid()}",
                error_cb=link.on_error,
                disconnected_cb=link.lost,
                closed_cb=link.lost,
                allow_reconnect=False,  # the base's reader reconnects
                max_reconnect_attempts=1,  # 0 would retry forever
                reconnect_time_wait=0,
                connect_timeout=_CONNECT_TIMEOUT,  # type: ignore[arg-type]
                ping_interval=_PING_INTERVAL,
                max_outstanding_pings=2,
            )
        except Exception as exc:
            # Not "no servers" but why: "Authorization Violation", say.
            raise (link.error or exc) from None
        self._history.reset()  # the server may have restarted, or lost its data
        await link.listen(f"{link.control}.*", link.on_control)
        await link.listen(link.answer_prefix + "*", link.on_answer)
        await link.subscribe(topics)
        # Lost with the last connection, maybe: sent again, before the buffer.
        resent = dict(self._unconfirmed.batches)
        messages = [message for batch in resent.values() for message in batch]
        if not (await link.send(messages, _CHECK_WAIT, replies=False)).confirmed:
            raise LinkLost("no answer from the server")
        for number in resent:
            self._unconfirmed.batches.pop(number, None)

    def _read(self) -> None:
        link = self._link
        if link is None:
            return
        inbox, ticked = link.inbox, time.monotonic()
        while True:
            if time.monotonic() - ticked >= _TICK:  # busy or idle
                ticked = time.monotonic()
                if not self._tick():
                    return
            for _ in range(min(len(inbox), _SLICE)):
                item = inbox.popleft()
                if item is LOST:
                    raise LinkLost(str(link.error or "the connection was lost"))
                self._deliver(*item)
            link.wake.clear()
            link.idle = True
            if not inbox:
                link.wake.wait(max(0.0, ticked + _TICK - time.monotonic()))
            link.idle = False

    # -- any greenlet's --------------------------------------------------------------

    def _send_batch(self, messages: Messages) -> list[int | None | Exception]:
        link, loop = self._link, self._loop
        if link is None or loop is None:
            raise LinkLost("not connected")
        if any(self.retention(topic) for topic, _ in messages):
            return loop.run(self._store(link, messages), _STORE_WAIT + _LOOP_WAIT)
        # As sent (and as sent again, when unconfirmed): see _nats_link.escape.
        sent = escape(messages)
        return loop.run(self._publish(link, sent), _CONFIRM_WAIT + _LOOP_WAIT)

    async def _store(
        self, link: Link, messages: Messages
    ) -> list[int | None | Exception]:
        try:
            return await self._history.send(link, messages, self.retention, _STORE_WAIT)
        except (nats_errors.Error, OSError, asyncio.TimeoutError) as exc:
            raise LinkLost(str(exc) or type(exc).__name__) from exc

    def _read_history(
        self, topic: str, after: int | None, limit: int | None
    ) -> tuple[Position, list[bytes] | None]:
        link, loop = self._link, self._loop
        if link is None or loop is None:
            raise BrokerUnavailable(f"the nats broker at {self.url} is unreachable")
        rule = self.retention(topic)
        try:
            return loop.run(
                self._history.read(link, topic, rule, after, limit), _READ_WAIT
            )
        except (nats_errors.Error, OSError, asyncio.TimeoutError) as exc:
            raise BrokerUnavailable(
                f"reading history from the nats broker at {self.url} failed: {exc}"
            ) from exc

    async def _publish(
        self, link: Link, messages: Messages
    ) -> list[int | None | Exception]:
        try:
            done = await link.send(messages, _CONFIRM_WAIT, replies=True)
        except (nats_errors.Error, OSError) as exc:
            raise LinkLost(str(exc) or type(exc).__name__) from exc
        if not done.confirmed:
            self._unconfirmed.batches[done.number] = messages  # resent if lost
            log.log(
                logging.DEBUG if link.warned else logging.WARNING,
                "the nats broker at %s has not confirmed publishes within %s s",
                self.url,
                _CONFIRM_WAIT,
            )
            link.warned = True
        return done.counts

    def _subscribe(self, topics: list[str]) -> Signal | None:
        link, loop = self._link, self._loop
        if link is None or loop is None:
            raise LinkLost("not connected")
        done = Signal()
        loop.soon(self._subscribe_and_check(link, topics, done))
        if self._in_reader():
            # The loop confirms, not the reader: what on_message publishes
            # next finds the subscription in place.
            done.wait(_CHECK_WAIT)
            return None
        return done

    async def _subscribe_and_check(
        self, link: Link, topics: list[str], done: Signal
    ) -> None:
        try:
            await link.subscribe(topics)
            await link.send([], _CHECK_WAIT, replies=False)
            # In place: each kept topic's live messages are ordered from here.
            await self._history.floor(link, topics, self.retention)
        except Exception as exc:  # the link is gone: subscribed again on reconnect
            log.debug("subscribing on the nats broker: %s", exc)
        finally:
            done.set_threadsafe()

    def _unsubscribe(self, topics: list[str]) -> None:
        link, loop = self._link, self._loop
        if link is None or loop is None:
            raise LinkLost("not connected")
        loop.soon(link.unsubscribe(topics))

    def _disconnect(self) -> None:
        link, loop = self._link, self._loop
        self._link = None
        if self._closed:
            self._loop = None
        if loop is not None:
            loop.soon(self._close(link, stop=self._closed))

    @staticmethod
    async def _close(link: Link | None, stop: bool) -> None:
        if link is not None:
            await link.lost()
            try:
                await asyncio.wait_for(link.nc.close(), _CHECK_WAIT)
            except Exception as exc:  # closing a broken link: nothing to save
                log.debug("closing the nats connection: %s", exc)
        if stop:
            asyncio.get_running_loop().stop()

    def _drop_after_fork(self) -> None:
        _inherited.append((self._loop, self._link))
        self._loop = self._link = None
        self._unconfirmed = Unconfirmed()  # the parent's batches
        self._history = NatsHistory()
