"""Floor target: bare gevent-websocket, no framework, no queues.

It keeps a set of connected sockets and, to publish, encodes each message
once and writes it to every socket. Nothing useful can be much cheaper, so
it is the baseline the library is measured against.
"""

from __future__ import annotations

import typing as t

from bench_common import dumps, spawn_publisher, stats
from geventwebsocket.exceptions import WebSocketError

SOCKETS: set[t.Any] = set()


def envelope(data: dict[str, t.Any]) -> str:
    """Same envelope shape as flask_realtime so wire sizes match."""
    return dumps({"type": "event", "channel": "bench", "event": "msg", "data": data})


def publish(channel: str, data: dict[str, t.Any]) -> None:
    """Encode once, send to every socket; drop sockets that fail."""
    text = dumps({"type": "event", "channel": channel, "event": "msg", "data": data})
    for ws in list(SOCKETS):
        try:
            ws.send(text)
        except (WebSocketError, OSError):
            SOCKETS.discard(ws)


def _json(start_response: t.Callable[..., t.Any], obj: t.Any) -> list[bytes]:
    body = dumps(obj).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def app(
    environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]
) -> list[bytes]:
    """WSGI entry point: ``/ws``, ``/bench/publish``, ``/bench/stats``."""
    path = environ.get("PATH_INFO", "")
    if path == "/ws":
        ws = environ.get("wsgi.websocket")
        if ws is None:
            start_response("400 Bad Request", [("Content-Length", "0")])
            return []
        try:
            ws.send('{"type":"connected"}')
            SOCKETS.add(ws)
            while ws.receive() is not None:
                pass
        except (WebSocketError, OSError):
            pass
        finally:
            SOCKETS.discard(ws)
        return []
    if path == "/bench/publish":
        return _json(
            start_response,
            spawn_publisher(environ.get("QUERY_STRING", ""), envelope, publish),
        )
    if path == "/bench/stats":
        return _json(start_response, stats(connections=len(SOCKETS)))
    start_response("404 Not Found", [("Content-Length", "0")])
    return []
