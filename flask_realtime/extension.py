"""The Flask extension: configuration, routes, decorators and the server-side API."""

from __future__ import annotations

import copy
import typing as t
import weakref

from flask import (
    Flask,
    current_app,
    has_app_context,
    has_request_context,
    request,
)

from . import channels as _channels
from . import config as _config
from . import deployment as _deployment
from . import routes as _routes
from .channel_api import Channel as Channel
from .node import Node
from .node.hooks import Hooks
from .node.publishing import is_connection_id
from .recorder import Recorder
from .testing import TestClient
from .transports import longpoll as _longpoll
from .transports import send as _send
from .transports import websocket as _websocket

F = t.TypeVar("F", bound=t.Callable[..., t.Any])

# Apps initialised in this process, so that ``broadcast()`` outside an app
# context (a script, a Celery task) finds the one app there is.
_initialised: weakref.WeakSet[Flask] = weakref.WeakSet()


class Realtime:
    """Realtime messaging for a Flask app.

    ``Realtime(app)`` or ``Realtime()`` then :meth:`init_app`. One instance may
    serve several apps; each app gets its own node, configured from its
    ``REALTIME_*`` keys.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._authenticate: t.Callable[..., t.Any] | None = None
        self._authorizers: list[tuple[str, t.Callable[..., t.Any]]] = []
        self._handlers = _channels.HandlerTable()
        self._on_connect: list[t.Callable[..., t.Any]] = []
        self._on_disconnect: list[t.Callable[..., t.Any]] = []
        self._nodes: weakref.WeakKeyDictionary[Flask, Node] = (
            weakref.WeakKeyDictionary()
        )
        # The memory transport's recorder of each node that has one.
        self._recorders: weakref.WeakKeyDictionary[Node, Recorder] = (
            weakref.WeakKeyDictionary()
        )
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the extension on ``app``: its routes, its node, ``flask realtime``.

        Reads the app's ``REALTIME_*`` keys once, here; a key that is not set
        falls back to its environment variable (``REALTIME_TRANSPORT``,
        ``REALTIME_BROKER``, ``REDIS_HOST``, ...) and then to its default.
        docs/configuration.md lists every key, with defaults and variables
        generated from :mod:`flask_realtime.config`.

        :raises ConfigError: a value is wrong; the message names the key.
        """
        if "realtime" in app.extensions:
            raise RuntimeError(
                "A 'Realtime' instance is already registered on this app. Call"
                " init_app once per app, or use app.extensions['realtime']."
            )
        fallbacks = _config.environment_defaults()
        for key, default in _config.DEFAULTS.items():
            # A copy: apps must not share (and mutate) one default list or dict.
            app.config.setdefault(key, copy.deepcopy(fallbacks.get(key, default)))
        settings = _config.load(app.config)
        # Logged now, at the worker's start, when the server can tell already.
        _deployment.startup_problem(settings)

        rules = _channels.ChannelRules()
        for pattern, func in app.config["REALTIME_AUTHORIZERS"].items():
            rules.add_authorizer(pattern, func)
        for pattern, func in self._authorizers:
            rules.add_authorizer(pattern, func)
        node = Node(app, settings, rules, self._handlers, lambda: self._authenticate)
        node.hooks = Hooks(node, lambda: self._on_connect, lambda: self._on_disconnect)
        if "memory" in settings.transports:
            recorder = self._recorders[node] = Recorder()
            node.observe(recorder.record)
        self._nodes[app] = node
        _send.register(node)
        _longpoll.register(node)
        app.extensions["realtime"] = self
        app.register_blueprint(_routes.blueprint(self, settings, node))
        if settings.pusher is not None:  # REALTIME_PUSHER: auth endpoints, HTTP API
            from .pusher import http_routes as _pusher_http

            app.register_blueprint(_pusher_http.blueprint(self, settings.pusher))
        _websocket.install(app, node, lambda: self._authenticate)
        if settings.pusher is not None:  # REALTIME_PUSHER: /app/<key>
            from .pusher import websocket as _pusher_websocket

            app.register_blueprint(_pusher_websocket.blueprint(node, settings.pusher))
            _pusher_websocket.install(app, node, settings.pusher)
        from .cli import realtime_cli

        if "realtime" not in app.cli.commands:
            app.cli.add_command(realtime_cli)
        _initialised.add(app)

    # -- which app ----------------------------------------------------------

    @property
    def node(self) -> Node:
        """The node of the current app, or of the only app outside a context."""
        if has_app_context():
            app = current_app._get_current_object()  # type: ignore[attr-defined]
            try:
                return self._nodes[app]
            except KeyError:
                raise RuntimeError(
                    "Realtime is not registered on the current app. Did you"
                    " forget to call 'realtime.init_app(app)'?"
                ) from None
        nodes = list(self._nodes.values())
        if len(nodes) == 1:
            return nodes[0]
        if not nodes:
            raise RuntimeError(
                "Realtime has no app. Did you forget to call 'realtime.init_app(app)'?"
            )
        raise RuntimeError(
            "Realtime serves several apps here; push an app context"
            " ('with app.app_context():') to choose one."
        )

    # -- decorators -----------------------------------------------------------

    def authenticate(self, func: F) -> F:
        """Identify the user of each new connection from its handshake request.

        The function receives the request (in its request context) and returns
        None (anonymous), a user id, or ``(user_id, user_info)``; False or an
        exception refuses the connection (WebSocket close 4001).

        The WebSocket handshake is served ahead of Flask's dispatch, so
        ``before_request`` and ``after_request`` functions (and the
        ``request_started`` / ``request_finished`` signals) do not run for it:
        do here what they would do. ``request``, ``session`` and ``g`` work as
        usual, and ``teardown_request`` functions run after this function.
        SSE and long-poll requests are dispatched by Flask as usual, hooks
        included; so is the WebSocket handshake when ``app.wsgi_app`` was
        already wrapped (ProxyFix, say) before ``init_app`` ran.
        """
        self._authenticate = func
        return func

    def authorizer(self, pattern: str) -> t.Callable[[F], F]:
        """Guard channels matching ``pattern`` (``*`` is a wildcard).

        The function gets ``(connection, channel)`` and returns a bool, or for
        a presence channel a dict to use as the member's ``user_info``.
        """

        def decorator(func: F) -> F:
            self._authorizers.append((pattern, func))
            for node in self._nodes.values():
                node.rules.add_authorizer(pattern, func)
            return func

        return decorator

    def on(self, event: str, channel: str = "*") -> t.Callable[[F], F]:
        """Handle client events named ``event`` on channels matching ``channel``.

        The handler gets ``(connection, channel, data)`` and runs in the app
        context. An event that carries an ``id`` is answered with an ``ack``
        whose ``data`` is the handler's return value (none for None): the
        clients' ``send`` resolves with it. Raise
        :class:`~flask_realtime.Rejected` (error 403, or the code it names)
        or return False (error 403) to refuse the event. One handler runs per
        event: the first registered whose ``channel`` pattern matches.
        """

        def decorator(func: F) -> F:
            self._handlers.add(event, channel, func)
            return func

        return decorator

    def on_connect(self, func: F) -> F:
        """Call ``func(connection)`` for each new connection, on every
        transport, once authenticated and registered, in the app context.

        It may subscribe the connection (``realtime.subscribe(channel,
        connection_id=connection.id)``) or send to it. To refuse it, raise
        :class:`~flask_realtime.ConnectionRefused` (``code``: the WebSocket
        close code, 4003 by default) or :class:`~flask_realtime.Rejected`,
        or return False: a WebSocket is closed with the code, an SSE stream
        or long-poll open is answered 403, and ``on_disconnect`` is not
        called for it. Any other exception refuses it too (1011), logged.
        """
        self._on_connect.append(func)
        return func

    def on_disconnect(self, func: F) -> F:
        """Call ``func(connection, reason)`` once each connection is gone,
        in the app context, on every transport: whoever closed it, also
        when the node shuts down (4200). ``reason`` is a
        :class:`~flask_realtime.DisconnectReason`: ``code`` (the close
        code, 1006 when the peer vanished) and ``reason`` (in words).
        The connection is out of its channels already; presence leaves
        went out.
        """
        self._on_disconnect.append(func)
        return func

    # -- server-side API ------------------------------------------------------

    def broadcast(
        self,
        channel: str,
        event: str,
        data: t.Any = None,
        *,
        exclude: str | None = None,
    ) -> None:
        """Send ``event`` to every subscriber of ``channel`` on every node.

        ``exclude``: a connection id that does not get it, usually the
        sender's (see :meth:`socket_id`); None or ``""`` excludes nobody.
        """
        self.node.broadcast(channel, event, data, exclude or None)

    def subscribe(
        self,
        channel: str,
        *,
        connection_id: str | None = None,
        user_id: t.Any = None,
    ) -> None:
        """Subscribe one connection, or every connection of a user on every
        node, to ``channel``, as if each client had asked: it gets
        ``subscribed`` (with no ``id``) and presence joins follow. No
        authorizer is asked: the server decides. Returns at once; the
        subscription takes effect on the node that holds each connection.
        Works from views, tasks and scripts (over the broker)."""
        self.node.commands.publish(
            "subscribe", connection_id=connection_id, user_id=user_id, channel=channel
        )

    def unsubscribe(
        self,
        channel: str,
        *,
        connection_id: str | None = None,
        user_id: t.Any = None,
    ) -> None:
        """The reverse of :meth:`subscribe`: the client gets ``unsubscribed``
        (no ``id``), presence leaves follow. Whoever subscribed it."""
        self.node.commands.publish(
            "unsubscribe", connection_id=connection_id, user_id=user_id, channel=channel
        )

    def disconnect(
        self,
        *,
        connection_id: str | None = None,
        user_id: t.Any = None,
        code: int = 4000,
    ) -> None:
        """Close one connection, or every connection of a user (every tab,
        every node), with ``code``: 4000 by default, which clients take as
        "do not reconnect" (4000-4099); 4200-4299 ask them to reconnect."""
        self.node.commands.publish(
            "disconnect", connection_id=connection_id, user_id=user_id, code=code
        )

    def socket_id(self) -> str | None:
        """The connection id the current request's ``X-Socket-ID`` header
        names (as Laravel Echo sends it), for ``broadcast(..., exclude=)``;
        None without a (well-formed) header or outside a request."""
        return socket_id()

    def send_to_user(self, user_id: t.Any, event: str, data: t.Any = None) -> None:
        """Send to every connection of ``user_id`` (``5`` and ``"5"`` are one user)."""
        self.node.send_to_user(user_id, event, data)

    def send(self, connection_id: str, event: str, data: t.Any = None) -> None:
        """Send to one connection, wherever it lives."""
        self.node.send(connection_id, event, data)

    def channel(self, name: str) -> Channel:
        """The channel ``name`` seen from the server: presence, history, broadcast."""
        return Channel(self.node, name)

    # -- testing --------------------------------------------------------------

    def test_client(self, user_id: t.Any = None, user_info: t.Any = None) -> TestClient:
        """An in-process client speaking protocol v1 through the real code paths."""
        return TestClient(self.node, user_id=user_id, user_info=user_info)

    @property
    def recorder(self) -> Recorder:
        """What was broadcast and sent, when the ``memory`` transport is enabled."""
        recorder = self._recorders.get(self.node)
        if recorder is None:
            raise RuntimeError(
                "Nothing is recorded: add 'memory' to REALTIME_TRANSPORTS"
                " (or set REALTIME_TRANSPORT=memory)."
            )
        return recorder


