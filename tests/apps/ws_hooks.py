"""An app for the WebSocket handshake's tests: ``tests.apps.ws_hooks:app``.

It records which Flask hooks run for which path, identifies WebSocket users
from the Flask session (``GET /login?user=ann`` signs in) or from a
``?token=`` query parameter (``?touch=1`` also writes to the session), and
has a client event handler that blocks until released.

Configuration comes through the environment with the ``TESTAPP_`` prefix
(values are JSON), as in ``tests.apps.basic``; ``TESTAPP_WRAP_FIRST=true``
wraps ``app.wsgi_app`` in a pass-through middleware before ``Realtime(app)``.

Routes:

- ``GET /login?user=..``: puts ``user`` in the session
- ``GET /hooks``: ``{"before": [paths], "after": [...], "teardown": [...],
  "sessions": [paths where the session was opened],
  "authenticate": [{"path", "endpoint", "user"}]}``, leaving out ``/hooks``
  and the health checks
- ``GET /notify?user=..``: ``send_to_user(user, "note", {"to": user})``
- ``GET /release``: lets every blocked ``slow`` handler return
- ``GET /realtime/health``: when the prefix is not ``/realtime``, so that the
  test harness finds the server ready
"""

from __future__ import annotations

import threading
import typing as t

from flask import Flask, jsonify, request, session
from flask.sessions import SecureCookieSessionInterface

from flask_realtime import Realtime, broadcast

app = Flask(__name__)
app.config["SECRET_KEY"] = "ws-hooks-test-secret"
app.config.from_prefixed_env("TESTAPP")

if app.config.get("WRAP_FIRST"):
    inner = app.wsgi_app

    def passthrough(environ: t.Any, start_response: t.Any) -> t.Any:
        environ["tests.wrapped"] = True
        return inner(environ, start_response)

    app.wsgi_app = passthrough  # type: ignore[method-assign]

realtime = Realtime(app)
calls: dict[str, list[t.Any]] = {
    "before": [],
    "after": [],
    "teardown": [],
    "authenticate": [],
    "sessions": [],
}
released = threading.Event()


def _record(kind: str) -> None:
    if request.path not in ("/hooks", "/realtime/health"):
        calls[kind].append(request.path)


@app.before_request
def before() -> None:
    _record("before")


@app.after_request
def after(response: t.Any) -> t.Any:
    _record("after")
    return response


@app.teardown_request
def teardown(exc: BaseException | None) -> None:
    _record("teardown")


class CountingSessions(SecureCookieSessionInterface):
    def open_session(self, app: Flask, request: t.Any) -> t.Any:
        _record("sessions")
        return super().open_session(app, request)


app.session_interface = CountingSessions()


@realtime.authenticate
def identify(req: t.Any) -> t.Any:
    """``?token=..`` identifies without the session; otherwise the session."""
    user = req.args.get("token") or session.get("user")
    calls["authenticate"].append(
        {"path": req.path, "endpoint": req.endpoint, "user": user}
    )
    if req.args.get("shape") == "bad":
        return (1, 2, 3)  # not a valid answer: a server error
    if req.args.get("touch"):
        session["touched"] = True  # (never saved: no response carries it)
    return user


@realtime.on("slow", channel="slow.*")
def slow(connection: t.Any, channel: str, data: t.Any) -> None:
    """Blocks (at most 30 s) until ``/release``."""
    released.wait(30)
    broadcast(channel, "slow.done", data)


@app.get("/login")
def login() -> t.Any:
    session["user"] = request.args["user"]
    return jsonify(ok=True)


@app.get("/hooks")
def hooks() -> t.Any:
    return jsonify(calls)


@app.get("/notify")
def notify() -> t.Any:
    user = request.args["user"]
    realtime.send_to_user(user, "note", {"to": user})
    return jsonify(ok=True)


@app.get("/release")
def release() -> t.Any:
    released.set()
    return jsonify(ok=True)


if app.config.get("REALTIME_URL_PREFIX", "/realtime") != "/realtime":

    @app.get("/realtime/health")
    def health() -> t.Any:
        return jsonify(status="ok")
