"""Pusher protocol 7's envelope: ``{"event", "channel", "data"}``.

Server-to-client ``data`` is a JSON *string* (Pusher's SDKs parse it), except
a client-originated payload that was a string already. The node speaks its
own envelope (protocol v1) internally; :func:`translate` turns one of those
into Pusher's, once per message: a broadcast to a thousand Pusher clients is
parsed, translated and framed once and the same bytes go to all of them.
"""

from __future__ import annotations

import json
import typing as t

from .._ws_frames import text_frame

# pusher:error codes (https://pusher.com/docs/channels/library_auth_reference/
# pusher-websockets-protocol/#error-codes): 4000-4099 don't reconnect,
# 4100-4199 back off, 4200-4299 reconnect at once.
UNKNOWN_APP = 4001
UNAUTHORIZED = 4009
OVER_CAPACITY = 4100
PONG_NOT_RECEIVED = 4201
CLIENT_EVENT_RATE = 4301

#: Pusher's close code for a connection ended by terminate_connections.
TERMINATED = 4009

SERVER_TO_USER = "#server-to-user-"

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode(message: dict[str, t.Any]) -> bytes:
    return _dumps(message).encode()


def data_string(data: t.Any) -> str:
    """``data`` as Pusher sends it: a string as is, anything else as JSON."""
    return data if isinstance(data, str) else _dumps(data)


def event(name: str, data: t.Any, channel: str | None = None) -> bytes:
    message: dict[str, t.Any] = {"event": name}
    if channel is not None:
        message["channel"] = channel
    message["data"] = data_string(data)
    return encode(message)


def error(code: int | None, message: str) -> bytes:
    return encode({"event": "pusher:error", "data": {"code": code, "message": message}})


def connection_established(socket_id: str, activity_timeout: int) -> bytes:
    data = {"socket_id": socket_id, "activity_timeout": activity_timeout}
    return event("pusher:connection_established", data)


def pong() -> bytes:
    return encode({"event": "pusher:pong", "data": {}})


def presence_data(members: t.Iterable[t.Mapping[str, t.Any]]) -> dict[str, t.Any]:
    """The node's member list as Pusher's ``{"presence": {ids, hash, count}}``."""
    ids: list[str] = []
    info: dict[str, t.Any] = {}
    for member in members:
        key = str(member["user_id"])
        if key not in info:
            ids.append(key)
        info[key] = member.get("user_info")
    return {"presence": {"ids": ids, "hash": info, "count": len(ids)}}


def subscription_succeeded(channel: str, data: t.Any = None) -> bytes:
    return event(
        "pusher_internal:subscription_succeeded", {} if data is None else data, channel
    )


def subscription_error(channel: str, status: int, message: str) -> bytes:
    data = {"type": "AuthError", "error": message, "status": status}
    return event("pusher:subscription_error", data, channel)


def translate(native: bytes, user_key: str | None = None) -> bytes:
    """A node envelope (protocol v1) in Pusher's form; ``b""``: nothing to send.

    ``user_key``: a signed-in connection's user, whose direct messages
    (``send_to_user``) arrive on ``#server-to-user-<id>`` as pusher-js's
    ``pusher.user.bind()`` expects them.
    """
    message = json.loads(native)
    kind = message.get("type")
    channel = message.get("channel")
    if kind == "event":
        name = message["event"]
        data = message.get("data")
        if channel is None:
            if user_key is not None:
                channel = SERVER_TO_USER + user_key
            return event(name, data, channel)
        if name == "presence.join" and channel.startswith("presence-"):
            return event(
                "pusher_internal:member_added",
                {"user_id": str(data["user_id"]), "user_info": data.get("user_info")},
                channel,
            )
        if name == "presence.leave" and channel.startswith("presence-"):
            return event(
                "pusher_internal:member_removed",
                {"user_id": str(data["user_id"])},
                channel,
            )
        out: dict[str, t.Any] = {
            "event": name,
            "channel": channel,
            "data": data_string(data),
        }
        if "user_id" in message and channel.startswith("presence-"):
            out["user_id"] = str(message["user_id"])
        return encode(out)
    if kind == "subscribed" and channel is not None:
        # realtime.subscribe() on the server: the client learns of it so.
        members = (message.get("data") or {}).get("members")
        return subscription_succeeded(
            channel, None if members is None else presence_data(members)
        )
    if kind == "error" and channel is not None:
        data = message.get("data") or {}
        return subscription_error(
            channel, data.get("code", 403), data.get("message", "")
        )
    return b""  # replies to native requests have no Pusher counterpart


def frame_of(native: bytes) -> bytes:
    """A node envelope's Pusher text frame (``b""``: nothing to send)."""
    body = translate(native)
    return text_frame(body) if body else b""
