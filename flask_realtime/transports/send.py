"""``POST /send``: client messages of SSE and long-poll connections."""

from __future__ import annotations

import time
import typing as t

from flask import Response, request

from .. import protocol
from .http import (
    Answer,
    cors,
    error_answer,
    json_error,
    origin_allowed,
    run_or_forward,
    same_secret,
)
from .pollbox import PollBox

if t.TYPE_CHECKING:
    from ..node import Node

# Room for the wrapper around the message itself.
_ENVELOPE_ALLOWANCE = 1024


def send_view(node: Node) -> Response:
    settings = node.settings
    allowed = settings.allowed_origins
    if not origin_allowed(request.headers.get("Origin"), allowed):
        return json_error(403, "origin not allowed")
    if request.method == "OPTIONS":
        response = cors(Response(status=204), allowed)
        response.headers["Access-Control-Allow-Methods"] = "POST"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        return response
    return cors(_send(node), allowed)


def register(node: Node) -> None:
    """Let other nodes hand this one the requests of its connections."""
    node.handle_request("send", _send_here)
    node.handle_request("close", _close_here)


def _send(node: Node) -> Response:
    limit = node.settings.max_message_size
    length = request.content_length
    if length is not None and length > limit + _ENVELOPE_ALLOWANCE:
        return json_error(413, f"message too large (limit {limit} bytes)")
    raw = request.stream.read(limit + _ENVELOPE_ALLOWANCE + 1)
    if len(raw) > limit + _ENVELOPE_ALLOWANCE:
        return json_error(413, f"message too large (limit {limit} bytes)")
    try:
        body = protocol.loads(raw)
    except protocol.NotStrictJSON as exc:
        return json_error(400, f"the body must be strict JSON: {exc}")
    except RecursionError:
        return json_error(400, "the body must be JSON: nested too deeply")
    if not isinstance(body, dict):
        return json_error(400, "the body must be a JSON object")
    connection_id = body.get("connection_id")
    message = body.get("message")
    if not isinstance(connection_id, str):
        return json_error(400, "missing or non-string 'connection_id'")
    if not isinstance(message, dict):
        return json_error(400, "'message' must be a JSON object")
    text = protocol.encode(message)
    if len(text) > limit:
        return json_error(413, f"message too large (limit {limit} bytes)")
    forwarded = {
        "op": "send",
        "connection_id": connection_id,
        "token": body.get("token"),
        "message": text.decode(),
    }
    return run_or_forward(node, forwarded, _send_here, node.settings.forward_timeout)


def _find(node: Node, forwarded: dict[str, t.Any]) -> t.Any:
    """The connection, or the error answer: unknown, wrong token, expired."""
    conn = node.connection(forwarded["connection_id"])
    if conn is None or conn.transport not in ("sse", "longpolling"):
        return error_answer(404, "unknown or expired connection; open a new one")
    if not same_secret(forwarded.get("token"), conn.token):
        return error_answer(403, "wrong or missing token")
    sink = conn.sink
    if isinstance(sink, PollBox) and sink.expire_if_stale(time.monotonic()):
        return error_answer(404, "the connection expired; open a new one")
    return conn


def _send_here(node: Node, forwarded: dict[str, t.Any]) -> Answer:
    conn = _find(node, forwarded)
    if isinstance(conn, tuple):
        return conn
    text = forwarded["message"].encode()
    refusal = node.admit(conn, text)
    reply = refusal if refusal is not None else node.receive(conn, text)
    return 200, b"[" + (reply or b"") + b"]"


def _close_here(node: Node, forwarded: dict[str, t.Any]) -> Answer:
    conn = _find(node, forwarded)
    if isinstance(conn, tuple):
        return conn
    conn.close(protocol.CLOSE_NORMAL, "closed by the client")
    return 204, b""


def close_view(node: Node) -> Response:
    """``POST /close``: an SSE or long-poll client says goodbye.

    Over HTTP nothing else tells the server a page is gone: without it, the
    others learn that someone left only when a write fails or a poll is
    missed. Browsers send it with ``navigator.sendBeacon`` on ``pagehide``,
    whose body arrives as ``text/plain``, hence no content-type check.
    """
    settings = node.settings
    allowed = settings.allowed_origins
    if not origin_allowed(request.headers.get("Origin"), allowed):
        return json_error(403, "origin not allowed")
    raw = request.stream.read(_ENVELOPE_ALLOWANCE + 1)
    try:
        body = protocol.loads(raw)
    except (ValueError, RecursionError):
        return json_error(400, "the body must be JSON")
    if not isinstance(body, dict) or not isinstance(body.get("connection_id"), str):
        return json_error(400, "the body must be {'connection_id': ..., 'token': ...}")
    forwarded = {
        "op": "close",
        "connection_id": body["connection_id"],
        "token": body.get("token"),
    }
    timeout = node.settings.forward_timeout
    return cors(run_or_forward(node, forwarded, _close_here, timeout), allowed)
