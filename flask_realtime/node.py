"""One process's share of the system: clients, broker, presence, timers.

Every transport hands the node bytes from clients and gets bytes back
through each connection's sink; every server-side call (``broadcast``,
``send_to_user``, ``send``) goes through the broker, which loops back to
the nodes whose clients want it. Nothing here knows how bytes reach a socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import time
import typing as t
import weakref

from flask import Flask, current_app, has_app_context

from . import channels as _channels
from . import protocol
from ._runtime import gevent_active, real_lock, sleep, spawn
from .brokers import create_broker
from .config import Settings
from .connection import Connection, Outbound, Sink, user_key
from .hub import Hub
from .presence import LocalPresence
from .ratelimit import RateLimiter

if t.TYPE_CHECKING:
    from .testing import Recorder

logger = logging.getLogger("flask_realtime")

# An SSE stream carries at least a comment this often (proxies close idle
# streams), and half the heartbeat when that is shorter.
KEEPALIVE = 10.0

# Backpressure (see Node.wait_for_capacity).
_STUCK_AFTER = 15.0
_MAX_PUBLISH_WAIT = 30.0

# Broker topics. A node subscribes only to what its own clients need.
_CHANNEL = "c:"
_USER = "u:"
_NODE = "n:"


def _tick_forever(node_ref: weakref.ref[Node], interval: float) -> None:
    """The node's one timer; it ends when the node is gone."""
    while True:
        sleep(interval)
        node = node_ref()
        if node is None:
            return
        try:
            node.tick(time.monotonic())
        except Exception:  # pragma: no cover - the timer must survive
            logger.exception("flask_realtime: periodic task failed")
        del node


def _check_event(event: t.Any) -> None:
    if not isinstance(event, str) or not event or len(event) > 200:
        raise ValueError(f"invalid event name: {event!r}")


class Rejected(Exception):
    """Raise in an event handler to refuse a client event with a 403 error."""


