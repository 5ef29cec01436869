"""Wire protocol v1: parse client messages and build server messages.

No I/O happens here. Server messages are built as ``bytes`` once per
broadcast; transports frame those bytes without decoding them again.
"""

from __future__ import annotations

import json
import math
import re
import typing as t

from . import channels

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

# Strict JSON both ways (RFC 8259): no NaN or Infinity, which JSON has no
# words for and browsers' ``JSON.parse`` refuses (one would spoil a whole
# long-poll batch), and no lone surrogate, which UTF-8 cannot carry.
_compact = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


class NotStrictJSON(ValueError):
    """Input or output that strict JSON (RFC 8259, in UTF-8) cannot carry."""


def _no_constants(name: str) -> t.NoReturn:
    raise NotStrictJSON(f"invalid JSON: {name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e400: valid JSON, but no double holds it
        raise NotStrictJSON(f"invalid JSON: {text[:40]} is out of range")
    return number


_strict_decoder = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: t.Any) -> str | None:
    """The first string in ``value`` (keys included) with a lone surrogate.

    The decoder pairs escaped surrogates (``"\\ud83d\\ude00"``) into one
    character, so any surrogate left in a string has no partner. Iterative,
    so that nesting as deep as the decoder allows cannot exhaust the stack.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def loads(text: str | bytes) -> t.Any:
    """Strict JSON from a client: UTF-8, no NaN or Infinity, no lone surrogate.

    Raises :class:`NotStrictJSON` (a ValueError) for anything else, and
    RecursionError for nesting deeper than the decoder goes.
    """
    if isinstance(text, str):
        raw = text
        if _SURROGATE.search(raw):
            raise NotStrictJSON("invalid JSON: a lone surrogate is not text")
    else:
        try:
            raw = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise NotStrictJSON("invalid JSON: the message is not UTF-8") from None
    try:
        value = _strict_decoder.decode(raw)
    except NotStrictJSON:
        raise
    except ValueError:
        raise NotStrictJSON("invalid JSON") from None
    # Only an escape ("\\ud800") can put a surrogate in a string of UTF-8.
    if "\\u" in raw and _lone_surrogate(value) is not None:
        raise NotStrictJSON(
            "invalid JSON: an unpaired surrogate escape (\\ud800-\\udfff) is not text"
        )
    return value


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
    type: str
    id: t.Any
    channel: str | None
    event: str | None
    data: t.Any


def encode(message: dict[str, t.Any]) -> bytes:
    """Serialise one envelope to compact UTF-8 JSON.

    Raises ValueError for what strict JSON cannot carry (NaN, Infinity, a
    lone surrogate) and TypeError for what JSON has no type for, in the
    caller of ``broadcast()`` and the like, before anything is sent.
    """
    try:
        text = _compact(message)
    except ValueError as exc:  # NaN or Infinity, or a circular reference
        hint = (
            ": NaN and Infinity have no JSON form; send null or a string instead"
            if "Out of range" in str(exc)
            else ""
        )
        raise NotStrictJSON(f"not strict JSON ({exc}){hint}") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NotStrictJSON(
            f"not strict JSON: a lone surrogate ({text[exc.start]!r}) is not "
            "text, and UTF-8 cannot carry it"
        ) from None


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
    return ClientMessage(kind, request_id, channel, event, obj.get("data"))


def request_id(text: str | bytes) -> t.Any:
    """The ``id`` of a message that will not be processed, for its error."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    value = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(value, str) and _SURROGATE.search(value):
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


def subscribed(channel: str, request_id: t.Any, data: t.Any = None) -> bytes:
    message: dict[str, t.Any] = {"type": "subscribed", "channel": channel}
    _with_id(message, request_id)
    if data is not None:
        message["data"] = data
    return encode(message)


def unsubscribed(channel: str, request_id: t.Any) -> bytes:
    return encode(_with_id({"type": "unsubscribed", "channel": channel}, request_id))


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
