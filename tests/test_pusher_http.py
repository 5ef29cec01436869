"""Pusher's auth endpoints and HTTP API, driven by the official ``pusher``
server library (PyPI) against real servers.

Two gunicorn nodes on one Redis: what the library triggers on one node
reaches native clients (raw WebSocket and :mod:`flask_realtime.client`) on
both, and its channel and user queries answer for the whole cluster. The
auth endpoints' answers are cross-checked against the library's own
``authenticate`` / ``authenticate_user`` for the same socket id and
channel. Bad signatures, stale timestamps, a wrong key, a wrong
``body_md5`` and an oversized body are each refused as Pusher does, while a
native client connected meanwhile keeps receiving.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import typing as t
import uuid

import pusher
import pytest
import requests
from flask import Flask
from pusher.http import Request, make_query_string
from pusher.signature import sign as pusher_sign

from flask_realtime import Realtime
from flask_realtime.client import RealtimeClient
from tests.brokerservers import BrokerServer
from tests.conftest import LiveServerFactory
from tests.servers import Server
from tests.wsclient import Client, connect

APP = {"app_id": "1", "key": "app-key", "secret": "app-secret"}
PUSHER_ENV = {"TESTAPP_REALTIME_PUSHER": json.dumps(APP)}


def library(server: Server, secret: str = APP["secret"]) -> pusher.Pusher:
    return pusher.Pusher(
        app_id=APP["app_id"],
        key=APP["key"],
        secret=secret,
        host="127.0.0.1",
        port=server.port,
        ssl=False,
        timeout=5,
    )


def signed(
    server: Server, method: str, path: str, params: dict[str, t.Any]
) -> requests.Response:
    """A request signed by the library's own code (``pusher.http.Request``),
    sent as is: for what the library's methods will not send."""
    made = Request(library(server)._pusher_client, method, path, params)
    return send(server, made)


def send(server: Server, made: Request) -> requests.Response:
    return requests.request(
        made.method,
        f"{server.url}{made.path}",
        params=made.query_params,
        data=made.body or None,
        headers={"Content-Type": "application/json"},
        timeout=5,
    )


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def sign(text: str) -> str:
    digest = hmac.new(APP["secret"].encode(), text.encode(), hashlib.sha256)
    return f"{APP['key']}:{digest.hexdigest()}"


@pytest.fixture
def nodes(
    live_server: LiveServerFactory,
    broker_servers: t.Callable[[str], BrokerServer],
) -> list[Server]:
    broker = broker_servers("redis")
    env = {**broker.app_env, **PUSHER_ENV}
    return [live_server("geventwebsocket", env=env) for _ in range(2)]


def native(server: Server, user: str, *channels: str) -> Client:
    client = connect(f"{server.ws_url}?user={user}&name={user.upper()}")
    for channel in channels:
        assert client.subscribe(channel)["type"] == "subscribed"
    return client


