"""The Pusher protocol 7 WebSocket (``/app/<key>``) with a raw client.

What pusher-js would not show us: the exact frames, error codes and closes
(unknown key 4001, a bad auth, client events where they are not allowed, the
client event rate limit 4301, terminate 4009), and a Flask broadcast reaching
Pusher and native clients alike. pusher-js itself runs in
tests/test_pusher_js.py.
"""

from __future__ import annotations

import json
import typing as t
import urllib.request

import pytest
import websocket

from flask_realtime.config.pusher import PusherApp
from flask_realtime.pusher import signatures
from tests import servers, wsclient
from tests.servers import Server

KEY, SECRET = "app-key", "app-secret"
APP = PusherApp(app_id="1", key=KEY, secret=SECRET)
ENV = {
    "TESTAPP_REALTIME_PUSHER": json.dumps(
        {"app_id": "1", "key": KEY, "secret": SECRET, "client_event_rate": 3}
    ),
}


class PusherSocket:
    """A raw Pusher connection: frames as dicts, ``data`` strings decoded."""

    def __init__(self, server: Server, key: str = KEY) -> None:
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{server.port}/app/{key}?protocol=7&client=py&version=1",
            timeout=5,
        )
        self.socket_id = ""

    def established(self) -> PusherSocket:
        hello = self.recv()
        assert hello["event"] == "pusher:connection_established", hello
        self.socket_id = hello["data"]["socket_id"]
        return self

    def send(self, event: str, data: t.Any, channel: str | None = None) -> None:
        message: dict[str, t.Any] = {"event": event, "data": data}
        if channel is not None:
            message["channel"] = channel
        self.ws.send(json.dumps(message))

    def recv(self) -> dict[str, t.Any]:
        message = json.loads(self.ws.recv())
        if isinstance(message.get("data"), str):
            try:
                message["data"] = json.loads(message["data"])
            except ValueError:
                pass
        return message

    def expect(self, event: str, channel: str | None = None) -> dict[str, t.Any]:
        """The next frame, which must be ``event`` (on ``channel``)."""
        message = self.recv()
        assert message["event"] == event, message
        if channel is not None:
            assert message.get("channel") == channel, message
        return message

    def subscribe(self, channel: str, channel_data: str | None = None) -> None:
        data: dict[str, t.Any] = {"channel": channel}
        if channel.startswith(("private-", "presence-")):
            data["auth"] = signatures.channel_auth(
                APP, self.socket_id, channel, channel_data
            )
        if channel_data is not None:
            data["channel_data"] = channel_data
        self.send("pusher:subscribe", data)

    def close(self) -> None:
        self.ws.close()


def get(server: Server, path: str) -> t.Any:
    with urllib.request.urlopen(f"{server.url}{path}", timeout=5) as response:
        return json.loads(response.read() or b"null")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Server]:
    started = servers.start(
        "gevent",
        tmp_path_factory.mktemp("pusher"),
        app="tests.apps.server_api:app",
        env=ENV,
    )
    yield started
    started.discard()


def native_event(client: t.Any, channel: str) -> dict[str, t.Any]:
    def is_event(message: t.Any) -> bool:
        return message.get("type") == "event" and message.get("channel") == channel

    return client.wait_for(is_event)


def test_connect_ping_and_a_broadcast_to_pusher_and_native(server: Server) -> None:
    pusher = PusherSocket(server).established()
    assert signatures.same(pusher.socket_id, pusher.socket_id)
    left, _, right = pusher.socket_id.partition(".")
    assert left.isdigit() and right.isdigit()
    pusher.send("pusher:ping", {})
    pusher.expect("pusher:pong")
    pusher.subscribe("news")
    pusher.expect("pusher_internal:subscription_succeeded", "news")
    native = wsclient.connect(server.ws_url)
    native.subscribe("news")
    get(server, '/broadcast?channel=news&event=story&data={"n":1}')
    message = pusher.expect("story", "news")
    assert message["data"] == {"n": 1}
    assert native_event(native, "news")["data"] == {"n": 1}
    # A string stays a string (Pusher's HTTP API sends strings).
    get(server, '/broadcast?channel=news&event=text&data="plain"')
    assert pusher.expect("text", "news")["data"] == "plain"
    assert native_event(native, "news")["data"] == "plain"
    pusher.send("pusher:unsubscribe", {"channel": "news"})
    pusher.send("pusher:ping", {})
    pusher.expect("pusher:pong")
    get(server, '/broadcast?channel=news&event=story&data={"n":2}')
    assert native_event(native, "news")["data"] == {"n": 2}
    pusher.send("pusher:ping", {})
    pusher.expect("pusher:pong")  # and not the story: unsubscribed
    pusher.close()
    native.close()


def test_unknown_app_key_is_4001(server: Server) -> None:
    pusher = PusherSocket(server, key="nope")
    error = pusher.expect("pusher:error")
    assert error["data"]["code"] == 4001
    opcode, frame = pusher.ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame[:2], "big") == 4001


def test_bad_auth_is_a_subscription_error(server: Server) -> None:
    pusher = PusherSocket(server).established()
    pusher.send("pusher:subscribe", {"channel": "private-x", "auth": f"{KEY}:00"})
    error = pusher.expect("pusher:subscription_error", "private-x")
    assert error["data"]["status"] == 401
    # Signed for another socket: refused too.
    other = signatures.channel_auth(APP, "1.2", "private-x")
    pusher.send("pusher:subscribe", {"channel": "private-x", "auth": other})
    pusher.expect("pusher:subscription_error", "private-x")
    # The app's authorizer would refuse private-x; the signature decides.
    pusher.subscribe("private-x")
    pusher.expect("pusher_internal:subscription_succeeded", "private-x")
    pusher.close()


