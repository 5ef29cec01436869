"""Pusher's HTTP API under ``/apps/<app_id>/``, signed as Pusher signs it.

The server libraries (pusher-http-python, -node, -php, ...) publish and
query through it unchanged. Each request is checked before anything else
is read from it: the app exists (404), the body fits the app's
``max_body`` (413), then ``auth_key``, ``auth_timestamp`` (within 600 s),
``auth_version`` 1.0, ``body_md5`` and ``auth_signature`` (constant-time),
any failure a JSON 401. Answers are cluster-wide: channel counts come from
every node's report over the broker (``Admin.gather``), presence from the
cluster presence, so any node answers for all.

An event's ``data`` is a string, as Pusher's libraries send it (they
JSON-encode objects). Native clients receive it decoded when it is JSON,
else the string itself: ``trigger(ch, "ev", {"a": 1})`` reaches a
protocol-v1 client as ``{"a": 1}``, and Pusher clients get it back as the
JSON string they expect.
"""

from __future__ import annotations

import json
import time
import typing as t

from flask import Response, jsonify, request

from .. import channels as _channels
from ..errors import BrokerUnavailable
from ..node import admin as _admin
from ..node.publishing import is_connection_id
from ..transports.http import json_error
from . import signatures

if t.TYPE_CHECKING:
    from ..config.pusher import PusherApp, PusherSettings
    from ..extension import Realtime

#: Seconds an ``auth_timestamp`` may be off the server's clock.
TIMESTAMP_WINDOW = 600
#: Pusher's limits: channels per event, events per batch, bytes of data,
#: characters of a name.
MAX_CHANNELS = 100
MAX_BATCH = 10
MAX_DATA = 10 * 1024
MAX_NAME = 200
#: The channel ``send_to_user`` publishes to in Pusher's libraries.
USER_CHANNEL = "#server-to-user-"


