"""The WebSocket transport against real servers, one of each kind.

Every test here runs once per server kind (gunicorn with gevent-websocket's
worker, ``gunicorn -k gevent``, ``flask realtime serve``, ``flask run``),
with a real WebSocket client.
"""

from __future__ import annotations

import json
import socket
import typing as t
import urllib.parse

import pytest
import requests
import websocket

from tests import servers
from tests.conftest import LiveServerFactory, module_server
from tests.http_helpers import broadcast as _broadcast
from tests.servers import Server
from tests.wsclient import Client, ConnectionClosed, connect

server = module_server(servers.PROTOCOL_KINDS)


def _client(server: Server, **query: str) -> Client:
    url = server.ws_url
    if query:
        url += "?" + urllib.parse.urlencode(query)
    return connect(url)


def _assert_still_working(server: Server, client: Client) -> None:
    """The connection answers pings and gets broadcasts; so does a new one."""
    assert client.ping(id="alive")["type"] == "pong"
    channel = f"check.{id(client)}"
    assert client.subscribe(channel)["type"] == "subscribed"
    with _client(server) as other:
        assert other.subscribe(channel)["type"] == "subscribed"
        _broadcast(server, channel, "still.here", {"ok": True})
        for c in (client, other):
            assert c.wait_event("still.here", channel)["data"] == {"ok": True}


def test_connected_is_the_first_message(server: Server) -> None:
    with _client(server) as a, _client(server) as b:
        welcome = a.welcome
        assert welcome["type"] == "connected"
        assert welcome["data"]["protocol"] == 1
        assert welcome["data"]["heartbeat"] == 25
        assert "token" not in welcome["data"]
        assert a.connection_id != b.connection_id


def test_broadcast_reaches_every_subscriber_and_nobody_else(server: Server) -> None:
    with _client(server) as a, _client(server) as b, _client(server) as outsider:
        assert a.subscribe("news")["type"] == "subscribed"
        assert b.subscribe("news", id=7) == {
            "type": "subscribed",
            "channel": "news",
            "id": 7,
        }
        assert outsider.subscribe("sport")["type"] == "subscribed"
        _broadcast(server, "news", "headline", {"title": "Hi"})
        for c in (a, b):
            assert c.wait_event("headline") == {
                "type": "event",
                "channel": "news",
                "event": "headline",
                "data": {"title": "Hi"},
            }
        _broadcast(server, "sport", "score", 1)
        assert outsider.wait_event("score")["channel"] == "sport"
        assert not [m for m in outsider.skipped if m.get("event") == "headline"]


def test_unsubscribe_stops_delivery(server: Server) -> None:
    with _client(server) as a:
        a.subscribe("weather")
        assert a.unsubscribe("weather", id="u1") == {
            "type": "unsubscribed",
            "channel": "weather",
            "id": "u1",
        }
        a.subscribe("marker")
        _broadcast(server, "weather", "rain", None)
        _broadcast(server, "marker", "done", None)
        a.wait_event("done")
        assert not [m for m in a.skipped if m.get("event") == "rain"]


# -- bad input: the error, and nothing else harmed ------------------------------

BAD_MESSAGES = {
    "invalid_json": ("{not json", 400),
    "non_object_json": ("[1, 2, 3]", 400),
    "json_string": ('"subscribe"', 400),
    "unknown_type": ('{"type": "teleport", "id": 1}', 400),
    "missing_type": ('{"channel": "news", "id": 1}', 400),
    "type_not_string": ('{"type": 5, "id": 1}', 400),
    "missing_channel": ('{"type": "subscribe", "id": 1}', 400),
    "channel_not_string": ('{"type": "subscribe", "channel": 5, "id": 1}', 400),
    "channel_with_space": ('{"type": "subscribe", "channel": "a b", "id": 1}', 400),
    "channel_too_long": (json.dumps({"type": "subscribe", "channel": "a" * 201}), 400),
    "empty_channel": ('{"type": "subscribe", "channel": "", "id": 1}', 400),
    "event_missing_name": ('{"type": "event", "channel": "news", "id": 1}', 400),
    "event_name_not_string": (
        '{"type": "event", "channel": "news", "event": 3, "id": 1}',
        400,
    ),
    "id_wrong_type": ('{"type": "ping", "id": [1]}', 400),
    "unsubscribe_not_subscribed": (
        '{"type": "unsubscribe", "channel": "never", "id": 1}',
        404,
    ),
    "event_not_subscribed": (
        '{"type": "event", "channel": "chat.1", "event": "echo", "id": 1}',
        404,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MESSAGES))
