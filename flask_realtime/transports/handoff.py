"""Server adapter: taking the connection's socket out of the server's hands.

Under gevent a WebSocket, an SSE stream or a parked long poll keeps its file
descriptor as a plain non-blocking C socket once its response head is out:
no request context, no greenlet and no stack per idle connection. Each
server lets a view have its socket differently:

* pywsgi (``flask realtime serve``, gunicorn's ``GeventWebSocketWorker``):
  the gevent-websocket hook (:mod:`.ws_geventwebsocket`) leaves
  ``take(head) -> socket`` in the environ under :data:`TAKE_KEY`;
* gunicorn's ``gevent`` worker: ``environ["gunicorn.socket"]``;
* ``flask run`` (Werkzeug): ``environ["werkzeug.socket"]`` (WebSocket only).

Opt-in by nature: where none of these is offered, or the socket is TLS,
the transports stream through the server as any view does.
"""

from __future__ import annotations

import os
import typing as t
from _socket import socket as _c_socket

# Where the gevent-websocket hook leaves ``take(head) -> socket`` for the view.
TAKE_KEY = "flask_realtime.take"


def is_tls(sock: t.Any) -> bool:
    """A TLS socket is never taken over: its descriptor carries ciphertext,
    and only the SSL object can write to it."""
    return hasattr(sock, "getpeercert")


def take_over(sock: t.Any) -> t.Any:
    """The connection's socket, out of the server's hands.

    ``detach`` leaves the descriptor open when the server closes its socket
    object at the end of the request. The session keeps a plain C socket
    (gevent's wrapper would add two event watchers it never uses) and waits
    on the event loop itself, only when the socket is full.
    """
    family, kind, proto = sock.family, sock.type, sock.proto
    raw = _c_socket(family, kind, proto, sock.detach())
    raw.setblocking(False)
    return raw


def plain_taker(sock: t.Any) -> t.Callable[[bytes], t.Any]:
    """``take(head)`` for a server that hands the app its socket."""

    def take(head: bytes) -> t.Any:
        sock.sendall(head)
        return sock

    take.socket = sock  # type: ignore[attr-defined]
    return take


def socket_taker(environ: dict[str, t.Any]) -> tuple[t.Any, str] | None:
    """How this server lets a view write its own response and keep the socket:
    ``(take, mode)``, or None where it cannot (then the view streams as usual).
    """
    take = environ.pop(TAKE_KEY, None)
    if take is not None:
        return None if is_tls(take.socket) else (take, "gevent")
    sock = environ.get("gunicorn.socket")
    if sock is not None and not is_tls(sock):
        return plain_taker(sock), "gunicorn"
    return None


class LaterSocket(t.NamedTuple):
    """Where a view answers its request later (see :func:`socket_for_later`)."""

    raw: t.Any  # a non-blocking C socket, the view's own to write and close
    kept_alive: bool  # the server reads the connection's next request itself
    mode: str  # what the view returns: ``Finished(mode)``


def socket_for_later(environ: dict[str, t.Any]) -> LaterSocket | None:
    """A socket on which a view answers its request later, from outside the
    request (a parked long poll), or None where the server cannot allow it.

    Nothing is written now: the status is not known yet. Then:

    * pywsgi writes nothing for a view that returns ``Finished("gevent")``
      without having taken the socket, and goes on reading the connection
      for its next request. The view gets a duplicate of the descriptor: the
      connection stays the server's, so keep-alive works, and the answer
      written on the duplicate goes out before the client sends that next
      request. (A client pipelining requests behind a parked poll would get
      their answers first; browsers and proxies do not pipeline.) A re-poll
      on a new TCP connection would cost the worker half as much again as
      the poll cycle itself, or more (docs/benchmarks.md).
    * gunicorn's gevent worker ends the connection on ``Finished("gunicorn")``:
      the view takes the socket over, and its answer closes the connection.

    May raise OSError (no descriptor left, or the client has gone).
    """
    take = environ.get(TAKE_KEY)
    if take is not None:
        sock = take.socket
        if is_tls(sock):
            return None
        del environ[TAKE_KEY]
        raw = _c_socket(sock.family, sock.type, sock.proto, os.dup(sock.fileno()))
        raw.setblocking(False)
        return LaterSocket(raw, _pywsgi_keeps_alive(environ), "gevent")
    sock = environ.get("gunicorn.socket")
    if sock is not None and not is_tls(sock):
        return LaterSocket(take_over(sock), False, "gunicorn")
    return None


def can_answer_later(environ: dict[str, t.Any]) -> bool:
    """Whether :func:`socket_for_later` has a socket to give (cheap)."""
    take = environ.get(TAKE_KEY)
    sock = take.socket if take is not None else environ.get("gunicorn.socket")
    return sock is not None and not is_tls(sock)


def _pywsgi_keeps_alive(environ: dict[str, t.Any]) -> bool:
    """What pywsgi decided from the request (``WSGIHandler.read_request``)."""
    connection = environ.get("HTTP_CONNECTION", "").lower()
    version = environ.get("SERVER_PROTOCOL")
    if version == "HTTP/1.1":
        return connection != "close"
    if version == "HTTP/1.0":
        return connection == "keep-alive"
    return False
