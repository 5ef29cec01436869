"""The SSE transport: ``GET /sse`` read through httpx-sse, messages by POST.

The stream opens without channels: the client subscribes through
``POST /send`` like on every transport, so that a resubscription carries
``since``. Each event's ``data`` is one envelope; the ``retry:`` block and
the keepalive comments carry none. When the stream ends the link is lost
and the client reconnects (to a new connection: the server has no resuming
of a stream, channels recover through ``since`` instead).
"""

from __future__ import annotations

import json
import queue

from .errors import ConnectError
from .http import HttpLink, HttpOptions, httpx_module, refusal
from .websocket import TEXT, Opened

#: Seconds a read of the stream may wait. The server writes a comment at
#: least every 10 s, so this only ends a stream whose path silently died.
STREAM_READ_TIMEOUT = 45.0
#: The frame kind of an opening the server refused (an exception).
_REFUSED = "refused"


class SSELink(HttpLink):
    """An open event stream and its connection's id and token."""

    transport = "sse"

    @classmethod
    def open(cls, options: HttpOptions) -> Opened:
        """Open the stream and read its ``connected`` message.

        Raises :class:`ConnectError` when the server cannot be reached or
        does not stream (the transport is disabled: 404), and
        :class:`ConnectionClosed` when it refuses the client (401, 403).
        """
        url = options.url("sse")
        link = cls(options.client(), options)
        link._start()
        try:
            kind, payload = link._frames.get(timeout=options.timeout)
        except queue.Empty:
            link.shutdown()
            raise ConnectError(
                f"no 'connected' message from {url} within {options.timeout:g} s"
            ) from None
        if kind != TEXT:
            link.shutdown()  # the feeder ends at once: nothing to say goodbye to
            if kind == _REFUSED:
                raise payload
            raise ConnectError(f"cannot connect to {url}: {payload}")
        try:
            welcome = link._welcome(json.loads(payload), url)
        except (ValueError, ConnectError):
            link.shutdown()
            raise
        return link, welcome

    def _feed(self) -> None:
        import httpx_sse

        httpx = httpx_module()
        url = self._options.url("sse")
        timeout = httpx.Timeout(self._options.timeout, read=STREAM_READ_TIMEOUT)
        with httpx_sse.connect_sse(
            self._http, "GET", url, params=self._options.params, timeout=timeout
        ) as source:
            response = source.response
            if response.status_code != 200:
                response.read()
                self._frames.put(
                    (_REFUSED, refusal(response.status_code, response.content, url))
                )
                return
            for event in source.iter_sse():
                if self._done.is_set():
                    return
                if event.data:
                    self._deliver(event.data)
