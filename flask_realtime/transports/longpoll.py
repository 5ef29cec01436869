"""Long-polling: each poll takes what waits since the cursor, or waits for it."""

from __future__ import annotations

import time
import typing as t

from flask import Response, request

from .. import protocol
from ..connection import Connection
from ._http import (
    Answer,
    Refused,
    answer_response,
    cors,
    error_answer,
    identify,
    json_error,
    origin_allowed,
    run_or_forward,
    same_secret,
)
from ._mailbox import Mailbox

if t.TYPE_CHECKING:
    from ..node import Node


class PollBox(Mailbox):
    """A mailbox that remembers its polls, for supersession and expiry."""

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self.poll_serial = 0
        self.polling = 0
        self.last_poll = time.monotonic()
        settings = node.settings
        self.expiry = settings.longpoll_expiry

    def tick(self, conn: Connection, now: float, heartbeat: float) -> None:
        self.expire_if_stale(now)

    def expire_if_stale(self, now: float) -> bool:
        """Expire a connection nobody polled for ``expiry`` seconds.

        Checked by the timer and on each use, so that a request arriving
        between two ticks never finds a connection that should be gone.
        """
        if not self.polling and now - self.last_poll > self.expiry:
            self.close(protocol.CLOSE_HEARTBEAT_TIMEOUT, "not polled")
        return self.close_code is not None


def _answer(items: list[tuple[int, bytes]], cursor: int, **extra: t.Any) -> Answer:
    # The stored envelopes are JSON already: joined, not decoded again.
    body = b'{"messages":[' + b",".join(data for _, data in items) + b"]"
    body += b',"cursor":%d' % cursor
    for key, value in extra.items():
        body += b',"%s":%s' % (key.encode(), protocol.encode(value))
    return 200, body + b"}"


def register(node: Node) -> None:
    """Let other nodes hand this one the polls of its connections."""
    node.handle_request("poll", _poll_here)


def poll_view(node: Node, authenticate: t.Callable[..., t.Any] | None) -> Response:
    settings = node.settings
    allowed = settings.allowed_origins
    if "longpolling" not in settings.transports:
        return json_error(404, "the longpolling transport is disabled")
    if not origin_allowed(request.headers.get("Origin"), allowed):
        return json_error(403, "origin not allowed")
    connection_id = request.args.get("connection_id")
    if connection_id is None:
        if node.shutting_down:
            return json_error(503, "server shutting down; connect again")
        return cors(_open(node, authenticate), allowed)
    try:
        cursor = int(request.args.get("cursor", ""))
    except ValueError:
        return json_error(400, "'cursor' must be an integer")
    forwarded = {
        "op": "poll",
        "connection_id": connection_id,
        "token": request.args.get("token"),
        "cursor": cursor,
    }
    # The owner answers within the poll timeout; the margin covers the trip.
    timeout = settings.longpoll_timeout + 10
    return cors(run_or_forward(node, forwarded, _poll_here, timeout), allowed)


def _open(node: Node, authenticate: t.Callable[..., t.Any] | None) -> Response:
    try:
        user_id, user_info = identify(authenticate)
    except Refused:
        return json_error(401, "authentication failed")
    box = PollBox(node)
    conn = node.open("longpolling", box, user_id, user_info, with_token=True)
    box.conn = conn
    items = box.take()
    return answer_response(_answer(items, items[-1][0] if items else 0))


def _poll_here(node: Node, forwarded: dict[str, t.Any]) -> Answer:
    conn = node.hub.connections.get(forwarded["connection_id"])
    if conn is None or conn.transport != "longpolling":
        return error_answer(404, "unknown or expired connection; open a new one")
    if not same_secret(forwarded.get("token"), conn.token):
        return error_answer(403, "wrong or missing token")
    box = t.cast(PollBox, conn.sink)
    if box.expire_if_stale(time.monotonic()):
        return error_answer(404, "the connection expired; open a new one")
    cursor = forwarded["cursor"]
    if not isinstance(cursor, int) or cursor < 0 or cursor > box.seq:
        return error_answer(400, f"'cursor' must be between 0 and {box.seq}")

    box.ack(cursor)
    box.poll_serial += 1
    serial = box.poll_serial
    box.wake()  # an older poll still waiting gives way to this one
    box.polling += 1
    box.last_poll = time.monotonic()
    conn.last_seen = box.last_poll
    try:
        deadline = time.monotonic() + node.settings.longpoll_timeout
        while True:
            if box.poll_serial != serial:
                return _answer([], cursor, superseded=True)
            items = box.take()
            if items:
                return _answer(items, items[-1][0])
            if box.close_code is not None:
                return error_answer(404, "the connection was closed; open a new one")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _answer([], cursor)
            box.wait(remaining)
    finally:
        box.polling -= 1
        box.last_poll = time.monotonic()