def test_bad_message_gets_an_error_and_harms_nothing(server: Server, case: str) -> None:
    text, code = BAD_MESSAGES[case]
    with _client(server) as client:
        client.send_text(text)
        error = client.wait_for(lambda m: m.get("type") == "error")
        assert error["data"]["code"] == code
        assert isinstance(error["data"]["message"], str) and error["data"]["message"]
        _assert_still_working(server, client)


def test_binary_frame_gets_400_and_harms_nothing(server: Server) -> None:
    with _client(server) as client:
        client.send_binary(b"\x00\x01binary")
        error = client.wait_for(lambda m: m.get("type") == "error")
        assert error["data"]["code"] == 400
        _assert_still_working(server, client)


def test_oversize_message_gets_413_then_close_1009(server: Server) -> None:
    with _client(server) as bystander, _client(server) as client:
        bystander.subscribe("calm")
        client.send_text(json.dumps({"type": "ping", "pad": "x" * (64 * 1024)}))
        error = client.wait_for(lambda m: m.get("type") == "error")
        assert error["data"]["code"] == 413
        assert client.expect_close() == 1009
        _broadcast(server, "calm", "fine", 1)
        assert bystander.wait_event("fine")["data"] == 1
        _assert_still_working(server, bystander)


def _upgrade_request(server: Server, key: str, version: str) -> requests.Response:
    """A WebSocket upgrade through ``requests``: what the server answers a
    handshake it refuses."""
    return requests.get(
        server.ws_url.replace("ws://", "http://"),
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": version,
        },
        timeout=5,
    )


def test_malformed_handshake_key_gets_400_json(server: Server) -> None:
    response = _upgrade_request(server, key="not base64!", version="13")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 400
    with _client(server) as client:
        _assert_still_working(server, client)


def test_plain_http_request_to_the_websocket_path_gets_400_json(server: Server) -> None:
    response = requests.get(server.ws_url.replace("ws://", "http://"), timeout=5)
    assert response.status_code == 400
    assert "upgrade" in response.json()["error"]["message"].lower()


def test_framing_violation_closes_only_that_connection(server: Server) -> None:
    with _client(server) as bystander, _client(server) as client:
        # An unmasked client frame breaks RFC 6455: close 1002.
        client.ws.sock.sendall(b"\x81\x02hi")
        assert client.expect_close() == 1002
        _assert_still_working(server, bystander)


# -- authentication, origins, channels ------------------------------------------


def test_refused_authentication_closes_with_4001(server: Server) -> None:
    with pytest.raises(ConnectionClosed) as closed:
        _client(server, deny="1")
    assert closed.value.code == 4001


def test_foreign_origin_is_refused_before_the_upgrade(server: Server) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(server.ws_url, origin="http://evil.example")
    assert refused.value.status_code == 403
    same = connect(server.ws_url, origin=server.url)
    same.close()


def test_private_channel_needs_the_authorizer(server: Server) -> None:
    with _client(server, user="5") as five, _client(server, user="6") as six:
        assert five.subscribe("private-room.5")["type"] == "subscribed"
        refused = six.subscribe("private-room.5")
        assert refused["type"] == "error" and refused["data"]["code"] == 403
        # No authorizer matches the "private." form here: denied by default.
        refused = five.subscribe("private.room.5")
        assert refused["data"]["code"] == 403
    with _client(server) as anonymous:
        assert anonymous.subscribe("private-room.5")["data"]["code"] == 403


