"""What SSE and long-polling share: HTTP through httpx, ``POST /send`` and
``POST /close``, and a queue of frames the reader takes as from a WebSocket.

Over HTTP the server's messages come on one path (the event stream, the
polls) and the replies to the client's on another (the answer to each
``POST /send``). A background thread per link reads the first and a send
puts the answer of the second in the same queue, so that the reader sees
one stream of frames, as on a WebSocket. Sends are made by the caller's
thread under the client's send lock: one at a time, in order, which the
server needs (a subscribe before the events sent on it).

httpx is imported when a client first uses one of these transports: the
WebSocket-only client does not need it.
"""

from __future__ import annotations

import json
import queue
import threading
import typing as t
import urllib.parse

from .. import protocol
from .errors import ConnectError, ConnectionClosed
from .events import logger
from .websocket import CLOSE, TEXT, LinkError

if t.TYPE_CHECKING:
    import httpx

#: The server's paths under the prefix, as the JavaScript client names them.
PATHS = {"sse": "/sse", "longpolling": "/poll", "send": "/send", "close": "/close"}
#: The frame kind that says the link is gone (never returned by ``receive``).
LOST = "lost"
#: Seconds a goodbye may take: it is a courtesy, the server times out anyway.
GOODBYE_TIMEOUT = 2.0

_SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def httpx_module() -> t.Any:
    """httpx, imported on first use, with the install hint."""
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "the sse and longpolling transports need httpx and httpx-sse:"
            " pip install flask_realtime[client]"
        ) from exc
    return httpx


def http_base(base: str) -> str:
    """A checked WebSocket base address with the matching HTTP scheme."""
    parts = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit((_SCHEMES[parts.scheme], *parts[1:]))


def verify_option(sslopt: t.Mapping[str, t.Any]) -> t.Any:
    """httpx's ``verify`` for websocket-client's ``sslopt``: off with
    ``cert_reqs=CERT_NONE``, a CA bundle with ``ca_certs``, else on."""
    import ssl

    if sslopt.get("cert_reqs") == ssl.CERT_NONE:
        return False
    return sslopt.get("ca_certs") or True


class HttpOptions:
    """Where and how a link's requests go; built per connection attempt, so
    that ``params`` and ``headers`` callables are fresh each time."""

    def __init__(
        self,
        base: str,
        *,
        params: t.Mapping[str, t.Any] | None,
        headers: t.Mapping[str, t.Any] | None,
        origin: str | None,
        verify: t.Any,
        timeout: float,
        send_timeout: float,
    ) -> None:
        #: ``http(s)://host[/path]{prefix}``: the paths follow it.
        self.base = base
        #: Query parameters of the request that opens the connection only
        #: (as in the JavaScript client: not of /send, /close or later polls).
        self.params = dict(params or {})
        self.headers = {str(k): str(v) for k, v in dict(headers or {}).items()}
        if origin is not None:
            self.headers["Origin"] = origin
        self.verify = verify
        #: Seconds to connect, and for the opening request's answer.
        self.timeout = timeout
        #: Seconds a ``POST /send`` may wait for its answer, which comes
        #: once the app's handler has run: the client's ``timeout``.
        self.send_timeout = send_timeout

    def url(self, kind: str) -> str:
        return self.base + PATHS[kind]

    def client(self) -> httpx.Client:
        """One httpx client (connection pool) per link, closed with it."""
        httpx = httpx_module()
        return httpx.Client(
            headers=self.headers, verify=self.verify, timeout=self.timeout
        )


def refusal(status: int, body: bytes, url: str) -> Exception:
    """The error of an opening request the server did not answer with a
    connection: 401 and 403 are final refusals (as WebSocket's 4001 and
    4003); anything else (404 transport disabled, 503 shutting down, ...)
    lets the client try its next transport."""
    try:
        error = json.loads(body)["error"]
        message = str(error["message"])
    except (ValueError, KeyError, TypeError):
        message = body[:200].decode("utf-8", "replace")
    if status == 401:
        return ConnectionClosed(protocol.CLOSE_AUTH_FAILED, message)
    if status == 403:
        return ConnectionClosed(protocol.CLOSE_ORIGIN_NOT_ALLOWED, message)
    return ConnectError(f"{url} answered HTTP {status}: {message}", status=status)


def welcome_of(message: t.Any, url: str) -> dict[str, t.Any]:
    """The ``connected`` data of the first message, which must carry the
    connection's id and token."""
    data = message.get("data") if isinstance(message, dict) else None
    if (
        not isinstance(message, dict)
        or message.get("type") != "connected"
        or not isinstance(data, dict)
        or not isinstance(data.get("connection_id"), str)
        or not isinstance(data.get("token"), str)
    ):
        raise ConnectError(f"expected 'connected' with a token first from {url}")
    return data


