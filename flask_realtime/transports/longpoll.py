"""Long-polling: each poll takes what waits since the cursor, or waits for it.

A poll that finds nothing waits in one of two ways:

* **Parked** (gevent, a local poll, a server that lets the view have its
  socket): the view keeps a socket of its own for the answer and returns
  (:mod:`.longpoll_parked`). Under pywsgi the connection stays open for the
  next poll; under gunicorn's gevent worker the answer closes it.
* **Waiting** (``flask run``, TLS, a poll forwarded by another node): the
  request's greenlet or thread sleeps on the mailbox (:func:`_wait`), and
  the answer is a Flask response.

Both follow the same rules (:func:`_begin`): a poll acknowledges its
cursor, supersedes an older poll of the connection, and counts as the
client being present until it ends.
"""

from __future__ import annotations

import time
import typing as t

from flask import Response, request

from .._runtime import gevent_active
from ..errors import ConnectionRefused
from .handoff import can_answer_later, socket_for_later
from .http import (
    Answer,
    Finished,
    Refused,
    answer_response,
    cors,
    cors_lines,
    error_answer,
    identify,
    json_error,
    refuse_stream,
    run_or_forward,
    same_secret,
)
from .longpoll_parked import ParkedPoll
from .pollbox import CLOSED, PollBox, answer

if t.TYPE_CHECKING:
    from ..node import Node


def register(node: Node) -> None:
    """Let other nodes hand this one the polls of its connections."""
    node.handle_request("poll", _poll_here)


def poll_view(node: Node, authenticate: t.Callable[..., t.Any] | None) -> Response:
    settings = node.settings
    allowed = settings.allowed_origins
    args = request.args
    connection_id = args.get("connection_id")
    refused = refuse_stream(node, "longpolling", opening=connection_id is None)
    if refused is not None:
        return refused
    if connection_id is None:
        return cors(_open(node, authenticate), allowed)
    try:
        cursor = int(args.get("cursor", ""))
    except ValueError:
        return json_error(400, "'cursor' must be an integer")
    token = args.get("token")
    # Only a GET can be parked (a HEAD's answer has no body), and only here
    # (a forwarded poll is answered over the broker).
    if (
        request.method == "GET"
        and gevent_active()
        and node.owns(connection_id)
        and can_answer_later(request.environ)
    ):
        return _poll_or_park(node, connection_id, token, cursor)
    forwarded = {
        "op": "poll",
        "connection_id": connection_id,
        "token": token,
        "cursor": cursor,
    }
    if node.owns(connection_id):
        box, found = _poll(node, forwarded)
        return cors(_written_later(answer_response(found), box), allowed)
    # The owner answers within the poll timeout; the margin covers the trip.
    timeout = settings.longpoll_timeout + settings.forward_timeout
    return cors(run_or_forward(node, forwarded, _poll_here, timeout), allowed)


def _written_later(response: Response, box: PollBox | None) -> Response:
    """The server closes the body once it is written (or the client is
    gone): then the poll's answer is out (``PollBox.answered``)."""
    if box is not None:
        response.call_on_close(box.answered)
    return response


def _open(node: Node, authenticate: t.Callable[..., t.Any] | None) -> Response:
    try:
        user_id, user_info = identify(authenticate)
    except Refused:
        return json_error(401, "authentication failed")
    box = PollBox(node)
    try:
        node.open("longpolling", box, user_id, user_info, with_token=True)
    except ConnectionRefused as exc:  # by on_connect
        return json_error(403, exc.reason)
    items = box.take()
    return answer_response(answer(items, items[-1][0] if items else 0))


def _begin(
    node: Node, connection_id: t.Any, token: t.Any, cursor: t.Any
) -> PollBox | Answer:
    """Check a poll and start it: its box, or the error answer.

    From here until ``box.end_poll()`` the poll counts as the client being
    there (the connection cannot expire), and it is the connection's only
    poll: an older one is answered ``superseded`` now.
    """
    conn = node.connection(connection_id)
    if conn is None or conn.transport != "longpolling":
        return error_answer(404, "unknown or expired connection; open a new one")
    if not same_secret(token, conn.token):
        return error_answer(403, "wrong or missing token")
    box = t.cast(PollBox, conn.sink)
    if box.expire_if_stale(time.monotonic()):
        return error_answer(404, "the connection expired; open a new one")
    if not isinstance(cursor, int) or cursor < 0 or cursor > box.seq:
        return error_answer(400, f"'cursor' must be between 0 and {box.seq}")
    if not box.begin_answer():
        return error_answer(404, "the connection expired; open a new one")

    box.ack(cursor)
    box.poll_serial += 1
    box.wake()  # an older poll still waiting gives way to this one
    parked = box.parked
    if parked is not None:
        parked.supersede()
    box.polling += 1
    box.last_poll = time.monotonic()
    conn.last_seen = box.last_poll
    return box


def _poll(node: Node, forwarded: dict[str, t.Any]) -> tuple[PollBox | None, Answer]:
    """A poll that waits in its own greenlet or thread, answered as
    (status, body): under ``flask run``, and for polls forwarded by other
    nodes. With its box, if it began (its answer is then to be written)."""
    cursor = forwarded["cursor"]
    box = _begin(node, forwarded["connection_id"], forwarded.get("token"), cursor)
    if isinstance(box, tuple):
        return None, box
    return box, _wait(node, box, cursor)


def _poll_here(node: Node, forwarded: dict[str, t.Any]) -> Answer:
    """A poll forwarded by another node: this node's part ends with the
    answer, which that node writes."""
    box, found = _poll(node, forwarded)
    if box is not None:
        box.answered()
    return found


def _wait(node: Node, box: PollBox, cursor: int) -> Answer:
    """The rest of a begun poll, in this greenlet or thread."""
    serial = box.poll_serial
    try:
        deadline = time.monotonic() + node.settings.longpoll_timeout
        while True:
            if box.poll_serial != serial:
                return answer([], cursor, superseded=True)
            items = box.take()
            if items:
                return answer(items, items[-1][0])
            if box.close_code is not None:
                return error_answer(404, CLOSED)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return answer([], cursor)
            box.wait(remaining)
    finally:
        box.end_poll()


def _poll_or_park(
    node: Node, connection_id: str, token: t.Any, cursor: int
) -> Response:
    """A local poll under gevent: answered now through Flask when it can be,
    parked on a socket of its own otherwise."""
    allowed = node.settings.allowed_origins
    box = _begin(node, connection_id, token, cursor)
    if isinstance(box, tuple):
        return cors(answer_response(box), allowed)
    items = box.take()
    if items or box.close_code is not None:
        box.end_poll()
        if items:
            found = answer(items, items[-1][0])
        else:
            found = error_answer(404, CLOSED)
        return cors(_written_later(answer_response(found), box), allowed)
    try:
        later = socket_for_later(request.environ)
    except OSError:  # no descriptor to spare, or the client is gone
        later = None
    if later is None:
        found = _wait(node, box, cursor)
        return cors(_written_later(answer_response(found), box), allowed)
    box.parked = ParkedPoll(
        box,
        later,
        cursor,
        cors_lines(request.headers.get("Origin"), allowed),
        node.settings.longpoll_timeout,
    )
    return Finished(later.mode)
