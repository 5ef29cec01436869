"""Wire protocol v1: parse client messages and build server messages.

No I/O happens here. Server messages are built as ``bytes`` once per
broadcast; transports frame those bytes without decoding them again.
"""

from __future__ import annotations

import json
import typing as t

from . import channels
from .strict_json import SURROGATE
from .strict_json import NotStrictJSON as NotStrictJSON
from .strict_json import dumps as encode_strict
from .strict_json import loads as loads

PROTOCOL_VERSION = 1

# Error codes carried in ``{"type": "error", "data": {"code": ...}}``.
BAD_REQUEST = 400
UNAUTHORIZED = 401
FORBIDDEN = 403
NOT_SUBSCRIBED = 404
TOO_LARGE = 413
RATE_LIMITED = 429
INTERNAL_ERROR = 500  # extension: an application handler raised
UNAVAILABLE = 503  # extension: the broker is down and its buffer full

# WebSocket close codes (PROTOCOL.md, "WebSocket close codes").
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_LARGE = 1009
CLOSE_AUTH_FAILED = 4001
CLOSE_ORIGIN_NOT_ALLOWED = 4003
CLOSE_POLICY_VIOLATION = 4008
CLOSE_TOO_SLOW = 4100
CLOSE_HEARTBEAT_TIMEOUT = 4101  # extension: no frame for two heartbeats
CLOSE_RATE_LIMIT_ABUSE = 4129
CLOSE_SHUTDOWN = 4200
# Never sent in a close frame (RFC 6455, 7.1.5): what a client reports when the
# server's close frame had no code, or when the connection dropped without one.
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006

# What a client does after each range of close codes (PROTOCOL.md).
CLOSE_NO_RECONNECT = range(4000, 4100)
CLOSE_RECONNECT_WITH_BACKOFF = range(4100, 4200)
CLOSE_RECONNECT_AT_ONCE = range(4200, 4300)

# Where the endpoints live unless the app configures otherwise (PROTOCOL.md,
# "Transports and paths").
DEFAULT_URL_PREFIX = "/realtime"
DEFAULT_WEBSOCKET_PATH = "/ws"

CLIENT_TYPES = frozenset({"subscribe", "unsubscribe", "event", "ping"})
# Every ``type`` the server sends, and the event names it uses itself: a
# client event may not take any of them, so no client can pass for the
# server (PROTOCOL.md, "Server → client").
SERVER_TYPES = frozenset(
    {"connected", "event", "subscribed", "unsubscribed", "pong", "error", "ack"}
)
PRESENCE_JOIN = "presence.join"
PRESENCE_LEAVE = "presence.leave"
_SERVER_EVENT_PREFIXES = ("presence.",)


def is_server_event_name(name: str) -> bool:
    """A name the server uses itself, which no client event may carry."""
    return name in SERVER_TYPES or name.startswith(_SERVER_EVENT_PREFIXES)


class ProtocolError(Exception):
    """A client message the server refuses; becomes an ``error`` envelope."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        request_id: t.Any = None,
        channel: str | None = None,
        **extra: t.Any,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.channel = channel
        self.extra = extra

    def envelope(self) -> bytes:
        return error(
            self.code,
            self.message,
            request_id=self.request_id,
            channel=self.channel,
            **self.extra,
        )


class ClientMessage(t.NamedTuple):
    """``data``: an event's data; a subscribe's ``since`` (offset, epoch)."""

    type: str
    id: t.Any
    channel: str | None
    event: str | None
    data: t.Any


# Serialise one envelope to compact UTF-8 JSON, strictly: ValueError for NaN,
# Infinity or a lone surrogate and TypeError for what JSON has no type for, in
# the caller of ``broadcast()`` and the like, before anything is sent. The
# function itself, not a wrapper: a request's deepest chain of Python frames
# sets how many pages of its greenlet's frame stack are touched, and a
# wrapper here took ``POST /send`` (subscribe) past the first 4 KiB page:
# +4 KB RSS per long-poller (docs/benchmarks.md).
encode = encode_strict


def parse(text: str | bytes) -> ClientMessage:
    """Validate one client message; raise :class:`ProtocolError` (400) if it is bad."""
    try:
        obj = loads(text)
    except NotStrictJSON as exc:
        raise ProtocolError(BAD_REQUEST, str(exc), request_id=_id_of(text)) from None
    except RecursionError:
        # "[[[[..." nested deeper than the parser goes.
        raise ProtocolError(BAD_REQUEST, "invalid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_REQUEST, "a message must be a JSON object")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, (int, str)):
        raise ProtocolError(BAD_REQUEST, "'id' must be a string or an integer")
    if isinstance(request_id, bool):
        raise ProtocolError(BAD_REQUEST, "'id' must be a string or an integer")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(
            BAD_REQUEST, "missing or non-string field 'type'", request_id=request_id
        )
    if kind not in CLIENT_TYPES:
        raise ProtocolError(
            BAD_REQUEST, f"unknown message type {kind[:50]!r}", request_id=request_id
        )
    if kind == "ping":
        return ClientMessage(kind, request_id, None, None, None)

    channel = obj.get("channel")
    if not isinstance(channel, str):
        raise ProtocolError(
            BAD_REQUEST, "missing or non-string field 'channel'", request_id=request_id
        )
    if not channels.is_valid_name(channel):
        raise ProtocolError(
            BAD_REQUEST,
            "invalid channel name",
            request_id=request_id,
            channel=channel[:200],
        )
    if kind == "subscribe":
        since = obj.get("since")
        if since is not None:
            since = _since(since, request_id, channel)
        return ClientMessage(kind, request_id, channel, None, since)
    if kind != "event":
        return ClientMessage(kind, request_id, channel, None, None)

    event = obj.get("event")
    if not isinstance(event, str) or not event or len(event) > 200:
        raise ProtocolError(
            BAD_REQUEST,
            "missing or invalid field 'event' (a string of 1-200 characters)",
            request_id=request_id,
            channel=channel,
        )
    if is_server_event_name(event):
        raise ProtocolError(
            FORBIDDEN,
            f"{event[:50]!r} is a name the server uses itself; "
            "client events may not take it",
            request_id=request_id,
            channel=channel,
        )
    return ClientMessage(kind, request_id, channel, event, obj.get("data"))


def _since(since: t.Any, request_id: t.Any, channel: str) -> tuple[int, str]:
    """A subscribe's ``since`` as ``(offset, epoch)`` (PROTOCOL.md, "History
    and recovery"); its other members are ignored, like a message's."""
    if isinstance(since, dict):
        offset, epoch = since.get("offset"), since.get("epoch")
        if type(offset) is int and offset >= 0 and type(epoch) is str:
            return offset, epoch
    raise ProtocolError(
        BAD_REQUEST,
        "'since' must be {'offset': an integer >= 0, 'epoch': a string}",
        request_id=request_id,
        channel=channel,
    )


