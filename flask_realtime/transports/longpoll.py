"""Long-polling: each poll takes what waits since the cursor, or waits for it."""

from __future__ import annotations

import time
import typing as t

from flask import Response, request

from .. import protocol
from ..connection import Connection
from ._http import Refused, cors, identify, json_error, origin_allowed, same_secret
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


def _answer(items: list[tuple[int, bytes]], cursor: int, **extra: t.Any) -> Response:
    # The stored envelopes are JSON already: joined, not decoded again.
    body = b'{"messages":[' + b",".join(data for _, data in items) + b"]"
    body += b',"cursor":%d' % cursor
    for key, value in extra.items():
        body += b',"%s":%s' % (key.encode(), protocol.encode(value))
    return Response(body + b"}", mimetype="application/json")


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
    return cors(_poll(node, connection_id), allowed)


def _open(node: Node, authenticate: t.Callable[..., t.Any] | None) -> Response:
    try:
        user_id, user_info = identify(authenticate)
    except Refused:
        return json_error(401, "authentication failed")
    box = PollBox(node)
    conn = node.open("longpolling", box, user_id, user_info, with_token=True)
    box.conn = conn
    items = box.take()
    return _answer(items, items[-1][0] if items else 0)


def _poll(node: Node, connection_id: str) -> Response:
    conn = node.hub.connections.get(connection_id)
    if conn is None or conn.transport != "longpolling":
        return json_error(404, "unknown or expired connection; open a new one")
    if not same_secret(request.args.get("token"), conn.token):
        return json_error(403, "wrong or missing token")
    if t.cast(PollBox, conn.sink).expire_if_stale(time.monotonic()):
        return json_error(404, "the connection expired; open a new one")
    try:
        cursor = int(request.args.get("cursor", ""))
    except ValueError:
        return json_error(400, "'cursor' must be an integer")
    box = t.cast(PollBox, conn.sink)
    if cursor < 0 or cursor > box.seq:
        return json_error(400, f"'cursor' must be between 0 and {box.seq}")

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
                return json_error(404, "the connection was closed; open a new one")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _answer([], cursor)
            box.wait(remaining)
    finally:
        box.polling -= 1
        box.last_poll = time.monotonic()
