"""What the client sends, and how each server message finds its waiter.

Requests (subscribe, unsubscribe, ping, ``send(wait=True)``) carry a fresh
``id``; the reader thread hands each reply to the call waiting for that
``id``, each channel message to its :class:`Channel` and each direct message
to the client.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import typing as t

from .. import protocol
from .channel import Channel
from .errors import (
    ConnectionClosed,
    NotConnected,
    RealtimeError,
    RealtimeTimeout,
    ServerError,
    SubscriptionError,
)
from .events import Emitter, logger

if t.TYPE_CHECKING:
    from .websocket import Link


class Pending:
    """A request waiting for its reply, or for the connection to end."""

    __slots__ = ("reply", "closed")

    def __init__(self) -> None:
        self.reply: dict[str, t.Any] | None = None
        self.closed: ConnectionClosed | None = None


class Messages(Emitter):
    """The sending half of :class:`RealtimeClient`, and reply dispatch."""

    # Set by RealtimeClient.__init__.
    buffer_size: int
    timeout: float
    _channels: dict[str, Channel]
    _pending: dict[t.Any, Pending]
    _subscribe_ids: dict[int, str]  # subscribe request id -> channel name
    _ids: itertools.count[int]
    _send_lock: threading.Lock
    _ws: Link | None
    _thread: threading.Thread | None
    _closed: ConnectionClosed | None

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    # -- requests ----------------------------------------------------------------

    def subscribe(
        self, name: str, *, wait: bool = True, timeout: float | None = None
    ) -> Channel:
        """Subscribe to ``name``; the :class:`Channel`.

        With ``wait`` (the default) it returns once the server said
        ``subscribed``, and raises :class:`SubscriptionError` (``.code``,
        ``.message``) if it refused. A subscription made while reconnecting is
        sent when the connection is back. Subscribing twice returns the same
        channel.
        """
        if wait:
            self._forbid_in_reader("subscribe(wait=True)")
            if self._thread is None:
                raise NotConnected("call connect() before subscribe(wait=True)")
        with self._send_lock:
            with self._cond:
                channel = self._channels.get(name)
                created = channel is None
                if channel is None:
                    channel = Channel(self, name, self.buffer_size)
                    channel._awaited = wait
                    self._channels[name] = channel
            if created and self._ws is not None:
                self._send_subscribe_locked(channel)
        if wait:
            self._wait_subscribed(channel, self._timeout(timeout))
        return channel

    def _send_subscribe_locked(self, channel: Channel) -> None:
        """Send a subscribe (the caller holds the send lock)."""
        request_id = next(self._ids)
        with self._cond:
            self._subscribe_ids[request_id] = channel.name
        message = {"type": "subscribe", "channel": channel.name, "id": request_id}
        since = channel._since()
        if since is not None:
            message["since"] = since
        try:
            self._ws.send(json.dumps(message))
        except Exception as exc:  # the reader notices and resubscribes later
            logger.info("%r: subscribe %r not sent: %s", self, channel.name, exc)

    def _wait_subscribed(self, channel: Channel, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while channel.state == "pending":
                self._raise_if_finished()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    channel._awaited = False
                    raise RealtimeTimeout(
                        f"no answer to the subscription to {channel.name!r}"
                        f" within {timeout:g} s"
                    )
                self._cond.wait(remaining)
            if channel.state == "refused" and channel.error is not None:
                raise channel.error
            if channel.state == "unsubscribed":
                raise RealtimeError(f"unsubscribed from {channel.name!r} meanwhile")

    def _unsubscribe(
        self, channel: Channel, *, wait: bool, timeout: float | None
    ) -> None:
        with self._cond:
            if self._channels.get(channel.name) is channel:
                del self._channels[channel.name]
            was_subscribed = channel.state in ("subscribed", "pending")
            channel.state = "unsubscribed"
            self._cond.notify_all()
        if not was_subscribed or self._ws is None:
            return
        message = {"type": "unsubscribe", "channel": channel.name}
        try:
            if wait:
                self._forbid_in_reader("unsubscribe(wait=True)")
                self._request(message, timeout)
            else:
                self._send(message)
        except (ConnectionClosed, NotConnected):
            pass  # the subscription ended with the connection
        except ServerError as exc:
            if exc.code != protocol.NOT_SUBSCRIBED:  # which is what we want
                raise

    def ping(self, timeout: float | None = None) -> float:
        """Round trip to the server and back, in seconds."""
        self._forbid_in_reader("ping()")
        started = time.monotonic()
        self._request({"type": "ping"}, timeout)
        return time.monotonic() - started

    def _request(
        self, message: dict[str, t.Any], timeout: float | None
    ) -> dict[str, t.Any]:
        """Send ``message`` with a fresh id and wait for the reply carrying it."""
        timeout = self._timeout(timeout)
        request_id = next(self._ids)
        pending = Pending()
        with self._cond:
            self._pending[request_id] = pending
        try:
            self._send({**message, "id": request_id})
            deadline = time.monotonic() + timeout
            with self._cond:
                while pending.reply is None:
                    if pending.closed is not None:
                        raise pending.closed
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise RealtimeTimeout(
                            f"no answer to {message.get('type')!r} within {timeout:g} s"
                        )
                    self._cond.wait(remaining)
        finally:
            with self._cond:
                self._pending.pop(request_id, None)
        reply = pending.reply
        if reply.get("type") == "error":
            data = reply.get("data") if isinstance(reply.get("data"), dict) else {}
            raise ServerError.from_data(data, channel=reply.get("channel"))
        return reply

    def _send(self, message: dict[str, t.Any]) -> None:
        """Send one message; thread-safe (one lock for all senders)."""
        text = json.dumps(message, separators=(",", ":"))
        with self._send_lock:
            ws = self._ws
            if ws is None:
                raise NotConnected(
                    "not connected"
                    + (" (reconnecting)" if self._closed is None else "")
                )
            try:
                ws.send(text)
            except Exception as exc:
                raise NotConnected(f"the message could not be sent: {exc}") from exc

    # -- what the server says (on the reader thread) -------------------------------

    def _dispatch(self, message: dict[str, t.Any]) -> None:
        kind = message.get("type")
        name = message.get("channel")
        data = message.get("data")
        with self._cond:
            channel = self._channels.get(name) if isinstance(name, str) else None
        if kind == "event":
            event = message.get("event")
            if not isinstance(event, str):
                return
            if name is None:
                self._emit(event, data, message=message)
            elif channel is not None:
                channel._on_event(event, message)
        elif kind == "subscribed":
            with self._cond:
                self._subscribe_ids.pop(message.get("id"), None)
            if channel is None and "id" not in message and isinstance(name, str):
                channel = self._subscribed_by_server(name)
            if channel is not None:
                channel._on_subscribed(message)
        elif kind == "unsubscribed" and "id" not in message and channel is not None:
            self._unsubscribed_by_server(channel)
        elif kind in ("unsubscribed", "pong", "ack"):
            self._resolve(message)
        elif kind == "error":
            self._on_error(message, channel)

    def _subscribed_by_server(self, name: str) -> Channel:
        """``realtime.subscribe()`` on the server: a channel as if subscribed
        here (resubscribed by the client after reconnects, like its own).
        The client's ``subscribed`` handlers get it before its events."""
        with self._cond:
            channel = self._channels.get(name)
            if channel is None:
                channel = self._channels[name] = Channel(self, name, self.buffer_size)
        self._emit("subscribed", channel)
        return channel

    def _unsubscribed_by_server(self, channel: Channel) -> None:
        """``realtime.unsubscribe()`` on the server: as if unsubscribed here."""
        with self._cond:
            if self._channels.get(channel.name) is channel:
                del self._channels[channel.name]
            channel.state = "unsubscribed"
            self._cond.notify_all()
        channel._emit("unsubscribed", None)
        self._emit("unsubscribed", channel)

    def _resolve(self, message: dict[str, t.Any]) -> bool:
        """Hand a reply to the request waiting for its ``id``, if one is."""
        with self._cond:
            pending = self._pending.pop(message.get("id"), None)
            if pending is None:
                return False
            pending.reply = message
            self._cond.notify_all()
            return True

    def _on_error(self, message: dict[str, t.Any], channel: Channel | None) -> None:
        data = message.get("data")
        data = dict(data) if isinstance(data, dict) else {}
        for key in ("channel", "id"):
            if key in message:
                data.setdefault(key, message[key])
        if self._resolve(message):
            return
        with self._cond:
            subscribe_for = self._subscribe_ids.pop(message.get("id"), None)
            if subscribe_for is not None and channel is not None:
                if self._channels.get(channel.name) is channel:
                    del self._channels[channel.name]
        if subscribe_for is not None and channel is not None:
            error = SubscriptionError.from_data(data, channel=channel.name)
            if channel._on_refused(error, message):
                return
        elif channel is not None:
            channel._emit("error", data, message=message)
        self._emit("error", data, message=message)