class Node:
    """The per-app, per-process engine behind :class:`~flask_realtime.Realtime`."""

    def __init__(
        self,
        app: Flask,
        settings: Settings,
        rules: _channels.ChannelRules,
        handlers: _channels.HandlerTable,
        authenticate: t.Callable[[], t.Callable[..., t.Any] | None],
        recorder: Recorder | None = None,
    ) -> None:
        # Weak: a Realtime shared by an app factory's apps, or a timer that
        # outlives a test, must not keep apps alive.
        self._app_ref = weakref.ref(app)
        self.settings = settings
        self.rules = rules
        self.handlers = handlers
        self._authenticate = authenticate
        self.recorder = recorder
        self.id = secrets.token_hex(6)
        self.hub = Hub()
        self.presence = LocalPresence()
        self.broker = create_broker(settings, self._on_broker_message)
        # Backpressure state, kept by the transports: bytes waiting on sockets
        # that were full, how many such sockets, and bytes they drained so far.
        self.backlog_bytes = 0
        self.blocked_sessions = 0
        self.drained_bytes = 0
        self.pressured: set[t.Any] = set()  # sessions past half their queue bound
        self.backpressure_waits = 0
        self._last_yield = 0.0
        self.shutting_down = False
        self._lock = real_lock()
        self._started_pid: int | None = None
        # Heartbeats, SSE keepalives and long-poll expiry run from one timer;
        # a quarter of the shortest period keeps each on time.
        self.tick_interval = (
            min(settings.heartbeat, settings.longpoll_expiry, KEEPALIVE * 2) / 4
        )
        self._ticker: t.Any = None
        self.broker.subscribe(_NODE + self.id)
        self._chain_sigterm()

    @property
    def app(self) -> Flask:
        app = self._app_ref()
        if app is None:
            raise RuntimeError("the Flask app of this realtime node no longer exists")
        return app

    # -- lifecycle -----------------------------------------------------------

    def ensure_started(self, *, handle_sigterm: bool = True) -> None:
        """Start the shared timer in this process (again after a fork).

        ``handle_sigterm=False`` is for servers that route SIGTERM to
        :meth:`shutdown` themselves.
        """
        pid = os.getpid()
        if self._started_pid == pid:
            return
        with self._lock:
            if self._started_pid == pid:
                return
            self._started_pid = pid
        self._ticker = spawn(_tick_forever, weakref.ref(self), self.tick_interval)
        if handle_sigterm:
            self._chain_sigterm()
        else:
            self._release_sigterm()

    def _chain_sigterm(self) -> None:
        """Close every connection with 4200 when the server is told to stop.

        gunicorn's workers set their own SIGTERM handler; ours runs first and
        then hands over, so shutdown proceeds as the server intends. Where
        SIGTERM would simply kill the process (``flask run``), the close
        frames get a moment to leave before the default action. Tried when
        the app loads (gunicorn's workers have set their handlers by then) and
        again when the node starts; only the main thread may do it.
        """
        try:
            previous = signal.getsignal(signal.SIGTERM)
            if getattr(previous, "_realtime_node", lambda: None)() is self:
                return
            if previous is signal.SIG_IGN or previous is None:
                return
            node_ref = weakref.ref(self)

            def on_sigterm(signum: int, frame: t.Any) -> None:
                node = node_ref()
                had_connections = node is not None and len(node.hub) > 0
                if node is not None:
                    node.shutdown()
                    del node
                if callable(previous):
                    previous(signum, frame)
                elif not had_connections:
                    self._exit_now(signum)
                elif gevent_active():
                    spawn(Node._exit_after_shutdown, signum)
                else:
                    # Writer threads send the close frames meanwhile.
                    Node._exit_after_shutdown(signum)

            on_sigterm._realtime_node = node_ref  # type: ignore[attr-defined]
            signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:
            pass  # not the main thread: signals are not ours to set here

    def _release_sigterm(self) -> None:
        """Give SIGTERM back to a server that routes it to :meth:`shutdown`."""
        try:
            handler = signal.getsignal(signal.SIGTERM)
            if getattr(handler, "_realtime_node", lambda: None)() is self:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:
            pass

    @staticmethod
    def _exit_after_shutdown(signum: int) -> None:
        sleep(0.2)  # the close frames are queued; let the writers send them
        Node._exit_now(signum)

    @staticmethod
    def _exit_now(signum: int) -> None:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def shutdown(self, code: int = protocol.CLOSE_SHUTDOWN) -> None:
        """Close all connections (4200 by default: clients reconnect at once)."""
        self.shutting_down = True
        for conn in self.hub.all():
            try:
                conn.sink.close(code, "server shutting down")
            except Exception:  # pragma: no cover - best effort while exiting
                logger.debug("close failed during shutdown", exc_info=True)

    def tick(self, now: float) -> None:
        """Heartbeats and expiry for every local connection, from one timer."""
        heartbeat = self.settings.heartbeat
        for conn in self.hub.all():
            tick = getattr(conn.sink, "tick", None)
            if tick is not None:
                tick(conn, now, heartbeat)

    # -- connections ---------------------------------------------------------

    def open(
        self,
        transport: str,
        sink: Sink,
        user_id: t.Any = None,
        user_info: t.Any = None,
        *,
        with_token: bool = False,
        welcome: bool = True,
    ) -> Connection:
        """Register a new client connection and send it ``connected``
        (``welcome=False``: the transport sends :meth:`welcome` itself)."""
        self.ensure_started()
        conn = Connection(
            f"{self.id}.{secrets.token_urlsafe(12)}",
            transport,
            sink,
            user_id,
            user_info,
        )
        if with_token:
            conn.token = secrets.token_urlsafe(24)
        if self.settings.rate_limit_enabled:
            conn.rate = RateLimiter(self.settings.messages_per_minute)
        if self.hub.add(conn):
            self.broker.subscribe(_USER + conn.user_key)  # type: ignore[operator]
        if welcome:
            conn.push_json(self.welcome(conn))
        return conn

    def welcome(self, conn: Connection) -> bytes:
        """The ``connected`` message, the first on every connection."""
        return protocol.connected(conn.id, self.settings.heartbeat, conn.token)

    def disconnect(self, conn: Connection) -> None:
        """Forget a connection that went away: subscriptions, presence, user."""
        conn.closed = True
        left, last_of_user = self.hub.remove(conn)
        for name in left:
            self._after_leave(conn, name)
        if last_of_user:
            self.broker.unsubscribe(_USER + conn.user_key)  # type: ignore[operator]

    def _after_leave(self, conn: Connection, name: str) -> None:
        if self.hub.subscriber_count(name) == 0:
            self.broker.unsubscribe(_CHANNEL + name)
        if conn.user_key is not None and self.rules.kind(name) == _channels.PRESENCE:
            member = self.presence.leave(name, conn.id, conn.user_key)
            if member is not None:
                # The id as the join announced it: 5 and "5" are one user.
                user_id = member["user_id"]
                self.publish_channel(
                    name,
                    protocol.event(name, "presence.leave", {"user_id": user_id}),
                )

    # -- client messages -----------------------------------------------------

    def admit(self, conn: Connection, payload: bytes | str = b"") -> bytes | None:
        """Apply the rate limit to one client message.

        Returns the 429 error to send when the message is refused; closes the
        connection with 4129 after a sustained run of refusals.
        """
        rate = conn.rate
        if rate is None:
            return None
        wait = rate.check()
        if not wait:
            return None
        if rate.strikes >= self.settings.rate_limit_close_after:
            conn.sink.close(protocol.CLOSE_RATE_LIMIT_ABUSE, "rate limit abuse")
        return protocol.error(
            protocol.RATE_LIMITED,
            "rate limit exceeded",
            request_id=protocol.request_id(payload),
            retry_after=round(wait, 3),
        )

    def receive(self, conn: Connection, payload: bytes | str) -> bytes | None:
        """Handle one client message; returns the reply envelope, if any.

        The caller has applied :meth:`admit` already.
        """
        try:
            message = protocol.parse(payload)
            kind = message.type
            if kind == "ping":
                return protocol.pong(message.id)
            if kind == "subscribe":
                return self._subscribe(conn, message)
            if kind == "unsubscribe":
                return self._unsubscribe(conn, message)
            return self._client_event(conn, message)
        except protocol.ProtocolError as exc:
            return exc.envelope()

    def _app_context(self) -> t.ContextManager[t.Any]:
        if has_app_context() and current_app._get_current_object() is self.app:  # type: ignore[attr-defined]
            return contextlib.nullcontext()
        return self.app.app_context()

    def _subscribe(
        self, conn: Connection, message: protocol.ClientMessage
    ) -> bytes | None:
        name = t.cast(str, message.channel)
        kind = self.rules.kind(name)
        if name in conn.channels:
            return self._subscribed_reply(name, kind, message.id)
        if len(conn.channels) >= self.settings.max_subscriptions:
            raise protocol.ProtocolError(
                protocol.FORBIDDEN,
                f"subscription limit of {self.settings.max_subscriptions} reached",
                request_id=message.id,
                channel=name,
            )
        user_info = conn.user_info
        if kind != _channels.PUBLIC:
            if kind == _channels.PRESENCE and conn.user_id is None:
                raise protocol.ProtocolError(
                    protocol.UNAUTHORIZED,
                    "presence channels need an authenticated user",
                    request_id=message.id,
                    channel=name,
                )
            allowed = self._authorize(conn, name)
            if not allowed and not (kind == _channels.PRESENCE and allowed == {}):
                raise protocol.ProtocolError(
                    protocol.FORBIDDEN,
                    "not allowed to subscribe to this channel",
                    request_id=message.id,
                    channel=name,
                )
            if kind == _channels.PRESENCE and isinstance(allowed, dict):
                user_info = allowed
        if conn.closed:
            return None
        if self.hub.subscribe(conn, name):
            # The reply goes out only once the broker delivers this channel here.
            self.broker.subscribe(_CHANNEL + name)
        if kind == _channels.PRESENCE:
            member = {
                "user_id": conn.user_id,
                "user_info": user_info,
                "connected_at": conn.connected_at,
            }
            if self.presence.join(name, conn.id, member):
                self.publish_channel(
                    name,
                    protocol.event(
                        name,
                        "presence.join",
                        {"user_id": conn.user_id, "user_info": user_info},
                    ),
                    exclude=conn.id,
                )
        return self._subscribed_reply(name, kind, message.id)

    def _subscribed_reply(self, name: str, kind: str, request_id: t.Any) -> bytes:
        if kind == _channels.PRESENCE:
            return protocol.subscribed(
                name, request_id, {"members": self.presence.members(name)}
            )
        return protocol.subscribed(name, request_id)

    def _authorize(self, conn: Connection, name: str) -> t.Any:
        authorizer = self.rules.authorizer_for(name)
        if authorizer is None:
            return False  # deny by default: no authorizer, no access
        try:
            with self._app_context():
                return authorizer.func(conn, name)
        except Exception:
            logger.exception(
                "flask_realtime: authorizer %r raised for channel %r; denied",
                authorizer.pattern,
                name,
            )
            return False

    def _unsubscribe(self, conn: Connection, message: protocol.ClientMessage) -> bytes:
        name = t.cast(str, message.channel)
        if name not in conn.channels:
            raise protocol.ProtocolError(
                protocol.NOT_SUBSCRIBED,
                "not subscribed to this channel",
                request_id=message.id,
                channel=name,
            )
        self.hub.unsubscribe(conn, name)
        self._after_leave(conn, name)
        return protocol.unsubscribed(name, message.id)

    def _client_event(
        self, conn: Connection, message: protocol.ClientMessage
    ) -> bytes | None:
        name = t.cast(str, message.channel)
        event = t.cast(str, message.event)
        if name not in conn.channels:
            raise protocol.ProtocolError(
                protocol.NOT_SUBSCRIBED,
                "subscribe to the channel before sending events to it",
                request_id=message.id,
                channel=name,
            )
        handler = self.handlers.find(event, name)
        if handler is not None:
            try:
                with self._app_context():
                    result = handler(conn, name, message.data)
            except Rejected as exc:
                raise protocol.ProtocolError(
                    protocol.FORBIDDEN,
                    str(exc) or "event refused",
                    request_id=message.id,
                    channel=name,
                ) from None
            except Exception:
                logger.exception(
                    "flask_realtime: handler for %r on %r raised", event, name
                )
                raise protocol.ProtocolError(
                    protocol.INTERNAL_ERROR,
                    "the event handler failed",
                    request_id=message.id,
                    channel=name,
                ) from None
            if result is False:
                raise protocol.ProtocolError(
                    protocol.FORBIDDEN,
                    "event refused",
                    request_id=message.id,
                    channel=name,
                )
            return None
        if self.rules.kind(name) != _channels.PUBLIC and event.startswith("client-"):
            self.publish_channel(
                name, protocol.event(name, event, message.data), exclude=conn.id
            )
            return None
        raise protocol.ProtocolError(
            protocol.FORBIDDEN,
            "no handler for this event; only 'client-' events on private or "
            "presence channels are relayed",
            request_id=message.id,
            channel=name,
        )

    # -- publishing ----------------------------------------------------------

    def wait_for_capacity(self) -> None:
        """Slow the publisher when the node, not one client, is the bottleneck.

        A session whose socket is full and whose queue is past half its bound
        is *pressured*. When more than two sessions, and more than one in a
        hundred, are pressured, clients as a whole cannot take what is
        published: the publisher waits until most have drained. A pressured session that
        drains nothing for ``_STUCK_AFTER`` seconds is a stuck client, not
        load: it no longer counts, and its own bound closes it (4100). Without
        pressure the publisher still yields every few milliseconds, so that
        reads, pings and timers keep running while it publishes in a loop.
        """
        if not gevent_active():
            return
        import gevent

        if gevent.getcurrent() is gevent.get_hub():
            return  # a broker callback: the loop itself, never blocked
        now = time.monotonic()
        pressured = self.pressured
        threshold = max(2, len(self.hub) // 100)
        limit = self.settings.backpressure_bytes
        if len(pressured) <= threshold and self.backlog_bytes <= limit:
            if now - self._last_yield > 0.005:
                self._last_yield = now
                gevent.sleep(0)
            return
        self.backpressure_waits += 1
        deadline = now + _MAX_PUBLISH_WAIT
        while now < deadline:
            for session in [
                s for s in pressured if now - s.last_progress > _STUCK_AFTER
            ]:
                logger.info(
                    "flask_realtime: %s drains nothing; it no longer holds publishers",
                    session.conn.id,
                )
                session.pressured = False  # re-marked if it drains and fills again
                pressured.discard(session)
            if len(pressured) <= threshold // 2 and self.backlog_bytes <= limit // 2:
                break
            gevent.sleep(0.005)
            now = time.monotonic()
        self._last_yield = now

    def publish_channel(
        self, channel: str, envelope: bytes, exclude: str | None = None
    ) -> None:
        self.broker.publish(
            _CHANNEL + channel, (exclude or "").encode() + b"\n" + envelope
        )

    def broadcast(self, channel: str, event: str, data: t.Any) -> None:
        if not isinstance(channel, str) or not _channels.is_valid_name(channel):
            raise ValueError(f"invalid channel name: {channel!r}")
        _check_event(event)
        envelope = protocol.event(channel, event, data)
        if self.recorder is not None:
            self.recorder.record("broadcast", channel, event, data)
        self.wait_for_capacity()
        self.publish_channel(channel, envelope)

    def send_to_user(self, user_id: t.Any, event: str, data: t.Any) -> None:
        key = user_key(user_id)
        if key is None:
            raise ValueError("user_id must not be None")
        _check_event(event)
        envelope = protocol.event(None, event, data)
        if self.recorder is not None:
            self.recorder.record("user", user_id, event, data)
        self.wait_for_capacity()
        self.broker.publish(_USER + key, b"\n" + envelope)

    def send(self, connection_id: str, event: str, data: t.Any) -> None:
        _check_event(event)
        envelope = protocol.event(None, event, data)
        if self.recorder is not None:
            self.recorder.record("connection", connection_id, event, data)
        node_id, _, _ = str(connection_id).partition(".")
        self.broker.publish(
            _NODE + node_id, str(connection_id).encode() + b"\n" + envelope
        )

    def _on_broker_message(self, topic: str, data: bytes) -> None:
        """Deliver what the broker brings to the local clients that want it."""
        header, _, envelope = data.partition(b"\n")
        message = Outbound(envelope)
        prefix, name = topic[:2], topic[2:]
        if prefix == _CHANNEL:
            self.hub.deliver_channel(name, message, header.decode() or None)
        elif prefix == _USER:
            self.hub.deliver_user(name, message)
        elif prefix == _NODE:
            self.hub.deliver_connection(header.decode(), message)

    # -- queries -------------------------------------------------------------

    def presence_members(self, channel: str) -> list[dict[str, t.Any]]:
        return self.presence.members(channel)

    def subscriber_count(self, channel: str) -> int:
        return self.hub.subscriber_count(channel)
