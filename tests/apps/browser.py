"""The browser tests' app: ``tests.apps.basic`` plus pages that load the JS client.

- ``GET /page``: the client by a ``<script>`` tag (global ``RealtimeClient``)
- ``GET /module-page``: the client imported as an ES module
- ``GET /login?user=..&name=..``: log in with the Flask session (a cookie),
  which then identifies the page's connections, before the query parameters
  the basic app reads

Both pages load the client from the extension's own routes
(``/realtime/client.js`` and ``/realtime/client.mjs``) when the app has them,
and otherwise from ``/test-static/``, which serves the package's files, so
the pages work while the routes are being written. Each page also defines
``record(label, emitter, ...names)``, which pushes every listed event into
``window.events``, and ``seen(label, name)`` to look for one.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

from flask import Response, abort, request, send_file, session

import flask_realtime
from tests.apps import basic
from tests.apps.basic import app, realtime

__all__ = ["app", "realtime"]

STATIC = Path(flask_realtime.__file__).resolve().parent / "static"
_FILES = {"client.js": "application/javascript", "client.mjs": "text/javascript"}

_HARNESS = """
<script>
  window.events = [];
  window.record = (label, emitter, ...names) => {
    for (const name of names) {
      emitter.on(name, (...args) => {
        window.events.push({ label, name, args: JSON.parse(JSON.stringify(args)) });
      });
    }
    return emitter;
  };
  window.seen = (label, name) =>
    window.events.filter((e) => e.label === label && e.name === name);
</script>
"""


app.secret_key = "browser tests only"


@realtime.authenticate
def identify(req: t.Any) -> t.Any:
    if "user" in session:
        return session["user"], {"name": session["name"]}
    return basic.identify(req)


@app.get("/login")
def login() -> str:
    session["user"] = request.args["user"]
    session["name"] = request.args["name"]
    return "logged in"


def client_url(filename: str) -> str:
    """Where the page loads ``filename`` from: the extension's route if any."""
    path = f"/realtime/{filename}"
    if any(rule.rule == path for rule in app.url_map.iter_rules()):
        return path
    return f"/test-static/{filename}"


@app.get("/test-static/<filename>")
def test_static(filename: str) -> Response:
    if filename not in _FILES:
        abort(404)
    response = send_file(STATIC / filename, mimetype=_FILES[filename])
    response.headers["Cache-Control"] = "no-store"
    return response


@app.get("/page")
def page() -> str:
    return (
        "<!doctype html><title>client.js</title>"
        f"{_HARNESS}<script src='{client_url('client.js')}'></script>"
    )


@app.get("/module-page")
def module_page() -> str:
    return (
        "<!doctype html><title>client.mjs</title>"
        f"{_HARNESS}<script type='module'>"
        f"import RealtimeClient, {{ RealtimeClient as Named }}"
        f" from '{client_url('client.mjs')}';"
        "window.imported = { default: RealtimeClient, named: Named };"
        "</script>"
    )
