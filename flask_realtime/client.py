"""A Python client for flask_realtime servers: protocol v1 over WebSocket.

The same shape as the JavaScript client, for services, scripts and tests::

    from flask_realtime.client import RealtimeClient

    with RealtimeClient("http://localhost:5000", params={"token": "..."}) as client:
        room = client.subscribe("chat.room.1")
        room.on("message.sent", print)
        data = room.wait_for("message.sent", timeout=5)

It is synchronous: one background reader thread per client receives messages,
answers the server's liveness checks, pings the server and reconnects. Under
gevent's monkey patching that thread is a greenlet, so the client works with
and without gevent. Callbacks run on the reader thread, one at a time, in
arrival order: keep them short, and do not make blocking calls from them (the
reader would wait for itself).

It needs websocket-client: ``pip install flask_realtime[client]``.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import random
import socket
import threading
import time
import typing as t
import urllib.parse

__all__ = [
    "Channel",
    "ConnectError",
    "ConnectionClosed",
    "NotConnected",
    "RealtimeClient",
    "RealtimeError",
    "RealtimeTimeout",
    "ServerError",
    "SubscriptionError",
]

logger = logging.getLogger("flask_realtime.client")

#: Close codes after which the client must not reconnect (PROTOCOL.md).
NO_RECONNECT = range(4000, 4100)
#: Close codes after which the client reconnects with backoff.
RECONNECT_WITH_BACKOFF = range(4100, 4200)
#: Close codes after which the client reconnects at once.
RECONNECT_AT_ONCE = range(4200, 4300)

CLOSE_NORMAL = 1000
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006

Handler = t.Callable[[t.Any], t.Any]
Params = t.Mapping[str, t.Any] | t.Callable[[], t.Mapping[str, t.Any]] | None

_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}
_PING = "hb-"


def _websocket_module() -> t.Any:
    """websocket-client, imported only when a client connects: the server side
    of flask_realtime does not need it."""
    try:
        import websocket
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "flask_realtime.client needs the websocket-client package:"
            " pip install flask_realtime[client]"
        ) from exc
    return websocket


# -- errors ----------------------------------------------------------------------


class RealtimeError(Exception):
    """Base class of the client's errors."""


class ConnectError(RealtimeError):
    """The WebSocket could not be opened (network error or refused handshake).

    ``status`` is the HTTP status of a refused handshake, else None.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConnectionClosed(RealtimeError):
    """The connection ended and the client will not reconnect.

    ``code`` is the WebSocket close code, e.g. 4001 when the server refused to
    authenticate the connection.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        text = f"the connection was closed with code {code}"
        if reason:
            text += f" ({reason})"
        super().__init__(text)
        self.code = code
        self.reason = reason


class NotConnected(RealtimeError):
    """A message could not be sent: no connection is open (yet, or any more)."""


