"""What every endpoint does with its request: origins, identity, errors, CORS."""

from __future__ import annotations

import hmac
import logging
import typing as t

from flask import Response, jsonify, request

from .. import protocol
from ..brokers import BrokerUnavailable

if t.TYPE_CHECKING:
    from ..node import Node

logger = logging.getLogger("flask_realtime")


class Refused(Exception):
    """The app's ``authenticate`` callback refused the request."""


def json_error(status: int, message: str) -> Response:
    response = jsonify(error={"code": status, "message": message})
    response.status_code = status
    return response


Answer = tuple[int, bytes]


def error_answer(status: int, message: str) -> Answer:
    """A JSON error as (status, body): what a node answers a forwarded request."""
    return status, protocol.encode({"error": {"code": status, "message": message}})


def answer_response(answer: Answer) -> Response:
    return Response(answer[1], status=answer[0], mimetype="application/json")


def run_or_forward(
    node: Node,
    request_: dict[str, t.Any],
    run: t.Callable[[Node, dict[str, t.Any]], Answer],
    timeout: float,
) -> Response:
    """Run a request for an SSE or long-poll connection where it lives.

    Requests of one connection may reach any worker of any machine (no
    sticky sessions); the node that holds the connection answers, and the
    others pass the request to it over the broker.
    """
    connection_id = request_["connection_id"]
    if node.owns(connection_id):
        return answer_response(run(node, request_))
    try:
        answer = node.forward(connection_id, request_, timeout)
    except TimeoutError:
        return json_error(504, "the node holding this connection did not answer")
    except BrokerUnavailable:
        return json_error(503, "the broker is unavailable; try again")
    if answer is None:
        return json_error(404, "unknown or expired connection; open a new one")
    return answer_response(answer)


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Same origin always; others only when listed (``"*"`` allows any).

    A request without ``Origin`` does not come from a page of another site
    (browsers send it on every cross-origin request), so it passes.
    """
    if not origin:
        return True
    origin = origin.rstrip("/")
    if "*" in allowed or origin in allowed:
        return True
    return origin in (
        f"{request.scheme}://{request.host}",
        request.host_url.rstrip("/"),
    )


def cors(response: Response, allowed: tuple[str, ...]) -> Response:
    """Let allowed foreign origins read the answer (cookies included)."""
    origin = request.headers.get("Origin")
    if origin and ("*" in allowed or origin.rstrip("/") in allowed):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Vary"] = "Origin"
    return response


def identify(authenticate: t.Callable[..., t.Any] | None) -> tuple[t.Any, t.Any]:
    """Run the app's ``@realtime.authenticate`` callback on this request."""
    if authenticate is None:
        return None, None
    try:
        result = authenticate(request)
    except Exception:
        logger.warning(
            "flask_realtime: authenticate raised; connection refused", exc_info=True
        )
        raise Refused() from None
    if result is False:
        raise Refused()
    if isinstance(result, tuple):
        if len(result) != 2:
            raise TypeError(
                "authenticate must return None, a user id or (user_id, user_info)"
            )
        user_id, user_info = result
    else:
        user_id, user_info = result, None
    if user_id is None:
        return None, None
    return user_id, user_info


def same_secret(given: t.Any, expected: str | None) -> bool:
    """Constant-time comparison, so timing tells nothing about the token."""
    if not isinstance(given, str) or expected is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


class Finished(Response):
    """The response a WebSocket view returns once it gave its socket away.

    Each server needs a different way to hear that nothing is left to send.
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        self._mode = mode

    def __call__(self, environ: t.Any, start_response: t.Any) -> t.Any:
        if self._mode == "gunicorn":
            raise StopIteration()
        if self._mode == "werkzeug":
            return super().__call__(environ, start_response)
        return []
