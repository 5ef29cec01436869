"""The basic app with lifecycle hooks and server-side control as views:
``tests.apps.server_api:app``.

Each hook call is appended, one JSON line per call, to the file that the
``HOOKS_LOG`` environment variable names (the tests read it, also after
the server stopped): ``{"hook": "connect"|"disconnect", "id", "user",
"transport", "code", "reason", "app"}``. A connection of user ``refuse``
is refused with 4403; one of user ``boom`` makes ``on_connect`` raise.

Views, as a view or a task would act:

- ``GET /api/subscribe?channel=..&connection_id=..|user=..``, and
  ``/api/unsubscribe`` the same
- ``GET /api/disconnect?connection_id=..|user=..[&code=N]``
- ``POST /api/post?channel=..&event=..`` with JSON data: a broadcast to
  everyone but the connection its ``X-Socket-ID`` header names
"""

from __future__ import annotations

import json
import os
import typing as t

from flask import current_app, jsonify, request

from flask_realtime import ConnectionRefused, broadcast, socket_id
from tests.apps.basic import _arg, app, realtime

__all__ = ["app"]


def _log(entry: dict[str, t.Any]) -> None:
    path = os.environ.get("HOOKS_LOG")
    if path:
        # One write of one line: concurrent appends from workers stay whole.
        with open(path, "a") as log:
            log.write(json.dumps(entry) + "\n")


@realtime.on_connect
def connected(connection: t.Any) -> None:
    if connection.user_id == "refuse":
        raise ConnectionRefused("not welcome here", code=4403)
    if connection.user_id == "boom":
        raise RuntimeError("on_connect failed")
    _log(
        {
            "hook": "connect",
            "id": connection.id,
            "user": connection.user_id,
            "transport": connection.transport,
            "app": current_app.name,
        }
    )


@realtime.on_disconnect
def disconnected(connection: t.Any, reason: t.Any) -> None:
    _log(
        {
            "hook": "disconnect",
            "id": connection.id,
            "user": connection.user_id,
            "transport": connection.transport,
            "code": reason.code,
            "reason": reason.reason,
            "app": current_app.name,
        }
    )


def _target() -> dict[str, t.Any]:
    if "connection_id" in request.args:
        return {"connection_id": request.args["connection_id"]}
    return {"user_id": _arg("user")}


@app.get("/api/subscribe")
def api_subscribe() -> t.Any:
    realtime.subscribe(_arg("channel"), **_target())
    return jsonify(ok=True)


@app.get("/api/unsubscribe")
def api_unsubscribe() -> t.Any:
    realtime.unsubscribe(_arg("channel"), **_target())
    return jsonify(ok=True)


@app.get("/api/disconnect")
def api_disconnect() -> t.Any:
    code = int(request.args.get("code", "4000"))
    realtime.disconnect(code=code, **_target())
    return jsonify(ok=True)


@app.post("/api/post")
def api_post() -> t.Any:
    broadcast(_arg("channel"), _arg("event"), request.get_json(), exclude=socket_id())
    return jsonify(ok=True, excluded=socket_id())
