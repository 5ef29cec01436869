"""The extension's blueprint: one route per endpoint, under the URL prefix.

Views stay thin: each hands the request to its transport with the node of the
current app. The routes take every method and answer the wrong ones with a
JSON 405 themselves, because Flask never gives routing errors to a
blueprint's error handlers.
"""

from __future__ import annotations

import functools
import os
import typing as t

from flask import Blueprint, request, send_from_directory

from . import config as _config
from . import health as _health
from . import metrics as _metrics
from .transports import longpoll as _longpoll
from .transports import send as _send
from .transports import sse as _sse
from .transports import websocket as _websocket
from .transports.http import answer_errors_in_json, json_error

if t.TYPE_CHECKING:
    from .extension import Realtime
    from .node import Node

_STATIC = os.path.join(os.path.dirname(__file__), "static")
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_CLIENT_FILES = (
    ("client.js", "application/javascript"),
    ("client.mjs", "application/javascript"),
    ("client.d.ts", "application/typescript"),
)

F = t.TypeVar("F", bound=t.Callable[..., t.Any])


def blueprint(realtime: Realtime, settings: _config.Settings, node: Node) -> Blueprint:
    """The routes of ``realtime`` for an app with these ``settings``, whose
    node is ``node``."""
    bp = Blueprint("realtime", __name__, url_prefix=settings.url_prefix or None)
    answer_errors_in_json(bp, _ALL_METHODS)

    def route(
        rule: str, methods: tuple[str, ...], **options: t.Any
    ) -> t.Callable[[F], F]:
        def decorator(view: F) -> F:
            allowed = {*methods, "HEAD"} if "GET" in methods else set(methods)

            @functools.wraps(view)
            def checked() -> t.Any:
                if request.method not in allowed:
                    response = json_error(405, "method not allowed")
                    response.headers["Allow"] = ", ".join(sorted(allowed))
                    return response
                return view()

            bp.add_url_rule(rule, view_func=checked, methods=_ALL_METHODS, **options)
            return view

        return decorator

    @bp.route(settings.websocket_path, websocket=True, endpoint="websocket")
    def websocket_endpoint() -> t.Any:
        return _websocket.websocket_view(realtime.node, realtime._authenticate)

    @route(settings.websocket_path, ("GET",), endpoint="websocket_http")
    def websocket_without_upgrade() -> t.Any:
        return json_error(400, "expected a WebSocket upgrade request")

    @route(settings.sse_path, ("GET",), endpoint="sse")
    def sse_endpoint() -> t.Any:
        return _sse.sse_view(realtime.node, realtime._authenticate)

    @route(settings.longpoll_path, ("GET",), endpoint="poll")
    def poll_endpoint() -> t.Any:
        return _longpoll.poll_view(realtime.node, realtime._authenticate)

    # Partials (no Python frame of their own): subscribing through POST /send
    # is a long-poller's deepest chain of frames, and a page of its
    # greenlet's frame stack more is 4 KB RSS per poller.
    send = functools.partial(_send.send_view, node)
    route("/send", ("POST", "OPTIONS"), endpoint="send")(send)
    close = functools.partial(_send.close_view, node)
    route("/close", ("POST",), endpoint="close")(close)

    for name, mimetype in _CLIENT_FILES:
        route(f"/{name}", ("GET",), endpoint=name.replace(".", "_"))(
            functools.partial(
                send_from_directory, _STATIC, name, mimetype=mimetype, max_age=300
            )
        )

    @route("/health", ("GET",), endpoint="health")
    def health() -> t.Any:
        return _health.readiness(realtime.node, request.environ)

    @route("/health/live", ("GET",), endpoint="health_live")
    def health_live() -> t.Any:
        return _health.liveness(realtime.node)

    token = settings.metrics_token
    if token is not None:  # no route at all when off: 404
        _metrics.enable(node)  # counting starts with the app that serves them
        route("/metrics", ("GET",), endpoint="metrics")(
            functools.partial(_metrics.view, token)
        )

    return bp
