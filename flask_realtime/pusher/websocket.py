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

from flask import Blueprint, Flask, request

from .. import protocol
from .._ws_frames import text_frame
from ..transports.http import (
    Finished,
    StartResponse,
    WSGIEnviron,
    environ_origin_allowed,
    json_error,
    wsgi_error,
)
from ..transports.ws_accept import VERSION_HEADER, accept, refuse_upgrade
from ..transports.ws_fastpath import Handshake, may_take
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
        try:
            refused = refuse_upgrade(self.node, environ, trusted)
            if refused is not None:
                status, message = refused
                extra = [VERSION_HEADER] if status == 426 else []
                return wsgi_error(start_response, status, message, extra)
            mode = _accept(self.node, self.pusher, environ, None, True, key)
        except Exception as exc:
            with app.request_context(environ):
                response = app.handle_exception(exc)
            return response(environ, start_response)
        if mode == "gunicorn":
            raise StopIteration()  # gunicorn: nothing more to send, close
        if mode == "werkzeug":
            return Finished(mode)(environ, start_response)
        return []


def _frame(body: bytes) -> bytes:
    return text_frame(body) if body else b""
