"""Webhooks in Pusher's format, so handlers written for Pusher work as is.

The same events as the native format (webhooks/events.py), sent by the same
sender with the same batching and retries, only encoded as Pusher encodes
them: ``{"time_ms": ..., "events": [...]}`` with Pusher's event names and
fields, ``X-Pusher-Key`` (the app's key) and ``X-Pusher-Signature`` (hex
HMAC-SHA256 of the body, keyed with the app's secret). Pusher's server
libraries check them with ``validate_webhook(key, signature, body)``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import typing as t

from ..webhooks import events as _events
from ..webhooks.wire import ID_HEADER

if t.TYPE_CHECKING:
    from ..config.pusher import PusherApp
    from ..webhooks.events import Event

KEY_HEADER = "X-Pusher-Key"
SIGNATURE_HEADER = "X-Pusher-Signature"

#: Our event names -> Pusher's.
NAMES = {
    _events.CHANNEL_OCCUPIED: "channel_occupied",
    _events.CHANNEL_VACATED: "channel_vacated",
    _events.MEMBER_ADDED: "member_added",
    _events.MEMBER_REMOVED: "member_removed",
    _events.CLIENT_EVENT: "client_event",
}


def signature(secret: str, body: bytes) -> str:
    """Pusher's webhook signature: hex HMAC-SHA256 of the body."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def pusher_event(event: Event) -> dict[str, t.Any]:
    """One event as Pusher writes it: user ids as strings, a client event's
    ``data`` as a JSON string and its sender as ``socket_id``, with
    ``user_id`` on presence channels only (Pusher's documented fields)."""
    out: dict[str, t.Any] = {"name": NAMES[event.name], "channel": event.channel}
    fields = event.fields
    if event.name in (_events.MEMBER_ADDED, _events.MEMBER_REMOVED):
        out["user_id"] = str(fields["user_id"])
    elif event.name == _events.CLIENT_EVENT:
        data = fields["data"]
        out["event"] = fields["event"]
        out["data"] = (
            data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        )
        out["socket_id"] = fields["connection_id"]
        user_id = fields.get("user_id")
        if user_id is not None and _is_presence(event.channel):
            out["user_id"] = str(user_id)
    return out


def _is_presence(channel: str) -> bool:
    # Presence is by name alone (PROTOCOL.md, "Channels").
    return channel.startswith(("presence-", "presence."))


class PusherFormat:
    """Pusher's webhook format, signed with one Pusher app's key and secret."""

    def __init__(self, app: PusherApp) -> None:
        self.app = app

    def encode(
        self, events: t.Sequence[Event], batch_id: str, secret: str
    ) -> tuple[bytes, dict[str, str]]:
        """``secret`` (the native one) is not used: the app's signs."""
        body = json.dumps(
            {
                "time_ms": int(time.time() * 1000),
                "events": [pusher_event(event) for event in events],
            },
            separators=(",", ":"),
        ).encode()
        return body, {
            "Content-Type": "application/json",
            KEY_HEADER: self.app.key,
            SIGNATURE_HEADER: signature(self.app.secret, body),
            # Not Pusher's: the batch's id, the same on every retry of it.
            ID_HEADER: batch_id,
        }
