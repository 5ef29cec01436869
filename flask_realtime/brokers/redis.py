"""Redis pub/sub: one subscribed connection, one publishing connection.

Two connections because a subscribed connection takes nothing but
(UN)SUBSCRIBE and PING, while a publisher reads PUBLISH's answer, the number
of receivers: that answer is the "accepted" and the receiver count of
``publish``. Concurrent publishers share one pipeline (the base's group
commit), written with ``pack_commands`` and answered through
``read_response``: redis-py's public connection API, fast with hiredis.

Channel names are ``flask_realtime:<db>:<topic>``. Redis pub/sub ignores the
database number, so the prefix is what keeps two deployments on one server
with different ``db`` apart; SUBSCRIBE (never PSUBSCRIBE) matches a name
exactly, so no topic can match another. Kept topics (history) go through a
Lua script instead of PUBLISH: ``_redis_history.py``.
"""

from __future__ import annotations

import threading
import time
import typing as t
from collections import deque

from redis.backoff import NoBackoff
from redis.connection import Connection, parse_url
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout
from redis.retry import Retry

from .._runtime import real_lock
from ..config import ConfigError, Settings
from ._redis_history import Numbered, RedisHistory
from ._support import redact
from .base import BrokerBase, LinkLost, MessageCallback
from .interface import Position

try:  # hiredis packs a command some ten times faster than redis-py's Python
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - the redis extra installs it
    _hiredis_pack = None

_CONNECT_TIMEOUT = 1.0  # TCP connect, so a caller never waits long on a dead host
_IO_TIMEOUT = 1.5  # handshake and a PUBLISH's answer; past it the link is dead
_TICK = 1.0  # the reader wakes this often: close, health check, stuck buffer
_PING_AFTER = 10.0  # an idle subscribed connection gets a PING...
_DEAD_AFTER = 20.0  # ...and is replaced when nothing at all came for this long
_SUBSCRIBE_BATCH = 1000  # channels per SUBSCRIBE when restoring after a reconnect


class _Confirmation:
    """A subscribe() waiting for Redis to confirm each of its channels."""

    __slots__ = ("remaining", "event")

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.event = threading.Event()
        if remaining <= 0:
            self.event.set()

    def confirmed(self) -> None:
        self.remaining -= 1
        if self.remaining <= 0:
            self.event.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout)


