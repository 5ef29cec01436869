"""The WebSocket endpoint, on whichever WebSocket machinery the server has.

Most handshakes never reach this view: the fast path (:mod:`.ws_fastpath`)
answers them ahead of Flask's dispatch. The view serves the rest the same
way, with Flask's hooks: an app whose ``wsgi_app`` was wrapped before
``init_app``, host or subdomain matching, and gevent-websocket's handler
where our hook did not run (it upgraded already: ``wsgi.websocket``).

The pieces, one per server concern:

* :mod:`.ws_accept`: the checks before a 101, the 101, and the session;
* :mod:`.ws_session`: frames in, the node's answers out; on a detached
  socket under gevent (:mod:`.socket_session`, :mod:`.flusher`), with
  client messages run by a greenlet pool (:mod:`.ws_runner`);
* :mod:`.ws_threaded`: two threads per connection, for ``flask run``;
* :mod:`.ws_geventwebsocket`: the hook on gevent-websocket's handler;
* :mod:`.ws_simple`: simple-websocket, for any other server.
"""

from __future__ import annotations

import typing as t

from flask import Response, request

from .. import protocol
from .http import Finished, Refused, environ_origin_allowed, identify, json_error
from .ws_accept import VERSION_HEADER, accept, refuse_upgrade
from .ws_fastpath import install as install

if t.TYPE_CHECKING:
    from ..node import Node

__all__ = ["check_upgrade", "install", "websocket_view"]


def check_upgrade(node: Node) -> Response | tuple[t.Any, bool]:
    """For a handshake through Flask's dispatch: the refusal's JSON answer,
    or gevent-websocket's socket (None when the server hands us its own) and
    whether the origin is allowed (a refused origin is told by a close)."""
    environ = request.environ
    upgraded = environ.get("wsgi.websocket")  # gevent-websocket without our hook
    if upgraded is not None:
        allowed = environ_origin_allowed(
            environ, node.settings.allowed_origins, request.trusted_hosts
        )
        return upgraded, allowed
    refused = refuse_upgrade(node, environ, request.trusted_hosts)
    if refused is None:
        return None, True
    response = json_error(*refused)
    if refused[0] == 426:
        response.headers[VERSION_HEADER[0]] = VERSION_HEADER[1]
    return response


def websocket_view(node: Node, authenticate: t.Callable[..., t.Any] | None) -> Response:
    """The handshake through Flask's dispatch, for what the middleware left."""
    environ = request.environ
    if "websocket" not in node.settings.transports:
        return json_error(404, "the websocket transport is disabled")
    if (
        "wsgi.websocket" not in environ
        and request.headers.get("Upgrade", "").lower() != "websocket"
    ):
        return json_error(400, "expected a WebSocket upgrade request")
    checked = check_upgrade(node)
    if isinstance(checked, Response):
        return checked
    upgraded, origin_ok = checked

    refusal: tuple[int, str] | None = None
    user_id = user_info = None
    if not origin_ok:
        refusal = (protocol.CLOSE_ORIGIN_NOT_ALLOWED, "origin not allowed")
    elif node.shutting_down:
        # Until the server stops listening, newcomers are sent on at once.
        refusal = (protocol.CLOSE_SHUTDOWN, "server shutting down")
    else:
        try:
            user_id, user_info = identify(authenticate)
        except Refused:
            refusal = (protocol.CLOSE_AUTH_FAILED, "authentication failed")
    return Finished(accept(node, environ, upgraded, refusal, user_id, user_info))
