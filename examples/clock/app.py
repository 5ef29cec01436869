"""A live clock and a shared counter, pushed over WebSocket.

Run it with the embedded defaults (one process, null broker)::

    flask --app examples/clock/app.py realtime serve --port 6001
"""

from __future__ import annotations

import os
import threading
import time

from flask import Flask, jsonify, render_template

from flask_realtime import Realtime, broadcast

app = Flask(__name__)
# A demo listens on this machine only, unless told otherwise.
app.config["REALTIME_HOST"] = os.environ.get("REALTIME_HOST", "127.0.0.1")
realtime = Realtime(app)

_counter = {"value": 0}
_clock_started = threading.Lock()


def _tick() -> None:
    # Under `flask realtime serve` gevent has patched threading: this is a greenlet.
    while True:
        broadcast("clock", "tick", {"time": time.strftime("%H:%M:%S")})
        time.sleep(1)


@app.before_request
def start_clock() -> None:
    if _clock_started.acquire(blocking=False):
        threading.Thread(target=_tick, daemon=True).start()


@app.get("/")
def index() -> str:
    return render_template("index.html", count=_counter["value"])


@app.post("/count")
def count() -> object:
    _counter["value"] += 1
    broadcast("counter", "changed", {"value": _counter["value"]})
    return jsonify(value=_counter["value"])
