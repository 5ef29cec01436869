"""A Pusher protocol 7 connection: the native WebSocket session, another wire.

The session, its outbound queue, its bound, the pressure gauge and the
heartbeats are the native WebSocket's (:mod:`..transports.ws_session`,
:mod:`..transports.ws_threaded`); only what the client's text frames mean
and how the node's messages look on the wire differ. To the node and the
hub a Pusher client is a :class:`~flask_realtime.connection.Connection`
like any other, whose id is its ``socket_id``.
"""

from __future__ import annotations

import json
import logging
import operator
import time
import typing as t

from .. import channels as _channels
from .._ws_frames import close_frame, text_frame
from ..brokers import BrokerUnavailable
from ..connection import Connection, Outbound
from ..node import topics
from ..node.commands import CLOSE_DISCONNECTED
from ..transports.ws_session import GeventWebSocket
from ..transports.ws_threaded import ThreadedWebSocket
from . import protocol as wire
from . import signatures

if t.TYPE_CHECKING:
    import socket

    from ..config.pusher import PusherApp
    from ..node import Node

logger = logging.getLogger("flask_realtime")

_DIRECT = b'{"type":"event","event"'  # how the node's direct messages begin
#: A message as Pusher clients get it: one frame, built once for all of them.
as_pusher_frame: t.Callable[[Outbound], bytes] = operator.attrgetter("pusher_frame")
_CONNECTED = b'{"type":"connected"'
_PRIVATE = ("private-", "presence-")


def socket_id(node: Node) -> str:
    """A socket id of Pusher's form whose first number names this node.

    ``send(socket_id)`` and ``disconnect(connection_id=...)`` route by what
    precedes the dot: the session subscribes this node's topic under it too.
    """
    prefix = str(int(node.id, 16))
    own = signatures.new_socket_id().partition(".")[2]
    return f"{prefix}.{own}"


def _hold_node_topic(node: Node, connection_id: str) -> None:
    """Subscribe the node's topic under the socket id's prefix, once: kept
    for the process's life, as the node's own topic (see ``Node.open``)."""
    topic = topics.node(connection_id.partition(".")[0])
    if not node.interest.is_subscribed(topic):
        with node.interest.hold(topic):
            pass


