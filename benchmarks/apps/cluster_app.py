"""flask_realtime on a broker: node B of ``benchmarks/brokers.py``.

The broker comes from the environment (``REALTIME_BROKER``,
``REALTIME_BROKER_URL``), as a deployment would set it.
"""

from __future__ import annotations

import os
import typing as t

from flask import Flask

from flask_realtime import Realtime

app = Flask(__name__)
app.config["REALTIME_ALLOWED_ORIGINS"] = ["*"]
app.config["REALTIME_MAX_QUEUE_MESSAGES"] = 100_000
app.config["REALTIME_MAX_QUEUE_BYTES"] = 64 * 1024 * 1024
app.config["REALTIME_RATE_LIMIT"] = {"enabled": False}
# The load generator opens every connection from one address.
app.config["REALTIME_MAX_CONNECTIONS_PER_IP"] = None
realtime = Realtime(app)


@app.get("/bench/stats")
def bench_stats() -> dict[str, t.Any]:
    node = realtime.node
    return {"pid": os.getpid(), "node": node.id, "received": node.received}
