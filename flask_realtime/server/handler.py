"""The request handler of both project servers: gevent-websocket's, with
timeouts and limits before the application runs.

gevent's pywsgi waits as long as a client likes for a request head, reads
heads of any size (100 fields of 64 KiB each), reads a chunked body for as
long as it keeps coming, and serves a request line without an HTTP version
as HTTP/0.9. On the open internet each of these lets a few sockets hold a
worker's connections or memory. :class:`RealtimeHandler` keeps
gevent-websocket's handler (and so the extension's hook on its upgrade
step) and changes only how a request arrives, through pywsgi's documented
extension points: ``handle_one_request`` (one request per call, with its
documented return values), ``read_requestline``/``read_request`` and
``MessageClass`` (the head), ``get_environ`` and ``start_response``.
"""

from __future__ import annotations

import io
import json
import time
import typing as t

from geventwebsocket.handler import WebSocketHandler

from .limits import Limits
from .reader import DeadlineReader

#: How long a kept-alive connection whose last answer is written later, from
#: outside the request (a parked long poll), may wait for its next request:
#: the answer comes within the long-poll timeout, then the client asks again.
ANSWERED_LATER_WAIT = 120.0

_REASONS = {
    400: "Bad Request",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
}


class HeadRefused(ValueError):
    """A request head the server will not read on: answered with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def refusal(status: int, message: str) -> bytes:
    """A whole HTTP response with a JSON error body; the connection closes."""
    body = json.dumps({"error": message, "status": status}).encode()
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (status, _REASONS[status].encode(), len(body), body)
    )


class RealtimeHandler(WebSocketHandler):
    """gevent-websocket's handler with deadlines and size limits on requests.

    The limits come from the server's ``limits`` attribute (a
    :class:`~.limits.Limits`), or the defaults.
    """

    def __init__(self, sock: t.Any, address: t.Any, server: t.Any) -> None:
        super().__init__(sock, address, server)
        self.limits: Limits = getattr(server, "limits", None) or Limits()
        # Our own buffered file on the socket, with a deadline per phase.
        self.rfile.close()
        self.deadlines = DeadlineReader(sock)
        self.rfile = io.BufferedReader(self.deadlines)
        self.requests_served = 0
        self.answered_here = True

    def handle_one_request(self) -> t.Any:
        """One request: the head within its deadline and limits, then
        pywsgi's response with a deadline on the body. Returns what pywsgi's
        ``handle`` expects: None to close, True for the next request, or
        ``(status, whole response)`` for a refusal."""
        limits, deadlines = self.limits, self.deadlines
        if self.rfile.closed:
            return None
        if self.requests_served:
            idle = limits.keepalive_timeout
            if not self.answered_here:
                idle = max(idle, ANSWERED_LATER_WAIT)
        else:
            idle = limits.head_timeout
        deadlines.deadline = time.monotonic() + idle
        try:
            if not self.rfile.peek(1):
                return None  # the client closed the connection
            if self.requests_served:
                deadlines.deadline = time.monotonic() + limits.head_timeout
            line = self.read_requestline()
        except OSError:  # a deadline passed, or the client went away
            return None
        self.requestline = line
        self.response_length = 0
        try:
            self.check_requestline(line)
            if not self.read_request(line):
                raise HeadRefused(400, "invalid request")
        except HeadRefused as exc:
            self.log_error("Refused (from %s): %s", self.client_address, exc)
            return str(exc.status), refusal(exc.status, str(exc))
        except OSError:
            return None
        except Exception as exc:  # pywsgi's parser: ValueError and the like
            self.log_error("Invalid request (from %s): %s", self.client_address, exc)
            return "400", refusal(400, "invalid request")
        upgrade = self.headers.get("Upgrade", "").lower() == "websocket"
        deadlines.deadline = None if upgrade else time.monotonic() + limits.body_timeout
        self.environ = self.get_environ()
        self.application = self.server.application
        self.answered_here = False
        self.handle_one_response()
        deadlines.deadline = None
        self.requests_served += 1
        if deadlines.expired or self.close_connection or self.rfile.closed:
            return None
        return True

    def read_requestline(self) -> str:
        """The request line, up to just past its limit (pywsgi reads 8 KiB)."""
        line = self.rfile.readline(self.limits.max_request_line + 2)
        return t.cast(bytes, line).decode("latin-1")

    def check_requestline(self, line: str) -> None:
        """Refuse a line that is cut, too long, or has no HTTP/1.x version
        (pywsgi would serve ``GET /path`` as HTTP/0.9)."""
        if len(line) > self.limits.max_request_line:
            raise HeadRefused(414, "request line too long")
        if not line.endswith("\n"):
            raise HeadRefused(400, "request line cut short")
        words = line.split()
        if len(words) != 3 or words[2] not in ("HTTP/1.0", "HTTP/1.1"):
            raise HeadRefused(400, "request line must be METHOD TARGET HTTP/1.x")

    def MessageClass(self, fp: t.Any, *args: t.Any) -> t.Any:  # noqa: N802
        """The header fields, read line by line within the limits, then
        parsed by pywsgi as before."""
        limits = self.limits
        size = len(self.requestline)
        lines: list[bytes] = []
        fields = 0
        while True:
            line = fp.readline(limits.max_header_field_size + 3)
            size += len(line)
            if line in (b"\r\n", b"\n"):
                break
            if not line.endswith(b"\n"):
                if len(line) > limits.max_header_field_size:
                    raise HeadRefused(431, "header field too large")
                raise HeadRefused(400, "request head cut short")
            if size > limits.max_head_size:
                raise HeadRefused(431, "request head too large")
            if line[:1] not in (b" ", b"\t"):
                fields += 1
                if fields > limits.max_header_fields:
                    raise HeadRefused(431, "too many header fields")
            lines.append(line)
        lines.append(b"\r\n")
        return super().MessageClass(io.BytesIO(b"".join(lines)), *args)

    def start_response(
        self, status: t.Any, headers: t.Any, exc_info: t.Any = None
    ) -> t.Any:
        self.answered_here = True
        return super().start_response(status, headers, exc_info)
