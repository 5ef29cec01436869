"""One process's share of the system: clients, broker, presence, timers.

Every transport hands the node bytes from clients and gets bytes back
through each connection; every server-side call (``broadcast``,
``send_to_user``, ``send``) goes through the broker, which loops back to
the nodes whose clients want it. Nothing here knows how bytes reach a socket.

The node composes its parts, one concern each: :mod:`.lifecycle` (the
timer, fork, SIGTERM), :mod:`.interest` (broker subscriptions that follow
local subscribers), :mod:`.inbound` (what the broker brings),
:mod:`.messages` (what clients send), :mod:`.presence_sync` (presence
between nodes), :mod:`.control` (request/reply on publish/subscribe),
:mod:`.forwarding` (requests run on the owning node), :mod:`.publishing`
(server-side sends), :mod:`.admin` (every node's report, for the admin
commands) and :mod:`.topics` (every topic name).
"""

from __future__ import annotations

import secrets
import typing as t
import weakref

from flask import Flask

from .. import channels as _channels
from .. import protocol
from .._runtime import in_event_loop, real_lock, spawn
from ..brokers import create_broker
from ..config import Settings
from ..connection import Connection, Sink
from ..hub import Hub
from ..limits import Admission
from ..presence import ClusterPresence, Member
from ..pressure import PressureGauge
from . import lifecycle, recovery, topics
from .admin import Admin
from .commands import Commands
from .continuity import Continuity
from .control import Control
from .forwarding import Forwarding, RequestHandler
from .hooks import Hooks
from .inbound import Inbound
from .interest import Interest
from .lifecycle import KEEPALIVE, Lifecycle
from .messages import ClientMessages, Rejected
from .presence_sync import PresenceSync
from .publishing import Observer, Publisher


