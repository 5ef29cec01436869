"""The application most tests serve: ``tests.apps.basic:app``.

Configuration comes through the environment with the ``TESTAPP_`` prefix,
e.g. ``TESTAPP_REALTIME_HEARTBEAT=1`` sets ``REALTIME_HEARTBEAT`` (values are
parsed as JSON when they can be).

Connections identify themselves with query parameters on the WebSocket URL:
``?user=5&name=Ann`` (no ``user``: anonymous; ``deny=1``: refused).

Routes that act from "the server side", as a view or a task would:

- ``GET /broadcast?channel=..&event=..&data=<json>``
- ``GET /send_to_user?user=..&event=..&data=<json>``
- ``GET /send?connection_id=..&event=..&data=<json>``
- ``GET /presence?channel=..`` -> ``{"members": [...], "subscriber_count": N}``
- ``GET /position?channels=a,b`` -> each kept channel's ``{"offset", "epoch"}``
- ``GET /debug/state`` -> entries in the node's registries (``Node.state_sizes``)
"""

from __future__ import annotations

import json
import time
import typing as t

from flask import Flask, abort, jsonify, request

from flask_realtime import Realtime, broadcast

app = Flask(__name__)
app.config.from_prefixed_env("TESTAPP")
realtime = Realtime(app)


@realtime.authenticate
def identify(req: t.Any) -> t.Any:
    if req.args.get("deny"):
        return False
    user = req.args.get("user")
    if not user:
        return None
    name = req.args.get("name")
    if name is None:
        return user
    return user, {"name": name}


@realtime.authorizer("private-*")
def own_private_channel(connection: t.Any, channel: str) -> bool:
    """``private-room.5`` admits user 5 only."""
    user_id = connection.user_id
    return user_id is not None and channel.endswith(f".{user_id}")


@realtime.authorizer("presence-*")
def presence_member(connection: t.Any, channel: str) -> t.Any:
    """Any authenticated user, with their name as presence ``user_info``."""
    if connection.user_id is None:
        return False
    info = connection.user_info if isinstance(connection.user_info, dict) else {}
    return {"name": info.get("name", str(connection.user_id))}


@realtime.on("echo", channel="chat.*")
def echo(connection: t.Any, channel: str, data: t.Any) -> None:
    broadcast(channel, "echo", {"from": connection.user_id, "data": data})


def _arg(name: str) -> str:
    value = request.args.get(name)
    if value is None:
        abort(400, f"missing query parameter {name!r}")
    return value


def _data() -> t.Any:
    raw = request.args.get("data")
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        abort(400, "'data' must be JSON")


@app.get("/broadcast")
def do_broadcast() -> t.Any:
    broadcast(_arg("channel"), _arg("event"), _data())
    return jsonify(ok=True)


@app.get("/send_to_user")
def do_send_to_user() -> t.Any:
    realtime.send_to_user(_arg("user"), _arg("event"), _data())
    return jsonify(ok=True)


@app.get("/send")
def do_send() -> t.Any:
    realtime.send(_arg("connection_id"), _arg("event"), _data())
    return jsonify(ok=True)


@app.get("/presence")
def presence() -> t.Any:
    channel = realtime.channel(_arg("channel"))
    return jsonify(
        members=channel.get_presence_data(),
        subscriber_count=channel.subscriber_count,
    )


@app.get("/position")
def position() -> t.Any:
    """``{channel: {"offset", "epoch"}}`` for ``?channels=a,b`` (kept channels)."""
    names = _arg("channels").split(",")
    return jsonify({name: realtime.channel(name).position for name in names})


@app.get("/debug/state")
def debug_state() -> t.Any:
    """Entries in the node's registries (hub, presence, interest, pressure)."""
    node = realtime.node
    sizes = node.state_sizes()
    sizes["node_topic"] = int(node.interest.is_subscribed(f"n:{node.id}"))
    return jsonify(sizes)


@app.get("/flood")
def flood() -> t.Any:
    """Publish ``count`` broadcasts of ``size`` bytes from this request,
    ``pause`` seconds apart (none: as fast as the server can)."""
    channel = _arg("channel")
    count = int(request.args.get("count", "100"))
    pad = "x" * int(request.args.get("size", "100"))
    pause = float(request.args.get("pause", "0"))
    for seq in range(count):
        broadcast(channel, "flood", {"seq": seq, "pad": pad})
        if pause:
            time.sleep(pause)
    return jsonify(published=count)


@app.get("/overload")
def overload() -> t.Any:
    """Publish in a tight loop for ``seconds``: faster than any worker delivers."""
    channel = _arg("channel")
    seconds = float(request.args.get("seconds", "10"))
    node = realtime.node
    waits_before = node.pressure.waits
    started = time.monotonic()
    published = 0
    while time.monotonic() - started < seconds:
        broadcast(channel, "m", {"seq": published})
        published += 1
    return jsonify(
        published=published,
        seconds=time.monotonic() - started,
        backpressure_waits=node.pressure.waits - waits_before,
    )
