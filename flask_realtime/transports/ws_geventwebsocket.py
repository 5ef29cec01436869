"""Server adapter: the gevent-websocket hook.

For gevent-websocket's handler (gunicorn's ``GeventWebSocketWorker`` and
``flask realtime serve``, both pywsgi with ``WebSocketHandler``). That
handler completes a WebSocket handshake itself, before the app runs: a
refusal (a disabled endpoint, a foreign origin, a refused authentication)
could then only be a close after a 101, and a malformed
``Sec-WebSocket-Key`` makes it raise ``binascii.Error``.

:func:`defer_upgrades` overrides its public ``upgrade_websocket`` step so
that upgrades under our URL prefix are left to us: the environ gets
``take(head) -> socket`` (:data:`.handoff.TAKE_KEY`), the endpoint writes the
101 (or a real HTTP status) itself, and gevent-websocket's own WebSocket
object is never built. Other paths keep gevent-websocket's behaviour, with
the bad key answered 400. Installed by ``Realtime.init_app`` when
gevent-websocket is importable; it changes nothing on other servers.

The override is set on the class rather than a subclass because gunicorn's
``GeventWebSocketWorker`` names ``WebSocketHandler`` itself.
"""

from __future__ import annotations

import typing as t

from .handoff import TAKE_KEY
from .ws_accept import valid_key

_deferred_prefixes: set[str] = set()
_hooked = False


def defer_upgrades(prefix: str) -> None:
    """Make gevent-websocket leave upgrades under ``prefix`` to us."""
    global _hooked
    try:
        from geventwebsocket.handler import WebSocketHandler
    except ImportError:  # pragma: no cover - gevent-websocket is a dependency
        return
    _deferred_prefixes.add(prefix.rstrip("/") + "/")
    if _hooked:
        return
    _hooked = True
    original_upgrade = WebSocketHandler.upgrade_websocket

    def upgrade_websocket(handler: t.Any) -> t.Any:
        environ = handler.environ
        path = environ.get("PATH_INFO", "")
        if not any(path.startswith(p) for p in _deferred_prefixes):
            key = environ.get("HTTP_SEC_WEBSOCKET_KEY")
            if key is not None and not valid_key(key.strip()):
                # gevent-websocket would raise binascii.Error here.
                handler.start_response("400 Bad Request", [])
                return [b"invalid Sec-WebSocket-Key"]
            return original_upgrade(handler)
        environ[TAKE_KEY] = _taker(handler)
        return None

    WebSocketHandler.upgrade_websocket = upgrade_websocket  # type: ignore[method-assign]


def _taker(handler: t.Any) -> t.Callable[[bytes], t.Any]:
    """``take(head) -> socket`` on a pywsgi handler.

    The response head (a 101, or an SSE stream's head) goes with the first
    bytes after it, in one write. pywsgi is then told, through its public
    WSGI ``start_response`` (which records the status for its access log),
    that this status went out; ``headers_sent`` keeps it from writing a head
    of its own, and ``close_connection`` from reusing the connection.
    """

    def take(head: bytes) -> t.Any:
        handler.socket.sendall(head)
        handler.start_response(head[9 : head.index(b"\r\n")].decode("latin-1"), [])
        handler.headers_sent = True
        handler.close_connection = True
        return handler.socket

    take.socket = handler.socket  # type: ignore[attr-defined]
    return take
