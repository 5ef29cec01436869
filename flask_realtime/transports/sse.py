"""Server-Sent Events: one long response per connection, client messages by POST."""

from __future__ import annotations

import typing as t

from flask import Response, request, stream_with_context

from .. import protocol
from ._http import Refused, cors, identify, json_error, origin_allowed
from ._mailbox import Mailbox

if t.TYPE_CHECKING:
    from ..node import Node

# A comment line at least this often: proxies keep the stream open, and a
# client that went away is noticed when the write fails.
_KEEPALIVE = 15.0
_RETRY_MS = 2000


def sse_view(node: Node, authenticate: t.Callable[..., t.Any] | None) -> Response:
    settings = node.settings
    if "sse" not in settings.transports:
        return json_error(404, "the sse transport is disabled")
    if not origin_allowed(request.headers.get("Origin"), settings.allowed_origins):
        return json_error(403, "origin not allowed")
    if node.shutting_down:
        return json_error(503, "server shutting down; connect again")
    try:
        user_id, user_info = identify(authenticate)
    except Refused:
        return cors(json_error(401, "authentication failed"), settings.allowed_origins)
    names = [n for n in request.args.get("channels", "").split(",") if n]

    box = Mailbox(node)
    conn = node.open("sse", box, user_id, user_info, with_token=True)
    box.conn = conn
    # The channels of the query are subscribed like client subscribes; their
    # replies (and refusals, as error events) come first on the stream.
    for name in names:
        message = protocol.encode({"type": "subscribe", "channel": name})
        refusal = node.admit(conn, message)
        reply = refusal or node.receive(conn, message)
        if reply is not None:
            conn.push_json(reply)
    keepalive = min(_KEEPALIVE, settings.heartbeat / 2)

    def stream() -> t.Iterator[bytes]:
        try:
            yield f"retry: {_RETRY_MS}\n\n".encode()
            while True:
                items = box.take()
                if items:
                    box.ack(items[-1][0])
                    yield b"".join(
                        b"id: %d\ndata: %s\n\n" % (seq, data) for seq, data in items
                    )
                    continue
                if box.close_code is not None:
                    yield b": closed %d\n\n" % box.close_code
                    return
                box.wait(keepalive)
                if not box.items and box.close_code is None:
                    yield b": keepalive\n\n"
        finally:
            box.close(protocol.CLOSE_GOING_AWAY)

    response = Response(stream_with_context(stream()), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return cors(response, settings.allowed_origins)
