"""Server adapter: the WebSocket handshake ahead of Flask's dispatch.

The handshake does not go through Flask's dispatch, which cost about a third
of the server's CPU per connect. :func:`install` puts a small WSGI
middleware in front of the app's own ``wsgi_app``: a GET upgrade request for
the WebSocket path is answered there, without URL routing,
``before_request`` / ``after_request`` hooks, signals or response
processing. A request context is pushed only around the app's
``authenticate`` callback (so ``request`` and the Flask session work there,
and teardown functions run after it); with no callback, none is pushed.
Every other request goes to Flask unchanged, and so does the rare handshake
the middleware leaves alone (see :class:`Handshake`), which the blueprint's
view serves the same way, hooks included.

For every server that hands over its socket (gevent-websocket with our
hook, gunicorn, Werkzeug). Installed by ``Realtime.init_app`` only when
``app.wsgi_app`` is still Flask's own: an app that wraps it earlier keeps
its wrapper, and the view serves the handshake.
"""

from __future__ import annotations

import inspect
import typing as t

from flask import Flask
from flask.ctx import RequestContext
from werkzeug.exceptions import SecurityError
from werkzeug.routing import Rule
from werkzeug.wsgi import get_host

from .. import protocol
from .handoff import TAKE_KEY
from .http import Finished, Refused, StartResponse, WSGIEnviron, identify, wsgi_error
from .ws_accept import VERSION_HEADER, accept, refuse_upgrade
from .ws_geventwebsocket import defer_upgrades

if t.TYPE_CHECKING:
    from ..node import Node


def install(
    app: Flask, node: Node, authenticate: t.Callable[[], t.Callable[..., t.Any] | None]
) -> None:
    """Serve ``app``'s WebSocket handshake ahead of Flask's dispatch.

    Called by ``init_app`` after the blueprint is registered. The middleware
    must sit directly on Flask's own ``wsgi_app``: WSGI middleware the app
    wraps around it later (ProxyFix, say) still runs before it. When
    ``app.wsgi_app`` is already wrapped (or overridden) at this point, the
    handshake keeps going through Flask's dispatch to the blueprint's view,
    hooks included, so that the wrapper is not skipped.
    """
    defer_upgrades(node.settings.url_prefix or "/")
    wsgi_app = app.wsgi_app
    if (
        getattr(wsgi_app, "__func__", None) is not Flask.wsgi_app
        or getattr(wsgi_app, "__self__", None) is not app
    ):
        return
    rule = next(iter(app.url_map.iter_rules("realtime.websocket")))
    if "<" in rule.rule:  # pragma: no cover - configured paths are static
        return
    app.wsgi_app = Handshake(app, wsgi_app, node, authenticate, rule)  # type: ignore[method-assign]


def _is_upgrade(environ: WSGIEnviron) -> bool:
    """A WebSocket upgrade, as Werkzeug's routing decides it."""
    if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
        return False
    return any(
        v.strip(" \t") == "upgrade"
        for v in environ.get("HTTP_CONNECTION", "").lower().split(",")
    )


def may_take(app: Flask, environ: WSGIEnviron) -> bool:
    """Whether a handshake ahead of Flask answers ``environ`` as Flask's
    routing would: a GET upgrade on a socket we know how to take, in an app
    without host or subdomain matching (or, before Flask 3.1, a
    ``SERVER_NAME``, which restricted routing to that host), from a host
    ``TRUSTED_HOSTS`` allows. The caller checks the path."""
    if (
        environ.get("REQUEST_METHOD") != "GET"
        or "wsgi.websocket" in environ
        or not _is_upgrade(environ)
        or not (
            TAKE_KEY in environ
            or "gunicorn.socket" in environ
            or "werkzeug.socket" in environ
        )
        or app.url_map.host_matching
        or app.subdomain_matching
        or (app.config.get("SERVER_NAME") and "TRUSTED_HOSTS" not in app.config)
    ):
        return False
    trusted = app.config.get("TRUSTED_HOSTS")
    if trusted is not None:
        try:
            get_host(environ, trusted)
        except SecurityError:
            return False
    return True


Handshaker = t.Callable[[], "tuple[tuple[int, str] | None, str]"]


def respond(
    app: Flask,
    environ: WSGIEnviron,
    start_response: StartResponse,
    handshake: Handshaker,
) -> t.Any:
    """Run a handshake ahead of Flask and answer as Flask's view would: the
    refusal ``(status, message)`` as a JSON error, an exception through the
    app's 500 handler, else whatever the server that took the socket needs."""
    try:
        refused, mode = handshake()
    except Exception as exc:
        # As Flask would: log it, the app's 500 handler answers.
        with app.request_context(environ):
            response = app.handle_exception(exc)
        return response(environ, start_response)
    if refused is not None:
        status, message = refused
        extra = [VERSION_HEADER] if status == 426 else []
        return wsgi_error(start_response, status, message, extra)
    if mode == "gunicorn":
        raise StopIteration()  # gunicorn: nothing more to send, close
    if mode == "werkzeug":
        return Finished(mode)(environ, start_response)
    return []


