"""A TCP proxy the tests can cut, as a tunnel or a sleeping laptop would.

``CutProxy(port)`` listens on a free port of 127.0.0.1 and relays each
connection to ``127.0.0.1:port``; ``CutProxy(port, other, ...)`` sends each
new connection to the next port in turn, as a round-robin load balancer
without sticky sessions would (``routed`` records where each one went).
``cut()`` resets every relayed connection (an RST, not a polite close: the
client learns of it as of a network failure) and resets every new one until
``restore()``; meanwhile the test publishes through the server's own port.
With ``refuse_websocket`` set, it answers WebSocket handshakes 404 itself, as
a proxy without WebSocket support would, and relays everything else.
"""

from __future__ import annotations

import socket
import struct
import threading
import typing as t


def _reset(sock: socket.socket) -> None:
    """Close with an RST: SO_LINGER on, with a zero timeout.

    A relay thread blocked in ``recv`` keeps the socket alive past
    ``close()`` (no RST would go out until the peer sent something), so
    ``shutdown(SHUT_RD)`` wakes it first: on Linux that sends nothing.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    sock.close()


def _is_websocket(client: socket.socket) -> bool:
    """Whether the request starting on ``client`` asks for a WebSocket
    (peeked at, so that a relayed request loses nothing)."""
    client.settimeout(5)
    try:
        head = client.recv(4096, socket.MSG_PEEK)
    except OSError:
        return False
    finally:
        client.settimeout(None)
    return b"upgrade: websocket" in head.lower()


def _refuse(client: socket.socket) -> None:
    try:
        client.sendall(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    except OSError:
        pass
    client.close()


class CutProxy:
    """Relays 127.0.0.1:``self.port`` to 127.0.0.1:``targets``; see the module."""

    def __init__(self, target: int, *others: int) -> None:
        self.targets = (target, *others)
        #: The port each relayed connection went to, in order.
        self.routed: list[int] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._down = False
        #: Connections reset so far by ``cut()`` or while down.
        self.resets = 0
        #: Answer WebSocket handshakes 404 instead of relaying them.
        self.refuse_websocket = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Reset every connection now and every new one until ``restore()``."""
        with self._lock:
            self._down = True
            victims, self._open = self._open, set()
            self.resets += len(victims)
        for sock in victims:
            _reset(sock)

    def restore(self) -> None:
        with self._lock:
            self._down = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()

    def __enter__(self) -> CutProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                down = self._down
                if down:
                    self.resets += 1
            if down:
                _reset(client)
                continue
            if self.refuse_websocket and _is_websocket(client):
                _refuse(client)
                continue
            target = self.targets[len(self.routed) % len(self.targets)]
            self.routed.append(target)
            try:
                upstream = socket.create_connection(("127.0.0.1", target), 5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pipe, args=(source, sink), daemon=True
                ).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        """Copy one direction until either side goes; then drop both."""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            mine = source in self._open or sink in self._open
            self._open.discard(source)
            self._open.discard(sink)
        if mine:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


__all__: t.Sequence[str] = ["CutProxy"]
