"""flask_realtime target: the library under test, configured as documented."""

from __future__ import annotations

import os
import typing as t

from bench_common import dumps, spawn_publisher, stats
from flask import Flask, request

from flask_realtime import Realtime, broadcast

app = Flask(__name__)
app.config["REALTIME_ALLOWED_ORIGINS"] = ["*"]
app.config["REALTIME_MAX_QUEUE_MESSAGES"] = 10000
# The load generator opens every connection from one address.
app.config["REALTIME_MAX_CONNECTIONS_PER_IP"] = None
# The "pusher" target's clients connect to /app/bench-key on this same app.
app.config["REALTIME_PUSHER"] = {"app_id": "1", "key": "bench-key", "secret": "bench"}
# BENCH_METRICS=1: with REALTIME_METRICS on (docs/benchmarks.md, "Metrics");
# set PROMETHEUS_MULTIPROC_DIR too for gunicorn's multiprocess mode.
if os.environ.get("BENCH_METRICS") == "1":
    app.config["REALTIME_METRICS"] = {"enabled": True, "token": "bench-" + "x" * 16}
realtime = Realtime(app)


def envelope(data: dict[str, t.Any]) -> str:
    """The library's event envelope (compact JSON), for sizing the padding."""
    return dumps({"type": "event", "channel": "bench", "event": "msg", "data": data})


def publish(channel: str, data: dict[str, t.Any]) -> None:
    """One channel broadcast through the public API.

    No app context is pushed: with one app, ``broadcast`` finds its node
    without one, and Flask-SocketIO's emit gets no context either.
    """
    broadcast(channel, "msg", data)


@app.get("/bench/publish")
def bench_publish() -> dict[str, t.Any]:
    """Start a publishing greenlet and return at once."""
    return spawn_publisher(request.query_string.decode(), envelope, publish)


@app.get("/bench/stats")
def bench_stats() -> dict[str, t.Any]:
    """Worker pid."""
    return stats()