class PusherProtocol:
    """What Pusher's text frames mean; mixed into a native WebSocket session."""

    conn: Connection
    node: Node
    app: PusherApp
    signed_in = False

    def setup_pusher(self, app: PusherApp) -> None:
        self.app = app
        self.event_window = 0.0  # the second client events are counted in
        self.event_count = 0

    # -- the wire -----------------------------------------------------------------

    def pusher_encode(self, message: Outbound) -> bytes:
        """The slow encoder, for a connection that is opening (the node's
        welcome) or signed in (direct messages on ``#server-to-user-<id>``);
        the others take :data:`as_pusher_frame`, shared with every recipient."""
        if message.json.startswith(_CONNECTED):
            return text_frame(self.welcome_bytes())
        if self.signed_in and message.json.startswith(_DIRECT):
            body = wire.translate(message.json, self.conn.user_key)
            return text_frame(body)
        return message.pusher_frame

    def send_pusher(self, body: bytes) -> None:
        self.conn.push_bytes(text_frame(body))

    def error_frame(self, envelope: bytes) -> bytes:
        """The session's own errors (rate limit, binary frame, too large) as
        ``pusher:error``; Pusher has no code for these, so none is given."""
        data = json.loads(envelope).get("data") or {}
        return text_frame(wire.error(None, str(data.get("message", "error"))))

    def welcome_bytes(self) -> bytes:
        return wire.connection_established(self.conn.id, self.app.activity_timeout)

    def tick(self, now: float, heartbeat: float) -> None:
        conn = self.conn
        if now - conn.last_seen > 2 * heartbeat:
            self.send_pusher(
                wire.error(wire.PONG_NOT_RECEIVED, "Pong reply not received")
            )
            conn.close(wire.PONG_NOT_RECEIVED, "pong reply not received")
            return
        super().tick(now, heartbeat)  # type: ignore[misc]

    def pusher_close(self, code: int, reason: str) -> tuple[int, str]:
        """A node close in Pusher's terms: disconnect() is a termination."""
        if code == CLOSE_DISCONNECTED:
            message = "You got disconnected by the app."
            self.conn.put_last(text_frame(wire.error(wire.TERMINATED, message)))
            return wire.TERMINATED, message
        return code, reason

    # -- client messages ------------------------------------------------------------

    def handle_text(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
            if not isinstance(message, dict):
                raise ValueError("not an object")
            name = message.get("event")
            if not isinstance(name, str):
                raise ValueError("no event name")
        except (ValueError, RecursionError):
            self.send_pusher(wire.error(None, "Invalid JSON or event"))
            return
        data = message.get("data")
        try:
            if name == "pusher:ping":
                self.send_pusher(wire.pong())
            elif name == "pusher:subscribe":
                self.subscribe(data if isinstance(data, dict) else {})
            elif name == "pusher:unsubscribe":
                channel = data.get("channel") if isinstance(data, dict) else None
                if isinstance(channel, str):
                    self.unsubscribe(channel)
            elif name == "pusher:signin":
                self.signin(data if isinstance(data, dict) else {})
            elif name.startswith("client-"):
                self.client_event(name, message.get("channel"), data)
            elif name == "pusher:pong":
                pass  # last_seen is refreshed by every frame
            else:
                self.send_pusher(wire.error(None, f"Unsupported event {name[:100]}"))
        except BrokerUnavailable:
            self.send_pusher(
                wire.error(wire.OVER_CAPACITY, "the server cannot reach its broker")
            )

    def refuse(self, channel: str, status: int, message: str) -> None:
        self.send_pusher(wire.subscription_error(channel, status, message))

    def subscribe(self, data: dict[str, t.Any]) -> None:
        node = self.node
        conn = self.conn
        name = data.get("channel")
        if isinstance(name, str) and name.startswith(wire.SERVER_TO_USER):
            # pusher-js's after a sign-in: send_to_user() delivers on it.
            if self.signed_in and name == wire.SERVER_TO_USER + str(conn.user_key):
                self.send_pusher(wire.subscription_succeeded(name))
            else:
                self.refuse(name, 403, "sign in as this user first")
            return
        if not isinstance(name, str) or not _channels.is_valid_name(name):
            self.send_pusher(wire.error(None, "Invalid channel name"))
            return
        kind = node.rules.kind(name)
        user_info: t.Any = conn.user_info
        if kind != _channels.PUBLIC:
            # The signature is the authorization, as with Pusher: the app's
            # auth endpoint decided (POST /pusher/auth); no authorizer runs.
            channel_data = data.get("channel_data")
            if kind == _channels.PRESENCE and not isinstance(channel_data, str):
                self.refuse(name, 400, "presence channels need channel_data")
                return
            expected = signatures.channel_auth(
                self.app,
                conn.id,
                name,
                channel_data if kind == _channels.PRESENCE else None,
            )
            if not signatures.same(expected, data.get("auth")):
                self.refuse(name, 401, "Invalid signature")
                return
            if kind == _channels.PRESENCE:
                member = _member(t.cast(str, channel_data))
                if member is None:
                    self.refuse(name, 400, "channel_data needs a user_id")
                    return
                user_id, user_info = member
                node.identify(conn, user_id, user_info)
                if conn.user_key != str(user_id):
                    self.refuse(name, 403, "one user per connection")
                    return
        if name in conn.channels:
            self._succeeded(name, kind)
            return
        if len(conn.channels) >= node.settings.max_subscriptions:
            self.refuse(name, 403, "subscription limit reached")
            return
        held: t.Any = None
        if kind == _channels.PRESENCE and node.clustered:
            held = node.interest.hold(
                topics.presence(name), lambda: node.presence_sync.start_replica(name)
            )
        if held is not None:
            held.__enter__()
        try:
            with node.interest.hold(topics.channel(name)):
                node.hub.subscribe(conn, name)
                if conn.closed or name not in conn.channels:
                    return
                if node.webhooks is not None:
                    node.webhooks.channel_changed(name)
                if kind == _channels.PRESENCE:
                    node.presence_sync.joined(conn, name, user_info)
        finally:
            if held is not None:
                held.__exit__(None, None, None)
        self._succeeded(name, kind)

    def _succeeded(self, name: str, kind: str) -> None:
        data = None
        if kind == _channels.PRESENCE:
            data = wire.presence_data(self.node.presence.members(name))
        self.send_pusher(wire.subscription_succeeded(name, data))

    def unsubscribe(self, name: str) -> None:
        if name in self.conn.channels:
            self.node.hub.unsubscribe(self.conn, name)
            self.node.left_channel(self.conn, name)

    def client_event(self, name: str, channel: t.Any, data: t.Any) -> None:
        conn = self.conn
        if not isinstance(channel, str) or not channel.startswith(_PRIVATE):
            self.send_pusher(
                wire.error(
                    None,
                    "Client events are only allowed on private and presence channels",
                )
            )
            return
        if channel.startswith("private-encrypted-"):
            # As Pusher: the server cannot tell what an encrypted one carries.
            self.send_pusher(
                wire.error(None, "Client events are not allowed on encrypted channels")
            )
            return
        if channel not in conn.channels:
            self.send_pusher(
                wire.error(None, "Client events need a subscription to the channel")
            )
            return
        now = time.monotonic()
        if now - self.event_window >= 1.0:
            self.event_window, self.event_count = now, 0
        self.event_count += 1
        if self.event_count > self.app.client_event_rate:
            self.send_pusher(
                wire.error(
                    wire.CLIENT_EVENT_RATE,
                    "Client event rejected due to rate limit"
                    f" ({self.app.client_event_rate}/s)",
                )
            )
            return
        user_id = conn.user_id if channel.startswith("presence-") else None
        envelope = _client_event_envelope(channel, name, data, user_id)
        self.node.publish_channel(channel, envelope, exclude=conn.id)
        if self.node.webhooks is not None:
            self.node.webhooks.client_event(conn, channel, name, data)

    def signin(self, data: dict[str, t.Any]) -> None:
        conn = self.conn
        user_data = data.get("user_data")
        if not isinstance(user_data, str) or not signatures.same(
            signatures.user_auth(self.app, conn.id, user_data), data.get("auth")
        ):
            self.send_pusher(wire.error(wire.UNAUTHORIZED, "Invalid signature"))
            conn.close(wire.UNAUTHORIZED, "invalid signature")
            return
        member = _member(user_data, key="id")
        if member is None:
            self.send_pusher(wire.error(wire.UNAUTHORIZED, "user_data needs an id"))
            conn.close(wire.UNAUTHORIZED, "user_data needs an id")
            return
        user_id, _ = member
        if conn.user_key is not None and conn.user_key != str(user_id):
            self.send_pusher(wire.error(wire.UNAUTHORIZED, "another user signed in"))
            return
        self.node.identify(conn, str(user_id), json.loads(user_data))
        self.signed_in = True
        conn.encode = self.pusher_encode
        self.send_pusher(wire.event("pusher:signin_success", {"user_data": user_data}))


def _member(text: str, key: str = "user_id") -> tuple[t.Any, t.Any] | None:
    """``(user_id, user_info)`` from a presence ``channel_data`` (or the
    ``id`` of sign-in ``user_data``)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    user_id = value.get(key)
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
        return None
    if str(user_id) == "":
        return None
    return user_id, value.get("user_info")


def _client_event_envelope(
    channel: str, name: str, data: t.Any, user_id: t.Any
) -> bytes:
    from .. import protocol

    return protocol.client_event(channel, name, data, user_id)


class PusherSocketSession(PusherProtocol, GeventWebSocket):
    """A Pusher client on a detached socket, under gevent."""

    def __init__(self, node: Node, app: PusherApp) -> None:
        super().__init__(node)
        self.setup_pusher(app)

    def bind(self, conn: Connection) -> None:
        super().bind(conn)
        conn.encode = as_pusher_frame  # (open() returns the welcome itself)

    def open(self, user_id: t.Any, user_info: t.Any, **options: t.Any) -> bytes:
        node = self.node
        cid = socket_id(node)
        _hold_node_topic(node, cid)
        self.conn = node.open(
            self.transport, self, user_id, user_info, welcome=False, connection_id=cid
        )
        return self.welcome_bytes()

    def closing_bytes(self, code: int, reason: str) -> bytes:
        return close_frame(*self.pusher_close(code, reason))


class PusherThreadedSession(PusherProtocol, ThreadedWebSocket):
    """A Pusher client on two threads (``flask run``, TLS under gevent)."""

    def __init__(self, node: Node, sock: socket.socket, app: PusherApp) -> None:
        super().__init__(node, sock)
        self.setup_pusher(app)

    def bind(self, conn: Connection) -> None:
        super().bind(conn)
        conn.encode = self.pusher_encode

    def start(self, user_id: t.Any, user_info: t.Any) -> None:
        node = self.node
        cid = socket_id(node)
        _hold_node_topic(node, cid)
        # The node queues its welcome before on_connect runs: encoded as
        # pusher:connection_established (see pusher_encode).
        conn = node.open("websocket", self, user_id, user_info, connection_id=cid)
        if not self.signed_in:
            conn.encode = as_pusher_frame  # welcomed: the shared frames from now on

    def close(self, code: int, reason: str) -> None:
        super().close(*self.pusher_close(code, reason))
