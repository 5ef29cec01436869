"""A small WebSocket test client speaking the flask_realtime protocol.

Built on websocket-client. Every read has a deadline; a timeout raises
:class:`WSTimeout` naming what was awaited and what arrived meanwhile.
"""

from __future__ import annotations

import itertools
import json
import time
import typing as t

import websocket

CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006

_ids = itertools.count(1)


class WSTimeout(AssertionError):
    """Nothing (suitable) arrived in time."""


class ConnectionClosed(AssertionError):
    """The server closed the connection while a message was expected."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"server closed the WebSocket with code {code} {reason!r}")
        self.code = code
        self.reason = reason


def _parse_close(payload: bytes) -> tuple[int, str]:
    if len(payload) < 2:
        return CLOSE_NO_STATUS, ""
    code = int.from_bytes(payload[:2], "big")
    return code, payload[2:].decode("utf-8", "replace")


class Client:
    """One WebSocket connection; see :func:`connect`."""

    def __init__(self, ws: websocket.WebSocket) -> None:
        self.ws = ws
        self.connection_id: str | None = None
        self.welcome: dict[str, t.Any] | None = None
        #: Messages :meth:`wait_for` read past, in arrival order.
        self.skipped: list[t.Any] = []
        self.close_code: int | None = None
        self.close_reason = ""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- sending ---------------------------------------------------------

    def send_json(self, obj: t.Any) -> None:
        self.ws.send(json.dumps(obj))

    def send_text(self, text: str) -> None:
        self.ws.send(text)

    def send_binary(self, data: bytes) -> None:
        self.ws.send_binary(data)

    # -- receiving -------------------------------------------------------

    def _recv_frame(self, deadline: float, waiting_for: str) -> tuple[int, bytes]:
        """The next data or close frame before ``deadline`` (control frames
        such as pings are answered by websocket-client and skipped here)."""
        if self.close_code is not None:
            raise ConnectionClosed(self.close_code, self.close_reason)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WSTimeout(self._timeout_message(waiting_for))
            self.ws.settimeout(remaining)
            try:
                opcode, data = self.ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                raise WSTimeout(self._timeout_message(waiting_for)) from None
            except (websocket.WebSocketConnectionClosedException, OSError):
                self.close_code = CLOSE_ABNORMAL
                self.close_reason = "connection lost without a close frame"
                raise ConnectionClosed(self.close_code, self.close_reason) from None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self.close_code, self.close_reason = _parse_close(data or b"")
                return opcode, data
            if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                if isinstance(data, str):
                    data = data.encode()
                return opcode, data

    def _timeout_message(self, waiting_for: str) -> str:
        message = f"timed out waiting for {waiting_for}"
        if self.skipped:
            message += f"; read past meanwhile: {self.skipped[-10:]!r}"
        return message

    def _recv(self, deadline: float, waiting_for: str) -> t.Any:
        opcode, data = self._recv_frame(deadline, waiting_for)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise ConnectionClosed(
                self.close_code or CLOSE_NO_STATUS, self.close_reason
            )
        try:
            return json.loads(data)
        except ValueError:
            raise AssertionError(
                f"server sent a message that is not JSON: {data!r}"
            ) from None

    def recv_json(self, timeout: float = 5) -> t.Any:
        """The next message, decoded from JSON."""
        return self._recv(time.monotonic() + timeout, "a message")

    def wait_for(
        self, predicate: t.Callable[[t.Any], bool], timeout: float = 5
    ) -> t.Any:
        """The first message for which ``predicate`` is true; the others are
        appended to :attr:`skipped`."""
        deadline = time.monotonic() + timeout
        waiting_for = f"a message matching {getattr(predicate, '__name__', predicate)}"
        while True:
            message = self._recv(deadline, waiting_for)
            if predicate(message):
                return message
            self.skipped.append(message)

    def wait_event(
        self, event: str, channel: str | None = None, timeout: float = 5
    ) -> dict[str, t.Any]:
        """The first ``event`` message named ``event`` (on ``channel`` if given)."""

        def matches(msg: t.Any) -> bool:
            return (
                isinstance(msg, dict)
                and msg.get("type") == "event"
                and msg.get("event") == event
                and (channel is None or msg.get("channel") == channel)
            )

        matches.__name__ = f"event {event!r}" + (f" on {channel!r}" if channel else "")
        return self.wait_for(matches, timeout)

    def request(
        self, message: dict[str, t.Any], timeout: float = 5
    ) -> dict[str, t.Any]:
        """Send ``message`` with an ``id`` (one is chosen if absent) and return
        the reply carrying that id (whatever its type, ``error`` included)."""
        message = dict(message)
        if message.get("id") is None:
            message["id"] = f"req-{next(_ids)}"
        request_id = message["id"]
        self.send_json(message)

        def is_reply(msg: t.Any) -> bool:
            return isinstance(msg, dict) and msg.get("id") == request_id

        is_reply.__name__ = f"the reply to {message!r}"
        return self.wait_for(is_reply, timeout)

    def subscribe(
        self, channel: str, id: t.Any = None, timeout: float = 5
    ) -> dict[str, t.Any]:
        """Subscribe and return the reply: type ``subscribed`` or ``error``."""
        return self.request(
            {"type": "subscribe", "channel": channel, "id": id}, timeout=timeout
        )

    def unsubscribe(
        self, channel: str, id: t.Any = None, timeout: float = 5
    ) -> dict[str, t.Any]:
        return self.request(
            {"type": "unsubscribe", "channel": channel, "id": id}, timeout=timeout
        )

    def ping(self, id: t.Any = None, timeout: float = 5) -> dict[str, t.Any]:
        return self.request({"type": "ping", "id": id}, timeout=timeout)

    def expect_close(self, timeout: float = 5) -> int:
        """Read (and skip into :attr:`skipped`) until the server closes; return
        the close code (1005 if it gave none, 1006 if the TCP connection just
        dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                opcode, data = self._recv_frame(deadline, "the server to close")
            except ConnectionClosed as exc:
                return exc.code
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                assert self.close_code is not None
                return self.close_code
            try:
                self.skipped.append(json.loads(data))
            except ValueError:
                self.skipped.append(data)

    def close(self) -> None:
        """Close the connection (never raises)."""
        try:
            if self.close_code is None and self.ws.connected:
                self.ws.close(timeout=1)
            else:  # the close handshake already happened (or the TCP link died)
                self.ws.shutdown()
        except Exception:
            try:
                self.ws.shutdown()
            except Exception:
                pass


def connect(
    url: str,
    origin: str | None = None,
    headers: t.Mapping[str, str] | list[str] | None = None,
    timeout: float = 5,
    suppress_origin: bool = False,
    sockopt: t.Sequence[tuple[int, int, int]] = (),
) -> Client:
    """Open a WebSocket and read the ``connected`` welcome message.

    Raises ``websocket.WebSocketBadStatusException`` if the handshake is
    refused, and :class:`ConnectionClosed` (with ``.code``) if the server
    closes instead of welcoming. websocket-client sends the URL's own origin
    unless ``origin`` is given; ``suppress_origin=True`` sends none.
    """
    if isinstance(headers, t.Mapping):
        header_list = [f"{name}: {value}" for name, value in headers.items()]
    else:
        header_list = list(headers or [])
    ws = websocket.create_connection(
        url,
        timeout=timeout,
        origin=origin,
        suppress_origin=suppress_origin,
        header=header_list,
        enable_multithread=True,
        sockopt=tuple(sockopt),
    )
    client = Client(ws)
    try:
        welcome = client.recv_json(timeout=timeout)
    except BaseException:
        client.close()
        raise
    if not isinstance(welcome, dict) or welcome.get("type") != "connected":
        client.close()
        raise AssertionError(f"expected a 'connected' message first, got {welcome!r}")
    client.welcome = welcome
    client.connection_id = welcome.get("data", {}).get("connection_id")
    return client