class Handshake:
    """The WSGI middleware :func:`install` puts on ``app.wsgi_app``.

    It takes a request only when Flask would route it to the WebSocket view:
    exactly the WebSocket path (``PATH_INFO``), ``GET``, an upgrade, and a
    socket it knows how to take (gevent-websocket's, gunicorn's or
    Werkzeug's). Apps with host or subdomain matching (or, before Flask 3.1,
    a ``SERVER_NAME``), and hosts outside ``TRUSTED_HOSTS``, are left to
    Flask, which answers them as before.
    """

    def __init__(
        self,
        app: Flask,
        wsgi_app: t.Callable[[WSGIEnviron, StartResponse], t.Any],
        node: Node,
        authenticate: t.Callable[[], t.Callable[..., t.Any] | None],
        rule: Rule,
    ) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.node = node
        self.authenticate = authenticate
        self.rule = rule
        # PATH_INFO holds the path's UTF-8 bytes as latin-1 characters.
        self.path = rule.rule.encode("utf-8").decode("latin-1")

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> t.Any:
        app = self.app
        if environ.get("PATH_INFO") != self.path or not may_take(app, environ):
            return self.wsgi_app(environ, start_response)
        trusted = app.config.get("TRUSTED_HOSTS")
        return respond(
            app, environ, start_response, lambda: self._handshake(environ, trusted)
        )

    def _handshake(
        self, environ: WSGIEnviron, trusted: t.Any
    ) -> tuple[tuple[int, str] | None, str]:
        """``(status, message)`` refusing the upgrade, or how it ended."""
        node = self.node
        refused = refuse_upgrade(node, environ, trusted)
        if refused is not None:
            return refused, ""
        refusal: tuple[int, str] | None = None
        user_id = user_info = None
        authenticate = self.authenticate()
        if node.shutting_down:
            # Until the server stops listening, newcomers are sent on at once.
            refusal = (protocol.CLOSE_SHUTDOWN, "server shutting down")
        elif authenticate is not None:
            if _SHORT_CONTEXT:
                context = HandshakeContext(self.app, environ)
                context.rule = self.rule
            else:  # pragma: no cover - a Flask whose contexts differ
                context = self.app.request_context(environ)
            context.push()
            try:
                user_id, user_info = identify(authenticate)
            except Refused:
                refusal = (protocol.CLOSE_AUTH_FAILED, "authentication failed")
            finally:
                context.pop()
        return None, accept(node, environ, None, refusal, user_id, user_info)


_UNOPENED: t.Any = object()
# The shortcuts below rely on how Flask 3.0 and 3.1 build a request context.
_SHORT_CONTEXT = hasattr(RequestContext, "match_request") and (
    "session" in inspect.signature(RequestContext.__init__).parameters
)


class HandshakeContext(RequestContext):
    """The request context ``authenticate`` runs in.

    What Flask's would be, with two shortcuts: the URL is not matched again
    (the middleware found the route: ``request.url_rule`` and
    ``request.endpoint`` are set as routing would set them), and the session
    is opened when it is first used rather than on ``push()``, so a callback
    that identifies users without it (a token, a header) does not pay for
    loading it.
    """

    rule: Rule | None = None

    def __init__(
        self,
        app: Flask,
        environ: WSGIEnviron,
        request: t.Any = None,
        session: t.Any = _UNOPENED,
    ) -> None:
        # A session given to the constructor is one Flask does not open on
        # push(); the sentinel stands for "open it when first used", which
        # the property below does, in an attribute of our own.
        self.lazy_session = session
        super().__init__(app, environ, request, session)

    def match_request(self) -> None:
        if self.rule is None:  # pragma: no cover - a copy() of this context
            super().match_request()
        else:
            self.request.url_rule, self.request.view_args = self.rule, {}

    @property
    def session(self) -> t.Any:
        if self.lazy_session is _UNOPENED:
            interface = self.app.session_interface
            opened = interface.open_session(self.app, self.request)
            if opened is None:  # (an empty session is falsy, and valid)
                opened = interface.make_null_session(self.app)
            self.lazy_session = opened
        self.lazy_session.accessed = True
        return self.lazy_session

    @session.setter
    def session(self, value: t.Any) -> None:
        self.lazy_session = value
