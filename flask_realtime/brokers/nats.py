"""NATS through nats-py's public API: one connection, one subscription per topic.

nats-py is asyncio only: its loop runs in a thread of its own (see
:mod:`._asyncio_thread`), and the base's reader takes messages from an inbox.

"Accepted" needs a round trip, and ``flush()`` cannot give it (it writes its
PING ahead of the PUBs still in nats-py's buffer). So a batch ends with a
marker published to this connection's control subject; the server handles a
connection's commands in order, so the marker coming back means everything
before it was routed. Each message carries a reply subject on the control
subscription too (``<control>.<batch>_<index>``): the server answers one that
nobody subscribes to with an empty "503" message there, ahead of the marker,
and publish returns 0 for it. Without its marker within a second a batch
returns unconfirmed (a frozen server that thaws delivers it once); lost with
its connection, it is sent again on reconnect: at least once.

nats-py hands each subscription's messages to a task of its own, which
regroups them by subject. Every message it builds goes through the
pluggable ``msg_class``, in the server's order: there this connection
queues a slot, the subscription's callback fills it, and the inbox gets the
slots in their order as they fill.

Subjects are ``flask_realtime.t.<topic>`` with every character but
``[A-Za-z0-9_-:=@#]`` percent-encoded, so a topic is always one literal token.
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
from collections import deque
from urllib.parse import urlsplit, urlunsplit

from nats import errors as nats_errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from ..config import ConfigError, Settings
from ._asyncio_thread import LoopThread, Signal
from ._support import redact
from .base import BrokerBase, LinkLost, MessageCallback

log = logging.getLogger("flask_realtime")

_TOPICS = "flask_realtime.t."
_CONTROL = "flask_realtime.r."
_SCHEMES = ("nats", "tls", "ws", "wss")
_CONNECT_TIMEOUT = 2.0  # TCP connect and the server's INFO, per attempt
_CONFIRM_WAIT = 1.0  # a batch returns unconfirmed after this
_CHECK_WAIT = 2.0  # connecting or subscribing waits this long for its marker
_PING_INTERVAL = 10  # a silent dead link is noticed after 2 unanswered pings
_TICK = 1.0  # the reader looks up at least this often
_SLICE = 1000  # messages the reader delivers between two looks at the clock
_LOST = object()  # in the inbox: the connection is gone; in a slot: unsubscribed
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-:=@#]+")
# A child of fork keeps the parent's loop referenced and untouched: closing
# it would unregister the parent's sockets from their shared epoll.
_inherited: list[t.Any] = []


def _escape(match: re.Match[str]) -> str:
    return "".join(
        f"%{byte:02X}" for byte in match.group().encode("utf-8", "surrogatepass")
    )


@functools.lru_cache(maxsize=65536)
def _subject(topic: str) -> str:
    """The NATS subject of ``topic``: one literal token, distinct per topic."""
    # '%' is escaped too, so the encoding is reversible; "%" alone stands for "".
    return _TOPICS + (_UNSAFE.sub(_escape, topic) or "%")


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


class _Slot:
    """One message's place in the server's order; ``data`` None until it arrives."""

    __slots__ = ("topic", "data")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.data: t.Any = None


class _Round:
    """A batch (or a check) on its way: done when its marker comes back."""

    __slots__ = ("future", "empty")

    def __init__(self) -> None:
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.empty: set[int] = set()  # indexes of messages nobody subscribes to


class _Link:
    """One nats-py connection and what arrived on it. Lives in the loop
    thread, but for ``inbox`` and ``idle``, which the reader shares."""

    def __init__(self, unconfirmed: dict[int, t.Any]) -> None:
        self.nc = Client()
        self.nc.msg_class = self._stamp  # type: ignore[assignment]
        self.control = _CONTROL + secrets.token_hex(8)
        self.subs: dict[str, t.Any] = {}  # topic -> nats-py Subscription
        self.topic_of: dict[str, str] = {}  # subject -> topic
        self.waiting: dict[str, deque[_Slot]] = {}  # subject -> its slots to fill
        self.order: deque[_Slot] = deque()
        self.rounds: dict[int, _Round] = {}
        self.unconfirmed = unconfirmed  # the broker's: batch -> messages
        self.changing = asyncio.Lock()  # one (un)subscription at a time, in order
        self.inbox: deque[t.Any] = deque()
        self.wake = Signal()  # of the reader's world: made in the reader
        self.idle = False  # the reader waits for wake
        self.error: BaseException | None = None
        self.dead = False
        self.warned = False

    def _stamp(self, **fields: t.Any) -> Msg:
        """nats-py's ``msg_class``: called in the server's order."""
        msg = Msg(**fields)
        topic = self.topic_of.get(msg.subject)
        if topic is not None:
            slot = _Slot(topic)
            self.order.append(slot)
            self.waiting[msg.subject].append(slot)
        return msg

    async def on_topic(self, msg: Msg) -> None:
        slots = self.waiting.get(msg.subject)
        if slots:
            slots.popleft().data = msg.data
            self._release()

    def _release(self) -> None:
        order, released = self.order, False
        while order and order[0].data is not None:
            slot = order.popleft()
            if slot.data is not _LOST:
                self.inbox.append((slot.topic, slot.data))
                released = True
        if released and self.idle:
            self.idle = False
            self.wake.set_threadsafe()

    async def on_control(self, msg: Msg) -> None:
        batch, _, index = msg.subject[len(self.control) + 1 :].partition("_")
        if not batch.isdigit():
            return
        if not index:  # a marker
            self.unconfirmed.pop(int(batch), None)  # confirmed late: not resent
            done = self.rounds.pop(int(batch), None)
            if done is not None and not done.future.done():
                done.future.set_result(None)
        elif (msg.headers or {}).get("Status") == "503" and index.isdigit():
            done = self.rounds.get(int(batch))
            if done is not None:
                done.empty.add(int(index))

    async def subscribe(self, topics: list[str]) -> None:
        async with self.changing:
            for topic in topics:
                if topic in self.subs:
                    continue
                subject = _subject(topic)
                self.topic_of[subject] = topic
                self.waiting[subject] = deque()
                # No limits: nats-py never drops a message, so no slot stays empty.
                self.subs[topic] = await self.nc.subscribe(
                    subject,
                    cb=self.on_topic,
                    pending_msgs_limit=0,
                    pending_bytes_limit=0,
                )

    async def unsubscribe(self, topics: list[str]) -> None:
        async with self.changing:
            for topic in topics:
                sub = self.subs.pop(topic, None)
                if sub is None:
                    continue
                try:
                    await sub.unsubscribe()  # drops what its queue still holds
                except nats_errors.Error:
                    pass  # the connection is gone, and the subscription with it
                subject = _subject(topic)
                del self.topic_of[subject]
                for slot in self.waiting.pop(subject):
                    slot.data = _LOST
            self._release()

    async def lost(self, *_: t.Any) -> None:
        """nats-py's disconnected and closed callback: the reader raises."""
        if self.dead:
            return
        self.dead = True
        for done in self.rounds.values():
            if not done.future.done():
                done.future.set_exception(LinkLost("the connection was lost"))
        self.rounds.clear()
        self.inbox.append(_LOST)
        self.wake.set_threadsafe()

    async def on_error(self, exc: Exception) -> None:
        self.error = exc
        if self.nc.is_connected:
            log.warning("the nats broker: %s", exc)  # a permission refused, say

    async def check(self, number: int, timeout: float) -> _Round:
        """Publish marker ``number`` and wait for it; its round."""
        done = self.rounds[number] = _Round()
        await self.nc.publish(f"{self.control}.{number}")
        await asyncio.wait_for(done.future, timeout)
        return done


