"""The Pusher WebSocket endpoint: ``/app/<key>?protocol=7``.

Registered only when ``REALTIME_PUSHER`` is set. The handshake takes the
native WebSocket's checks and its 101 (:mod:`..transports.ws_accept`); the
connection then runs on a native session with Pusher's wire
(:mod:`.session`). Connections are anonymous until ``pusher:signin``: the
app's ``authenticate`` is not asked, as Pusher's signatures carry identity.
"""

from __future__ import annotations

import functools
import typing as t

from flask import Blueprint, request

from .. import protocol
from .._ws_frames import text_frame
from ..transports.http import Finished, environ_origin_allowed, json_error
from ..transports.ws_accept import VERSION_HEADER, accept, refuse_upgrade
from ..transports.ws_geventwebsocket import defer_upgrades
from . import protocol as wire
from .session import PusherSocketSession, PusherThreadedSession

if t.TYPE_CHECKING:
    from ..config.pusher import PusherSettings
    from ..node import Node


def blueprint(node: Node, pusher: PusherSettings) -> Blueprint:
    """The ``/app/<key>`` route (``REALTIME_PUSHER_PATHS["websocket"]``)."""
    bp = Blueprint("realtime_pusher_ws", __name__)
    path = pusher.paths["websocket"].rstrip("/") + "/<key>"
    # gevent-websocket's handler leaves these upgrades to us, as ours.
    defer_upgrades(pusher.paths["websocket"])

    @bp.route(path, websocket=True, endpoint="websocket")
    def pusher_websocket(key: str) -> t.Any:
        return _view(node, pusher, key)

    @bp.route(path, endpoint="websocket_http")
    def pusher_without_upgrade(key: str) -> t.Any:
        return json_error(400, "expected a WebSocket upgrade request")

    return bp


def _view(node: Node, pusher: PusherSettings, key: str) -> t.Any:
    environ = request.environ
    upgraded = environ.get("wsgi.websocket")  # gevent-websocket without our hook
    origin_ok = True
    if upgraded is None:
        refused = refuse_upgrade(node, environ, request.trusted_hosts)
        if refused is not None:
            response = json_error(*refused)
            if refused[0] == 426:
                response.headers[VERSION_HEADER[0]] = VERSION_HEADER[1]
            return response
    else:
        origin_ok = environ_origin_allowed(
            environ, node.settings.allowed_origins, request.trusted_hosts
        )
    app = pusher.by_key(key)
    refusal: tuple[int, str] | None = None
    first = b""
    if app is None:
        refusal = (wire.UNKNOWN_APP, "unknown app key")
        first = wire.error(wire.UNKNOWN_APP, f"App key {key[:64]} does not exist")
    elif not origin_ok:
        refusal = (protocol.CLOSE_ORIGIN_NOT_ALLOWED, "origin not allowed")
    elif node.shutting_down:
        refusal = (protocol.CLOSE_SHUTDOWN, "server shutting down")
        first = wire.error(protocol.CLOSE_SHUTDOWN, "server shutting down")
    sessions = (
        functools.partial(PusherSocketSession, app=app),
        functools.partial(PusherThreadedSession, app=app),
    )
    return Finished(
        accept(
            node,
            environ,
            upgraded,
            refusal,
            None,
            None,
            sessions=sessions,
            refusal_frame=_frame(first),
        )
    )


def _frame(body: bytes) -> bytes:
    return text_frame(body) if body else b""
