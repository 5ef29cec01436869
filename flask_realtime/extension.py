"""The Flask extension: configuration, routes, decorators and the server-side API."""

from __future__ import annotations

import copy
import typing as t
import weakref

from flask import (
    Flask,
    current_app,
    has_app_context,
)

from . import channels as _channels
from . import config as _config
from . import deployment as _deployment
from . import routes as _routes
from .channel_api import Channel as Channel
from .node import Node
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
        if "memory" in settings.transports:
            recorder = self._recorders[node] = Recorder()
            node.observe(recorder.record)
        self._nodes[app] = node
        _send.register(node)
        _longpoll.register(node)
        app.extensions["realtime"] = self
        app.register_blueprint(_routes.blueprint(self, settings, node))
        _websocket.install(app, node, lambda: self._authenticate)
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
        context. Raise :class:`~flask_realtime.Rejected` or return False to
        refuse the event (error 403).
        """

        def decorator(func: F) -> F:
            self._handlers.add(event, channel, func)
            return func

        return decorator

    # -- server-side API ------------------------------------------------------

    def broadcast(self, channel: str, event: str, data: t.Any = None) -> None:
        """Send ``event`` to every subscriber of ``channel`` on every node."""
        self.node.broadcast(channel, event, data)

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


def broadcast(channel: str, event: str, data: t.Any = None) -> None:
    """Broadcast through the current app's Realtime (see :meth:`Realtime.broadcast`)."""
    current_realtime().broadcast(channel, event, data)
