"""A subscription as the client sees it: state, events, presence members."""

from __future__ import annotations

import typing as t

from .errors import RealtimeError, SubscriptionError
from .events import Emitter
from .recovery import Recovery

if t.TYPE_CHECKING:
    from .realtime_client import RealtimeClient


class Channel(Emitter):
    """A subscription; made by :meth:`RealtimeClient.subscribe`.

    Events: the channel's own events by name, ``presence.join`` and
    ``presence.leave`` on presence channels, and ``subscribed`` (each
    resubscription after a reconnect, with the reply's data) and ``error``
    (a refused resubscription or client event) from the client.

    On channels with history the client resubscribes with ``since`` and
    drops duplicates by offset: after a reconnect, :attr:`recovered` says
    whether every missed event was replayed (else reload the state).
    """

    def __init__(self, client: RealtimeClient, name: str, buffer_size: int) -> None:
        super().__init__(client._cond, buffer_size)
        self.client = client
        self.name = name
        #: "pending", "subscribed", "refused" or "unsubscribed".
        self.state = "pending"
        #: The ``data`` of the last ``subscribed`` reply.
        self.subscribed_data: t.Any = None
        self.error: SubscriptionError | None = None
        self._awaited = False  # a blocking subscribe() takes the first reply
        self._members: dict[str, dict[str, t.Any]] = {}
        self._recovery = Recovery()
        #: Whether the last (re)subscription recovered every missed event
        #: (False also for the first one and on channels without history).
        self.recovered = False

    def __repr__(self) -> str:
        return f"<Channel {self.name!r} {self.state}>"

    @property
    def is_presence(self) -> bool:
        """Whether the channel is a presence channel (it has ``members``)."""
        return self.name.startswith(("presence-", "presence."))

    @property
    def members(self) -> list[dict[str, t.Any]]:
        """The presence members, one dict per user (``user_id``, ``user_info``,
        ...), kept current from the subscribe reply and join/leave events."""
        with self._cond:
            return [dict(member) for member in self._members.values()]

    @property
    def position(self) -> dict[str, t.Any] | None:
        """Channels with history: ``{"offset", "epoch"}`` of the last event
        delivered (or of the subscribe reply); None on other channels."""
        with self._cond:
            p = self._recovery.position
            return p.as_dict() if p is not None else None

    def send(
        self,
        event: str,
        data: t.Any = None,
        *,
        wait: bool = False,
        timeout: float | None = None,
    ) -> t.Any:
        """Send a client event on this channel.

        With ``wait``, the event carries an ``id`` and the call returns once
        the server has handled it: the value the app's handler returned (the
        ``ack``'s data; None when it returned None or the event was relayed).
        A refusal raises :class:`ServerError` (``.code``, ``.message``), no
        answer within ``timeout`` (the client's ``timeout`` by default)
        :class:`RealtimeTimeout`, and a connection lost meanwhile
        :class:`ConnectionClosed` (the server may or may not have handled
        the event). Without ``wait``, it returns None at once and a refusal
        arrives as an ``error`` event. Raises :class:`NotConnected` while
        the client is reconnecting.
        """
        message = {"type": "event", "channel": self.name, "event": event, "data": data}
        if not wait:
            self.client._send(message)
            return None
        self._forbid_in_reader("send(wait=True)")
        return self.client._request(message, timeout).get("data")

    def unsubscribe(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """Leave the channel; it will not be resubscribed after reconnects."""
        self.client._unsubscribe(self, wait=wait, timeout=timeout)

    def _raise_if_finished(self) -> None:
        if self.state == "refused" and self.error is not None:
            raise self.error
        if self.state == "unsubscribed":
            raise RealtimeError(f"unsubscribed from {self.name!r}")
        self.client._raise_if_finished()

    def _forbid_in_reader(self, what: str) -> None:
        self.client._forbid_in_reader(what)

    # -- called by the client's reader with what the server said -------------------

    def _on_subscribed(self, message: dict[str, t.Any]) -> None:
        data = message.get("data")
        with self._cond:
            self.recovered = self._recovery.on_reply(data)
            held = self._recovery.take_held()
            if isinstance(data, dict):
                data = {**data, "recovered": self.recovered}
            self.state = "subscribed"
            self.subscribed_data = data
            self.error = None
            if self.is_presence and isinstance(data, dict):
                self._members = {
                    str(member.get("user_id")): dict(member)
                    for member in data.get("members") or []
                    if isinstance(member, dict)
                }
            awaited, self._awaited = self._awaited, False
            self._cond.notify_all()
        self._emit("subscribed", data, buffer=not awaited, message=message)
        for event in held:
            self._on_event(event["event"], event)

    def _on_refused(self, error: SubscriptionError, message: dict[str, t.Any]) -> bool:
        """Record a refusal; True if a blocking subscribe() will raise it."""
        with self._cond:
            self.state = "refused"
            self.error = error
            awaited, self._awaited = self._awaited, False
            self._cond.notify_all()
        if not awaited:
            self._emit("error", error.data, message=message)
        return awaited

    def _since(self) -> dict[str, t.Any] | None:
        """The ``since`` of a subscribe about to be sent."""
        with self._cond:
            return self._recovery.since()

    def _on_event(self, event: str, message: dict[str, t.Any]) -> None:
        with self._cond:
            if self._recovery.hold(message):
                return  # until the subscribe reply (SSE, long-poll)
            if not self._recovery.accept(message):
                return  # delivered already: a replay's overlap
        data = message.get("data")
        if self.is_presence and isinstance(data, dict) and "user_id" in data:
            key = str(data["user_id"])
            with self._cond:
                if event == "presence.join":
                    self._members[key] = dict(data)
                elif event == "presence.leave":
                    self._members.pop(key, None)
        self._emit(event, data, message=message)