def test_the_library_publishes_and_queries_across_two_nodes(
    nodes: list[Server],
) -> None:
    first, second = nodes
    news, room = unique("news-"), unique("presence-room-")
    ann, bob = unique("ann"), unique("bob")
    a = native(first, ann, news, room)
    b = native(second, bob, news, room)
    assert a.connection_id.partition(".")[0] != b.connection_id.partition(".")[0]
    python_client = RealtimeClient(second.url, params={"user": unique("cat")})
    with python_client:
        watching = python_client.subscribe(news, timeout=5)
        lib = library(first)

        # trigger: one event, two channels, JSON data decoded for natives.
        assert lib.trigger([news, unique("nobody-")], "said", {"n": 1}) == {}
        for client in (a, b):
            assert client.wait_event("said", news)["data"] == {"n": 1}
        assert watching.wait_for("said", timeout=5) == {"n": 1}
        lib.trigger(news, "plain", "not json")
        assert b.wait_event("plain", news)["data"] == "not json"

        # trigger_batch: in order, each to its channel.
        lib.trigger_batch(
            [
                {"channel": news, "name": "one", "data": "1"},
                {"channel": room, "name": "two", "data": {"x": "y"}},
            ]
        )
        assert b.wait_event("one", news)["data"] == 1
        assert b.wait_event("two", room)["data"] == {"x": "y"}
        assert watching.wait_for("one", timeout=5) == 1

        # socket_id excludes that connection, on whichever node it lives.
        body = {"name": "others", "channels": [news], "data": "{}"}
        response = signed(
            second,
            "POST",
            "/apps/1/events",
            {**body, "socket_id": a.connection_id},
        )
        assert response.status_code == 200, response.text
        lib.trigger(news, "after", "2")
        assert b.wait_event("others", news)["data"] == {}
        assert a.wait_event("after", news)["data"] == 2
        assert not [m for m in a.skipped if m.get("event") == "others"]

        # info attributes in the answer, counted across the nodes.
        answer = signed(
            second,
            "POST",
            "/apps/1/events",
            {
                "name": "counted",
                "channels": [news, room],
                "data": "{}",
                "info": "subscription_count",
            },
        ).json()
        assert answer == {
            "channels": {
                news: {"subscription_count": 3},
                room: {"subscription_count": 2},
            }
        }

        # Queries: any node answers for all.
        lib_second = library(second)
        assert lib_second.channel_info(news, ["subscription_count"]) == {
            "occupied": True,
            "subscription_count": 3,
        }
        assert lib.channel_info(room, ["user_count"]) == {
            "occupied": True,
            "user_count": 2,
        }
        assert lib.channel_info(unique("empty-")) == {"occupied": False}
        listed = lib_second.channels_info("presence-room-", ["user_count"])
        assert listed["channels"][room] == {"user_count": 2}
        assert lib.channels_info()["channels"][news] == {}
        users = lib_second.users_info(room)["users"]
        assert sorted(u["id"] for u in users) == sorted([ann, bob])
        with pytest.raises(pusher.errors.PusherBadRequest):
            lib.users_info(news)  # not a presence channel
        with pytest.raises(pusher.errors.PusherBadRequest):
            lib.channels_info("news-", ["user_count"])

        # send_to_user: the #server-to-user- channel, every connection of it.
        lib.send_to_user(ann, "direct", {"to": ann})
        assert a.wait_event("direct")["data"] == {"to": ann}

        # terminate_user_connections: bob's connection on the other node.
        assert lib.terminate_user_connections(bob) == {}
        assert b.expect_close() == 4000
        lib.trigger(news, "still", "3")
        assert a.wait_event("still", news)["data"] == 3
        assert watching.wait_for("still", timeout=5) == 3
    a.close()