class Node:
    """The per-app, per-process engine behind :class:`~flask_realtime.Realtime`."""

    def __init__(
        self,
        app: Flask,
        settings: Settings,
        rules: _channels.ChannelRules,
        handlers: _channels.HandlerTable,
        authenticate: t.Callable[[], t.Callable[..., t.Any] | None],
    ) -> None:
        # Weak: a Realtime shared by an app factory's apps, or a timer that
        # outlives a test, must not keep apps alive.
        self._app_ref = weakref.ref(app)
        self.settings = settings
        self.rules = rules
        self.handlers = handlers
        self._authenticate = authenticate
        self.id = secrets.token_hex(6)
        self.hub = Hub()
        self.presence = ClusterPresence()
        self.clustered = settings.broker != "null"
        self.inbound = Inbound(self)
        # What the broker brought here, by topic kind (see .inbound).
        self.received = self.inbound.received
        self.control = Control(
            lambda on_message: create_broker(settings, on_message),
            self.inbound.plain,
            self.inbound.request,
        )
        self.broker = self.control.broker
        recovery.configure(self.broker, rules, settings.history)
        self.continuity = Continuity(self)
        self.interest = Interest(
            self.broker, self.inbound.wanted, on_dropped=self.inbound.dropped
        )
        self.messages = ClientMessages(self)
        self.presence_sync = PresenceSync(self, self.presence)
        self.forwarding = Forwarding(self)
        self.lifecycle = Lifecycle(self)
        # on_connect / on_disconnect: the extension sets its own (see .hooks).
        self.hooks = Hooks(self, tuple, tuple)
        # realtime.subscribe() / unsubscribe() / disconnect() (see .commands).
        self.commands = Commands(self)
        self._closing_lock = real_lock()
        self.publisher = Publisher(self)
        self.admin = Admin(self)  # answers flask realtime stats (see .admin)
        # Sessions report full sockets here; publishers ask it before publishing.
        self.pressure = PressureGauge(settings.backpressure_bytes)
        self.shutting_down = False
        # Connection limits and rate limiters (see ..limits).
        self.admission = Admission(settings)
        self.webhooks = _webhooks(self)
        self.lifecycle.chain_sigterm()

    @property
    def app(self) -> Flask:
        app = self._app_ref()
        if app is None:
            raise RuntimeError("the Flask app of this realtime node no longer exists")
        return app

    # -- lifecycle (see .lifecycle) ----------------------------------------------

    def ensure_started(self, *, handle_sigterm: bool = True) -> None:
        """Start the shared timer in this process (again after a fork).

        ``handle_sigterm=False`` is for servers that route SIGTERM to
        :meth:`shutdown` themselves.
        """
        self.lifecycle.ensure_started(handle_sigterm=handle_sigterm)

    def forked(self) -> None:
        """In a worker forked after init_app (gunicorn --preload): a node of
        its own, with its own id and so its own node topic."""
        self.id = secrets.token_hex(6)

    def shutdown(self, code: int = protocol.CLOSE_SHUTDOWN) -> None:
        """Close all connections (4200 by default: clients reconnect at once)."""
        lifecycle.shutdown(self, code)
        if self.webhooks is not None:
            self.webhooks.stop()

    def written(self, conn: Connection) -> None:
        """``conn``'s wire is done (``Sink.reports_written``): shutdown waits."""
        self.lifecycle.written(conn)

    def wait_written(self, deadline: float) -> bool:
        """After :meth:`shutdown`: wait for the last bytes, until ``deadline``."""
        return self.lifecycle.wait_written(deadline)

    def tick(self, now: float) -> None:
        """The timer's work: heartbeats, expiry, presence refresh."""
        lifecycle.tick(self, now)

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
        connection_id: str | None = None,
    ) -> Connection:
        """Register a new client connection and send it ``connected``
        (``welcome=False``: the transport sends :meth:`welcome` itself;
        ``connection_id``: one the transport made, e.g. a Pusher socket id,
        whose node topic it subscribed)."""
        self.ensure_started()
        # The node topic, for send(connection_id) and forwarded requests, is
        # subscribed for the first client: a process that only publishes (a
        # Celery worker) never takes a node's traffic.
        # The node topic is never released once subscribed (``_wanted``), so
        # its guard is needed only until then: taking it for every client
        # cost about a tenth of a WebSocket connect's server CPU.
        node_topic = topics.node(self.id)
        if not self.interest.is_subscribed(node_topic):
            with self.interest.hold(node_topic):
                pass
        self.admin.join()  # (once per process: a comparison after that)
        if self.webhooks is not None:
            self.webhooks.ensure_started()
        conn = Connection(
            connection_id or f"{self.id}.{secrets.token_urlsafe(12)}",
            transport,
            sink,
            user_id,
            user_info,
        )
        if with_token:
            conn.token = secrets.token_urlsafe(24)
        if conn.user_key is None:
            self.hub.add(conn)
        else:
            with self.interest.hold(topics.user(conn.user_key)):
                self.hub.add(conn)
        self.admission.opened(conn)  # counted once registered (see ..limits)
        if welcome:
            conn.push_json(self.welcome(conn))
        # After the welcome is queued: on_connect may subscribe the
        # connection. Raises ConnectionRefused, the connection forgotten.
        self.hooks.connected(conn)
        return conn

    def identify(self, conn: Connection, user_id: t.Any, user_info: t.Any) -> None:
        """An anonymous connection is now ``user_id``'s (a Pusher sign-in or
        presence subscription): ``send_to_user`` and presence reach it."""
        if conn.user_key is not None or user_id is None:
            return
        conn.user_id, conn.user_info = user_id, user_info
        conn.user_key = str(user_id)
        with self.interest.hold(topics.user(conn.user_key)):
            self.hub.add(conn)

    def welcome(self, conn: Connection) -> bytes:
        """The ``connected`` message, the first on every connection."""
        return protocol.connected(conn.id, self.settings.heartbeat, conn.token)

    def disconnect(self, conn: Connection) -> None:
        """Forget a connection that went away: subscriptions, presence,
        user; then ``on_disconnect``. Once per connection."""
        with self._closing_lock:  # (threads: two closes may race)
            if conn.closed:
                return
            conn.closed = True
        self.admission.closed(conn)
        if in_event_loop() or self.control.delivering():
            # Announcing a presence leave may wait: not in the event loop (a
            # socket watcher noticed), and not in the broker's reader (a
            # delivery overflowed a queue), which would wait on itself.
            spawn(self._forget, conn)
        else:
            self._forget(conn)

    def _forget(self, conn: Connection) -> None:
        left, last_of_user = self.hub.remove(conn)
        for name in left:
            self.left_channel(conn, name)
        if last_of_user:
            self.interest.release(topics.user(t.cast(str, conn.user_key)))
        self.hooks.disconnected(conn)

    def left_channel(self, conn: Connection, name: str) -> None:
        """``conn`` is out of channel ``name`` in the hub: tell the rest."""
        last_here = self.hub.subscriber_count(name) == 0
        if last_here:
            self.interest.release(topics.channel(name))
        if self.rules.kind(name) == _channels.PRESENCE:
            self.presence_sync.left(conn, name, last_here)
        if self.webhooks is not None:
            self.webhooks.channel_changed(name)

    def connection(self, connection_id: str) -> Connection | None:
        """The local connection with this id, if it lives on this node."""
        return self.hub.connections.get(connection_id)

    # -- client messages (see .messages) ----------------------------------------

    def admit(self, conn: Connection, payload: bytes | str = b"") -> bytes | None:
        """The 429 error to send when the rate limit refuses the message."""
        return self.messages.admit(conn, payload)

    def receive(
        self, conn: Connection, payload: bytes | str, push_reply: bool = False
    ) -> bytes | None:
        """Handle one client message (after :meth:`admit`); the reply, if any."""
        return self.messages.receive(conn, payload, push_reply)

    # -- publishing ----------------------------------------------------------

    def observe(self, observer: Observer) -> None:
        """Call ``observer`` with every broadcast and direct message sent."""
        self.publisher.observers.append(observer)

    def publish_channel(
        self, channel: str, envelope: bytes, exclude: str | None = None
    ) -> None:
        """Publish an encoded event to a channel (``exclude``: a connection id)."""
        self.publisher.publish_channel(channel, envelope, exclude)

    def broadcast(
        self, channel: str, event: str, data: t.Any, exclude: str | None = None
    ) -> None:
        self.publisher.broadcast(channel, event, data, exclude)

    def send_to_user(self, user_id: t.Any, event: str, data: t.Any) -> None:
        self.publisher.send_to_user(user_id, event, data)

    def send(self, connection_id: str, event: str, data: t.Any) -> None:
        self.publisher.send(connection_id, event, data)

    # -- requests between nodes (see .forwarding) --------------------------------

    def handle_request(self, op: str, handler: RequestHandler) -> None:
        """Answer ``op`` requests forwarded by other nodes (see :meth:`forward`).

        ``handler(node, request)`` returns an HTTP status and a JSON body; it
        runs in a greenlet (or thread) of its own, in the app context.
        """
        self.forwarding.handle(op, handler)

    def owns(self, connection_id: str) -> bool:
        return connection_id.partition(".")[0] == self.id

    def forward(
        self, connection_id: str, request: dict[str, t.Any], timeout: float
    ) -> tuple[int, bytes] | None:
        """Run a transport's request on the node that holds the connection.

        ``None`` when no such node exists (it stopped, or the id is made up);
        raises ``TimeoutError`` or :class:`BrokerUnavailable`.
        """
        return self.forwarding.forward(connection_id, request, timeout)

    # -- queries -------------------------------------------------------------

    def presence_members(self, channel: str) -> list[Member]:
        """Cluster-wide: from this node's replica, else from a node that has one."""
        return self.presence_sync.members(channel)

    def subscriber_count(self, channel: str) -> int:
        return self.hub.subscriber_count(channel)

    def state_sizes(self) -> dict[str, int]:
        """Entries in every registry that keeps per-channel, per-user or
        per-connection state: with no client left, only the node topic
        (``interest.topics``, once a client came) and nothing else remains."""
        sizes = {f"hub.{k}": v for k, v in self.hub.sizes().items()}
        sizes.update({f"presence.{k}": v for k, v in self.presence.sizes().items()})
        sizes.update({f"interest.{k}": v for k, v in self.interest.sizes().items()})
        sizes["pressure.pressured"] = self.pressure.pressured_count
        return sizes


def _webhooks(node: Node) -> t.Any:
    """The node's webhooks when ``REALTIME_WEBHOOKS`` is set, else None."""
    if node.settings.webhooks is None:
        return None
    from ..webhooks.cluster import Webhooks
    from ..webhooks.sender import Sender

    return Webhooks(node, Sender(node.settings.webhooks))


__all__ = ["KEEPALIVE", "Node", "Observer", "Rejected", "RequestHandler"]