class ServerError(RealtimeError):
    """The server answered a request with an ``error`` message."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        channel: str | None = None,
        data: t.Mapping[str, t.Any] | None = None,
    ) -> None:
        where = f" on {channel!r}" if channel else ""
        super().__init__(f"server error {code}{where}: {message}")
        self.code = code
        self.message = message
        self.channel = channel
        self.data = dict(data or {})


class SubscriptionError(ServerError):
    """The server refused a subscription (``code`` 401, 403, 400, ...)."""


class RealtimeTimeout(RealtimeError, TimeoutError):
    """What was awaited did not happen in time."""


# -- events: callbacks and a mailbox ------------------------------------------------


class _Emitter:
    """Callbacks per event name, plus a bounded mailbox for :meth:`wait_for`.

    The mailbox keeps every event in arrival order, whether or not callbacks
    took it, so a test can trigger something and then wait without a race.
    """

    def __init__(self, cond: threading.Condition, buffer_size: int) -> None:
        self._cond = cond
        self._handlers: dict[str, list[Handler]] = {}
        self._mailbox: collections.deque[tuple[str, t.Any]] = collections.deque(
            maxlen=buffer_size
        )

    def on(self, event: str, fn: Handler | None = None) -> t.Any:
        """Call ``fn(data)`` for each ``event``; usable as a decorator."""

        def register(handler: Handler) -> Handler:
            with self._cond:
                self._handlers.setdefault(event, []).append(handler)
            return handler

        return register if fn is None else register(fn)

    def off(self, event: str | None = None, fn: Handler | None = None) -> None:
        """Remove ``fn`` from ``event``; every handler of ``event`` without
        ``fn``; every handler of every event without arguments."""
        with self._cond:
            if event is None:
                self._handlers.clear()
            elif fn is None:
                self._handlers.pop(event, None)
            else:
                remaining = [h for h in self._handlers.get(event, []) if h != fn]
                if remaining:
                    self._handlers[event] = remaining
                else:
                    self._handlers.pop(event, None)

    def wait_for(self, event: str, timeout: float = 10.0) -> t.Any:
        """The data of the oldest unclaimed ``event``, waiting up to ``timeout``.

        Each event is returned once. Raises :class:`RealtimeTimeout`, or
        :class:`ConnectionClosed` once nothing more can arrive. From a
        callback only ``timeout=0`` (look, don't wait) is allowed.
        """
        if timeout > 0:
            self._forbid_in_reader("wait_for()")
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index, (name, data) in enumerate(self._mailbox):
                    if name == event:
                        del self._mailbox[index]
                        return data
                self._raise_if_finished()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [name for name, _ in self._mailbox][-10:]
                    raise RealtimeTimeout(
                        f"no {event!r} event within {timeout:g} s"
                        + (f" (unclaimed meanwhile: {seen})" if seen else "")
                    )
                self._cond.wait(remaining)

    def clear(self) -> None:
        """Forget the events nobody claimed with :meth:`wait_for`."""
        with self._cond:
            self._mailbox.clear()

    def _raise_if_finished(self) -> None:
        raise NotImplementedError

    def _forbid_in_reader(self, what: str) -> None:
        raise NotImplementedError

    def _emit(self, event: str, data: t.Any, *, buffer: bool = True) -> None:
        with self._cond:
            if buffer:
                self._mailbox.append((event, data))
                self._cond.notify_all()
            handlers = list(self._handlers.get(event, ()))
        for handler in handlers:
            try:
                handler(data)
            except Exception:
                logger.exception(
                    "%r: the handler %r of %r raised", self, handler, event
                )


# -- channels --------------------------------------------------------------------


class Channel(_Emitter):
    """A subscription; made by :meth:`RealtimeClient.subscribe`.

    Events: the channel's own events by name, ``presence.join`` and
    ``presence.leave`` on presence channels, and ``subscribed`` (each
    resubscription after a reconnect, with the reply's data) and ``error``
    (a refused resubscription or client event) from the client.
    """

    def __init__(self, client: RealtimeClient, name: str, buffer_size: int) -> None:
        super().__init__(client._cond, buffer_size)
        self.client = client
        self.name = name
        #: "pending", "subscribed", "refused" or "unsubscribed".
        self.state = "pending"
        #: The ``data`` of the last ``subscribed`` reply.
        self.subscribed_data: t.Any = None
        self.error: SubscriptionError | None = None
        self._awaited = False  # a blocking subscribe() takes the first reply
        self._members: dict[str, dict[str, t.Any]] = {}

    def __repr__(self) -> str:
        return f"<Channel {self.name!r} {self.state}>"

    @property
    def is_presence(self) -> bool:
        return self.name.startswith(("presence-", "presence."))

    @property
    def members(self) -> list[dict[str, t.Any]]:
        """The presence members, one dict per user (``user_id``, ``user_info``,
        ...), kept current from the subscribe reply and join/leave events."""
        with self._cond:
            return [dict(member) for member in self._members.values()]

    def send(self, event: str, data: t.Any = None) -> None:
        """Send a client event on this channel (no reply when accepted; a
        refusal arrives as an ``error`` event). Raises :class:`NotConnected`
        while the client is reconnecting."""
        self.client._send(
            {"type": "event", "channel": self.name, "event": event, "data": data}
        )

    def unsubscribe(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """Leave the channel; it will not be resubscribed after reconnects."""
        self.client._unsubscribe(self, wait=wait, timeout=timeout)

    def _raise_if_finished(self) -> None:
        if self.state == "refused" and self.error is not None:
            raise self.error
        if self.state == "unsubscribed":
            raise RealtimeError(f"unsubscribed from {self.name!r}")
        self.client._raise_if_finished()

    def _forbid_in_reader(self, what: str) -> None:
        self.client._forbid_in_reader(what)

    def _on_subscribed(self, data: t.Any) -> None:
        with self._cond:
            self.state = "subscribed"
            self.subscribed_data = data
            self.error = None
            if self.is_presence and isinstance(data, dict):
                self._members = {
                    str(member.get("user_id")): dict(member)
                    for member in data.get("members") or []
                    if isinstance(member, dict)
                }
            awaited, self._awaited = self._awaited, False
            self._cond.notify_all()
        self._emit("subscribed", data, buffer=not awaited)

    def _on_refused(self, error: SubscriptionError) -> bool:
        """Record a refusal; True if a blocking subscribe() will raise it."""
        with self._cond:
            self.state = "refused"
            self.error = error
            awaited, self._awaited = self._awaited, False
            self._cond.notify_all()
        if not awaited:
            self._emit("error", error.data)
        return awaited

    def _on_event(self, event: str, data: t.Any) -> None:
        if self.is_presence and isinstance(data, dict) and "user_id" in data:
            key = str(data["user_id"])
            with self._cond:
                if event == "presence.join":
                    self._members[key] = dict(data)
                elif event == "presence.leave":
                    self._members.pop(key, None)
        self._emit(event, data)


class _Pending:
    __slots__ = ("reply", "closed")

    def __init__(self) -> None:
        self.reply: dict[str, t.Any] | None = None
        self.closed: ConnectionClosed | None = None


# -- the client ------------------------------------------------------------------


class RealtimeClient(_Emitter):
    """One logical connection to a flask_realtime server, kept open.

    ``url`` is the server's base address (``ws://``, ``wss://``, ``http://``
    or ``https://``; the last two map to the first two); the endpoint is
    ``{url}{prefix}/ws?{params}``. ``params`` and ``headers`` may be callables,
    called again for every reconnection (fresh tokens). Client events:
    ``connected`` (the ``connected`` data), ``disconnected`` (``code``,
    ``reason``, ``reconnect``), ``reconnecting`` (``attempt``, ``delay``),
    ``error`` (an unsolicited server error's data) and every direct message's
    event name.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "/realtime",
        params: Params = None,
        headers: Params = None,
        heartbeat_timeout: float | None = None,
        ping_interval: float | None = None,
        reconnect: bool = True,
        reconnect_delay: float = 0.5,
        max_reconnect_delay: float = 30.0,
        max_reconnect_attempts: int | None = None,
        connect_timeout: float = 10.0,
        timeout: float = 10.0,
        origin: str | None = None,
        sslopt: t.Mapping[str, t.Any] | None = None,
        buffer_size: int = 1000,
    ) -> None:
        self._cond = threading.Condition(threading.RLock())
        super().__init__(self._cond, buffer_size)
        self.base_url = _websocket_base(url)
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.params = params
        self.headers = headers
        #: Seconds to wait for any frame after a ping; None: one heartbeat.
        self.heartbeat_timeout = heartbeat_timeout
        #: Seconds between pings; None: the server's ``heartbeat``.
        self.ping_interval = ping_interval
        self.reconnect = reconnect
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.max_reconnect_attempts = max_reconnect_attempts
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.origin = origin
        self.sslopt = dict(sslopt or {})
        self.buffer_size = buffer_size
        #: The server's id for the current connection (None while disconnected).
        self.connection_id: str | None = None
        #: The ``data`` of the last ``connected`` message.
        self.welcome: dict[str, t.Any] | None = None
        #: Handshakes tried after the first connection (for logs and tests).
        self.reconnect_attempts = 0
        self._channels: dict[str, Channel] = {}
        self._pending: dict[t.Any, _Pending] = {}
        self._subscribe_ids: dict[int, str] = {}
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._ws: t.Any = None
        self._thread: threading.Thread | None = None
        self._reader_ident: int | None = None
        self._stop = threading.Event()
        self._closing = False
        self._closed: ConnectionClosed | None = None

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<RealtimeClient {self.base_url}{self.prefix} {state}>"

    def __enter__(self) -> RealtimeClient:
        if not self.connected:
            self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.disconnect()

    # -- state -------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The WebSocket URL, with the current ``params``."""
        params = self.params() if callable(self.params) else self.params
        url = f"{self.base_url}{self.prefix}/ws"
        if params:
            url += "?" + urllib.parse.urlencode(dict(params), doseq=True)
        return url

    @property
    def connected(self) -> bool:
        """True while a connection is open (False while reconnecting)."""
        return self._ws is not None

    @property
    def closed(self) -> ConnectionClosed | None:
        """Why the client stopped for good, once it has (else None)."""
        return self._closed

    @property
    def channels(self) -> dict[str, Channel]:
        """The channels the client is subscribed to (or subscribing)."""
        with self._cond:
            return dict(self._channels)

    def channel(self, name: str) -> Channel | None:
        """The channel ``name`` if subscribed, without subscribing."""
        with self._cond:
            return self._channels.get(name)

    # -- connecting --------------------------------------------------------------

    def connect(self, timeout: float | None = None) -> RealtimeClient:
        """Open the connection and start the reader thread.

        Raises :class:`ConnectError` if the server cannot be reached and
        :class:`ConnectionClosed` if it refuses (e.g. code 4001): the first
        connection is not retried, so a script learns about a wrong address or
        credentials at once. Later losses are reconnected in the background.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this client is already connected")
        self._closing = False
        self._closed = None
        self._stop = threading.Event()
        ws, welcome = self._open(self.connect_timeout if timeout is None else timeout)
        self._install(ws, welcome)
        self._thread = threading.Thread(
            target=self._run,
            args=(ws, welcome),
            name=f"flask_realtime-client-{self.connection_id}",
            daemon=True,
        )
        self._thread.start()
        return self

    def disconnect(self, timeout: float = 5.0) -> None:
        """Close the connection for good (code 1000) and stop the reader."""
        with self._send_lock:
            self._closing = True
            self._stop.set()
            ws = self._ws
            if ws is not None:
                try:
                    ws.send_close(CLOSE_NORMAL, b"client disconnected")
                except Exception:
                    _hard_close(ws)
        thread = self._thread
        if thread is None:
            self._finish(CLOSE_NORMAL, "client disconnected")
            return
        if threading.get_ident() == self._reader_ident:
            return  # called from a callback: the reader stops after it
        thread.join(timeout)
        if thread.is_alive():  # the server did not answer the close frame
            current = self._ws
            if current is not None:
                _hard_close(current)
            thread.join(timeout)

    close = disconnect

    def _open(self, timeout: float) -> tuple[t.Any, dict[str, t.Any]]:
        """One handshake: a WebSocket that has received ``connected``."""
        websocket = _websocket_module()
        url = self.endpoint
        headers = self.headers() if callable(self.headers) else self.headers
        try:
            ws = websocket.create_connection(
                url,
                timeout=timeout,
                header=[f"{k}: {v}" for k, v in dict(headers or {}).items()],
                origin=self.origin,
                suppress_origin=self.origin is None,  # not a browser page
                enable_multithread=True,
                sslopt=self.sslopt or None,
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
                    raise ConnectionClosed(*_parse_close(payload))
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
        return ws, data if isinstance(data, dict) else {}

    def _install(self, ws: t.Any, welcome: dict[str, t.Any]) -> None:
        """Make ``ws`` the current connection and (re)subscribe every channel,
        atomically with respect to subscribe() and sends."""
        with self._send_lock:
            with self._cond:
                self._ws = ws
                self.welcome = welcome
                self.connection_id = welcome.get("connection_id")
                channels = list(self._channels.values())
                self._cond.notify_all()
            for channel in channels:
                self._send_subscribe_locked(channel)

    # -- the reader thread -------------------------------------------------------

    def _run(self, ws: t.Any, welcome: dict[str, t.Any]) -> None:
        self._reader_ident = threading.get_ident()
        self._emit("connected", welcome, buffer=False)  # connect() returned it
        while True:
            code, reason = self._read(ws, welcome)
            self._lost(ws, code, reason)
            if self._closing:
                self._final(CLOSE_NORMAL, "client disconnected")
                return
            again = self.reconnect and code not in NO_RECONNECT
            self._emit(
                "disconnected", {"code": code, "reason": reason, "reconnect": again}
            )
            if not again:
                self._finish(code, reason)
                return
            opened = self._reconnect_loop(code)
            if opened is None:
                return
            ws, welcome = opened
            self._install(ws, welcome)
            self._emit("connected", welcome)

    def _read(self, ws: t.Any, welcome: dict[str, t.Any]) -> tuple[int, str]:
        """Dispatch messages until the connection ends; its close code and reason.

        Pings every ``ping_interval``; when nothing at all arrives within
        ``heartbeat_timeout`` of a ping the link is dead (a frozen server or
        a cable pulled without a FIN) and the socket is dropped.
        """
        websocket = _websocket_module()
        heartbeat = _positive(welcome.get("heartbeat"), 25.0)
        interval = self.ping_interval or heartbeat
        patience = self.heartbeat_timeout or heartbeat
        next_ping = time.monotonic() + interval
        answer_by: float | None = None
        while True:
            now = time.monotonic()
            if answer_by is not None and now >= answer_by:
                _hard_close(ws)
                return CLOSE_ABNORMAL, f"no answer to a ping within {patience:g} s"
            if now >= next_ping:
                try:
                    with self._send_lock:
                        ping = {"type": "ping", "id": _PING + str(next(self._ids))}
                        ws.send(json.dumps(ping))
                except (websocket.WebSocketException, OSError) as exc:
                    return CLOSE_ABNORMAL, f"ping failed: {exc}"
                next_ping = now + interval
                if answer_by is None:
                    answer_by = now + patience
            wake = next_ping if answer_by is None else min(next_ping, answer_by)
            try:
                ws.settimeout(max(0.01, wake - now))
                opcode, payload = ws.recv_data(control_frame=True)
            except (websocket.WebSocketTimeoutException, TimeoutError):
                continue
            except (websocket.WebSocketException, OSError, ValueError) as exc:
                return CLOSE_ABNORMAL, f"connection lost: {exc}"
            answer_by = None  # any frame shows the link is alive
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return _parse_close(payload)
            if opcode == websocket.ABNF.OPCODE_TEXT:
                try:
                    message = json.loads(payload)
                except ValueError:
                    logger.warning("%r: the server sent non-JSON %r", self, payload)
                    continue
                if isinstance(message, dict):
                    self._dispatch(message)

    def _lost(self, ws: t.Any, code: int, reason: str) -> None:
        """Forget the connection that ended: channels wait for a resubscribe,
        requests in flight fail."""
        closed = ConnectionClosed(code, reason)
        with self._send_lock:
            with self._cond:
                self._ws = None
                self.connection_id = None
                for channel in self._channels.values():
                    if channel.state == "subscribed":
                        channel.state = "pending"
                for pending in self._pending.values():
                    pending.closed = closed
                self._pending.clear()
                self._subscribe_ids.clear()
                self._cond.notify_all()
        ws.shutdown()

    def _reconnect_loop(self, code: int) -> tuple[t.Any, dict[str, t.Any]] | None:
        """Handshake until one succeeds (None: stopped or gave up for good)."""
        attempt = 0
        while True:
            if self._closing:
                self._final(CLOSE_NORMAL, "client disconnected")
                return None
            limit = self.max_reconnect_attempts
            if limit is not None and attempt >= limit:
                self._final(code, f"gave up after {attempt} reconnection attempts")
                return None
            if attempt == 0 and code in RECONNECT_AT_ONCE:
                delay = 0.0
            else:
                delay = self._backoff(attempt)
            self._emit("reconnecting", {"attempt": attempt + 1, "delay": delay})
            if self._stop.wait(delay):
                continue  # disconnect() was called
            attempt += 1
            self.reconnect_attempts += 1
            try:
                ws, welcome = self._open(self.connect_timeout)
            except ConnectionClosed as exc:
                if exc.code in NO_RECONNECT:
                    self._final(exc.code, exc.reason)
                    return None
                code = exc.code
                continue
            except ConnectError as exc:
                logger.info(
                    "%r: reconnection attempt %d failed: %s", self, attempt, exc
                )
                continue
            if self._closing:
                ws.close(timeout=1)
                continue
            return ws, welcome

    def _backoff(self, attempt: int) -> float:
        """Exponential, capped, with jitter so that clients of a restarted
        server do not all come back in the same instant."""
        ceiling = min(self.max_reconnect_delay, self.reconnect_delay * 2**attempt)
        return ceiling * random.uniform(0.5, 1.0)

    def _final(self, code: int, reason: str) -> None:
        self._emit("disconnected", {"code": code, "reason": reason, "reconnect": False})
        self._finish(code, reason)

    def _finish(self, code: int, reason: str) -> None:
        with self._cond:
            if self._closed is None:
                self._closed = ConnectionClosed(code, reason)
            self._cond.notify_all()

    def _raise_if_finished(self) -> None:
        if self._closed is not None:
            raise self._closed

    # -- incoming messages -------------------------------------------------------

    def _dispatch(self, message: dict[str, t.Any]) -> None:
        kind = message.get("type")
        name = message.get("channel")
        data = message.get("data")
        with self._cond:
            channel = self._channels.get(name) if isinstance(name, str) else None
        if kind == "event":
            event = message.get("event")
            if not isinstance(event, str):
                return
            if name is None:
                self._emit(event, data)
            elif channel is not None:
                channel._on_event(event, data)
        elif kind == "subscribed":
            with self._cond:
                self._subscribe_ids.pop(message.get("id"), None)
            if channel is not None:
                channel._on_subscribed(data)
        elif kind in ("unsubscribed", "pong"):
            self._resolve(message)
        elif kind == "error":
            self._on_error(message, channel)

    def _resolve(self, message: dict[str, t.Any]) -> bool:
        with self._cond:
            pending = self._pending.pop(message.get("id"), None)
            if pending is None:
                return False
            pending.reply = message
            self._cond.notify_all()
            return True

    def _on_error(self, message: dict[str, t.Any], channel: Channel | None) -> None:
        data = message.get("data")
        data = dict(data) if isinstance(data, dict) else {}
        for key in ("channel", "id"):
            if key in message:
                data.setdefault(key, message[key])
        if self._resolve(message):
            return
        with self._cond:
            subscribe_for = self._subscribe_ids.pop(message.get("id"), None)
            if subscribe_for is not None and channel is not None:
                if self._channels.get(channel.name) is channel:
                    del self._channels[channel.name]
        if subscribe_for is not None and channel is not None:
            error = SubscriptionError(
                _int(data.get("code")),
                str(data.get("message", "")),
                channel=channel.name,
                data=data,
            )
            if channel._on_refused(error):
                return
        elif channel is not None:
            channel._emit("error", data)
        self._emit("error", data)

    # -- requests ----------------------------------------------------------------

    def subscribe(
        self, name: str, *, wait: bool = True, timeout: float | None = None
    ) -> Channel:
        """Subscribe to ``name``; the :class:`Channel`.

        With ``wait`` (the default) it returns once the server said
        ``subscribed``, and raises :class:`SubscriptionError` (``.code``,
        ``.message``) if it refused. A subscription made while reconnecting is
        sent when the connection is back. Subscribing twice returns the same
        channel.
        """
        if wait:
            self._forbid_in_reader("subscribe(wait=True)")
            if self._thread is None:
                raise NotConnected("call connect() before subscribe(wait=True)")
        with self._send_lock:
            with self._cond:
                channel = self._channels.get(name)
                created = channel is None
                if channel is None:
                    channel = Channel(self, name, self.buffer_size)
                    channel._awaited = wait
                    self._channels[name] = channel
            if created and self._ws is not None:
                self._send_subscribe_locked(channel)
        if wait:
            self._wait_subscribed(channel, self._timeout(timeout))
        return channel

    def _send_subscribe_locked(self, channel: Channel) -> None:
        """Send a subscribe (the caller holds the send lock)."""
        request_id = next(self._ids)
        with self._cond:
            self._subscribe_ids[request_id] = channel.name
        message = {"type": "subscribe", "channel": channel.name, "id": request_id}
        try:
            self._ws.send(json.dumps(message))
        except Exception as exc:  # the reader notices and resubscribes later
            logger.info("%r: subscribe %r not sent: %s", self, channel.name, exc)

    def _wait_subscribed(self, channel: Channel, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while channel.state == "pending":
                self._raise_if_finished()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    channel._awaited = False
                    raise RealtimeTimeout(
                        f"no answer to the subscription to {channel.name!r}"
                        f" within {timeout:g} s"
                    )
                self._cond.wait(remaining)
            if channel.state == "refused" and channel.error is not None:
                raise channel.error
            if channel.state == "unsubscribed":
                raise RealtimeError(f"unsubscribed from {channel.name!r} meanwhile")

    def _unsubscribe(
        self, channel: Channel, *, wait: bool, timeout: float | None
    ) -> None:
        with self._cond:
            if self._channels.get(channel.name) is channel:
                del self._channels[channel.name]
            was_subscribed = channel.state in ("subscribed", "pending")
            channel.state = "unsubscribed"
            self._cond.notify_all()
        if not was_subscribed or not self.connected:
            return
        message = {"type": "unsubscribe", "channel": channel.name}
        try:
            if wait:
                self._forbid_in_reader("unsubscribe(wait=True)")
                self._request(message, timeout)
            else:
                self._send(message)
        except (ConnectionClosed, NotConnected):
            pass  # the subscription ended with the connection
        except ServerError as exc:
            if exc.code != 404:  # 404: not subscribed, which is what we want
                raise

    def ping(self, timeout: float | None = None) -> float:
        """Round trip to the server and back, in seconds."""
        self._forbid_in_reader("ping()")
        started = time.monotonic()
        self._request({"type": "ping"}, timeout)
        return time.monotonic() - started

    def _request(
        self, message: dict[str, t.Any], timeout: float | None
    ) -> dict[str, t.Any]:
        """Send ``message`` with a fresh id and wait for the reply carrying it."""
        timeout = self._timeout(timeout)
        request_id = next(self._ids)
        pending = _Pending()
        with self._cond:
            self._pending[request_id] = pending
        try:
            self._send({**message, "id": request_id})
            deadline = time.monotonic() + timeout
            with self._cond:
                while pending.reply is None:
                    if pending.closed is not None:
                        raise pending.closed
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise RealtimeTimeout(
                            f"no answer to {message.get('type')!r} within {timeout:g} s"
                        )
                    self._cond.wait(remaining)
        finally:
            with self._cond:
                self._pending.pop(request_id, None)
        reply = pending.reply
        if reply.get("type") == "error":
            data = reply.get("data") if isinstance(reply.get("data"), dict) else {}
            raise ServerError(
                _int(data.get("code")),
                str(data.get("message", "")),
                channel=reply.get("channel"),
                data=data,
            )
        return reply

    def _send(self, message: dict[str, t.Any]) -> None:
        """Send one message; thread-safe (one lock for all senders)."""
        text = json.dumps(message, separators=(",", ":"))
        with self._send_lock:
            ws = self._ws
            if ws is None:
                raise NotConnected(
                    "not connected"
                    + (" (reconnecting)" if self._closed is None else "")
                )
            try:
                ws.send(text)
            except Exception as exc:
                raise NotConnected(f"the message could not be sent: {exc}") from exc

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def _forbid_in_reader(self, what: str) -> None:
        if threading.get_ident() == self._reader_ident:
            raise RuntimeError(
                f"{what} would wait for the reader thread it runs on; from a"
                " callback use subscribe(wait=False) / unsubscribe(wait=False)"
                " and wait_for(..., timeout=0)"
            )


# -- helpers ---------------------------------------------------------------------


def _websocket_base(url: str) -> str:
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


def _parse_close(payload: bytes | str | None) -> tuple[int, str]:
    if isinstance(payload, str):
        payload = payload.encode()
    if not payload or len(payload) < 2:
        return CLOSE_NO_STATUS, ""
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")


def _positive(value: t.Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default


def _int(value: t.Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _hard_close(ws: t.Any) -> None:
    """Shut the socket down under the reader: its recv() returns at once.
    (``WebSocket.abort()`` does nothing once a close frame was sent.)"""
    sock = getattr(ws, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