def test_auth_endpoints_and_refusals_as_pusher_answers(
    live_server: LiveServerFactory,
) -> None:
    server = live_server("geventwebsocket", env=PUSHER_ENV)
    lib = library(server)
    watcher = native(server, unique("wat"), "feed")
    user = unique("u")
    auth_url = f"{server.url}/pusher/auth"

    # private-: the app's authorizer (private-*.<user> admits that user).
    own = f"private-room.{user}"
    form = {"socket_id": "123.456", "channel_name": own}
    answer = requests.post(auth_url, params={"user": user}, data=form, timeout=5)
    assert answer.status_code == 200, answer.text
    assert answer.json() == lib.authenticate(own, "123.456")
    refused = requests.post(auth_url, params={"user": "other"}, data=form, timeout=5)
    assert refused.status_code == 403 and "error" in refused.json()
    anonymous = requests.post(auth_url, data=form, timeout=5)
    assert anonymous.status_code == 403

    # presence-: the authorizer's user_info becomes the signed channel_data.
    room = unique("presence-r-")
    answer = requests.post(
        auth_url,
        params={"user": user, "name": "Ann"},
        json={"socket_id": "1.2", "channel_name": room},
        timeout=5,
    )
    assert answer.status_code == 200, answer.text
    channel_data = answer.json()["channel_data"]
    assert json.loads(channel_data) == {"user_id": user, "user_info": {"name": "Ann"}}
    assert answer.json()["auth"] == sign(f"1.2:{room}:{channel_data}")
    member = {"user_id": user, "user_info": {"name": "Ann"}}
    assert answer.json() == lib.authenticate(room, "1.2", member)

    # user-auth: the sign-in signature over the user data.
    answer = requests.post(
        f"{server.url}/pusher/user-auth",
        params={"user": user, "name": "Ann"},
        data={"socket_id": "7.8"},
        timeout=5,
    )
    assert answer.status_code == 200, answer.text
    user_data = answer.json()["user_data"]
    assert json.loads(user_data) == {"id": user, "user_info": {"name": "Ann"}}
    assert answer.json()["auth"] == sign(f"7.8::user::{user_data}")
    signed_in = {"id": user, "user_info": {"name": "Ann"}}
    assert answer.json() == lib.authenticate_user("7.8", signed_in)

    # Public channels need no auth; socket ids have Pusher's form.
    public = {"socket_id": "1.2", "channel_name": "feed"}
    assert requests.post(auth_url, data=public, timeout=5).status_code == 400
    bad_socket = {"socket_id": "nope", "channel_name": own}
    assert requests.post(auth_url, data=bad_socket, timeout=5).status_code == 400

    # The HTTP API refuses what Pusher refuses, with a JSON body.
    def refused_with(status: int, made: Request) -> None:
        response = send(server, made)
        assert response.status_code == status, response.text
        assert "error" in response.json()

    event = {"name": "x", "channels": ["feed"], "data": "{}"}
    client = library(server)._pusher_client
    made = Request(client, "POST", "/apps/1/events", event)
    made.query_params["auth_signature"] = "0" * 64
    refused_with(401, made)
    stale = Request(client, "POST", "/apps/1/events", event)
    stale.query_params["auth_timestamp"] = str(int(time.time()) - 601)
    refused_with(401, _resigned(stale))  # signed right: only the time is wrong
    made = Request(
        library(server, secret="wrong")._pusher_client, "POST", "/apps/1/events", event
    )
    refused_with(401, made)
    wrong_key = Request(client, "POST", "/apps/1/events", event)
    wrong_key.query_params["auth_key"] = "other-key"
    refused_with(401, _resigned(wrong_key))
    tampered = Request(client, "POST", "/apps/1/events", event)
    tampered.body = json.dumps({**event, "data": '{"evil":1}'}).encode()
    refused_with(401, tampered)  # signed for another body: body_md5 differs
    huge = Request(client, "POST", "/apps/1/events", {**event, "data": "x" * 20_000})
    refused_with(413, huge)  # over Pusher's 10 KB of data
    oversized = Request(
        client, "POST", "/apps/1/events", {**event, "data": "x" * 200_000}
    )
    refused_with(413, oversized)  # over the app's max_body: not even read
    unknown = Request(client, "POST", "/apps/2/events", event)
    refused_with(404, unknown)
    with pytest.raises(pusher.errors.PusherBadAuth):
        library(server, secret="wrong").channels_info()

    # Nothing of that reached the channel; the watcher is unharmed.
    lib.trigger("feed", "fine", "1")
    assert watcher.wait_event("fine", "feed")["data"] == 1
    assert not [m for m in watcher.skipped if m.get("event") == "x"]
    assert watcher.ping()["type"] == "pong"
    watcher.close()


def _resigned(made: Request) -> Request:
    """``made`` with its signature recomputed over its current parameters."""
    params = {k: v for k, v in made.query_params.items() if k != "auth_signature"}
    text = "\n".join([made.method, made.path, make_query_string(params)])
    made.query_params = {**params, "auth_signature": pusher_sign(APP["secret"], text)}
    return made


