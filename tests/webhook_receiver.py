"""A real HTTP webhook receiver for the tests, on a thread of its own.

It checks every request's signature with :func:`flask_realtime.verify_webhook`
(a bad one is recorded and answered 401), keeps each accepted batch, and can
misbehave on purpose: ``fail_next(n)`` answers the next ``n`` requests with
500, ``hang()`` holds every request unanswered until ``release()``.
"""

from __future__ import annotations

import http.server
import threading
import time
import typing as t

from flask_realtime import WebhookSignatureError, verify_webhook


class Receiver:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.batches: list[dict[str, t.Any]] = []  # payload plus "_id"
        self.bad_signatures = 0
        self.requests = 0  # answered
        self.arrived = 0  # read, answered or not (a hung one is not answered)
        self.authorization: list[str | None] = []  # each request's header
        self._failures_left = 0
        self._released = threading.Event()
        self._released.set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.arrived += 1
                    receiver.authorization.append(self.headers.get("Authorization"))
                receiver._released.wait(30)
                status = receiver._take(body, self.headers)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: t.Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        threading.Thread(
            target=self.server.serve_forever, args=(0.05,), daemon=True
        ).start()

    def _take(self, body: bytes, headers: t.Any) -> int:
        with self._lock:
            self.requests += 1
            if self._failures_left:
                self._failures_left -= 1
                return 500
            try:
                payload = verify_webhook(body, headers, self.secret)
            except WebhookSignatureError:
                self.bad_signatures += 1
                return 401
            payload["_id"] = headers["X-Realtime-Webhook-Id"]
            self.batches.append(payload)
            return 200

    def fail_next(self, count: int) -> None:
        with self._lock:
            self._failures_left = count

    def hang(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def events(self) -> list[dict[str, t.Any]]:
        with self._lock:
            return [e for batch in self.batches for e in batch["events"]]

    def wait_for(
        self, predicate: t.Callable[[list[dict[str, t.Any]]], bool], timeout: float = 10
    ) -> list[dict[str, t.Any]]:
        """Poll until ``predicate(events)`` holds; the events then."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.events()
            if predicate(got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"webhook events never matched; got {got}")
            time.sleep(0.02)

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