def test_presence_members_join_and_leave(server: Server) -> None:
    channel = "presence-lobby"
    with _client(server, user="1", name="Ann") as ann:
        reply = ann.subscribe(channel)
        assert [m["user_id"] for m in reply["data"]["members"]] == ["1"]
        assert reply["data"]["members"][0]["user_info"] == {"name": "Ann"}
        assert isinstance(reply["data"]["members"][0]["connected_at"], int)

        bob = _client(server, user="2", name="Bob")
        members = bob.subscribe(channel)["data"]["members"]
        assert sorted(m["user_id"] for m in members) == ["1", "2"]
        join = ann.wait_event("presence.join", channel)
        assert join["data"] == {"user_id": "2", "user_info": {"name": "Bob"}}

        # A second connection of the same user joins nobody new.
        bob_again = _client(server, user="2", name="Bob")
        bob_again.subscribe(channel)
        bob.close()
        with pytest.raises(AssertionError):
            ann.wait_event("presence.leave", channel, timeout=0.5)
        # The last one drops its TCP connection without a goodbye: still a leave.
        bob_again.ws.sock.shutdown(socket.SHUT_RDWR)
        bob_again.ws.sock.close()
        leave = ann.wait_event("presence.leave", channel)
        assert leave["data"] == {"user_id": "2"}
        assert not [m for m in ann.skipped if m.get("event") == "presence.join"]
        presence = requests.get(
            f"{server.url}/presence", params={"channel": channel}, timeout=5
        ).json()
        assert [m["user_id"] for m in presence["members"]] == ["1"]
        assert presence["subscriber_count"] == 1


def test_presence_needs_a_user(server: Server) -> None:
    with _client(server) as anonymous:
        assert anonymous.subscribe("presence-lobby")["data"]["code"] == 401


# -- client events ---------------------------------------------------------------


def test_client_event_goes_through_its_handler(server: Server) -> None:
    with _client(server, user="3") as a, _client(server) as b:
        a.subscribe("chat.9")
        b.subscribe("chat.9")
        a.send_json(
            {"type": "event", "channel": "chat.9", "event": "echo", "data": "hi"}
        )
        for c in (a, b):
            assert c.wait_event("echo", "chat.9")["data"] == {"from": "3", "data": "hi"}


def test_client_prefixed_events_relay_on_private_channels_only(server: Server) -> None:
    with _client(server, user="1", name="A") as a, _client(server, user="2") as b:
        a.subscribe("presence-typing")
        b.subscribe("presence-typing")
        a.send_json(
            {"type": "event", "channel": "presence-typing", "event": "client-typing"}
        )
        assert b.wait_event("client-typing", "presence-typing")["data"] is None
        a.ping()  # a pong after the relay: the sender did not get its own event
        assert not [m for m in a.skipped if m.get("event") == "client-typing"]

        a.subscribe("public.room")
        refused = a.request(
            {"type": "event", "channel": "public.room", "event": "client-typing"}
        )
        assert refused["data"]["code"] == 403


# -- direct messages ---------------------------------------------------------------


def test_send_to_user_reaches_all_their_connections(server: Server) -> None:
    with (
        _client(server, user="5") as first,
        _client(server, user="5") as second,
        _client(server, user="6") as other,
    ):
        requests.get(
            f"{server.url}/send_to_user",
            params={"user": "5", "event": "note", "data": '{"n": 1}'},
            timeout=5,
        ).raise_for_status()
        for c in (first, second):
            assert c.wait_event("note") == {
                "type": "event",
                "event": "note",
                "data": {"n": 1},
            }
        other.ping()
        assert not [m for m in other.skipped if m.get("event") == "note"]


def test_send_reaches_one_connection(server: Server) -> None:
    with _client(server) as target, _client(server) as other:
        requests.get(
            f"{server.url}/send",
            params={"connection_id": target.connection_id, "event": "hello"},
            timeout=5,
        ).raise_for_status()
        requests.get(
            f"{server.url}/send",
            params={"connection_id": "nobody.nothing", "event": "hello"},
            timeout=5,
        ).raise_for_status()
        assert "channel" not in target.wait_event("hello")
        other.ping()
        assert not [m for m in other.skipped if m.get("event") == "hello"]


# -- the handshake outside Flask's dispatch ---------------------------------------

HOOKS_APP = "tests.apps.ws_hooks:app"