def test_client_events(server: Server) -> None:
    a = PusherSocket(server).established()
    b = PusherSocket(server).established()
    a.send("client-hi", {"x": 1}, channel="news")
    assert a.expect("pusher:error")["data"]["code"] is None  # public: refused
    a.send("client-hi", {"x": 1}, channel="private-room")
    a.expect("pusher:error")  # not subscribed
    for socket in (a, b):
        socket.subscribe("private-room")
        socket.expect("pusher_internal:subscription_succeeded", "private-room")
    a.send("client-hi", {"x": 1}, channel="private-room")
    assert b.expect("client-hi", "private-room")["data"] == {"x": 1}
    # 3 a second here (client-hi counted): the rest of the burst is refused,
    # and nothing is echoed to the sender, whose next frame is the pong.
    for n in range(6):
        a.send("client-n", n, channel="private-room")
    a.send("pusher:ping", {})
    codes = []
    while (message := a.recv())["event"] != "pusher:pong":
        assert message["event"] == "pusher:error", message
        codes.append(message["data"]["code"])
    assert 3 <= len(codes) <= 4 and set(codes) == {4301}
    passed = 6 - len(codes)
    received = [b.expect("client-n", "private-room")["data"] for _ in range(passed)]
    assert received == list(range(6 - len(codes)))
    a.close()
    b.close()


def test_presence_members_and_terminate(server: Server) -> None:
    a = PusherSocket(server).established()
    b = PusherSocket(server).established()
    ann = json.dumps({"user_id": "ann", "user_info": {"name": "Ann"}})
    bob = json.dumps({"user_id": "bob", "user_info": {"name": "Bob"}})
    a.subscribe("presence-team", ann)
    first = a.expect("pusher_internal:subscription_succeeded", "presence-team")
    assert first["data"]["presence"] == {
        "ids": ["ann"],
        "hash": {"ann": {"name": "Ann"}},
        "count": 1,
    }
    b.subscribe("presence-team", bob)
    second = b.expect("pusher_internal:subscription_succeeded", "presence-team")
    assert second["data"]["presence"]["count"] == 2
    added = a.expect("pusher_internal:member_added", "presence-team")
    assert added["data"] == {"user_id": "bob", "user_info": {"name": "Bob"}}
    # presence client events carry the sender's user_id
    b.send("client-wave", {}, channel="presence-team")
    assert a.expect("client-wave", "presence-team")["user_id"] == "bob"
    # channel_data not matching the signature: refused
    a.send(
        "pusher:subscribe",
        {
            "channel": "presence-other",
            "auth": signatures.channel_auth(APP, a.socket_id, "presence-other", ann),
            "channel_data": bob,
        },
    )
    a.expect("pusher:subscription_error", "presence-other")
    # realtime.disconnect(user_id="bob"): Pusher's termination, 4009
    get(server, "/api/disconnect?user=bob")
    error = b.expect("pusher:error")
    assert error["data"]["code"] == 4009
    opcode, frame = b.ws.recv_data(control_frame=True)
    assert int.from_bytes(frame[:2], "big") == 4009
    removed = a.expect("pusher_internal:member_removed", "presence-team")
    assert removed["data"] == {"user_id": "bob"}
    a.close()


def test_signin_and_server_to_user(server: Server) -> None:
    a = PusherSocket(server).established()
    user_data = json.dumps({"id": "carol", "user_info": {"name": "Carol"}})
    a.send("pusher:signin", {"user_data": user_data, "auth": f"{KEY}:bad"})
    assert a.expect("pusher:error")["data"]["code"] == 4009
    a.ws.recv_data(control_frame=True)
    a = PusherSocket(server).established()
    auth = signatures.user_auth(APP, a.socket_id, user_data)
    a.send("pusher:signin", {"user_data": user_data, "auth": auth})
    a.expect("pusher:signin_success")
    get(server, '/send_to_user?user=carol&event=note&data={"hi":1}')
    note = a.expect("note", "#server-to-user-carol")
    assert note["data"] == {"hi": 1}
    get(server, f"/send?connection_id={a.socket_id}&event=direct&data=2")
    assert a.expect("direct")["data"] == 2
    a.close()


def test_on_the_threaded_server(live_server: t.Any) -> None:
    """``flask run``: the same wire on the two-thread session."""
    server = live_server("flask-run", app="tests.apps.server_api:app", env=ENV)
    a = PusherSocket(server).established()
    # private-encrypted-: subscribed with a signature; payloads pass as they are.
    a.subscribe("private-encrypted-x")
    a.expect("pusher_internal:subscription_succeeded", "private-encrypted-x")
    sealed = '{"nonce":"bm9uY2U=","ciphertext":"c2VhbGVk"}'
    get(server, f"/broadcast?channel=private-encrypted-x&event=secret&data={sealed}")
    assert a.expect("secret", "private-encrypted-x")["data"] == json.loads(sealed)
    a.send("client-x", {}, channel="private-encrypted-x")
    assert "encrypted" in a.expect("pusher:error")["data"]["message"]
    a.ws.send_binary(b"\x00")
    assert a.expect("pusher:error")["data"]["code"] is None
    get(server, f"/api/disconnect?connection_id={a.socket_id}")
    assert a.expect("pusher:error")["data"]["code"] == 4009
    opcode, frame = a.ws.recv_data(control_frame=True)
    assert int.from_bytes(frame[:2], "big") == 4009
