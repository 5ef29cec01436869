"""Flask-SocketIO target, the usual way to do realtime in Flask today."""

from __future__ import annotations

import typing as t

from bench_common import dumps, spawn_publisher, stats
from flask import Flask, request
from flask_socketio import SocketIO, emit, join_room

app = Flask(__name__)
socketio = SocketIO(app, async_mode="gevent", cors_allowed_origins="*")
_members: set[str] = set()


def envelope(data: dict[str, t.Any]) -> str:
    """Socket.IO EVENT packet as engine.io sends it: ``42["msg",{...}]``."""
    return "42" + dumps(["msg", data])


def publish(channel: str, data: dict[str, t.Any]) -> None:
    """One room broadcast, the idiomatic Flask-SocketIO call."""
    socketio.emit("msg", data, to=channel)


@socketio.on("join")
def on_join(room: str) -> None:
    """Join the room, then ack so the client knows it is subscribed."""
    join_room(room)
    _members.add(request.sid)  # type: ignore[attr-defined]
    emit("joined")


@socketio.on("disconnect")
def on_disconnect(*_args: t.Any) -> None:
    """Keep the member count accurate for ``/bench/stats``."""
    _members.discard(request.sid)  # type: ignore[attr-defined]


@app.get("/bench/publish")
def bench_publish() -> dict[str, t.Any]:
    """Start a publishing greenlet and return at once."""
    return spawn_publisher(request.query_string.decode(), envelope, publish)


@app.get("/bench/stats")
def bench_stats() -> dict[str, t.Any]:
    """Worker pid and member count."""
    return stats(connections=len(_members))