class HttpLink:
    """An SSE or long-poll connection past its ``connected`` message.

    Subclasses run :meth:`_feed` on a thread of their own: it reads the
    server's messages and hands each to :meth:`_deliver`, and returns or
    raises when the stream or the polls end.
    """

    transport = "http"

    def __init__(self, http: httpx.Client, options: HttpOptions) -> None:
        self._http = http
        self._options = options
        #: The connection's id and secret, from its ``connected`` message.
        self.connection_id: str | None = None
        self.token: str | None = None
        self._frames: queue.Queue[tuple[str, t.Any]] = queue.Queue()
        #: Set once the link is closed or lost: the feeder stops.
        self._done = threading.Event()
        self._goodbye_lock = threading.Lock()
        self._said_goodbye = False
        self._goodbye_over = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._run,
            name=f"flask_realtime-{self.transport}",
            daemon=True,
        )
        self._thread.start()

    def _run(self) -> None:
        try:
            self._feed()
            self._lose(f"the {self.transport} connection ended")
        except Exception as exc:
            self._lose(f"{self.transport} failed: {exc}")
        finally:
            # The goodbye (if one is coming) uses this client: wait for it.
            self._goodbye_over.wait(GOODBYE_TIMEOUT + 1)
            self._http.close()

    def _feed(self) -> None:
        raise NotImplementedError

    def _welcome(self, message: t.Any, url: str) -> dict[str, t.Any]:
        """Take the connection's id and token from its first message."""
        data = welcome_of(message, url)
        self.connection_id = data["connection_id"]
        self.token = data["token"]
        return data

    def _deliver(self, payload: bytes | str) -> None:
        if not self._done.is_set():
            self._frames.put((TEXT, payload))

    def _lose(self, reason: str) -> None:
        """The link is gone: the reader's next ``receive`` raises."""
        if not self._done.is_set():
            self._done.set()
            self._frames.put((LOST, reason))

    # -- the link interface (see websocket.Link) ---------------------------------

    def send(self, text: str) -> None:
        """``POST /send``; its reply envelopes go to the reader's queue.

        Raises :class:`LinkError` (and drops the link, so that the client
        reconnects and resubscribes) when the request fails or the server no
        longer knows the connection. Another refusal (413, 400, ...) comes
        back as an ``error`` envelope for the message, as on a WebSocket.
        """
        if self._done.is_set():
            raise LinkError("the connection is closed")
        body = b'{"connection_id":%s,"token":%s,"message":%s}' % (
            json.dumps(self.connection_id).encode(),
            json.dumps(self.token).encode(),
            text.encode(),
        )
        httpx = httpx_module()
        try:
            response = self._http.post(
                self._options.url("send"),
                content=body,
                headers={"Content-Type": "application/json"},
                timeout=httpx.Timeout(
                    self._options.timeout, read=self._options.send_timeout
                ),
            )
        except (httpx.HTTPError, RuntimeError) as exc:  # RuntimeError: closed
            self._lose(f"send failed: {exc}")
            raise LinkError(f"send failed: {exc}") from exc
        replies = _replies(response.content)
        for reply in replies:
            self._deliver(json.dumps(reply))
        status = response.status_code
        if response.is_success or replies:
            return
        if status in (401, 403, 404):
            reason = f"connection expired (HTTP {status})"
            self._lose(reason)
            raise LinkError(reason)
        self._deliver(json.dumps(_failure(text, status, response.content)))

    def receive(self, timeout: float) -> tuple[str, bytes] | None:
        """The next frame; None after ``timeout``; :class:`LinkError` once
        the link is gone."""
        try:
            kind, payload = self._frames.get(timeout=timeout)
        except queue.Empty:
            return None
        if kind == LOST:
            self._frames.put((kind, payload))  # for any later call too
            raise LinkError(payload)
        return kind, payload

    def send_close(self, code: int, reason: bytes) -> None:
        """Say goodbye (``POST /close``) and end the link; the reader then
        gets a close frame with ``code``."""
        self._goodbye()
        if not self._done.is_set():
            self._done.set()
            self._frames.put((CLOSE, code.to_bytes(2, "big") + reason))

    def close(self, timeout: float) -> None:
        self.send_close(protocol.CLOSE_NORMAL, b"")

    def shutdown(self) -> None:
        """End the link; the goodbye goes out on a thread of its own (the
        server may be unreachable: the reader does not wait for it)."""
        self._done.set()
        threading.Thread(target=self._goodbye, daemon=True).start()

    def hard_close(self) -> None:
        self._lose("dropped by the client")

    def _goodbye(self) -> None:
        """``POST /close``, once: without it the server learns that the
        client left only when a write fails or a poll is missed, and the
        other members of a presence channel with it."""
        with self._goodbye_lock:
            if self._said_goodbye:
                return
            self._said_goodbye = True
        if self.token is None:  # never opened
            self._goodbye_over.set()
            return
        try:
            body = json.dumps(
                {"connection_id": self.connection_id, "token": self.token}
            )
            self._http.post(
                self._options.url("close"),
                content=body.encode(),
                headers={"Content-Type": "application/json"},
                timeout=GOODBYE_TIMEOUT,
            )
        except Exception as exc:  # best effort
            logger.debug("goodbye of %s failed: %s", self.connection_id, exc)
        finally:
            self._goodbye_over.set()


def _replies(content: bytes) -> list[dict[str, t.Any]]:
    """The reply envelopes of a ``POST /send``: usually a list, possibly one
    object, whatever the status."""
    try:
        body = json.loads(content)
    except ValueError:
        return []
    if isinstance(body, dict) and "type" in body:
        body = [body]
    if not isinstance(body, list):
        return []
    return [reply for reply in body if isinstance(reply, dict)]


def _failure(text: str, status: int, content: bytes) -> dict[str, t.Any]:
    """An ``error`` envelope for a message the server refused without one
    (``{"error": {"code", "message"}}`` and an HTTP status)."""
    try:
        message = json.loads(text)
    except ValueError:
        message = {}
    try:
        error = json.loads(content)["error"]
        data = {"code": int(error["code"]), "message": str(error["message"])}
    except (ValueError, KeyError, TypeError):
        data = {"code": status, "message": f"HTTP {status}"}
    envelope: dict[str, t.Any] = {"type": "error", "data": data}
    for key in ("id", "channel"):
        if isinstance(message, dict) and key in message:
            envelope[key] = message[key]
    return envelope
