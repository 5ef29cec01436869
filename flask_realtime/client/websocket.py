"""The WebSocket under the client, through websocket-client's public API.

The only module of the client that imports websocket-client, and only when a
client connects: the server side of flask_realtime does not need it. The rest
of the client sees a :class:`WebSocketLink` that sends text, receives frames
and closes.
"""

from __future__ import annotations

import json
import socket
import time
import typing as t
import urllib.parse

from .. import protocol
from .errors import ConnectError, ConnectionClosed

#: Frame kinds :meth:`WebSocketLink.receive` reports.
TEXT = "text"
CLOSE = "close"
CONTROL = "control"  # ping, pong or binary: proof of life, nothing to read

_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}


def websocket_module() -> t.Any:
    """websocket-client, imported on first use, with the install hint."""
    try:
        import websocket
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "flask_realtime.client needs the websocket-client package:"
            " pip install flask_realtime[client]"
        ) from exc
    return websocket


def websocket_base(url: str) -> str:
    """``url`` with a WebSocket scheme (http -> ws, https -> wss), checked."""
    parts = urllib.parse.urlsplit(url)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(
            f"url must be ws://, wss://, http:// or https://host[:port], got {url!r}"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"pass query parameters as params=, not in the url {url!r}")
    return urllib.parse.urlunsplit(
        (scheme, parts.netloc, parts.path.rstrip("/"), "", "")
    )


def parse_close(payload: bytes | str | None) -> tuple[int, str]:
    """The code and reason of a close frame's payload."""
    if isinstance(payload, str):
        payload = payload.encode()
    if not payload or len(payload) < 2:
        return protocol.CLOSE_NO_STATUS, ""
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")


class LinkError(Exception):
    """Sending or receiving failed: the connection is gone."""


class Link(t.Protocol):
    """What the reader and the senders need of a transport: the WebSocket
    below, and SSE and long-polling (:mod:`.sse`, :mod:`.longpoll`)."""

    #: The transport's name: "websocket", "sse" or "longpolling".
    transport: str

    def send(self, text: str) -> None: ...
    def receive(self, timeout: float) -> tuple[str, bytes] | None: ...
    def send_close(self, code: int, reason: bytes) -> None: ...
    def close(self, timeout: float) -> None: ...
    def shutdown(self) -> None: ...
    def hard_close(self) -> None: ...


class WebSocketLink:
    """One open WebSocket to the server, past its ``connected`` message."""

    transport = "websocket"

    def __init__(self, ws: t.Any) -> None:
        self._ws = ws
        self._websocket = websocket_module()

    @classmethod
    def open(
        cls,
        url: str,
        *,
        timeout: float,
        headers: t.Mapping[str, t.Any] | None,
        origin: str | None,
        sslopt: t.Mapping[str, t.Any] | None,
    ) -> Opened:
        """One handshake: a link that has received ``connected``, and its data.

        Raises :class:`ConnectError` when the server cannot be reached, refuses
        the handshake or says something else first, and
        :class:`ConnectionClosed` when it closes the connection at once.
        """
        websocket = websocket_module()
        try:
            ws = websocket.create_connection(
                url,
                timeout=timeout,
                header=[f"{k}: {v}" for k, v in dict(headers or {}).items()],
                origin=origin,
                suppress_origin=origin is None,  # not a browser page
                enable_multithread=True,
                sslopt=sslopt or None,
            )
        except websocket.WebSocketBadStatusException as exc:
            raise ConnectError(
                f"the server refused the WebSocket handshake at {url}: {exc}",
                status=exc.status_code,
            ) from exc
        except (websocket.WebSocketException, OSError) as exc:
            raise ConnectError(f"cannot connect to {url}: {exc}") from exc
        try:
            deadline = time.monotonic() + timeout
            while True:
                ws.settimeout(max(0.001, deadline - time.monotonic()))
                opcode, payload = ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    raise ConnectionClosed(*parse_close(payload))
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    break
            welcome = json.loads(payload)
            if not isinstance(welcome, dict) or welcome.get("type") != "connected":
                raise ConnectError(f"expected 'connected' first, got {welcome!r}")
        except ConnectionClosed:
            ws.shutdown()
            raise
        except (websocket.WebSocketException, OSError, ValueError) as exc:
            ws.shutdown()
            raise ConnectError(f"no 'connected' message from {url}: {exc}") from exc
        except BaseException:
            ws.shutdown()
            raise
        data = welcome.get("data")
        return cls(ws), data if isinstance(data, dict) else {}

    def send(self, text: str) -> None:
        """Send one text frame; :class:`LinkError` if the connection is gone."""
        try:
            self._ws.send(text)
        except (self._websocket.WebSocketException, OSError) as exc:
            raise LinkError(str(exc)) from exc

    def receive(self, timeout: float) -> tuple[str, bytes] | None:
        """The next frame's kind and payload; None when ``timeout`` passed
        first, :class:`LinkError` when the connection is gone."""
        websocket = self._websocket
        try:
            self._ws.settimeout(timeout)
            opcode, payload = self._ws.recv_data(control_frame=True)
        except (websocket.WebSocketTimeoutException, TimeoutError):
            return None
        except (websocket.WebSocketException, OSError, ValueError) as exc:
            raise LinkError(str(exc)) from exc
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return CLOSE, payload
        if opcode == websocket.ABNF.OPCODE_TEXT:
            return TEXT, payload
        return CONTROL, payload

    def send_close(self, code: int, reason: bytes) -> None:
        """Start the closing handshake; the reader sees the server's answer."""
        self._ws.send_close(code, reason)

    def close(self, timeout: float) -> None:
        """The whole closing handshake, waiting up to ``timeout`` for the answer."""
        self._ws.close(timeout=timeout)

    def shutdown(self) -> None:
        """Drop the connection without a closing handshake."""
        self._ws.shutdown()

    def hard_close(self) -> None:
        """Shut the socket down under the reader: its receive returns at once.
        (``WebSocket.abort()`` does nothing once a close frame was sent.)"""
        sock = getattr(self._ws, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


#: An open link and the data of its ``connected`` message.
Opened = tuple[Link, dict[str, t.Any]]
