"""flask_realtime with the Pusher HTTP API on: ``benchmarks/pusher_http.py``.

Pusher's ``POST /apps/<id>/events`` and, as the native alternative, a Flask
view that calls ``broadcast`` (what an app would write for its own
publishers). The broker comes from the environment (``REALTIME_BROKER``,
``REALTIME_BROKER_URL``) as a deployment would set it; unset, the null broker.
"""

from __future__ import annotations

import os
import typing as t

from flask import Flask, request

from flask_realtime import Realtime, broadcast

APP = {"app_id": "1", "key": "bench-key", "secret": "bench-secret"}

app = Flask(__name__)
app.config["REALTIME_PUSHER"] = APP
app.config["REALTIME_ALLOWED_ORIGINS"] = ["*"]
app.config["REALTIME_MAX_QUEUE_MESSAGES"] = 100_000
app.config["REALTIME_MAX_QUEUE_BYTES"] = 64 * 1024 * 1024
app.config["REALTIME_RATE_LIMIT"] = {"enabled": False}
app.config["REALTIME_MAX_CONNECTIONS_PER_IP"] = None
realtime = Realtime(app)


@app.post("/bench/broadcast")
def bench_broadcast() -> tuple[str, int]:
    """The native way to publish from outside: a view of the app's own."""
    body = request.get_json()
    broadcast(body["channel"], body["event"], body["data"])
    return "", 204


@app.get("/bench/stats")
def bench_stats() -> dict[str, t.Any]:
    return {"pid": os.getpid(), "node": realtime.node.id}
