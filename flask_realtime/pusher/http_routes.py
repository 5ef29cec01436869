"""The blueprint of Pusher's HTTP endpoints: the auth endpoints and the HTTP
API, at the paths of ``REALTIME_PUSHER_PATHS`` (the root by default, where
Pusher's SDKs and server libraries look). Registered only when
``REALTIME_PUSHER`` is set."""

from __future__ import annotations

import functools
import typing as t

from flask import Blueprint, Response, request

from ..transports.http import answer_errors_in_json, cors, json_error, origin_allowed
from . import auth as _auth
from . import http_api as _api

if t.TYPE_CHECKING:
    from ..config.pusher import PusherSettings
    from ..extension import Realtime

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: What pusher-js and Laravel Echo send with an auth request.
_AUTH_HEADERS = (
    "Content-Type, X-CSRF-Token, X-Socket-ID, X-Requested-With, Authorization"
)


def blueprint(realtime: Realtime, settings: PusherSettings) -> Blueprint:
    """The routes for ``settings``' apps, answered by ``realtime``'s node."""
    bp = Blueprint("realtime_pusher_http", __name__)
    answer_errors_in_json(bp, _ALL_METHODS)
    paths = settings.paths

    def only(method: str, view: t.Callable[..., Response]) -> t.Callable[..., Response]:
        @functools.wraps(view)
        def checked(**kwargs: t.Any) -> Response:
            if request.method != method and not (
                method == "GET" and request.method == "HEAD"
            ):
                response = json_error(405, "method not allowed")
                response.headers["Allow"] = method
                return response
            return view(**kwargs)

        return checked

    def browser(view: t.Callable[[], Response]) -> t.Callable[[], Response]:
        """The auth endpoints answer pages: the origin check and CORS of the
        native endpoints (``REALTIME_ALLOWED_ORIGINS``), a preflight for a
        listed origin. A foreign page must not get a signature made with
        its visitor's cookies."""

        def checked() -> Response:
            allowed = realtime.node.settings.allowed_origins
            if not origin_allowed(request.headers.get("Origin"), allowed):
                return json_error(403, "origin not allowed")
            if request.method == "OPTIONS":
                response = cors(Response(status=204), allowed)
                response.headers["Access-Control-Allow-Methods"] = "POST"
                response.headers["Access-Control-Allow-Headers"] = _AUTH_HEADERS
                return response
            if request.method != "POST":
                response = json_error(405, "method not allowed")
                response.headers["Allow"] = "OPTIONS, POST"
                return response
            return cors(view(), allowed)

        checked.__name__ = view.__name__
        return checked

    def channel_auth() -> Response:
        return _auth.channel_auth_view(realtime.node, settings, realtime._authenticate)

    def user_auth() -> Response:
        return _auth.user_auth_view(settings, realtime._authenticate)

    bp.add_url_rule(paths["auth"], "auth", browser(channel_auth), methods=_ALL_METHODS)
    bp.add_url_rule(
        paths["user_auth"], "user_auth", browser(user_auth), methods=_ALL_METHODS
    )

    def api(
        method: str, rule: str, endpoint: str, view: t.Callable[..., Response]
    ) -> None:
        def signed(app_id: str, **kwargs: t.Any) -> Response:
            def run() -> Response:
                _api.authenticated(settings, app_id)
                return view(realtime, **kwargs)

            return _api.answer(run)

        signed.__name__ = endpoint
        prefix = paths["api"].rstrip("/")
        bp.add_url_rule(
            f"{prefix}/<app_id>/{rule}",
            endpoint,
            only(method, signed),
            methods=_ALL_METHODS,
        )

    api("POST", "events", "events", _api.events)
    api("POST", "batch_events", "batch_events", _api.batch_events)
    api("GET", "channels", "channels", _api.channels)
    api("GET", "channels/<name>", "channel", _api.channel)
    api("GET", "channels/<name>/users", "users", _api.users)
    api(
        "POST",
        "users/<user_id>/terminate_connections",
        "terminate_connections",
        _api.terminate,
    )

    # pusher-http-python (3.3) posts terminate_connections without the
    # "/apps/<app_id>" part: the same view, the app named by the auth_key.
    def terminate_unprefixed(user_id: str) -> Response:
        def run() -> Response:
            _api.authenticated(settings, None)
            return _api.terminate(realtime, user_id)

        return _api.answer(run)

    bp.add_url_rule(
        "/users/<user_id>/terminate_connections",
        "terminate_connections_unprefixed",
        only("POST", terminate_unprefixed),
        methods=_ALL_METHODS,
    )
    return bp
