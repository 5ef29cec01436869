"""RealtimeClient: its options and state, connecting and disconnecting.

What it sends and how replies come back is in :mod:`.messages`; the reader
thread in :mod:`.reader`; reconnection in :mod:`.reconnect`; the choice of
transport in :mod:`.transports`.
"""

from __future__ import annotations

import itertools
import threading
import typing as t
import urllib.parse

from .. import protocol
from .channel import Channel
from .errors import ConnectionClosed
from .events import Emitter
from .messages import Messages, Pending
from .reader import Reader
from .reconnect import Reconnection
from .transports import TRANSPORTS, candidates, check_transports, open_first
from .websocket import Link, Opened, WebSocketLink, websocket_base

Params = t.Mapping[str, t.Any] | t.Callable[[], t.Mapping[str, t.Any]] | None


class RealtimeClient(Messages, Reader, Reconnection, Emitter):
    """One logical connection to a flask_realtime server, kept open.

    ``url`` is the server's base address (``ws://``, ``wss://``, ``http://``
    or ``https://``; the last two map to the first two); the endpoint is
    ``{url}{prefix}/ws?{params}``. ``transports`` lists those to try, in
    order: ``"websocket"`` (the default), ``"sse"`` and ``"longpolling"``
    (``{url}{prefix}/sse`` and ``/poll`` over HTTP, client messages by
    ``POST /send``); a reconnection tries the one that worked last first,
    and channels recover across a change. ``params`` and ``headers`` may be callables,
    called again for every reconnection (fresh tokens). Client events:
    ``connected`` (the ``connected`` data), ``disconnected`` (``code``,
    ``reason``, ``reconnect``), ``reconnecting`` (``attempt``, ``delay``),
    ``error`` (an unsolicited server error's data), ``subscribed`` and
    ``unsubscribed`` (a :class:`Channel` the server subscribed this
    connection to, or out of: ``realtime.subscribe()``) and every direct
    message's event name.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = protocol.DEFAULT_URL_PREFIX,
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
        transports: t.Sequence[str] = TRANSPORTS[:1],
    ) -> None:
        self._cond = threading.Condition(threading.RLock())
        super().__init__(self._cond, buffer_size)
        self.base_url = websocket_base(url)
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.params = params
        self.headers = headers
        #: Seconds to wait for any frame after a ping; None: one heartbeat.
        self.heartbeat_timeout = heartbeat_timeout
        #: Seconds between pings; None: the server's ``heartbeat``.
        self.ping_interval = ping_interval
        #: Reconnect after a lost connection (never after a 4000-4099 close).
        self.reconnect = reconnect
        #: The first backoff in seconds; doubled per attempt, with jitter.
        self.reconnect_delay = reconnect_delay
        #: The longest backoff in seconds.
        self.max_reconnect_delay = max_reconnect_delay
        #: Give up after this many attempts in a row; None: never.
        self.max_reconnect_attempts = max_reconnect_attempts
        #: Seconds a handshake may take, up to the ``connected`` message.
        self.connect_timeout = connect_timeout
        #: The default timeout of the blocking calls (subscribe, ping ...).
        self.timeout = timeout
        #: The ``Origin`` header of the handshake (None: none sent).
        self.origin = origin
        #: TLS options for ``wss://``, as websocket-client takes them.
        self.sslopt = dict(sslopt or {})
        #: Events each mailbox keeps for ``wait_for`` (the oldest go first).
        self.buffer_size = buffer_size
        #: The transports to try, in order (see the class docstring).
        self.transports = check_transports(transports)
        #: The name of the transport in use (None while disconnected).
        self.transport: str | None = None
        self._preferred: str | None = None
        #: The server's id for the current connection (None while disconnected).
        self.connection_id: str | None = None
        #: The ``data`` of the last ``connected`` message.
        self.welcome: dict[str, t.Any] | None = None
        #: Handshakes tried after the first connection (for logs and tests).
        self.reconnect_attempts = 0
        self._channels: dict[str, Channel] = {}
        self._pending: dict[t.Any, Pending] = {}
        self._subscribe_ids: dict[int, str] = {}
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._ws: Link | None = None
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
        url = f"{self.base_url}{self.prefix}{protocol.DEFAULT_WEBSOCKET_PATH}"
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

    def socket_id_headers(self) -> dict[str, str]:
        """``{"X-Socket-ID": connection_id}`` while connected, else ``{}``:
        send it with a request whose view broadcasts with
        ``exclude=socket_id()``, and this connection is left out."""
        connection_id = self.connection_id
        return {"X-Socket-ID": connection_id} if connection_id else {}

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
                    ws.send_close(protocol.CLOSE_NORMAL, b"client disconnected")
                except Exception:
                    ws.hard_close()
        thread = self._thread
        if thread is None:
            self._finish(protocol.CLOSE_NORMAL, "client disconnected")
            return
        if threading.get_ident() == self._reader_ident:
            return  # called from a callback: the reader stops after it
        thread.join(timeout)
        if thread.is_alive():  # the server did not answer the close frame
            current = self._ws
            if current is not None:
                current.hard_close()
            thread.join(timeout)

    close = disconnect

    def _open(self, timeout: float) -> Opened:
        """One connection attempt: a link that has received ``connected``,
        through the first transport that connects."""
        order = candidates(self.transports, self._preferred)
        return open_first(order, lambda name: self._open_with(name, timeout))

    def _open_with(self, transport: str, timeout: float) -> Opened:
        """One handshake with ``transport``."""
        if transport == "websocket":
            url = self.endpoint  # params() is called before headers()
            headers = self.headers() if callable(self.headers) else self.headers
            return WebSocketLink.open(
                url,
                timeout=timeout,
                headers=headers,
                origin=self.origin,
                sslopt=self.sslopt,
            )
        from .http import HttpOptions, http_base, verify_option

        params = self.params() if callable(self.params) else self.params
        headers = self.headers() if callable(self.headers) else self.headers
        options = HttpOptions(
            http_base(self.base_url) + self.prefix,
            params=params,
            headers=headers,
            origin=self.origin,
            verify=verify_option(self.sslopt),
            timeout=timeout,
            send_timeout=self.timeout,
        )
        if transport == "sse":
            from .sse import SSELink

            return SSELink.open(options)
        from .longpoll import LongPollLink

        return LongPollLink.open(options)

    def _install(self, ws: Link, welcome: dict[str, t.Any]) -> None:
        """Make ``ws`` the current connection and (re)subscribe every channel,
        atomically with respect to subscribe() and sends."""
        with self._send_lock:
            with self._cond:
                self._ws = ws
                self.transport = self._preferred = ws.transport
                self.welcome = welcome
                self.connection_id = welcome.get("connection_id")
                channels = list(self._channels.values())
                self._cond.notify_all()
            for channel in channels:
                self._send_subscribe_locked(channel)

    def _raise_if_finished(self) -> None:
        if self._closed is not None:
            raise self._closed

    def _forbid_in_reader(self, what: str) -> None:
        if threading.get_ident() == self._reader_ident:
            raise RuntimeError(
                f"{what} would wait for the reader thread it runs on; from a"
                " callback use subscribe(wait=False) / unsubscribe(wait=False)"
                " and wait_for(..., timeout=0)"
            )