def test_routes_only_when_configured_and_the_app_key_picks_the_signer() -> None:
    plain = Flask("plain")
    Realtime(plain)
    assert plain.test_client().post("/pusher/auth").status_code == 404
    assert plain.test_client().post("/apps/1/events").status_code == 404

    app = Flask("two")
    app.config["REALTIME_PUSHER"] = [
        {"app_id": "1", "key": "k1", "secret": "s1"},
        {"app_id": "2", "key": "k2", "secret": "s2"},
    ]
    realtime = Realtime(app)
    realtime.authenticate(lambda request: "5")
    realtime.authorizer("private-*")(lambda conn, channel: conn.id == "1.2")
    web = app.test_client()
    form = {"socket_id": "1.2", "channel_name": "private-a"}
    assert web.post("/pusher/auth", data=form).status_code == 400  # which app?
    second = web.post("/pusher/auth?app_key=k2", data=form).get_json()
    assert second == pusher.Pusher("2", "k2", "s2").authenticate("private-a", "1.2")
    first = web.post("/pusher/auth", data={**form, "app_key": "k1"}).get_json()
    assert first == pusher.Pusher("1", "k1", "s1").authenticate("private-a", "1.2")
    assert web.post("/pusher/auth?app_key=k9", data=form).status_code == 400
    other_socket = {**form, "socket_id": "3.4"}  # the authorizer says no
    assert web.post("/pusher/auth?app_key=k1", data=other_socket).status_code == 403
    assert web.get("/pusher/auth").status_code == 405


def test_the_api_checks_a_whole_request_before_publishing_any_of_it() -> None:
    """In process (the memory transport's recorder): a request refused for
    one part publishes nothing of the others."""
    app = Flask("checks")
    app.config["REALTIME_TRANSPORTS"] = ["websocket", "memory"]
    app.config["REALTIME_PUSHER"] = APP
    realtime = Realtime(app)
    web = app.test_client()
    client = pusher.Pusher(APP["app_id"], APP["key"], APP["secret"])._pusher_client

    def post(path: str, body: dict[str, t.Any]) -> t.Any:
        made = Request(client, "POST", path, body)
        return web.post(
            made.path,
            query_string=made.query_params,
            data=made.body,
            content_type="application/json",
        )

    event = {"name": "e", "channels": ["news", "presence-a"], "data": '{"n":1}'}
    refusals = [
        ("/apps/1/events", {**event, "info": "user_count"}),  # news: no presence
        ("/apps/1/events", {**event, "channels": ["ok"] * 101}),
        ("/apps/1/events", {**event, "name": "n" * 201}),
        ("/apps/1/events", {**event, "channels": ["bad channel"]}),
        ("/apps/1/events", {**event, "socket_id": "not-a-socket"}),
        ("/apps/1/events", {**event, "info": "colour"}),
        ("/apps/1/batch_events", {"batch": [{**event, "channels": ["x"]}] * 11}),
        (
            "/apps/1/batch_events",
            {"batch": [{"name": "e", "channel": "x", "data": "1"}, {"name": "e"}]},
        ),
    ]
    for path, body in refusals:
        response = post(path, body)
        assert response.status_code == 400, (body, response.get_json())
        assert response.get_json()["error"]["code"] == 400
    realtime.recorder.assert_nothing_broadcast()

    answer = post("/apps/1/events", {**event, "info": "subscription_count"})
    assert answer.get_json() == {
        "channels": {
            "news": {"subscription_count": 0},
            "presence-a": {"subscription_count": 0},
        }
    }
    with app.app_context():
        realtime.recorder.assert_broadcast("news", "e", {"n": 1})
        realtime.recorder.assert_broadcast("presence-a", "e", {"n": 1})
    post("/apps/1/events", {"name": "d", "channel": "#server-to-user-7", "data": "x"})
    realtime.recorder.assert_sent_to_user("7", "d", "x")
    made = Request(client, "GET", "/apps/1/channels/news", {})
    got = web.get(made.path, query_string=made.query_params)
    assert got.get_json() == {"occupied": False}
    assert web.put(made.path, query_string=made.query_params).status_code == 405