def request_id(text: str | bytes) -> t.Any:
    """The ``id`` of a message that will not be processed, for its error."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    value = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(value, str) and SURROGATE.search(value):
        return None  # could not be echoed as strict JSON
    return (
        value if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    )


_id_of = request_id  # for parse(), whose local ``request_id`` hides it


def _with_id(message: dict[str, t.Any], request_id: t.Any) -> dict[str, t.Any]:
    if request_id is not None:
        message["id"] = request_id
    return message


def connected(connection_id: str, heartbeat: float, token: str | None = None) -> bytes:
    data: dict[str, t.Any] = {
        "connection_id": connection_id,
        "heartbeat": heartbeat,
        "protocol": PROTOCOL_VERSION,
    }
    if token is not None:
        data["token"] = token
    return encode({"type": "connected", "data": data})


def event(channel: str | None, name: str, data: t.Any) -> bytes:
    """A channel broadcast, or a direct message when ``channel`` is None."""
    if channel is None:
        return encode({"type": "event", "event": name, "data": data})
    return encode({"type": "event", "channel": channel, "event": name, "data": data})


def client_event(channel: str, name: str, data: t.Any, user_id: t.Any) -> bytes:
    """A client event relayed to the channel's other subscribers, with the
    sender's ``user_id`` as the server knows it (None: anonymous), so that
    no client can speak for another."""
    return encode(
        {
            "type": "event",
            "channel": channel,
            "event": name,
            "data": data,
            "user_id": user_id,
        }
    )


def subscribed(channel: str, request_id: t.Any, data: t.Any = None) -> bytes:
    message: dict[str, t.Any] = {"type": "subscribed", "channel": channel}
    _with_id(message, request_id)
    if data is not None:
        message["data"] = data
    return encode(message)


def unsubscribed(channel: str, request_id: t.Any) -> bytes:
    return encode(_with_id({"type": "unsubscribed", "channel": channel}, request_id))


def ack(channel: str, request_id: t.Any, data: t.Any = None) -> bytes:
    """The answer to a client event with an ``id`` (PROTOCOL.md,
    "Acknowledged client events"): ``data`` is the handler's value, left out
    when it is None. Raises ``TypeError``/``ValueError`` for a value that is
    not strict JSON."""
    message: dict[str, t.Any] = {"type": "ack", "id": request_id, "channel": channel}
    if data is not None:
        message["data"] = data
    return encode(message)


def pong(request_id: t.Any) -> bytes:
    return encode(_with_id({"type": "pong"}, request_id))


def error(
    code: int,
    message: str,
    *,
    request_id: t.Any = None,
    channel: str | None = None,
    **extra: t.Any,
) -> bytes:
    envelope: dict[str, t.Any] = {"type": "error"}
    _with_id(envelope, request_id)
    if channel is not None:
        envelope["channel"] = channel
    envelope["data"] = {"code": code, "message": message, **extra}
    return encode(envelope)
