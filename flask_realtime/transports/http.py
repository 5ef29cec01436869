"""What every endpoint does with its request: origins, CORS, identity, errors.

Written once for all transports: the WebSocket handshake (on a bare WSGI
environ, ahead of Flask's dispatch, or in the blueprint's view), the SSE
stream, long polls and ``POST /send`` / ``/close``. Response heads that a
transport writes by hand get their CORS lines from :func:`cors_lines`.
"""

from __future__ import annotations

import hmac
import json
import logging
import typing as t

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wsgi import get_host

from .. import protocol
from ..errors import BrokerUnavailable
from ..limits import refuse as refuse_connection

if t.TYPE_CHECKING:
    from ..node import Node

logger = logging.getLogger("flask_realtime")

WSGIEnviron = dict[str, t.Any]
StartResponse = t.Callable[..., t.Any]
#: What a node answers a request of one of its connections: (status, JSON body).
Answer = tuple[int, bytes]


# -- origins and CORS ------------------------------------------------------------


def listed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """A foreign ``origin`` the app lets in (``"*"``: any)."""
    if not origin:
        return False
    return "*" in allowed or origin.rstrip("/") in allowed


def _origin_allowed(origin: str | None, allowed: tuple[str, ...], own: str) -> bool:
    """Same origin always; others only when listed.

    A request without ``Origin`` does not come from a page of another site
    (browsers send it on every cross-origin request), so it passes.
    """
    if not origin:
        return True
    return listed(origin, allowed) or origin.rstrip("/") == own


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """:func:`_origin_allowed` for Flask's current request."""
    return _origin_allowed(origin, allowed, f"{request.scheme}://{request.host}")


def environ_origin_allowed(
    environ: WSGIEnviron, allowed: tuple[str, ...], trusted_hosts: t.Any
) -> bool:
    """:func:`_origin_allowed` on a bare WSGI environ (the handshake fast path)."""
    origin = environ.get("HTTP_ORIGIN")
    if not origin or listed(origin, allowed):
        return True
    own = f"{environ['wsgi.url_scheme']}://{get_host(environ, trusted_hosts)}"
    return _origin_allowed(origin, allowed, own)


def cors(response: Response, allowed: tuple[str, ...]) -> Response:
    """Let allowed foreign origins read the answer (cookies included)."""
    origin = request.headers.get("Origin")
    if listed(origin, allowed):
        response.headers["Access-Control-Allow-Origin"] = t.cast(str, origin)
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Vary"] = "Origin"
    return response


def cors_lines(origin: str | None, allowed: tuple[str, ...]) -> bytes:
    """The header lines :func:`cors` adds, for a response head written by hand."""
    if not listed(origin, allowed):
        return b""
    return (
        b"Access-Control-Allow-Origin: "
        + t.cast(str, origin).encode("latin-1")
        + b"\r\nAccess-Control-Allow-Credentials: true\r\nVary: Origin\r\n"
    )


# -- identity ----------------------------------------------------------------------


class Refused(Exception):
    """The app's ``authenticate`` callback refused the request."""


def identify(authenticate: t.Callable[..., t.Any] | None) -> tuple[t.Any, t.Any]:
    """Run the app's ``@realtime.authenticate`` callback on this request.

    Returns ``(user_id, user_info)``; raises :class:`Refused` when the
    callback returns False or raises.
    """
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


# -- JSON errors and answers ---------------------------------------------------------


def json_error(status: int, message: str) -> Response:
    """``{"error": {"code", "message"}}`` with that status."""
    response = jsonify(error={"code": status, "message": message})
    response.status_code = status
    return response


def _http_exception_as_json(exc: HTTPException) -> t.Any:
    """Werkzeug's error, with its status and headers (``Allow``,
    ``Retry-After``), as :func:`json_error` instead of an HTML page."""
    code = exc.code or 500
    if code < 400:
        return exc  # a redirect is no error
    response = json_error(code, exc.description or HTTP_STATUS_CODES.get(code, ""))
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _no_endpoint() -> Response:
    return json_error(404, "no realtime endpoint at this path")


def answer_errors_in_json(bp: Blueprint, methods: t.Sequence[str]) -> None:
    """Every error under the blueprint's URL prefix answers in JSON.

    Its views' HTTP errors (413 past ``MAX_CONTENT_LENGTH``, ``abort``), and
    500 for an exception (which Flask has logged, and which propagates as
    usual under ``TESTING``/``PROPAGATE_EXCEPTIONS``), go through the
    blueprint's handler. Flask never gives routing errors to a blueprint,
    so paths under the prefix that no endpoint has are routed to a view of
    the blueprint that answers 404 (only with a prefix: without one it
    would take the app's own 404s).
    """
    bp.register_error_handler(HTTPException, _http_exception_as_json)
    if not bp.url_prefix:
        return
    for rule, name in (
        ("/", "no_endpoint"),
        ("/<path:_anything>", "no_endpoint_below"),
    ):
        # Plain requests, and WebSocket upgrades (Werkzeug routes them apart).
        for websocket in (False, True):
            bp.add_url_rule(
                rule,
                endpoint=name + ("_ws" if websocket else ""),
                view_func=lambda **_: _no_endpoint(),
                methods=["GET", "HEAD", "OPTIONS"] if websocket else list(methods),
                strict_slashes=False,  # the prefix itself, with or without "/"
                websocket=websocket,
            )


def wsgi_error(
    start_response: StartResponse,
    status: int,
    message: str,
    headers: t.Sequence[tuple[str, str]] = (),
) -> list[bytes]:
    """:func:`json_error` without a Flask response object (the fast path)."""
    body = (
        json.dumps(
            {"error": {"code": status, "message": message}}, separators=(",", ":")
        ).encode()
        + b"\n"
    )
    start_response(
        f"{status} {HTTP_STATUS_CODES[status]}",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *headers,
        ],
    )
    return [body]


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


def refuse_stream(node: Node, transport: str, opening: bool = True) -> Response | None:
    """The refusal of an SSE or long-poll request, if any: the transport is
    disabled, the origin is foreign, or (``opening`` a connection) the server
    is closing."""
    settings = node.settings
    if transport not in settings.transports:
        return json_error(404, f"the {transport} transport is disabled")
    if not origin_allowed(request.headers.get("Origin"), settings.allowed_origins):
        return json_error(403, "origin not allowed")
    if opening and node.shutting_down:
        return json_error(503, "server shutting down; connect again")
    refused = refuse_connection(node, request.environ) if opening else None
    return None if refused is None else json_error(*refused)  # limits, deployment


class Finished(Response):
    """The response of a view that gave its socket away (or answers later).

    Each server needs a different way to hear that nothing is left to send:
    ``"gunicorn"`` ends the connection, ``"werkzeug"`` runs the normal
    (empty) response, ``"gevent"`` (pywsgi) writes nothing.
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.server_mode = mode

    def __call__(self, environ: t.Any, start_response: t.Any) -> t.Any:
        if self.server_mode == "gunicorn":
            raise StopIteration()
        if self.server_mode == "werkzeug":
            return super().__call__(environ, start_response)
        return []
