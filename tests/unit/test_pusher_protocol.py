"""The node's envelopes in Pusher's form (flask_realtime.pusher.protocol)."""

from __future__ import annotations

import json

from flask_realtime import protocol
from flask_realtime.connection import Outbound
from flask_realtime.pusher import protocol as wire
from flask_realtime.pusher.session import as_pusher_frame


def pusher(native: bytes, user_key: str | None = None) -> dict:
    return json.loads(wire.translate(native, user_key))


def test_a_broadcast_has_its_data_as_a_json_string() -> None:
    message = pusher(protocol.event("news", "story", {"n": 1}))
    assert message == {"event": "story", "channel": "news", "data": '{"n":1}'}
    # A string goes as it is (what Pusher's HTTP API publishes).
    assert pusher(protocol.event("news", "text", "plain"))["data"] == "plain"


def test_presence_changes_are_pusher_internal_member_events() -> None:
    join = protocol.event(
        "presence-team", "presence.join", {"user_id": 5, "user_info": {"a": 1}}
    )
    assert pusher(join) == {
        "event": "pusher_internal:member_added",
        "channel": "presence-team",
        "data": '{"user_id":"5","user_info":{"a":1}}',
    }
    leave = pusher(protocol.event("presence-team", "presence.leave", {"user_id": 5}))
    assert leave["event"] == "pusher_internal:member_removed"
    assert json.loads(leave["data"]) == {"user_id": "5"}
    # The same event name on another channel is the app's own.
    other = pusher(protocol.event("team", "presence.join", {"user_id": 5}))
    assert other["event"] == "presence.join"


def test_client_events_carry_user_id_on_presence_channels_only() -> None:
    on_presence = pusher(protocol.client_event("presence-t", "client-x", {}, 7))
    assert on_presence["user_id"] == "7"
    on_private = pusher(protocol.client_event("private-t", "client-x", {}, 7))
    assert "user_id" not in on_private


def test_direct_messages_go_to_the_server_to_user_channel_when_signed_in() -> None:
    direct = protocol.event(None, "note", {"hi": 1})
    assert "channel" not in pusher(direct)
    assert pusher(direct, "ann")["channel"] == "#server-to-user-ann"


def test_server_side_subscribe_and_its_error() -> None:
    members = [{"user_id": 1, "user_info": {"n": "A"}, "connected_at": 1}]
    reply = pusher(protocol.subscribed("presence-t", None, {"members": members}))
    assert reply["event"] == "pusher_internal:subscription_succeeded"
    assert json.loads(reply["data"]) == {
        "presence": {"ids": ["1"], "hash": {"1": {"n": "A"}}, "count": 1}
    }
    error = pusher(protocol.error(403, "no", channel="private-t"))
    assert error["event"] == "pusher:subscription_error"
    assert wire.translate(protocol.pong(1)) == b""


def test_one_frame_for_every_pusher_recipient() -> None:
    message = Outbound(protocol.event("news", "story", {"n": 1}))
    first = as_pusher_frame(message)
    assert as_pusher_frame(message) is first
    assert message.ws_frame != first  # the native frame is another


def test_the_handshake_skips_flask_dispatch_only_when_on() -> None:
    from flask import Flask

    from flask_realtime import Realtime
    from flask_realtime.pusher.websocket import PusherHandshake

    plain = Flask("plain")
    Realtime(plain)
    assert not isinstance(plain.wsgi_app, PusherHandshake)
    assert "realtime_pusher_ws.websocket" not in plain.view_functions
    app = Flask("pusher")
    app.config["REALTIME_PUSHER"] = {"app_id": "1", "key": "k", "secret": "s"}
    Realtime(app)
    assert isinstance(app.wsgi_app, PusherHandshake)
    # Without an upgrade, Flask answers (the route's JSON 400).
    response = app.test_client().get("/app/k")
    assert response.status_code == 400
