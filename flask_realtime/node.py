"""One process's share of the system: clients, broker, presence, timers.

Every transport hands the node bytes from clients and gets bytes back
through each connection's sink; every server-side call (``broadcast``,
``send_to_user``, ``send``) goes through the broker, which loops back to
the nodes whose clients want it. Nothing here knows how bytes reach a socket.
"""

from __future__ import annotations

import contextlib
import json
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
from ._runtime import gevent_active, in_event_loop, real_lock, sleep, spawn
from .brokers import BrokerUnavailable, create_broker
from .config import Settings
from .connection import Connection, Outbound, Sink, user_key
from .hub import Hub
from .presence import REFRESH as PRESENCE_REFRESH
from .presence import ClusterPresence, merge
from .pressure import PressureGauge
from .ratelimit import RateLimiter

if t.TYPE_CHECKING:
    from .testing import Recorder

logger = logging.getLogger("flask_realtime")

# An SSE stream carries at least a comment this often (proxies close idle
# streams), and half the heartbeat when that is shorter.
KEEPALIVE = 10.0

# Broker topics. A node subscribes only to what its own clients need.
_CHANNEL = "c:"
_USER = "u:"
_NODE = "n:"
_PRESENCE = "p:"

# How long a presence query or sync waits for another node's answer.
_PRESENCE_QUERY_TIMEOUT = 5.0

