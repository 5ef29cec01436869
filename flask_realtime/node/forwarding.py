"""Any request, any node: a transport's request run where its connection lives.

SSE and long-poll requests of one connection may reach any worker of any
machine. The worker that does not hold the connection sends the request to
the owner's node topic (a request, see :mod:`.control`), and the owner runs
the handler its transport registered and replies with an HTTP status and a
JSON body.
"""

from __future__ import annotations

import json
import logging
import typing as t

from .. import protocol
from .._runtime import spawn
from ..brokers import BrokerUnavailable
from . import topics

if t.TYPE_CHECKING:
    from . import Node

logger = logging.getLogger("flask_realtime")

RequestHandler = t.Callable[["Node", dict[str, t.Any]], tuple[int, bytes]]

_MALFORMED = (400, b'{"error":{"code":400,"message":"malformed forwarded request"}}')
_FAILED = (500, b'{"error":{"code":500,"message":"internal error"}}')


class Forwarding:
    """Requests between nodes: sending them, and answering them here."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._handlers: dict[str, RequestHandler] = {}

    def handle(self, op: str, handler: RequestHandler) -> None:
        """``handler(node, request)`` answers ``op`` requests: an HTTP status
        and a JSON body. It may wait (a long poll does)."""
        self._handlers[op] = handler

    def forward(
        self, connection_id: str, request: dict[str, t.Any], timeout: float
    ) -> tuple[int, bytes] | None:
        owner = connection_id.partition(".")[0]
        if not owner or owner == self._node.id:
            return None
        answer = self._node.control.request(
            topics.node(owner), protocol.encode(request), timeout
        )
        if answer is None:
            return None
        status, _, body = answer.partition(b"\n")
        return int(status), body

    def on_request(self, body: bytes, reply_to: str) -> None:
        """A request from another node: answered in a greenlet (or thread) of
        its own, since a handler may wait (a long poll does)."""
        spawn(self._answer, body, reply_to)

    def _answer(self, body: bytes, reply_to: str) -> None:
        try:
            request = json.loads(body)
            handler = self._handlers[request["op"]]
        except (ValueError, KeyError, TypeError):
            logger.warning("flask_realtime: malformed request from another node")
            answer = _MALFORMED
        else:
            try:
                with self._node.messages.app_context():
                    answer = handler(self._node, request)
            except Exception:
                logger.exception("flask_realtime: forwarded %r failed", request["op"])
                answer = _FAILED
        try:
            self._node.control.reply(reply_to, b"%d\n" % answer[0] + answer[1])
        except BrokerUnavailable:
            logger.warning("flask_realtime: could not answer a forwarded request")
