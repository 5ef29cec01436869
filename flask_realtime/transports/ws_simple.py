"""Server adapter: simple-websocket, for servers that offer no socket we know.

Where neither gevent-websocket's hook, gunicorn nor Werkzeug hands the view
its socket, simple-websocket performs the handshake (it finds the socket
on any server it supports). We read and write frames ourselves, so its
reader thread is never started: :class:`_NoThread` is passed through its
public ``thread_class`` option.
"""

from __future__ import annotations

import typing as t


class _NoThread:
    """A thread class whose threads never run."""

    def __init__(self, target: t.Any = None, **kwargs: t.Any) -> None:
        self.name = "unused"

    def start(self) -> None:
        pass


def handshake(environ: dict[str, t.Any], subprotocol: str) -> tuple[t.Any, str]:
    """Answer the upgrade with simple-websocket: ``(socket, mode)``; it
    selects ``subprotocol`` when the client offers it."""
    from simple_websocket import Server

    ws = Server(environ, subprotocols=[subprotocol], thread_class=_NoThread)
    return ws.sock, ws.mode
