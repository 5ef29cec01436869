"""POSTing batches: one queue and one worker per URL, off the delivery path.

Whoever reports an event (a broker reader, a client's greenlet) only appends
to a bounded deque and sets an event: it never waits for a receiver. The
worker (a greenlet under gevent, a daemon thread otherwise) waits
``batch_window`` after the first event so others share its POST, sends up to
``max_batch`` at once, and retries a failed POST with exponential backoff
until it is accepted. A receiver that is down for long costs at most
``max_queue`` events of memory per URL: past that the oldest are dropped,
counted, and the count logged.
"""

from __future__ import annotations

import base64
import collections
import http.client
import logging
import os
import secrets
import time
import typing as t
import urllib.parse

from .. import _runtime
from .events import Event
from .wire import Format, NativeFormat

if t.TYPE_CHECKING:
    from ..config.webhooks import WebhookSettings, WebhookURL

logger = logging.getLogger("flask_realtime")

FIRST_RETRY_DELAY = 0.5
# Dropped events are logged at most this often per URL.
DROP_LOG_INTERVAL = 10.0
# Answers that say "try again later"; any other 4xx drops the batch.
_RETRY_STATUSES = {408, 425, 429}


class Target:
    """One URL: its queue, its worker, its counters."""

    def __init__(self, url: str, settings: WebhookSettings, wire: Format) -> None:
        self._url = url
        parts = urllib.parse.urlsplit(url)
        self._auth = None
        if parts.username is not None:
            pair = f"{_unquote(parts.username)}:{_unquote(parts.password or '')}"
            self._auth = "Basic " + base64.b64encode(pair.encode()).decode()
            netloc = parts.hostname or ""
            if parts.port is not None:
                netloc += f":{parts.port}"
            parts = parts._replace(netloc=netloc)
        #: The URL as logged: without a user or password in it.
        self.url = urllib.parse.urlunsplit(parts)
        self._settings = settings
        self._wire = wire
        self._queue: collections.deque[Event] = collections.deque()
        self._wake: t.Any = None
        self._pid: int | None = None
        #: Totals since start, for tests and operators.
        self.sent = 0
        self.dropped = 0
        self.failures = 0
        self._dropped_unlogged = 0
        self._drop_logged_at = 0.0

    def put(self, event: Event) -> None:
        """Queue ``event``; never blocks, never raises."""
        if len(self._queue) >= self._settings.max_queue:
            self._queue.popleft()
            self.dropped += 1
            self._dropped_unlogged += 1
        self._queue.append(event)
        self._ensure_worker()
        self._wake.set()

    def pending(self) -> int:
        return len(self._queue)

    def _ensure_worker(self) -> None:
        # Started in the process that queues (again after a fork), and with
        # the current world's event: gevent's once it has patched.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._wake = _runtime.event()
            _runtime.spawn(self._run)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._settings.batch_window:
                _runtime.sleep(self._settings.batch_window)
            while self._queue:
                batch = []
                while self._queue and len(batch) < self._settings.max_batch:
                    batch.append(self._queue.popleft())
                try:
                    self._deliver(batch)
                except Exception:  # pragma: no cover - the worker must survive
                    logger.exception("flask_realtime: webhook to %s failed", self.url)
                self._log_drops()

    def _deliver(self, batch: list[Event]) -> None:
        """POST ``batch`` until the receiver takes it (or refuses it for good)."""
        batch_id = secrets.token_hex(8)
        delay = FIRST_RETRY_DELAY
        while True:
            # Signed anew for each attempt: a fresh timestamp.
            body, headers = self._wire.encode(batch, batch_id, self._settings.secret)
            outcome = self._post(body, headers)
            if outcome is None:
                self.sent += len(batch)
                return
            self.failures += 1
            status, reason = outcome
            if (
                status is not None
                and 400 <= status < 500
                and status not in _RETRY_STATUSES
            ):
                logger.warning(
                    "flask_realtime: webhook receiver %s refused %d event(s) with %d;"
                    " dropped",
                    self.url,
                    len(batch),
                    status,
                )
                self.dropped += len(batch)
                return
            logger.warning(
                "flask_realtime: webhook to %s failed (%s); retrying in %.1f s",
                self.url,
                reason,
                delay,
            )
            self._log_drops()
            _runtime.sleep(delay)
            delay = min(delay * 2, self._settings.max_retry_delay)

    def _post(
        self, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, str] | None:
        """None when the receiver answered 2xx, else (status, why)."""
        parts = urllib.parse.urlsplit(self._url)
        if self._auth is not None:
            headers = {**headers, "Authorization": self._auth}
        kind = (
            http.client.HTTPSConnection
            if parts.scheme == "https"
            else http.client.HTTPConnection
        )
        conn = kind(parts.hostname or "", parts.port, timeout=self._settings.timeout)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        try:
            conn.request(
                "POST", path, body, {**headers, "User-Agent": "flask_realtime-webhooks"}
            )
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            return None, f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        if 200 <= response.status < 300:
            return None
        return response.status, f"HTTP {response.status}"

    def _log_drops(self) -> None:
        now = time.monotonic()
        if self._dropped_unlogged and now - self._drop_logged_at >= DROP_LOG_INTERVAL:
            logger.warning(
                "flask_realtime: webhook queue for %s full; %d oldest event(s) dropped",
                self.url,
                self._dropped_unlogged,
            )
            self._dropped_unlogged = 0
            self._drop_logged_at = now


def _unquote(text: str) -> str:
    return urllib.parse.unquote(text)


def _format(receiver: WebhookURL) -> Format:
    """The URL's configured format (``wire`` to Sender overrides it)."""
    if receiver.format == "pusher" and receiver.pusher_app is not None:
        from ..pusher.webhooks import PusherFormat

        return PusherFormat(receiver.pusher_app)
    return NativeFormat()


class Sender:
    """Every URL of one app's webhooks; ``send`` filters by event name."""

    def __init__(self, settings: WebhookSettings, wire: Format | None = None) -> None:
        self.settings = settings
        self.targets = [
            Target(receiver.url, settings, wire or _format(receiver))
            for receiver in settings.receivers()
        ]

    def send(self, event: Event) -> None:
        if event.name not in self.settings.events:
            return
        for target in self.targets:
            target.put(event)