def _raw_handshake(
    server: Server, path: str = servers.WS_PATH, **headers: str
) -> tuple[bytes, bytes]:
    """Send an upgrade request by hand: ``(response head, what came after)``."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _hooks(server: Server) -> dict[str, t.Any]:
    response = requests.get(f"{server.url}/hooks", timeout=5)
    response.raise_for_status()
    return t.cast(dict[str, t.Any], response.json())


def test_no_extension_is_negotiated(server: Server) -> None:
    # Browsers offer permessage-deflate; frames are never compressed here, so
    # accepting it would make the browser send frames we refuse (1002).
    head, rest = _raw_handshake(
        server, Sec_WebSocket_Extensions="permessage-deflate; client_max_window_bits"
    )
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"sec-websocket-extensions" not in head.lower()
    assert b'"type":"connected"' in rest or rest == b""


def test_unsupported_version_gets_426_before_the_upgrade(server: Server) -> None:
    response = _upgrade_request(server, key="dGhlIHNhbXBsZSBub25jZQ==", version="8")
    assert response.status_code == 426
    assert response.headers["Sec-WebSocket-Version"] == "13"
    assert response.json()["error"]["code"] == 426


@pytest.mark.parametrize("kind", servers.KINDS)
def test_handshake_skips_request_hooks_but_authenticate_has_the_session(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(kind, app=HOOKS_APP)
    browser = requests.Session()
    browser.get(f"{server.url}/login", params={"user": "ann"}, timeout=5)
    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies)
    with (
        connect(server.ws_url, headers={"Cookie": cookie}) as ann,
        connect(server.ws_url) as anonymous,
    ):
        requests.get(f"{server.url}/notify", params={"user": "ann"}, timeout=5)
        assert ann.wait_event("note")["data"] == {"to": "ann"}
        anonymous.ping()
        assert not [m for m in anonymous.skipped if m.get("event") == "note"]
    calls = _hooks(server)
    ws = servers.WS_PATH
    # The handshake is not dispatched by Flask: no before/after_request ...
    assert ws not in calls["before"] and ws not in calls["after"]
    assert calls["before"] == calls["after"] == ["/login", "/notify"]
    # ... but authenticate runs in a request context, routed and with the
    # session, and the context's teardown runs after it.
    assert calls["authenticate"] == [
        {"path": ws, "endpoint": "realtime.websocket", "user": "ann"},
        {"path": ws, "endpoint": "realtime.websocket", "user": None},
    ]
    assert calls["teardown"].count(ws) == 2
    assert calls["sessions"].count(ws) == 2
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("kind", servers.KINDS)
def test_the_session_is_not_loaded_for_an_authenticate_that_does_not_use_it(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(kind, app=HOOKS_APP)
    with connect(server.ws_url + "?token=bob") as bob:
        requests.get(f"{server.url}/notify", params={"user": "bob"}, timeout=5)
        assert bob.wait_event("note")["data"] == {"to": "bob"}
    calls = _hooks(server)
    assert calls["authenticate"] == [
        {"path": servers.WS_PATH, "endpoint": "realtime.websocket", "user": "bob"}
    ]
    assert servers.WS_PATH not in calls["sessions"]
    assert calls["sessions"] == ["/notify"]
    # Loaded when used, it is the session Flask would load: an empty one
    # (no cookie) takes writes.
    with connect(server.ws_url + "?touch=1") as touching:
        assert touching.ping()["type"] == "pong"
    assert _hooks(server)["sessions"] == ["/notify", servers.WS_PATH]


@pytest.mark.parametrize("kind", servers.KINDS)
def test_handshake_goes_through_flask_when_wsgi_app_was_wrapped_first(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(kind, app=HOOKS_APP, env={"TESTAPP_WRAP_FIRST": "true"})
    with connect(server.ws_url) as client:
        assert client.ping()["type"] == "pong"
    calls = _hooks(server)
    assert servers.WS_PATH in calls["before"]
    assert calls["authenticate"][0]["endpoint"] == "realtime.websocket"


@pytest.mark.parametrize("kind", servers.KINDS)
def test_authenticate_with_a_bad_answer_is_a_server_error(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(kind, app=HOOKS_APP)
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(server.ws_url + "?shape=bad")
    assert refused.value.status_code == 500
    with connect(server.ws_url) as client:
        assert client.ping()["type"] == "pong"


@pytest.mark.parametrize("kind", servers.KINDS)
def test_url_prefix_and_websocket_path_are_followed(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(
        kind,
        app=HOOKS_APP,
        env={
            "TESTAPP_REALTIME_URL_PREFIX": '"/rt"',
            "TESTAPP_REALTIME_WEBSOCKET_PATH": '"/socket"',
        },
    )
    url = f"ws://127.0.0.1:{server.port}/rt/socket"
    with connect(url) as client:
        assert client.subscribe("news")["type"] == "subscribed"
    assert _hooks(server)["authenticate"][0]["endpoint"] == "realtime.websocket"
    # (Outside the prefix, gevent-websocket's worker answers upgrades itself.)
    for path in ("/rt/socket/", "/rt/ws", "/rt/socket/x"):
        head, _ = _raw_handshake(server, path)
        assert head.startswith(b"HTTP/1.1 404 "), (path, head)
    plain = requests.get(f"{server.url}/rt/socket", timeout=5)
    assert plain.status_code == 400


@pytest.mark.parametrize("kind", servers.KINDS)
def test_untrusted_host_is_refused_as_flask_would(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(
        kind, app=HOOKS_APP, env={"TESTAPP_TRUSTED_HOSTS": '["127.0.0.1"]'}
    )
    head, _ = _raw_handshake(server)
    assert head.startswith(b"HTTP/1.1 101 ")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"GET /realtime/ws HTTP/1.1\r\nHost: evil.example\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")
    assert _hooks(server)["authenticate"] == [
        {"path": "/realtime/ws", "endpoint": "realtime.websocket", "user": None}
    ]


@pytest.mark.parametrize("kind", servers.KINDS)
def test_blocking_handlers_hold_up_nobody_else(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(kind, app=HOOKS_APP)
    blocked = [connect(server.ws_url) for _ in range(3)]
    try:
        for n, client in enumerate(blocked):
            client.subscribe(f"slow.{n}")
            client.send_json(
                {"type": "event", "channel": f"slow.{n}", "event": "slow", "id": n}
            )
            client.send_json({"type": "ping", "id": f"after-{n}"})
        # Three handlers wait for /release; everyone else goes on.
        for _ in range(3):
            with connect(server.ws_url) as other:
                assert other.subscribe("news")["type"] == "subscribed"
                assert other.ping()["type"] == "pong"
        for client in blocked:  # still waiting behind their own handler
            with pytest.raises(AssertionError):
                client.wait_for(lambda m: m.get("type") == "pong", timeout=0.3)
        requests.get(f"{server.url}/release", timeout=5).raise_for_status()
        for n, client in enumerate(blocked):
            # In order: the handler's broadcast, then the pong queued behind it.
            assert client.wait_event("slow.done", f"slow.{n}")
            pong = client.wait_for(lambda m: m.get("type") == "pong")
            assert pong["id"] == f"after-{n}"
    finally:
        for client in blocked:
            client.close()


# -- the greenlets that run client messages ----------------------------------------


def test_message_runner_reuses_greenlets_and_a_blocked_one_holds_up_nobody() -> None:
    import contextvars

    import gevent
    import gevent.event

    from flask_realtime.transports.ws_runner import Runner

    runner = Runner()
    ran: list[t.Any] = []
    mark: contextvars.ContextVar[t.Any] = contextvars.ContextVar("mark")

    class Session:
        def __init__(self, name: t.Any, gate: t.Any = None) -> None:
            self.name, self.gate = name, gate

        def drain(self) -> None:
            # Each batch starts in a context of its own, as in a new greenlet.
            assert mark.get(None) is None
            mark.set(self.name)
            if self.gate is not None:
                self.gate.wait()
            ran.append(self.name)

    for n in range(200):
        runner.schedule(Session(n))
        if n % 20 == 0:
            gevent.sleep(0)
    gevent.sleep(0.01)
    assert ran == list(range(200))
    assert runner.spawned <= 2

    gate = gevent.event.Event()
    ran.clear()
    for n in range(3):
        runner.schedule(Session(f"blocked-{n}", gate))
    for n in range(5):
        runner.schedule(Session(n))
    gevent.sleep(0.01)
    assert ran == [0, 1, 2, 3, 4]  # none waits behind the blocked handlers
    gate.set()
    gevent.sleep(0.01)
    assert sorted(ran[5:]) == ["blocked-0", "blocked-1", "blocked-2"]
    assert not runner.ready and runner.coming == 0
    spawned = runner.spawned
    for n in range(50):
        runner.schedule(Session(n))
    gevent.sleep(0.01)
    assert runner.spawned == spawned  # the parked workers took these