def current_realtime() -> Realtime:
    """The extension of the current app, or of the only initialised app."""
    if has_app_context():
        try:
            return current_app.extensions["realtime"]  # type: ignore[no-any-return]
        except KeyError:
            raise RuntimeError(
                "Realtime is not registered on the current app. Did you forget"
                " to call 'realtime.init_app(app)'?"
            ) from None
    apps = list(_initialised)
    if len(apps) == 1:
        return apps[0].extensions["realtime"]  # type: ignore[no-any-return]
    if not apps:
        raise RuntimeError(
            "No app has Realtime. Did you forget to call 'Realtime(app)' or"
            " 'realtime.init_app(app)'?"
        )
    raise RuntimeError(
        "Several apps use Realtime here; push an app context to choose one."
    )


def broadcast(
    channel: str, event: str, data: t.Any = None, *, exclude: str | None = None
) -> None:
    """Broadcast through the current app's Realtime (see :meth:`Realtime.broadcast`)."""
    current_realtime().broadcast(channel, event, data, exclude=exclude)


#: The header a page sends its connection id in (Laravel Echo's name).
SOCKET_ID_HEADER = "X-Socket-ID"


def socket_id() -> str | None:
    """The current request's ``X-Socket-ID``, if it is a connection id.

    ``broadcast(channel, event, data, exclude=socket_id())`` sends to
    everyone but the page that made the request (``toOthers()``).
    """
    if not has_request_context():
        return None
    value = request.headers.get(SOCKET_ID_HEADER, "").strip()
    return value if is_connection_id(value) else None
