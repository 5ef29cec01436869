"""``POST /pusher/auth`` and ``POST /pusher/user-auth``: Pusher's auth
endpoints, decided by the app's own ``@realtime.authenticate`` and
``@realtime.authorizer`` rules.

pusher-js (and Laravel Echo on top of it) posts ``socket_id`` and
``channel_name`` as a form; other SDKs send JSON. The request carries the
page's cookies and headers, so the app's ``authenticate`` identifies the
user exactly as it does for a native connection; the authorizer that guards
the channel then gets a stand-in for the Pusher connection (its ``id`` is the
socket id), as it would for a native subscribe.

Which app signs: pusher-js sends no key to these endpoints. With one app in
``REALTIME_PUSHER``, that app. With several, the request must name one with
an ``app_key`` parameter (query string, form or JSON; e.g. pusher-js's
``channelAuthorization.params``); without it the answer is 400.
"""

from __future__ import annotations

import json
import re
import typing as t

from flask import Response, jsonify, request

from .. import channels as _channels
from ..transports.http import Refused, identify, json_error
from . import signatures

if t.TYPE_CHECKING:
    from ..config.pusher import PusherApp, PusherSettings
    from ..node import Node


#: Pusher's socket ids: two integers joined by a dot (its libraries check so).
SOCKET_ID = re.compile(r"\d{1,20}\.\d{1,20}")


class AuthConnection:
    """What an authorizer gets for a Pusher subscription: the attributes of
    a :class:`~flask_realtime.connection.Connection` it may read. The
    connection itself may live on another node; its ``id`` is the socket id."""

    __slots__ = ("id", "user_id", "user_info", "transport", "channels")

    def __init__(self, socket_id: str, user_id: t.Any, user_info: t.Any) -> None:
        self.id = socket_id
        self.user_id = user_id
        self.user_info = user_info
        self.transport = "pusher"
        self.channels: frozenset[str] = frozenset()


def _params() -> dict[str, t.Any]:
    """The request's parameters: JSON body, else form, plus the query string."""
    params: dict[str, t.Any] = dict(request.args.items())
    if request.is_json:
        body = request.get_json(silent=True)
        if isinstance(body, dict):
            params.update(body)
    else:
        params.update(request.form.items())
    return params


def _app(settings: PusherSettings, params: dict[str, t.Any]) -> PusherApp | None:
    key = params.get("app_key")
    if isinstance(key, str) and key:
        return settings.by_key(key)
    if len(settings.apps) == 1:
        return settings.apps[0]
    return None


def _common(
    settings: PusherSettings, authenticate: t.Callable[..., t.Any] | None
) -> tuple[PusherApp, dict[str, t.Any], str, t.Any, t.Any] | Response:
    """The app, the parameters, the socket id and the user; or the error."""
    params = _params()
    app = _app(settings, params)
    if app is None:
        return json_error(
            400,
            "several Pusher apps are configured: name one with an 'app_key' parameter"
            if "app_key" not in params
            else "no Pusher app has this 'app_key'",
        )
    socket_id = params.get("socket_id")
    if not isinstance(socket_id, str) or not SOCKET_ID.fullmatch(socket_id):
        return json_error(400, "'socket_id' must be a Pusher socket id like '123.456'")
    try:
        user_id, user_info = identify(authenticate)
    except Refused:
        return json_error(403, "not authenticated")
    return app, params, socket_id, user_id, user_info


def channel_auth_view(
    node: Node, settings: PusherSettings, authenticate: t.Callable[..., t.Any] | None
) -> Response:
    """``{"auth": ..., ["channel_data": ...]}`` or a JSON 400 / 403."""
    found = _common(settings, authenticate)
    if isinstance(found, Response):
        return found
    app, params, socket_id, user_id, user_info = found
    channel = params.get("channel_name")
    if not isinstance(channel, str) or not _channels.is_valid_name(channel):
        return json_error(400, "'channel_name' must be a valid channel name")
    encrypted = channel.startswith("private-encrypted-")
    if encrypted and app.encryption_master_key is None:
        # Its answer carries a shared secret derived from the app's master key.
        return json_error(
            400, "encrypted channels need the app's encryption_master_key_base64"
        )
    kind = node.rules.kind(channel)
    if kind == _channels.PUBLIC:
        return json_error(400, "a public channel needs no authorization")
    if kind == _channels.PRESENCE and user_id is None:
        return json_error(403, "presence channels need an authenticated user")
    allowed = node.messages.authorize(
        AuthConnection(socket_id, user_id, user_info), channel
    )
    if not allowed and not (kind == _channels.PRESENCE and allowed == {}):
        return json_error(403, "not allowed to subscribe to this channel")
    if encrypted:
        return jsonify(
            auth=signatures.channel_auth(app, socket_id, channel),
            shared_secret=signatures.shared_secret(app, channel),
        )
    if kind != _channels.PRESENCE:
        return jsonify(auth=signatures.channel_auth(app, socket_id, channel))
    info = allowed if isinstance(allowed, dict) else user_info
    member: dict[str, t.Any] = {"user_id": str(user_id)}
    if info is not None:
        member["user_info"] = info
    channel_data = _encoded(member)
    return jsonify(
        auth=signatures.channel_auth(app, socket_id, channel, channel_data),
        channel_data=channel_data,
    )


def user_auth_view(
    settings: PusherSettings, authenticate: t.Callable[..., t.Any] | None
) -> Response:
    """``{"auth": ..., "user_data": ...}`` for ``pusher:signin``, or 400 / 403."""
    found = _common(settings, authenticate)
    if isinstance(found, Response):
        return found
    app, _params_, socket_id, user_id, user_info = found
    if user_id is None:
        return json_error(403, "sign-in needs an authenticated user")
    user: dict[str, t.Any] = {"id": str(user_id)}
    if user_info is not None:
        user["user_info"] = user_info
    user_data = _encoded(user)
    return jsonify(
        auth=signatures.user_auth(app, socket_id, user_data), user_data=user_data
    )


def _encoded(value: t.Any) -> str:
    """JSON as Pusher's Python library writes it (``json.dumps``' defaults):
    any form verifies, this one gives byte-for-byte the library's answer."""
    return json.dumps(value)
