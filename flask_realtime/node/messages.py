"""What clients send: the rate limit, then ping, (un)subscribe and events.

Every transport hands each client message to :meth:`ClientMessages.admit`
and then :meth:`ClientMessages.receive`, and sends back the reply they
return (or lets ``receive`` push it on the connection's stream, in order
with what follows it). Authorizers and event handlers run here, in the app
context.
"""

from __future__ import annotations

import contextlib
import logging
import typing as t

from flask import current_app, has_app_context

from .. import channels as _channels
from .. import metrics as _metrics
from .. import protocol
from ..brokers import BrokerUnavailable
from ..connection import Connection
from ..errors import Rejected as Rejected
from . import recovery, topics

if t.TYPE_CHECKING:
    from . import Node

logger = logging.getLogger("flask_realtime")


class ClientMessages:
    """A node's handling of its clients' messages."""

    def __init__(self, node: Node) -> None:
        self._node = node

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
        _metrics.rate_limited()
        if rate.strikes >= self._node.settings.rate_limit_close_after:
            conn.close(protocol.CLOSE_RATE_LIMIT_ABUSE, "rate limit abuse")
        return protocol.error(
            protocol.RATE_LIMITED,
            "rate limit exceeded",
            request_id=protocol.request_id(payload),
            retry_after=round(wait, 3),
        )

    def receive(
        self, conn: Connection, payload: bytes | str, push_reply: bool = False
    ) -> bytes | None:
        """Handle one client message; returns the reply envelope, if any
        (``push_reply``: pushes it on the connection instead, before the
        events a subscribe recovers)."""
        try:
            message = protocol.parse(payload)
            kind = message.type
            _metrics.received(kind)
            if kind == "ping":
                reply = protocol.pong(message.id)
            elif kind == "subscribe":
                reply = self._subscribe(conn, message, push_reply)
            elif kind == "unsubscribe":
                reply = self._unsubscribe(conn, message)
            else:
                reply = self._client_event(conn, message)
        except protocol.ProtocolError as exc:
            reply = exc.envelope()
        except BrokerUnavailable:
            reply = protocol.error(
                protocol.UNAVAILABLE,
                "the server cannot reach its broker; try again",
                request_id=protocol.request_id(payload),
            )
        if reply is not None:
            _metrics.sent("reply")
        if push_reply and reply is not None:
            conn.push_json(reply)
            return None
        return reply

    def app_context(self) -> t.ContextManager[t.Any]:
        """The node's app context, unless it is the current one already."""
        app = self._node.app
        if has_app_context() and current_app._get_current_object() is app:  # type: ignore[attr-defined]
            return contextlib.nullcontext()
        return app.app_context()

    # -- server-side subscriptions (realtime.subscribe, see .commands) ---------

    def server_subscribe(self, conn: Connection, name: str) -> None:
        """Subscribe ``conn`` as if it had asked, without an ``id``: its
        client gets ``subscribed``. The server decided, so no authorizer is
        asked whether; a presence channel's authorizer still gives the
        member's ``user_info`` when it returns a dict."""
        if conn.closing or name in conn.channels:
            return
        message = protocol.ClientMessage("subscribe", None, name, None, None)
        try:
            reply = self._subscribe(conn, message, True, trusted=True)
        except protocol.ProtocolError as exc:
            reply = exc.envelope()
        except BrokerUnavailable:
            reply = protocol.error(
                protocol.UNAVAILABLE,
                "the server cannot reach its broker",
                channel=name,
            )
        if reply is not None:
            conn.push_json(reply)

    def server_unsubscribe(self, conn: Connection, name: str) -> None:
        """Unsubscribe ``conn`` as if it had asked: its client gets
        ``unsubscribed`` without an ``id``; presence leaves follow."""
        if name not in conn.channels:
            return
        self._node.hub.unsubscribe(conn, name)
        self._node.left_channel(conn, name)
        conn.push_json(protocol.unsubscribed(name, None))

    # -- subscriptions -----------------------------------------------------------

    def _subscribe(
        self,
        conn: Connection,
        message: protocol.ClientMessage,
        push_reply: bool,
        trusted: bool = False,
    ) -> bytes | None:
        node = self._node
        name = t.cast(str, message.channel)
        kind = node.rules.kind(name)
        if name in conn.channels:
            # Already receiving it here: nothing to recover, no position.
            return protocol.subscribed(name, message.id, self._data(name, kind) or None)
        if len(conn.channels) >= node.settings.max_subscriptions:
            raise protocol.ProtocolError(
                protocol.FORBIDDEN,
                f"subscription limit of {node.settings.max_subscriptions} reached",
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
            if trusted:  # realtime.subscribe(): whether is the server's call
                allowed = True
                if kind == _channels.PRESENCE:
                    info = self.authorize(conn, name)
                    allowed = info if isinstance(info, dict) else True
            else:
                allowed = self.authorize(conn, name)
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
        if kind == _channels.PRESENCE and node.clustered:
            # The replica first: the member list in the reply comes from it.
            replica = node.interest.hold(
                topics.presence(name),
                lambda: node.presence_sync.start_replica(name),
            )
        else:
            replica = contextlib.nullcontext()
        kept = node.rules.retention(name) is not None
        stand_in = recovery.Recovering(conn) if kept else None
        with replica, node.interest.hold(topics.channel(name)):
            # The reply goes out only once the broker delivers this channel here.
            node.hub.subscribe(conn, name, stand_in)
            if conn.closed or name not in conn.channels:
                return None  # closed while the broker subscribed: forgotten
            if node.webhooks is not None:
                node.webhooks.channel_changed(name)
            if kind == _channels.PRESENCE:
                node.presence_sync.joined(conn, name, user_info)
        data = self._data(name, kind)
        if stand_in is not None and node.hub.target(conn, name) is not stand_in:
            return protocol.subscribed(name, message.id, data or None)  # raced
        if stand_in is not None:
            return recovery.recover(
                node, conn, name, stand_in, message.data, data, message.id, push_reply
            )
        if message.data is not None:
            data["recovered"] = False  # no history: nothing to resume from
        return protocol.subscribed(name, message.id, data or None)

    def _data(self, name: str, kind: str) -> dict[str, t.Any]:
        """The ``subscribed`` reply's data before history: presence members."""
        if kind == _channels.PRESENCE:
            return {"members": self._node.presence.members(name)}
        return {}

    def authorize(self, conn: t.Any, name: str) -> t.Any:
        """The channel's authorizer's answer for ``conn`` (a Connection, or
        a stand-in with its public attributes); no authorizer, or one that
        raises: denied."""
        authorizer = self._node.rules.authorizer_for(name)
        if authorizer is None:
            return False  # deny by default: no authorizer, no access
        try:
            with self.app_context():
                return authorizer.func(conn, name)
        except Exception:
            logger.exception(
                "flask_realtime: authorizer %r raised for channel %r; denied",
                authorizer.pattern,
                name,
            )
            return False

    def _unsubscribe(self, conn: Connection, message: protocol.ClientMessage) -> bytes:
        name = _require_subscribed(conn, message, "not subscribed to this channel")
        self._node.hub.unsubscribe(conn, name)
        self._node.left_channel(conn, name)
        return protocol.unsubscribed(name, message.id)

    # -- client events -----------------------------------------------------------

    def _client_event(
        self, conn: Connection, message: protocol.ClientMessage
    ) -> bytes | None:
        node = self._node
        name = _require_subscribed(
            conn, message, "subscribe to the channel before sending events to it"
        )
        event = t.cast(str, message.event)
        handler = node.handlers.find(event, name)
        if handler is not None:
            result = self._run_handler(handler, conn, name, message)
            return self._ack(name, message, result)
        if node.rules.kind(name) != _channels.PUBLIC and event.startswith("client-"):
            envelope = protocol.client_event(name, event, message.data, conn.user_id)
            node.publish_channel(name, envelope, exclude=conn.id)
            if node.webhooks is not None:
                node.webhooks.client_event(conn, name, event, message.data)
            return self._ack(name, message, None)
        raise protocol.ProtocolError(
            protocol.FORBIDDEN,
            "no handler for this event; only 'client-' events on private or "
            "presence channels are relayed",
            request_id=message.id,
            channel=name,
        )

    def _run_handler(
        self,
        handler: t.Callable[..., t.Any],
        conn: Connection,
        name: str,
        message: protocol.ClientMessage,
    ) -> t.Any:
        """The handler's return value; a refusal or a failure as a ProtocolError."""
        try:
            with self.app_context():
                result = handler(conn, name, message.data)
        except Rejected as exc:
            raise protocol.ProtocolError(
                exc.code,
                str(exc) or "event refused",
                request_id=message.id,
                channel=name,
            ) from None
        except Exception:
            logger.exception(
                "flask_realtime: handler for %r on %r raised", message.event, name
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
        return result

    def _ack(
        self, name: str, message: protocol.ClientMessage, result: t.Any
    ) -> bytes | None:
        """The ``ack`` of an accepted event that has an ``id`` (with the
        handler's value, unless None); nothing for an event without one.

        Every such event is answered, also when the value is None (an
        extension of PROTOCOL.md, which names only the acks with a value), so
        that a client waiting on the ``id`` learns that the server has the
        event instead of waiting out its timeout.
        """
        if message.id is None:
            return None
        try:
            return protocol.ack(name, message.id, result)
        except (TypeError, ValueError, RecursionError) as exc:
            logger.error(
                "flask_realtime: handler for %r on %r returned a value that is "
                "not JSON (%s: %s); the sender gets error 500",
                message.event,
                name,
                type(exc).__name__,
                exc,
            )
            raise protocol.ProtocolError(
                protocol.INTERNAL_ERROR,
                "the event handler's answer could not be sent as JSON",
                request_id=message.id,
                channel=name,
            ) from None


def _require_subscribed(
    conn: Connection, message: protocol.ClientMessage, refusal: str
) -> str:
    """The message's channel, which ``conn`` must have subscribed: else a
    NOT_SUBSCRIBED error saying ``refusal``."""
    name = t.cast(str, message.channel)
    if name not in conn.channels:
        raise protocol.ProtocolError(
            protocol.NOT_SUBSCRIBED, refusal, request_id=message.id, channel=name
        )
    return name
