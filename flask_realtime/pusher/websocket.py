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

from flask import Blueprint, Flask, Response, request

from .. import protocol
from .._ws_frames import text_frame
from ..transports.http import (
    Finished,
    StartResponse,
    WSGIEnviron,
    json_error,
)
from ..transports.websocket import check_upgrade
from ..transports.ws_accept import accept, refuse_upgrade
from ..transports.ws_fastpath import Handshake, may_take, respond
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
    checked = check_upgrade(node)
    if isinstance(checked, Response):
        return checked
    upgraded, origin_ok = checked
    environ = request.environ
    return Finished(_accept(node, pusher, environ, upgraded, origin_ok, key))


def _accept(
    node: Node,
    pusher: PusherSettings,
    environ: WSGIEnviron,
    upgraded: t.Any,
    origin_ok: bool,
    key: str,
) -> str:
    """The 101 and the session, or the refusal's close (see ``accept``)."""
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
    return accept(
        node,
        environ,
        upgraded,
        refusal,
        None,
        None,
        sessions=sessions,
        refusal_frame=_frame(first),
    )


def install(app: Flask, node: Node, pusher: PusherSettings) -> None:
    """Serve ``/app/<key>`` handshakes ahead of Flask's dispatch, as the
    native path's (:mod:`..transports.ws_fastpath`): only when the app's
    ``wsgi_app`` is Flask's own or the native fast path, so that a wrapper
    the app put there earlier still runs."""
    wsgi_app = app.wsgi_app
    own = (
        getattr(wsgi_app, "__func__", None) is Flask.wsgi_app
        and getattr(wsgi_app, "__self__", None) is app
    )
    if own or isinstance(wsgi_app, Handshake):
        app.wsgi_app = PusherHandshake(app, wsgi_app, node, pusher)  # type: ignore[method-assign]


class PusherHandshake:
    """The WSGI middleware :func:`install` puts on ``app.wsgi_app``: a GET
    upgrade of ``/app/<key>`` on a socket it can take, for an app without
    host or subdomain matching; everything else goes on to Flask."""

    def __init__(
        self,
        app: Flask,
        wsgi_app: t.Callable[[WSGIEnviron, StartResponse], t.Any],
        node: Node,
        pusher: PusherSettings,
    ) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.node = node
        self.pusher = pusher
        self.prefix = pusher.paths["websocket"].rstrip("/") + "/"

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> t.Any:
        path = environ.get("PATH_INFO", "")
        key = path[len(self.prefix) :]
        app = self.app
        if (
            not path.startswith(self.prefix)
            or not key
            or "/" in key
            or not may_take(app, environ)
        ):
            return self.wsgi_app(environ, start_response)
        trusted = app.config.get("TRUSTED_HOSTS")

        def handshake() -> tuple[tuple[int, str] | None, str]:
            refused = refuse_upgrade(self.node, environ, trusted)
            if refused is not None:
                return refused, ""
            return None, _accept(self.node, self.pusher, environ, None, True, key)

        return respond(app, environ, start_response, handshake)


def _frame(body: bytes) -> bytes:
    return text_frame(body) if body else b""