class RedisBroker(BrokerBase):
    """Topics on Redis pub/sub; see the module docstring for the names."""

    kind = "redis"
    link_errors = (OSError, RedisError)

    def __init__(self, settings: Settings, on_message: MessageCallback) -> None:
        if settings.broker_url:
            url = settings.broker_url
            try:
                options = parse_url(url)
            except ValueError as exc:
                raise ConfigError(
                    f"REALTIME_BROKER_URL={redact(url)!r}: {exc}"
                ) from None
        else:
            config = settings.redis
            options = {"host": config["host"], "port": config["port"]}
            options["db"] = config["db"]
            if config["password"]:
                options["password"] = config["password"]
            auth = ":***@" if config["password"] else ""
            url = f"redis://{auth}{config['host']}:{config['port']}/{config['db']}"
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
        self._prefix_bytes = self._prefix.encode()
        self._history = RedisHistory(self._prefix, self._connection)
        self._sub: Connection | None = None
        self._pub: Connection | None = None
        self._confirm_lock = real_lock()
        self._confirming: dict[bytes, deque[_Confirmation]] = {}
        super().__init__(url, settings.broker_buffer, on_message)

    def _connection(self, role: str, **overrides: t.Any) -> Connection:
        options = {"client_name": f"flask_realtime-{role}", **self._options}
        options.update(overrides)
        connection = self._connection_class(**options)
        connection.connect()
        return connection  # type: ignore[no-any-return]

    def _channel(self, topic: str) -> bytes:
        return (self._prefix + topic).encode()

    # -- the subscribed connection ---------------------------------------------

    def _connect(self, topics: list[str]) -> None:
        # Reads time out every tick, so the reader checks in while idle.
        sub = self._connection("sub", socket_timeout=_TICK)
        self._sub = sub
        waiting = _Confirmation(len(topics))
        for n in range(0, len(topics), _SUBSCRIBE_BATCH):
            self._send_subscribe(sub, topics[n : n + _SUBSCRIBE_BATCH], waiting)
        # Messages of channels confirmed first may come before the last
        # confirmation: delivered in their order.
        deadline = time.monotonic() + _IO_TIMEOUT
        while not waiting.event.is_set():
            if time.monotonic() > deadline:
                raise LinkLost("Redis did not confirm the subscriptions")
            self._dispatch(sub.read_response())

    def _send_subscribe(
        self, sub: Connection, topics: list[str], waiting: _Confirmation
    ) -> None:
        channels = [self._channel(topic) for topic in topics]
        with self._confirm_lock:
            for channel in channels:
                self._confirming.setdefault(channel, deque()).append(waiting)
        sub.send_packed_command(
            sub.pack_command("SUBSCRIBE", *channels), check_health=False
        )

    def _subscribe(self, topics: list[str]) -> _Confirmation | None:
        sub = self._sub
        if sub is None:
            raise LinkLost("not connected")
        waiting = _Confirmation(len(topics))
        self._send_subscribe(sub, topics, waiting)
        return waiting

    def _unsubscribe(self, topics: list[str]) -> None:
        sub = self._sub
        if sub is None:
            raise LinkLost("not connected")
        channels = [self._channel(topic) for topic in topics]
        sub.send_packed_command(
            sub.pack_command("UNSUBSCRIBE", *channels), check_health=False
        )

    def _read(self) -> None:
        sub = self._sub
        if sub is None:
            return
        last = ticked = time.monotonic()
        pinged = False
        while True:
            now = time.monotonic()
            if now - ticked >= _TICK:  # busy or idle
                ticked = now
                if not self._tick():
                    return
            if self._sub is not sub:
                raise LinkLost("the connection was closed")
            try:
                # A timeout keeps what arrived of a reply for the next read.
                reply = sub.read_response(disconnect_on_error=False)
            except RedisTimeout:
                idle = time.monotonic() - last
                if idle > _DEAD_AFTER:
                    raise LinkLost(f"no answer for {idle:.0f} s") from None
                if idle > _PING_AFTER and not pinged:
                    with self._sub_lock:
                        sub.send_packed_command(
                            sub.pack_command("PING"), check_health=False
                        )
                    pinged = True
                continue
            last = time.monotonic()
            pinged = False
            self._dispatch(reply)

    def _dispatch(self, reply: t.Any) -> None:
        if reply == b"PONG":  # PING's answer while nothing is subscribed
            return
        if type(reply) is not list or not reply:
            raise LinkLost(f"unexpected answer {reply!r:.80}")
        kind = reply[0]
        if kind == b"message":
            channel = reply[1]
            if channel.startswith(self._prefix_bytes):
                topic = channel[len(self._prefix_bytes) :].decode("utf-8", "replace")
                self._deliver(topic, reply[2])
        elif kind == b"subscribe":
            with self._confirm_lock:
                waiting = self._confirming.get(reply[1])
                who = waiting.popleft() if waiting else None
                if waiting is not None and not waiting:
                    del self._confirming[reply[1]]
            if who is not None:
                who.confirmed()
        # "unsubscribe" and PING's "pong" need nothing.

    # -- the publishing connection ---------------------------------------------

    def publish(self, topic: str, data: bytes) -> int | None:
        if self.retention(topic) is not None:
            data = Numbered(data)  # a resend is then told apart
        return super().publish(topic, data)

    def _send_batch(
        self, messages: list[tuple[str, bytes]]
    ) -> list[int | None | Exception]:
        pub = self._pub
        counts: list[int | None | Exception] = []
        try:
            if pub is None:
                pub = self._pub = self._connection("pub")
                self._history.load(pub)
            kept = self._history.command(messages, self.retention)
            if kept is None:
                commands = [
                    (("PUBLISH", self._prefix + topic, data), 1)
                    for topic, data in messages
                ]
            else:  # one call carries them all (answers in its own order)
                commands = [(kept[0], len(messages))]
            if _hiredis_pack is not None:
                packed = [b"".join([_hiredis_pack(c) for c, _ in commands])]
            else:
                packed = pub.pack_commands([c for c, _ in commands])
            pub.send_packed_command(packed, check_health=False)
            for _, carried in commands:
                try:
                    answer = pub.read_response()
                except NoScriptError:  # flushed: so is the rest; resent in order
                    raise
                except ResponseError as exc:
                    answer = [exc] * carried
                # The script answers a count per message it carried.
                counts.extend(answer if isinstance(answer, list) else [answer])
            if kept is not None:
                answers, counts = counts, [None] * len(messages)
                for n, answer in zip(kept[1], answers, strict=True):
                    counts[n] = answer
            if self._pub is not pub:
                self._close(pub)  # closed meanwhile; redis-py had reopened it
        except (RedisError, OSError) as exc:
            self._close(pub)
            if self._pub is pub:
                self._pub = None
            raise LinkLost(str(exc) or type(exc).__name__, len(counts)) from exc
        return counts

    def _read_history(
        self, topic: str, after: int | None, limit: int | None
    ) -> tuple[Position, list[bytes] | None]:
        return self._history.read(topic, self.retention(topic), after, limit)

    # -- closing, forks ----------------------------------------------------------

    def _disconnect(self) -> None:
        sub, pub = self._sub, self._pub
        self._sub = self._pub = None
        self._close(sub)
        self._close(pub)
        self._history.close()
        with self._confirm_lock:
            waiting = [w for queue in self._confirming.values() for w in queue]
            self._confirming.clear()
        for waiter in waiting:
            waiter.event.set()  # recorded: restored on reconnect

    def _drop_after_fork(self) -> None:
        # redis-py shuts a socket down only in the process that opened it, so
        # this closes the child's copies without cutting off the parent.
        self._confirm_lock = real_lock()
        self._disconnect()
        self._history.reset()

    @staticmethod
    def _close(connection: Connection | None) -> None:
        if connection is not None:
            try:
                connection.disconnect()
            except Exception:  # closing a broken socket may fail; it is gone either way
                pass
