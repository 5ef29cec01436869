"""The long-polling transport: ``GET /poll`` in a loop, messages by POST.

The first poll opens the connection and is answered at once with its
``connected`` message. Each later poll carries the cursor of the last
answer, which acknowledges it (an answer lost in transit is sent again),
and waits on the server until there is something or its timeout passes.
"""

from __future__ import annotations

import json
import typing as t

from .errors import ConnectError
from .http import HttpLink, HttpOptions, httpx_module, refusal
from .websocket import Opened

#: Seconds a poll may wait for its answer: the server's timeout (30 s by
#: default, ``REALTIME_LONGPOLL_TIMEOUT``) and room for the trip.
POLL_READ_TIMEOUT = 75.0


class LongPollLink(HttpLink):
    """A long-poll connection: its id, token and cursor, and the poll loop."""

    transport = "longpolling"

    def __init__(self, *args: t.Any) -> None:
        super().__init__(*args)
        self.cursor = 0

    @classmethod
    def open(cls, options: HttpOptions) -> Opened:
        """The opening poll; raises as :meth:`SSELink.open` does."""
        httpx = httpx_module()
        url = options.url("longpolling")
        http = options.client()
        link = cls(http, options)
        try:
            try:
                response = http.get(url, params=options.params)
            except httpx.HTTPError as exc:
                raise ConnectError(f"cannot connect to {url}: {exc}") from exc
            if response.status_code != 200:
                raise refusal(response.status_code, response.content, url)
            messages = link._take(response, url)
            if not messages:
                raise ConnectError(f"expected 'connected' first from {url}")
            welcome = link._welcome(messages[0], url)
        except BaseException:
            http.close()
            raise
        for message in messages[1:]:
            link._deliver_message(message)
        link._start()
        return link, welcome

    def _take(self, response: t.Any, url: str) -> list[t.Any]:
        """A poll's messages; its cursor becomes the next poll's."""
        try:
            body = response.json()
            messages = body["messages"]
            cursor = body["cursor"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConnectError(f"unreadable poll answer from {url}: {exc}") from exc
        if not isinstance(messages, list) or not isinstance(cursor, int):
            raise ConnectError(f"unreadable poll answer from {url}")
        self.cursor = cursor
        return messages

    def _deliver_message(self, message: t.Any) -> None:
        if isinstance(message, dict):
            self._deliver(json.dumps(message))

    def _feed(self) -> None:
        httpx = httpx_module()
        url = self._options.url("longpolling")
        timeout = httpx.Timeout(self._options.timeout, read=POLL_READ_TIMEOUT)
        while not self._done.is_set():
            params = {
                **self._options.params,
                "connection_id": self.connection_id,
                "token": self.token,
                "cursor": self.cursor,
            }
            response = self._http.get(url, params=params, timeout=timeout)
            if self._done.is_set():
                return
            if response.status_code != 200:
                # 404 or 403: the connection expired or the server lost it.
                raise ConnectError(f"poll answered HTTP {response.status_code}")
            for message in self._take(response, url):
                self._deliver_message(message)