RequestHandler = t.Callable[["Node", dict[str, t.Any]], tuple[int, bytes]]


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
        self._id_pid = os.getpid()
        self.hub = Hub()
        self.presence = ClusterPresence()
        self.broker = create_broker(settings, self._on_broker_message)
        self._clustered = settings.broker != "null"
        # The node's own topic, for send(connection_id) and forwarded requests,
        # is subscribed when the first client connects: a process that only
        # publishes (a Celery worker) never takes a node's traffic.
        self._listening = False
        self._request_handlers: dict[str, RequestHandler] = {}
        # What the broker brought here, by topic kind: with interest-based
        # routing, a node gets no channel traffic none of its clients wants.
        self.received = {"channel": 0, "user": 0, "node": 0, "presence": 0}
        self._delivering = False
        # Sessions report full sockets here; publishers ask it before publishing.
        self.pressure = PressureGauge(settings.backpressure_bytes)
        self.shutting_down = False
        self._lock = real_lock()
        self._started_pid: int | None = None
        # Heartbeats, SSE keepalives, long-poll expiry and presence refresh run
        # from one timer; a quarter of the shortest period keeps each on time.
        self.tick_interval = (
            min(
                settings.heartbeat,
                settings.longpoll_expiry,
                KEEPALIVE * 2,
                PRESENCE_REFRESH * 4,
            )
            / 4
        )
        self._ticker: t.Any = None
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
            if self._id_pid != pid:
                # Forked after init_app (gunicorn --preload): each worker is
                # a node of its own and needs its own id.
                self.id = secrets.token_hex(6)
                self._id_pid = pid
                self._listening = False
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
                conn.close(code, "server shutting down")
            except Exception:  # pragma: no cover - best effort while exiting
                logger.debug("close failed during shutdown", exc_info=True)

    def tick(self, now: float) -> None:
        """Heartbeats and expiry for every local connection, from one timer;
        in a cluster, presence refresh and the expiry of silent nodes."""
        heartbeat = self.settings.heartbeat
        for conn in self.hub.all():
            conn.tick(now, heartbeat)
        if self._clustered:
            self._refresh_presence(now)

    def _listen(self) -> None:
        if not self._listening:
            self._listening = True
            self.broker.subscribe(_NODE + self.id)

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
        self._listen()
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
        if in_event_loop() or self._delivering:
            # Telling the broker may wait: not in the event loop (a socket
            # watcher noticed), and not in the broker's reader (a delivery
            # overflowed a queue), which would wait on itself.
            spawn(self._forget, conn)
        else:
            self._forget(conn)

    def _forget(self, conn: Connection) -> None:
        left, last_of_user = self.hub.remove(conn)
        for name in left:
            self._after_leave(conn, name)
        if last_of_user:
            self.broker.unsubscribe(_USER + conn.user_key)  # type: ignore[operator]

    def _after_leave(self, conn: Connection, name: str) -> None:
        last_here = self.hub.subscriber_count(name) == 0
        if last_here:
            self.broker.unsubscribe(_CHANNEL + name)
        if self.rules.kind(name) != _channels.PRESENCE:
            return
        if conn.user_key is not None:
            member, gone = self.presence.leave(name, conn.id, conn.user_key)
            if member is not None:
                self._tell_nodes(name, {"op": "leave", "user": conn.user_key})
            if gone:
                self._deliver_leave(name, t.cast(dict, member))
        if last_here and self._clustered:
            self.broker.unsubscribe(_PRESENCE + name)
            self.presence.forget(name)

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
            conn.close(protocol.CLOSE_RATE_LIMIT_ABUSE, "rate limit abuse")
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
        except BrokerUnavailable:
            return protocol.error(
                protocol.UNAVAILABLE,
                "the server cannot reach its broker; try again",
                request_id=protocol.request_id(payload),
            )

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
        if kind == _channels.PRESENCE and self._clustered:
            self._start_replica(name)
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
            new_here, new_in_cluster = self.presence.join(name, conn.id, member)
            if new_here:
                self._tell_nodes(name, {"op": "join", "member": member})
            if new_in_cluster:
                self._deliver_join(name, member, exclude=conn.id)
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
        """Slow the publisher when the node is overloaded (see :mod:`.pressure`)."""
        self.pressure.wait_for_capacity(len(self.hub))

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

    def _on_broker_message(
        self, topic: str, data: bytes, reply_to: str | None = None
    ) -> None:
        """Deliver what the broker brings to the local clients that want it."""
        self._delivering = True
        try:
            self._deliver(topic, data, reply_to)
        finally:
            self._delivering = False

    def _deliver(self, topic: str, data: bytes, reply_to: str | None) -> None:
        prefix, name = topic[:2], topic[2:]
        received = self.received
        if prefix == _PRESENCE:
            received["presence"] += 1
            self._on_presence_message(name, data, reply_to)
            return
        if reply_to is not None:
            if prefix == _NODE:
                received["node"] += 1
                self._on_request(data, reply_to)
            return
        header, _, envelope = data.partition(b"\n")
        message = Outbound(envelope)
        if prefix == _CHANNEL:
            received["channel"] += 1
            self.hub.deliver_channel(name, message, header.decode() or None)
        elif prefix == _USER:
            received["user"] += 1
            self.hub.deliver_user(name, message)
        elif prefix == _NODE:
            received["node"] += 1
            self.hub.deliver_connection(header.decode(), message)

    # -- cluster presence ----------------------------------------------------

    def _start_replica(self, channel: str) -> None:
        """Learn the channel's members on other nodes before the first local
        subscriber gets its member list, then follow their changes.

        The sync comes before the subscription, so this node's own replica
        does not answer it; a change that slips between the two is repaired by
        the next refresh (``presence.REFRESH``).
        """
        if self.presence.has_replica(channel):
            return
        snapshot: dict[str, list[dict[str, t.Any]]] = {}
        try:
            answer = self.broker.request(
                _PRESENCE + channel, b'{"op":"sync"}', _PRESENCE_QUERY_TIMEOUT
            )
            if answer is not None:
                snapshot = json.loads(answer)
        except (TimeoutError, BrokerUnavailable, ValueError) as exc:
            logger.warning(
                "flask_realtime: no presence sync for %r (%s); the next refresh"
                " fills it in",
                channel,
                exc,
            )
        snapshot.pop(self.id, None)
        self.presence.load(channel, snapshot, time.monotonic())
        self.broker.subscribe(_PRESENCE + channel)

    def _tell_nodes(self, channel: str, message: dict[str, t.Any]) -> None:
        if not self._clustered:
            return
        message["node"] = self.id
        try:
            self.broker.publish(_PRESENCE + channel, protocol.encode(message))
        except BrokerUnavailable:
            # The refresh after the broker's return carries it.
            logger.warning("flask_realtime: presence change of %r not sent", channel)

    def _refresh_presence(self, now: float) -> None:
        for channel in self.presence.local_channels():
            self._tell_nodes(
                channel,
                {"op": "state", "members": self.presence.local_members(channel)},
            )
        for channel, member in self.presence.expire(now, self.id):
            self._deliver_leave(channel, member)

    def _on_presence_message(
        self, channel: str, data: bytes, reply_to: str | None
    ) -> None:
        try:
            message = json.loads(data)
            if reply_to is not None:
                if message.get("op") in ("sync", "members"):
                    snapshot = self.presence.snapshot(channel, self.id)
                    self.broker.reply(reply_to, protocol.encode(snapshot))
                return
            node_id = message["node"]
            if node_id == self.id:
                return  # our own announcement, back from the broker
            op = message["op"]
            now = time.monotonic()
            if op == "join":
                member = message["member"]
                if self.presence.remote_join(channel, node_id, member, now):
                    self._deliver_join(channel, member)
            elif op == "leave":
                gone = self.presence.remote_leave(
                    channel, node_id, message["user"], now
                )
                if gone is not None:
                    self._deliver_leave(channel, gone)
            elif op == "state":
                joined, left = self.presence.remote_state(
                    channel, node_id, message["members"], now
                )
                for member in joined:
                    self._deliver_join(channel, member)
                for member in left:
                    self._deliver_leave(channel, member)
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("flask_realtime: malformed presence message on %r", channel)

    def _deliver_join(
        self, channel: str, member: dict[str, t.Any], exclude: str | None = None
    ) -> None:
        data = {"user_id": member["user_id"], "user_info": member.get("user_info")}
        envelope = protocol.event(channel, "presence.join", data)
        self.hub.deliver_channel(channel, Outbound(envelope), exclude)

    def _deliver_leave(self, channel: str, member: dict[str, t.Any]) -> None:
        # The id as the join announced it: 5 and "5" are one user.
        data = {"user_id": member["user_id"]}
        envelope = protocol.event(channel, "presence.leave", data)
        self.hub.deliver_channel(channel, Outbound(envelope))

    # -- requests between nodes ----------------------------------------------

    def handle_request(self, op: str, handler: RequestHandler) -> None:
        """Answer ``op`` requests forwarded by other nodes (see :meth:`forward`).

        The handler gets the node and the request's JSON object and returns
        an HTTP status and a JSON body. It runs in a greenlet (or thread) of
        its own, in the app context, so it may wait (a long poll does).
        """
        self._request_handlers[op] = handler

    def owns(self, connection_id: str) -> bool:
        return connection_id.partition(".")[0] == self.id

    def forward(
        self, connection_id: str, request: dict[str, t.Any], timeout: float
    ) -> tuple[int, bytes] | None:
        """Run a transport's request on the node that holds the connection.

        ``None`` when no such node exists (it stopped, or the id is made up);
        raises ``TimeoutError`` or :class:`BrokerUnavailable`.
        """
        owner = connection_id.partition(".")[0]
        if not owner or owner == self.id:
            return None
        answer = self.broker.request(_NODE + owner, protocol.encode(request), timeout)
        if answer is None:
            return None
        status, _, body = answer.partition(b"\n")
        return int(status), body

    def _on_request(self, data: bytes, reply_to: str) -> None:
        spawn(self._answer_request, data, reply_to)

    def _answer_request(self, data: bytes, reply_to: str) -> None:
        try:
            request = json.loads(data)
            handler = self._request_handlers[request["op"]]
        except (ValueError, KeyError, TypeError):
            logger.warning("flask_realtime: malformed request from another node")
            answer: tuple[int, bytes] = (
                400,
                b'{"error":{"code":400,"message":"malformed forwarded request"}}',
            )
        else:
            try:
                with self._app_context():
                    answer = handler(self, request)
            except Exception:
                logger.exception("flask_realtime: forwarded %r failed", request["op"])
                answer = (500, b'{"error":{"code":500,"message":"internal error"}}')
        try:
            self.broker.reply(reply_to, b"%d\n" % answer[0] + answer[1])
        except BrokerUnavailable:
            logger.warning("flask_realtime: could not answer a forwarded request")

    # -- queries -------------------------------------------------------------

    def presence_members(self, channel: str) -> list[dict[str, t.Any]]:
        """Cluster-wide: from this node's replica, else from a node that has one."""
        if not self._clustered or self.presence.has_replica(channel):
            return self.presence.members(channel)
        answer = self.broker.request(
            _PRESENCE + channel, b'{"op":"members"}', _PRESENCE_QUERY_TIMEOUT
        )
        if answer is None:
            return []  # no node has a subscriber, so nobody is present
        return merge(json.loads(answer))

    def connection(self, connection_id: str) -> Connection | None:
        """The local connection with this id, if it lives on this node."""
        return self.hub.connections.get(connection_id)

    def subscriber_count(self, channel: str) -> int:
        return self.hub.subscriber_count(channel)