class NatsBroker(BrokerBase):
    """Topics as NATS subjects; see the module docstring."""

    kind = "nats"
    link_errors = (OSError, nats_errors.Error, asyncio.TimeoutError)

    def __init__(self, settings: Settings, on_message: MessageCallback) -> None:
        self._servers = _parse_servers(settings.broker_url or settings.nats_url)
        self._loop: LoopThread | None = None
        self._link: _Link | None = None
        self._numbers = 0  # numbers batches and checks (loop thread only)
        self._unconfirmed: dict[int, list[tuple[str, bytes]]] = {}  # loop thread only
        url = ", ".join(_hide(server) for server in self._servers)
        super().__init__(url, settings.broker_buffer, on_message)
        self.url = url  # a token is a user name to redact(): hidden here

    def publish(self, topic: str, data: bytes) -> int | None:
        link = self._link
        if (
            link is not None
            and link.nc.is_connected
            and len(data) > link.nc.max_payload
        ):
            raise ValueError(
                f"{len(data)} bytes exceed the nats server's max_payload"
                f" of {link.nc.max_payload} bytes"
            )
        return super().publish(topic, data)

    def _number(self) -> int:
        self._numbers += 1
        return self._numbers

    # -- the reader's -----------------------------------------------------------

    def _connect(self, topics: list[str]) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = LoopThread()
        link = self._link = _Link(self._unconfirmed)
        attempts = 2 * len(self._servers)  # nats-py tries each server twice
        loop.run(self._open(link, topics), attempts * (_CONNECT_TIMEOUT + 1) + 5)

    async def _open(self, link: _Link, topics: list[str]) -> None:
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
        await link.nc.subscribe(
            f"{link.control}.*",
            cb=link.on_control,
            pending_msgs_limit=0,
            pending_bytes_limit=0,
        )
        await link.subscribe(topics)
        resent = list(self._unconfirmed.items())
        for _, messages in resent:  # lost with the last connection, maybe
            for topic, data in messages:
                try:
                    await link.nc.publish(_subject(topic), data)
                except nats_errors.MaxPayloadError:
                    pass
        await link.check(self._number(), _CHECK_WAIT)
        for number, _ in resent:
            self._unconfirmed.pop(number, None)

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
                if item is _LOST:
                    raise LinkLost(str(link.error or "the connection was lost"))
                self._deliver(*item)
            link.wake.clear()
            link.idle = True
            if not inbox:
                link.wake.wait(max(0.0, ticked + _TICK - time.monotonic()))
            link.idle = False

    # -- any greenlet's ------------------------------------------------------------

    def _send_batch(
        self, messages: list[tuple[str, bytes]]
    ) -> list[int | None | Exception]:
        link, loop = self._link, self._loop
        if link is None or loop is None:
            raise LinkLost("not connected")
        return loop.run(self._publish(link, messages), _CONFIRM_WAIT + 5.0)

    async def _publish(
        self, link: _Link, messages: list[tuple[str, bytes]]
    ) -> list[int | None | Exception]:
        number = self._number()
        counts: list[int | None | Exception] = [None] * len(messages)
        reply = f"{link.control}.{number}_"
        try:
            for index, (topic, data) in enumerate(messages):
                try:
                    await link.nc.publish(
                        _subject(topic), data, reply=reply + str(index)
                    )
                except nats_errors.MaxPayloadError:
                    counts[index] = ValueError(f"{len(data)} bytes exceed max_payload")
            done = await link.check(number, _CONFIRM_WAIT)
        except asyncio.TimeoutError:
            link.rounds.pop(number, None)
            self._unconfirmed[number] = messages  # sent again if the link dies
            if not link.warned:
                link.warned = True
                log.warning(
                    "the nats broker at %s has not confirmed publishes within %s s",
                    self.url,
                    _CONFIRM_WAIT,
                )
            return counts
        except (nats_errors.Error, OSError) as exc:
            link.rounds.pop(number, None)
            raise LinkLost(str(exc) or type(exc).__name__) from exc
        for index in done.empty:
            if counts[index] is None:
                counts[index] = 0
        return counts

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
        self, link: _Link, topics: list[str], done: Signal
    ) -> None:
        try:
            await link.subscribe(topics)
            await link.check(self._number(), _CHECK_WAIT)
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
    async def _close(link: _Link | None, stop: bool) -> None:
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
        self._unconfirmed = {}  # the parent's