class ApiError(Exception):
    """Answered as a JSON error with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def authenticated(settings: PusherSettings, app_id: str | None) -> PusherApp:
    """The app the request is for, once its signature holds.

    ``app_id`` None: a path without it (pusher-http-python's
    ``terminate_user_connections`` posts to ``/users/<id>/...``), where the
    ``auth_key`` names the app; the signature still has to hold.
    """
    if app_id is None:
        key = request.args.get("auth_key", "")
        app = settings.by_key(key)
        if app is None:
            raise ApiError(401, "unknown auth_key")
    else:
        app = settings.by_id(app_id)
    if app is None:
        raise ApiError(404, f"unknown app {app_id!r}")
    length = request.content_length
    if length is not None and length > app.max_body:
        raise ApiError(413, f"the body is over {app.max_body} bytes")
    body = request.stream.read(app.max_body + 1) if request.method == "POST" else b""
    if len(body) > app.max_body:
        raise ApiError(413, f"the body is over {app.max_body} bytes")
    request.environ["flask_realtime.pusher_body"] = body
    params = request.args.to_dict()
    if not signatures.same(app.key, params.get("auth_key")):
        raise ApiError(401, "unknown auth_key")
    try:
        stamp = int(params.get("auth_timestamp", ""))
    except ValueError:
        raise ApiError(401, "auth_timestamp must be an integer") from None
    if abs(time.time() - stamp) > TIMESTAMP_WINDOW:
        raise ApiError(
            401, f"auth_timestamp is more than {TIMESTAMP_WINDOW} s off the server's"
        )
    if params.get("auth_version") != "1.0":
        raise ApiError(401, "auth_version must be 1.0")
    if (body or "body_md5" in params) and not signatures.same(
        signatures.body_md5(body), params.get("body_md5")
    ):
        raise ApiError(401, "body_md5 does not match the body")
    expected = signatures.api_signature(app, request.method, request.path, params)
    if not signatures.same(expected, params.get("auth_signature")):
        raise ApiError(401, "invalid auth_signature")
    return app


def _body() -> t.Any:
    raw = request.environ.get("flask_realtime.pusher_body", b"")
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(400, "the body must be JSON") from None


def _channel(name: t.Any) -> str:
    if (
        not isinstance(name, str)
        or len(name) > MAX_NAME
        or not _channels.is_valid_name(name)
    ):
        raise ApiError(400, f"invalid channel name {str(name)[:MAX_NAME]!r}")
    return name


def _event(body: t.Any) -> dict[str, t.Any]:
    """One event of a request, checked: ``name``, ``channels``, ``data``,
    ``socket_id``, ``info``."""
    if not isinstance(body, dict):
        raise ApiError(400, "an event must be a JSON object")
    name = body.get("name")
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise ApiError(400, f"'name' must be a string of 1 to {MAX_NAME} characters")
    if "channels" in body:
        names = body["channels"]
        if not isinstance(names, list) or not names:
            raise ApiError(400, "'channels' must be a non-empty list")
    elif "channel" in body:
        names = [body["channel"]]
    else:
        raise ApiError(400, "'channels' or 'channel' is required")
    if len(names) > MAX_CHANNELS:
        raise ApiError(400, f"an event goes to at most {MAX_CHANNELS} channels")
    data = body.get("data", "")
    if not isinstance(data, str):
        data = json.dumps(data, separators=(",", ":"))
    if len(data.encode()) > MAX_DATA:
        raise ApiError(413, f"'data' is over {MAX_DATA} bytes")
    socket_id = body.get("socket_id")
    if socket_id is not None and not is_connection_id(socket_id):
        # A Pusher socket id ("123.456"), or a native client's connection id.
        raise ApiError(400, "'socket_id' must be a socket id like '123.456'")
    info = body.get("info")
    if info is not None and not isinstance(info, str):
        raise ApiError(400, "'info' must be a comma-separated string")
    return {
        "name": name,
        "channels": [_channel(c) for c in names],
        "data": data,
        "socket_id": socket_id,
        "info": _attributes(info),
    }


def _attributes(info: str | None) -> set[str]:
    wanted = {part.strip() for part in (info or "").split(",") if part.strip()}
    unknown = wanted - {"subscription_count", "user_count"}
    if unknown:
        raise ApiError(400, f"unknown info attribute(s) {sorted(unknown)}")
    return wanted


def _decoded(data: str) -> t.Any:
    try:
        return json.loads(data)
    except ValueError:
        return data


def _publish(realtime: Realtime, event: dict[str, t.Any]) -> None:
    data = _decoded(event["data"])
    for channel in event["channels"]:
        if channel.startswith(USER_CHANNEL):
            realtime.send_to_user(channel[len(USER_CHANNEL) :], event["name"], data)
        else:
            realtime.broadcast(channel, event["name"], data, exclude=event["socket_id"])


class Counts:
    """Cluster-wide subscriber counts, gathered once per request."""

    def __init__(self, realtime: Realtime, pattern: str | None) -> None:
        gathered = realtime.node.admin.gather(pattern=pattern)
        self.subscribers = {
            c["name"]: c["subscribers"] for c in _admin.channel_totals(gathered.reports)
        }


def _info(
    realtime: Realtime, channel: str, wanted: set[str], counts: Counts | None
) -> dict[str, t.Any]:
    """The ``info`` attributes of one channel."""
    found: dict[str, t.Any] = {}
    if "subscription_count" in wanted:
        counts = counts or Counts(realtime, channel)
        found["subscription_count"] = counts.subscribers.get(channel, 0)
    if "user_count" in wanted:
        if realtime.node.rules.kind(channel) != _channels.PRESENCE:
            raise ApiError(400, "user_count is for presence channels only")
        found["user_count"] = _user_count(realtime, channel)
    return found


def _users(realtime: Realtime, channel: str) -> list[str]:
    members = realtime.node.presence_members(channel)
    return sorted({str(m["user_id"]) for m in members})


def _user_count(realtime: Realtime, channel: str) -> int:
    return len(_users(realtime, channel))


# -- the views -----------------------------------------------------------------


def _check_info(realtime: Realtime, event: dict[str, t.Any]) -> None:
    """Refuse what ``info`` cannot answer before anything is published."""
    if not event["info"]:
        return
    for channel in event["channels"]:
        if channel.startswith(USER_CHANNEL):
            raise ApiError(400, "no info for a user's channel")
        presence = realtime.node.rules.kind(channel) == _channels.PRESENCE
        if "user_count" in event["info"] and not presence:
            raise ApiError(400, "user_count is for presence channels only")


def events(realtime: Realtime) -> Response:
    event = _event(_body())
    _check_info(realtime, event)
    _publish(realtime, event)
    if not event["info"]:
        return jsonify({})
    counts = Counts(realtime, None) if "subscription_count" in event["info"] else None
    return jsonify(
        channels={
            channel: _info(realtime, channel, event["info"], counts)
            for channel in event["channels"]
        }
    )


def batch_events(realtime: Realtime) -> Response:
    body = _body()
    batch = body.get("batch") if isinstance(body, dict) else None
    if not isinstance(batch, list) or not batch:
        raise ApiError(400, "'batch' must be a non-empty list of events")
    if len(batch) > MAX_BATCH:
        raise ApiError(400, f"a batch holds at most {MAX_BATCH} events")
    checked = []
    for item in batch:
        event = _event(item)
        if len(event["channels"]) != 1:
            raise ApiError(400, "each event of a batch has one 'channel'")
        _check_info(realtime, event)
        checked.append(event)
    for event in checked:
        _publish(realtime, event)
    if not any(event["info"] for event in checked):
        return jsonify({})
    wants_counts = any("subscription_count" in e["info"] for e in checked)
    counts = Counts(realtime, None) if wants_counts else None
    return jsonify(
        batch=[
            _info(realtime, event["channels"][0], event["info"], counts)
            for event in checked
        ]
    )


def channels(realtime: Realtime) -> Response:
    prefix = request.args.get("filter_by_prefix", "")
    if prefix and not _channels.is_valid_name(prefix):
        raise ApiError(400, "invalid filter_by_prefix")
    wanted = _attributes(request.args.get("info"))
    if "subscription_count" in wanted:
        raise ApiError(400, "the channel list gives user_count only")
    if wanted and not prefix.startswith("presence-"):
        raise ApiError(400, "info=user_count needs filter_by_prefix=presence-")
    counts = Counts(realtime, f"{prefix}*")
    found = {}
    for name, subscribers in sorted(counts.subscribers.items()):
        if subscribers > 0 and not name.startswith("#"):
            found[name] = _info(realtime, name, wanted, counts)
    return jsonify(channels=found)


def channel(realtime: Realtime, name: str) -> Response:
    name = _channel(name)
    wanted = _attributes(request.args.get("info"))
    counts = Counts(realtime, name)
    answer = {"occupied": counts.subscribers.get(name, 0) > 0}
    answer.update(_info(realtime, name, wanted, counts))
    return jsonify(answer)


def users(realtime: Realtime, name: str) -> Response:
    name = _channel(name)
    if realtime.node.rules.kind(name) != _channels.PRESENCE:
        raise ApiError(400, "users are listed for presence channels only")
    return jsonify(users=[{"id": user} for user in _users(realtime, name)])


def terminate(realtime: Realtime, user_id: str) -> Response:
    if not user_id or len(user_id) > MAX_NAME:
        raise ApiError(400, "invalid user id")
    realtime.disconnect(user_id=user_id)
    return jsonify({})


def answer(view: t.Callable[[], Response]) -> Response:
    """The view's answer, or its error as JSON."""
    try:
        return view()
    except ApiError as exc:
        return json_error(exc.status, str(exc))
    except BrokerUnavailable as exc:
        return json_error(503, str(exc))