def test_the_paths_move_with_realtime_pusher_paths() -> None:
    app = Flask("moved")
    app.config["REALTIME_PUSHER"] = APP
    app.config["REALTIME_PUSHER_PATHS"] = {"auth": "/realtime/pusher-auth", "api": "/p"}
    realtime = Realtime(app)
    realtime.authenticate(lambda request: "5")
    realtime.authorizer("private-*")(lambda conn, channel: True)
    web = app.test_client()
    form = {"socket_id": "1.2", "channel_name": "private-a"}
    assert web.post("/pusher/auth", data=form).status_code == 404
    moved = web.post("/realtime/pusher-auth", data=form)
    assert moved.get_json() == pusher.Pusher(**APP).authenticate("private-a", "1.2")
    client = pusher.Pusher(**APP)._pusher_client
    made = Request(client, "GET", "/p/1/channels", {})  # signed for the new path
    answer = web.get(made.path, query_string=made.query_params)
    assert answer.get_json() == {"channels": {}}
    assert (
        web.get("/apps/1/channels", query_string=made.query_params).status_code == 404
    )


def test_the_auth_endpoints_check_the_origin_as_the_native_ones_do() -> None:
    app = Flask("origins")
    app.config["REALTIME_PUSHER"] = APP
    app.config["REALTIME_ALLOWED_ORIGINS"] = ["https://app.example"]
    realtime = Realtime(app)
    realtime.authenticate(lambda request: "5")
    realtime.authorizer("private-*")(lambda conn, channel: True)
    web = app.test_client()
    form = {"socket_id": "1.2", "channel_name": "private-a"}
    foreign = web.post(
        "/pusher/auth", data=form, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    assert "auth" not in foreign.get_json()
    listed = {"Origin": "https://app.example"}
    preflight = web.options("/pusher/auth", headers=listed)
    assert preflight.status_code == 204
    assert "X-CSRF-Token" in preflight.headers["Access-Control-Allow-Headers"]
    answer = web.post("/pusher/user-auth", data=form, headers=listed)
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert web.post("/pusher/auth", data=form).status_code == 200  # no Origin


def test_encrypted_channels_get_the_shared_secret_pushers_libraries_derive() -> None:
    """A private-encrypted- channel end to end: our auth endpoint gives the
    client the key the official library encrypts with, and the event the
    library triggers passes through the server opaque and decrypts with it."""
    import base64

    import nacl.secret

    master = base64.b64encode(bytes(range(32))).decode()
    app = Flask("encrypted")
    app.config["REALTIME_TRANSPORTS"] = ["websocket", "memory"]
    app.config["REALTIME_PUSHER"] = {**APP, "encryption_master_key_base64": master}
    realtime = Realtime(app)
    realtime.authenticate(lambda request: "5")
    realtime.authorizer("private-encrypted-*")(lambda conn, channel: True)
    web = app.test_client()
    channel = "private-encrypted-room.1"
    library = pusher.Pusher(**APP, encryption_master_key_base64=master)

    answer = web.post(
        "/pusher/auth", data={"socket_id": "1.2", "channel_name": channel}
    ).get_json()
    expected = library.authenticate(channel, "1.2")
    assert answer["auth"] == expected["auth"]
    assert answer["shared_secret"].encode() == expected["shared_secret"]

    made = library._pusher_client.trigger.make_request(channel, "note", "secret text")
    posted = web.post(
        made.path,
        query_string=made.query_params,
        data=made.body,
        content_type="application/json",
    )
    assert posted.status_code == 200, posted.get_json()
    (record,) = realtime.recorder.broadcasts(channel)
    sealed = record.data  # the server saw only the nonce and the ciphertext
    assert set(sealed) == {"nonce", "ciphertext"}
    box = nacl.secret.SecretBox(base64.b64decode(answer["shared_secret"]))
    opened = box.decrypt(
        base64.b64decode(sealed["ciphertext"]), base64.b64decode(sealed["nonce"])
    )
    assert opened == b"secret text"


def test_encrypted_channels_without_a_master_key_are_refused_plainly() -> None:
    app = Flask("no-key")
    app.config["REALTIME_PUSHER"] = APP
    realtime = Realtime(app)
    realtime.authenticate(lambda request: "5")
    realtime.authorizer("private-*")(lambda conn, channel: True)
    form = {"socket_id": "1.2", "channel_name": "private-encrypted-a"}
    answer = app.test_client().post("/pusher/auth", data=form)
    assert answer.status_code == 400
    assert "encryption_master_key_base64" in answer.get_json()["error"]["message"]
