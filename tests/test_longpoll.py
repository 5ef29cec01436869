"""The long-polling transport and ``POST /realtime/send``, against real servers.

Every test runs once per server kind. The module's servers answer an idle
poll after ``REALTIME_LONGPOLL_TIMEOUT=1`` s and forget a connection that is
not polled for ``REALTIME_LONGPOLL_EXPIRY=1`` s (``REALTIME_HEARTBEAT=1``,
so the expiry timer runs every 0.5 s): the tests keep polling the
connections they need and never leave one idle by accident.

The bad-input tests of ``POST /send`` each check the status and the JSON
error body, then that nothing was harmed: the connection still answers, a
broadcast still reaches it and another client, and the HTTP connection the
bad request came on (a kept-alive ``requests.Session``) still works.

Under gevent a poll that finds nothing is parked: the server answers it
later straight on its socket, not through Flask. The tests at the end speak
HTTP by hand (:class:`RawHTTP`) to compare those answers with Flask's, byte
by byte in meaning, and to see what happens to the HTTP connection.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import socket
import string
import time
import typing as t
import urllib.parse
import uuid

import pytest
import requests

from tests.conftest import PROTOCOL_SERVERS, LiveServerFactory, module_server
from tests.http_helpers import SEND_PATH, HttpClientMessages
from tests.http_helpers import assert_json_error as _assert_json_error
from tests.http_helpers import broadcast as _broadcast
from tests.http_helpers import unique as _unique
from tests.servers import Server
from tests.wsclient import connect as ws_connect

POLL_PATH = "/realtime/poll"
TIMEOUT = 1.0
EXPIRY = 1.0
HEARTBEAT = 1
ALLOWED_ORIGIN = "http://allowed.example"
ENV = {
    "TESTAPP_REALTIME_LONGPOLL_TIMEOUT": str(TIMEOUT),
    "TESTAPP_REALTIME_LONGPOLL_EXPIRY": str(EXPIRY),
    "TESTAPP_REALTIME_HEARTBEAT": str(HEARTBEAT),
    "TESTAPP_REALTIME_ALLOWED_ORIGINS": json.dumps([ALLOWED_ORIGIN]),
}
# Ample for any kind of server on a busy host, and still well short of TIMEOUT.
PROMPT = 0.5


server = module_server(PROTOCOL_SERVERS, env=ENV)


# -- a long-poll client ------------------------------------------------------------


class Poller(HttpClientMessages):
    """One long-poll connection: open, poll with the cursor, POST messages."""

    def __init__(
        self,
        server: Server,
        session: requests.Session | None = None,
        **query: str,
    ) -> None:
        self.server = server
        self.session = session or requests.Session()
        started = time.monotonic()
        response = self.session.get(server.url + POLL_PATH, params=query, timeout=5)
        self.open_took = time.monotonic() - started
        assert response.status_code == 200, response.text
        body = response.json()
        self.welcome: dict[str, t.Any] = body["messages"][0]
        assert self.welcome["type"] == "connected", body
        self.opened = body
        self.cursor: int = body["cursor"]
        self.connection_id: str = self.welcome["data"]["connection_id"]
        self.token: str = self.welcome["data"]["token"]
        #: Messages :meth:`wait_for` read past.
        self.skipped: list[t.Any] = []
        # Polled but not yet looked at by :meth:`wait_for`.
        self._pending: list[t.Any] = []

    def get(
        self, cursor: int | str | None = None, **params: t.Any
    ) -> requests.Response:
        """One raw poll (the cursor given, or the current one)."""
        query = {
            "connection_id": self.connection_id,
            "token": self.token,
            "cursor": str(self.cursor if cursor is None else cursor),
        }
        query.update(params)
        return requests.get(
            self.server.url + POLL_PATH, params=query, timeout=TIMEOUT + 10
        )

    def poll(self, cursor: int | None = None) -> list[t.Any]:
        """One poll; moves the cursor on and returns the messages."""
        response = self.get(cursor)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) >= {"messages", "cursor"}, body
        self.cursor = body["cursor"]
        return body["messages"]

    def wait_for(
        self, predicate: t.Callable[[t.Any], bool], timeout: float = 5
    ) -> t.Any:
        deadline = time.monotonic() + timeout
        while True:
            while self._pending:
                message = self._pending.pop(0)
                if predicate(message):
                    return message
                self.skipped.append(message)
            if time.monotonic() >= deadline:
                break
            self._pending.extend(self.poll())
        raise AssertionError(
            f"timed out waiting for {predicate.__name__};"
            f" read past meanwhile: {self.skipped[-10:]!r}"
        )


# -- helpers -------------------------------------------------------------------


def _assert_still_working(server: Server, poller: Poller) -> None:
    """The connection answers pings and gets broadcasts; so does a new one.

    Goes through the poller's own session, so a bad request that left its
    kept-alive HTTP connection in a broken state shows here too.
    """
    assert poller.request({"type": "ping", "id": "alive"}) == [
        {"type": "pong", "id": "alive"}
    ]
    channel = _unique("check")
    assert poller.subscribe(channel)["type"] == "subscribed"
    other = Poller(server)
    assert other.subscribe(channel)["type"] == "subscribed"
    _broadcast(server, channel, "still.here", {"ok": True})
    for p in (poller, other):
        assert p.wait_event("still.here", channel)["data"] == {"ok": True}


def _timed_get(poller: Poller, cursor: int | None = None) -> tuple[float, t.Any]:
    started = time.monotonic()
    response = poller.get(cursor)
    return time.monotonic() - started, response


# -- opening -----------------------------------------------------------------------


def test_open_answers_at_once_with_connected_and_a_cursor(server: Server) -> None:
    poller = Poller(server)
    assert poller.open_took < PROMPT, f"open took {poller.open_took:.2f} s"
    assert poller.opened == {"messages": [poller.welcome], "cursor": poller.cursor}
    assert isinstance(poller.cursor, int) and poller.cursor >= 1
    data = poller.welcome["data"]
    assert set(data) >= {"connection_id", "token", "heartbeat", "protocol"}
    assert data["protocol"] == 1
    assert data["heartbeat"] == HEARTBEAT


def test_connection_ids_and_tokens_are_unguessable(server: Server) -> None:
    pollers = [Poller(server) for _ in range(20)]
    ids = [p.connection_id for p in pollers]
    tokens = [p.token for p in pollers]
    assert len(set(ids)) == len(ids)
    assert len(set(tokens)) == len(tokens)
    alphabet = set(string.ascii_letters + string.digits + "-_")
    for p in pollers:
        assert len(p.token) >= 32, p.token
        assert set(p.token) <= alphabet, p.token
        assert p.token not in p.connection_id
    # Nothing sequential: no two share a long prefix or suffix.
    for a, b in itertools.pairwise(tokens):
        assert a[:8] != b[:8] and a[-8:] != b[-8:]
    # The id's own random part (after the node's prefix) is long too.
    randoms = [cid.rsplit(".", 1)[-1] for cid in ids]
    assert len(set(randoms)) == len(randoms)
    assert all(len(r) >= 16 for r in randoms), randoms
    # A token is the secret of its own connection only (a few fresh ones:
    # the first have been idle for a while and may have expired).
    a, b = Poller(server), Poller(server)
    _assert_json_error(a.get(token=b.token), 403)
    _assert_json_error(a.post({"type": "ping"}, token=b.token), 403)
    assert a.request({"type": "ping", "id": 0}) == [{"type": "pong", "id": 0}]


def test_refused_authentication_gets_401_json(server: Server) -> None:
    response = requests.get(server.url + POLL_PATH, params={"deny": "1"}, timeout=5)
    _assert_json_error(response, 401)


def test_foreign_origin_gets_403_json(server: Server) -> None:
    evil = {"Origin": "http://evil.example"}
    response = requests.get(server.url + POLL_PATH, headers=evil, timeout=5)
    _assert_json_error(response, 403)
    poller = Poller(server)
    response = requests.get(
        server.url + POLL_PATH,
        params={
            "connection_id": poller.connection_id,
            "token": poller.token,
            "cursor": poller.cursor,
        },
        headers=evil,
        timeout=5,
    )
    _assert_json_error(response, 403)
    response = requests.post(
        server.url + SEND_PATH,
        json={
            "connection_id": poller.connection_id,
            "token": poller.token,
            "message": {"type": "ping"},
        },
        headers=evil,
        timeout=5,
    )
    _assert_json_error(response, 403)
    same = requests.get(
        server.url + POLL_PATH, headers={"Origin": server.url}, timeout=5
    )
    assert same.status_code == 200
    _assert_still_working(server, poller)


# -- polling -------------------------------------------------------------------------


def test_idle_poll_waits_for_the_timeout_then_answers_empty(server: Server) -> None:
    poller = Poller(server)
    took, response = _timed_get(poller)
    assert response.status_code == 200
    assert response.json() == {"messages": [], "cursor": poller.cursor}
    assert TIMEOUT - 0.1 <= took <= TIMEOUT + PROMPT, f"answered after {took:.2f} s"


def test_poll_answers_at_once_when_a_message_arrives(server: Server) -> None:
    poller = Poller(server)
    channel = _unique("wake")
    poller.subscribe(channel)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        pending = pool.submit(poller.get)
        time.sleep(0.2)
        _broadcast(server, channel, "now", {"n": 1})
        published = time.monotonic()
        response = pending.result()
        answered = time.monotonic()
    assert response.status_code == 200
    body = response.json()
    assert body["messages"] == [
        {"type": "event", "channel": channel, "event": "now", "data": {"n": 1}}
    ]
    assert body["cursor"] == poller.cursor + 1
    assert answered - published < PROMPT, (
        f"answered {answered - published:.2f} s after the broadcast"
        f" ({answered - started:.2f} s after the poll began; timeout {TIMEOUT} s)"
    )


def test_messages_waiting_before_the_poll_come_at_once(server: Server) -> None:
    poller = Poller(server)
    channel = _unique("queued")
    poller.subscribe(channel)
    for n in range(3):
        _broadcast(server, channel, "n", n)
    took, response = _timed_get(poller)
    assert took < PROMPT
    assert [m["data"] for m in response.json()["messages"]] == [0, 1, 2]


def test_the_cursor_acknowledges(server: Server) -> None:
    poller = Poller(server)
    channel = _unique("ack")
    poller.subscribe(channel)
    old = poller.cursor
    _broadcast(server, channel, "m", 1)
    _broadcast(server, channel, "m", 2)
    first = poller.get(old).json()
    assert [m["data"] for m in first["messages"]] == [1, 2]
    assert first["cursor"] == old + 2
    # The answer "got lost": the old cursor brings the same messages again.
    again = poller.get(old).json()
    assert again == first
    # The new cursor acknowledges them: they never come again.
    _broadcast(server, channel, "m", 3)
    third = poller.get(first["cursor"]).json()
    assert [m["data"] for m in third["messages"]] == [3]
    assert third["cursor"] == first["cursor"] + 1
    took, response = _timed_get(poller, third["cursor"])
    assert response.json() == {"messages": [], "cursor": third["cursor"]}
    assert took >= TIMEOUT - 0.1
    # Nor with the old cursor, once a newer one acknowledged them.
    stale = poller.get(old)
    assert stale.status_code in (200, 400), stale.text
    if stale.status_code == 200:
        assert [m["data"] for m in stale.json()["messages"]] == []


@pytest.mark.parametrize(
    "cursor", ["", "abc", "1.5", "-1", "999999"], ids=lambda c: repr(c)
)
def test_bad_cursor_gets_400_json(server: Server, cursor: str) -> None:
    poller = Poller(server)
    _assert_json_error(poller.get(cursor=cursor), 400)
    _assert_still_working(server, poller)


def test_missing_cursor_gets_400_json(server: Server) -> None:
    poller = Poller(server)
    response = requests.get(
        server.url + POLL_PATH,
        params={"connection_id": poller.connection_id, "token": poller.token},
        timeout=5,
    )
    _assert_json_error(response, 400)
    _assert_still_working(server, poller)


def test_a_second_poll_supersedes_the_first(server: Server) -> None:
    poller = Poller(server)
    channel = _unique("super")
    poller.subscribe(channel)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first_started = time.monotonic()
        first = pool.submit(poller.get)
        time.sleep(0.2)
        second_started = time.monotonic()
        second = pool.submit(poller.get)
        response = first.result()
        first_done = time.monotonic()
        time.sleep(0.1)
        _broadcast(server, channel, "for.second", None)
        second_body = second.result().json()
    assert response.status_code == 200
    body = response.json()
    assert body == {"messages": [], "cursor": poller.cursor, "superseded": True}
    assert first_done - second_started < PROMPT, (
        f"the first poll answered {first_done - second_started:.2f} s after the"
        f" second began ({first_done - first_started:.2f} s in; timeout {TIMEOUT} s)"
    )
    assert [m["event"] for m in second_body["messages"]] == ["for.second"]
    assert "superseded" not in second_body


def test_unknown_connection_gets_404_json(server: Server) -> None:
    poller = Poller(server)
    for connection_id in ("nobody.nothing", "", poller.connection_id + "x", "x" * 500):
        response = requests.get(
            server.url + POLL_PATH,
            params={"connection_id": connection_id, "token": "t", "cursor": "0"},
            timeout=5,
        )
        _assert_json_error(response, 404)
    _assert_still_working(server, poller)


def test_wrong_or_missing_token_on_poll_gets_403_json(server: Server) -> None:
    poller, other = Poller(server), Poller(server)
    for token in (other.token, "", poller.token[:-1], poller.token.upper()):
        _assert_json_error(poller.get(token=token), 403)
    response = requests.get(
        server.url + POLL_PATH,
        params={"connection_id": poller.connection_id, "cursor": "0"},
        timeout=5,
    )
    _assert_json_error(response, 403)
    _assert_still_working(server, poller)
    _assert_still_working(server, other)


def test_websocket_id_is_not_a_poll_connection(server: Server) -> None:
    with ws_connect(server.ws_url) as ws:
        response = requests.get(
            server.url + POLL_PATH,
            params={"connection_id": ws.connection_id, "token": "", "cursor": "0"},
            timeout=5,
        )
        _assert_json_error(response, 404)
        assert ws.ping()["type"] == "pong"


# -- expiry --------------------------------------------------------------------------


def test_a_connection_not_polled_expires(server: Server) -> None:
    channel = "presence-exp." + uuid.uuid4().hex[:8]
    with ws_connect(server.ws_url + "?user=6&name=Obs") as observer:
        assert observer.subscribe(channel)["type"] == "subscribed"
        poller = Poller(server, user="5", name="Ann")
        assert poller.subscribe(channel)["type"] == "subscribed"
        assert observer.wait_event("presence.join", channel)["data"]["user_id"] == "5"
        poller.poll()  # the last poll; then silence
        stopped = time.monotonic()
        leave = observer.wait_event("presence.leave", channel, timeout=EXPIRY + 5)
        took = time.monotonic() - stopped
        assert leave["data"] == {"user_id": "5"}
        # Expiry, plus up to one timer period, plus slack.
        assert took <= EXPIRY + HEARTBEAT / 2 + 1.0, f"expired after {took:.2f} s"
        _assert_json_error(poller.get(), 404)
        _assert_json_error(poller.post({"type": "ping"}), 404)
        presence = requests.get(
            f"{server.url}/presence", params={"channel": channel}, timeout=5
        ).json()
        assert [m["user_id"] for m in presence["members"]] == ["6"]
        assert observer.ping()["type"] == "pong"


def test_a_connection_that_keeps_polling_does_not_expire(server: Server) -> None:
    poller = Poller(server)
    channel = _unique("kept")
    poller.subscribe(channel)
    ended = time.monotonic() + EXPIRY * 3
    while time.monotonic() < ended:
        assert poller.poll() == []  # each one waits out the timeout
    _broadcast(server, channel, "still", 1)
    assert poller.wait_event("still", channel)["data"] == 1


def test_expiry_counts_from_the_end_of_the_last_poll(server: Server) -> None:
    """A poll that waits out the timeout is not time the client was away."""
    poller = Poller(server)
    poller.poll()  # waits TIMEOUT s, as long as EXPIRY
    time.sleep(EXPIRY * 0.5)
    assert poller.get().status_code == 200


# -- POST /send: good and bad input -------------------------------------------------


def test_post_replies_come_in_the_post_only(server: Server) -> None:
    poller = Poller(server, user="3")
    channel = _unique("chat")
    assert poller.request({"type": "subscribe", "channel": channel, "id": 1}) == [
        {"type": "subscribed", "channel": channel, "id": 1}
    ]
    assert poller.request({"type": "ping", "id": "p"}) == [{"type": "pong", "id": "p"}]
    assert (
        poller.request(
            {"type": "event", "channel": channel, "event": "echo", "data": 1}
        )
        == []
    )
    assert poller.wait_event("echo", channel)["data"] == {"from": "3", "data": 1}
    assert poller.request({"type": "unsubscribe", "channel": channel, "id": 2}) == [
        {"type": "unsubscribed", "channel": channel, "id": 2}
    ]
    assert poller.get().json()["messages"] == [], "a reply also came on the poll"
    assert not [m for m in poller.skipped if m.get("type") != "event"]


def _post_raw(
    poller: Poller, data: bytes, content_type: str = "application/json"
) -> requests.Response:
    return poller.session.post(
        poller.server.url + SEND_PATH,
        data=data,
        headers={"Content-Type": content_type},
        timeout=5,
    )


def test_send_with_a_bad_token_gets_403(server: Server) -> None:
    poller, other = Poller(server), Poller(server)
    _assert_json_error(poller.post({"type": "ping"}, token=other.token), 403)
    _assert_json_error(poller.post({"type": "ping"}, token="x" * 32), 403)
    _assert_json_error(poller.post({"type": "ping"}, token=5), 403)
    _assert_still_working(server, poller)
    _assert_still_working(server, other)


def test_send_without_a_token_gets_403(server: Server) -> None:
    poller = Poller(server)
    body = {"connection_id": poller.connection_id, "message": {"type": "ping"}}
    _assert_json_error(_post_raw(poller, json.dumps(body).encode()), 403)
    _assert_still_working(server, poller)


def test_send_to_an_unknown_connection_gets_404(server: Server) -> None:
    poller = Poller(server)
    _assert_json_error(
        poller.post({"type": "ping"}, connection_id="nobody.nothing"), 404
    )
    _assert_still_working(server, poller)


def test_send_to_an_expired_connection_gets_404(server: Server) -> None:
    gone = Poller(server)
    poller = Poller(server)
    deadline = time.monotonic() + EXPIRY + 5
    while time.monotonic() < deadline:
        poller.poll()  # keeps this one alive, and lets time pass for the other
        response = gone.post({"type": "ping"})
        if response.status_code != 200:
            break
    _assert_json_error(response, 404)
    _assert_still_working(server, poller)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"\xff\xfe",
        b"[1, 2, 3]",
        b'"a string"',
        b"null",
        b"[" * 50_000,
    ],
    ids=["invalid", "empty", "not-utf8", "array", "string", "null", "deep"],
)
def test_send_with_a_malformed_body_gets_400(server: Server, body: bytes) -> None:
    poller = Poller(server)
    _assert_json_error(_post_raw(poller, body), 400)
    _assert_still_working(server, poller)


@pytest.mark.parametrize(
    "change",
    [
        {"connection_id": None},
        {"connection_id": 5},
        {"message": None},
        {"message": "ping"},
        {"message": ["ping"]},
        {"message": 1},
    ],
    ids=["no-id", "id-number", "no-message", "message-string", "message-list", "num"],
)
def test_send_with_missing_or_mistyped_fields_gets_400(
    server: Server, change: dict[str, t.Any]
) -> None:
    poller = Poller(server)
    body: dict[str, t.Any] = {
        "connection_id": poller.connection_id,
        "token": poller.token,
        "message": {"type": "ping"},
    }
    for key, value in change.items():
        if value is None:
            del body[key]
        else:
            body[key] = value
    _assert_json_error(_post_raw(poller, json.dumps(body).encode()), 400)
    _assert_still_working(server, poller)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_send_with_the_wrong_method_gets_405_json(server: Server, method: str) -> None:
    poller = Poller(server)
    response = poller.session.request(method, server.url + SEND_PATH, timeout=5)
    _assert_json_error(response, 405)
    _assert_still_working(server, poller)


@pytest.mark.parametrize("how", ["message", "padding", "no-json"])
def test_send_of_an_oversize_body_gets_413_json(server: Server, how: str) -> None:
    poller = Poller(server)
    big = "x" * (64 * 1024 + 1)
    if how == "message":
        body = {
            "connection_id": poller.connection_id,
            "token": poller.token,
            "message": {"type": "ping", "pad": big},
        }
        data = json.dumps(body).encode()
    elif how == "padding":
        # The message itself is small; the body is over the limit and the
        # 1 KiB the server allows for the wrapper around the message.
        body = {
            "connection_id": poller.connection_id,
            "token": poller.token,
            "message": {"type": "ping"},
            "pad": big + "x" * 2048,
        }
        data = json.dumps(body).encode()
    else:
        data = b"x" * (1024 * 1024)
    _assert_json_error(_post_raw(poller, data), 413)
    _assert_still_working(server, poller)


def test_send_of_a_message_just_under_the_limit_is_accepted(server: Server) -> None:
    poller = Poller(server)
    message = {"type": "ping", "id": 1, "pad": ""}
    message["pad"] = "x" * (64 * 1024 - len(json.dumps(message, separators=(",", ":"))))
    assert poller.request(message) == [{"type": "pong", "id": 1}]


@pytest.mark.parametrize(
    "message, code",
    [
        ({"type": "teleport", "id": 1}, 400),
        ({"id": 1}, 400),
        ({"type": "subscribe", "id": 1}, 400),
        ({"type": "subscribe", "channel": "a b", "id": 1}, 400),
        ({"type": "ping", "id": [1]}, 400),
        ({"type": "unsubscribe", "channel": "never", "id": 1}, 404),
        ({"type": "event", "channel": "chat.1", "event": "echo", "id": 1}, 404),
        ({"type": "subscribe", "channel": "private-room.9", "id": 1}, 403),
        ({"type": "subscribe", "channel": "presence-x", "id": 1}, 401),
    ],
    ids=[
        "unknown-type",
        "missing-type",
        "missing-channel",
        "bad-channel",
        "bad-id",
        "not-subscribed",
        "event-not-subscribed",
        "forbidden",
        "presence-anonymous",
    ],
)
def test_protocol_error_in_the_message_is_an_error_envelope(
    server: Server, message: dict[str, t.Any], code: int
) -> None:
    poller = Poller(server)
    response = poller.post(message)
    assert response.status_code == 200, response.text
    [error] = response.json()
    assert error["type"] == "error"
    assert error["data"]["code"] == code
    assert isinstance(error["data"]["message"], str) and error["data"]["message"]
    if code != 400 or message.get("type") == "teleport":
        assert error["id"] == 1
    _assert_still_working(server, poller)


def test_send_with_a_websocket_connection_id_gets_404(server: Server) -> None:
    with ws_connect(server.ws_url) as ws:
        poller = Poller(server)
        response = poller.post({"type": "ping"}, connection_id=ws.connection_id)
        _assert_json_error(response, 404)
        assert ws.ping()["type"] == "pong"
        _assert_still_working(server, poller)


def test_send_with_a_chunked_body_is_understood(server: Server) -> None:
    """A body without Content-Length (chunked) is read like any other."""
    poller = Poller(server)
    body = json.dumps(
        {
            "connection_id": poller.connection_id,
            "token": poller.token,
            "message": {"type": "ping", "id": "chunked"},
        }
    ).encode()
    response = poller.session.post(
        server.url + SEND_PATH,
        data=iter([body[:10], body[10:]]),
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    assert response.json() == [{"type": "pong", "id": "chunked"}]


# -- special configuration -----------------------------------------------------------


def test_rate_limit_refuses_the_fourth_post(
    live_server: LiveServerFactory, server_kind: str
) -> None:
    started = live_server(
        server_kind,
        env={
            **ENV,
            "TESTAPP_REALTIME_LONGPOLL_EXPIRY": "30",
            "TESTAPP_REALTIME_RATE_LIMIT": json.dumps(
                {"enabled": True, "messages_per_minute": 3}
            ),
        },
    )
    poller, other = Poller(started), Poller(started)
    channel = _unique("limited")
    assert poller.subscribe(channel)["type"] == "subscribed"
    for n in range(2):
        assert poller.request({"type": "ping", "id": n}) == [{"type": "pong", "id": n}]
    response = poller.post({"type": "ping", "id": "over"})
    assert response.status_code == 200, response.text
    [error] = response.json()
    assert error["type"] == "error" and error["id"] == "over"
    assert error["data"]["code"] == 429
    assert 0 < error["data"]["retry_after"] <= 20
    # Refused, not closed: broadcasts still reach it, and others are unaffected.
    _broadcast(started, channel, "still", 1)
    assert poller.wait_event("still", channel)["data"] == 1
    assert other.request({"type": "ping", "id": 1}) == [{"type": "pong", "id": 1}]
    assert other.subscribe(channel)["type"] == "subscribed"


def test_disabled_transport_gets_404_json(
    live_server: LiveServerFactory, server_kind: str
) -> None:
    started = live_server(
        server_kind, env={"TESTAPP_REALTIME_TRANSPORTS": '["websocket", "sse"]'}
    )
    _assert_json_error(requests.get(started.url + POLL_PATH, timeout=5), 404)
    response = requests.get(
        started.url + POLL_PATH,
        params={"connection_id": "a.b", "token": "t", "cursor": "0"},
        timeout=5,
    )
    _assert_json_error(response, 404)


def test_expiry_does_not_wait_for_the_heartbeat_timer(
    live_server: LiveServerFactory,
) -> None:
    """``REALTIME_LONGPOLL_EXPIRY`` holds whatever the heartbeat is.

    With the default heartbeat (25 s) and a 1 s expiry, a connection left
    unpolled for 4 s is gone: polling it gets 404, and its presence leave
    has gone out.
    """
    started = live_server(
        "geventwebsocket",
        env={
            "TESTAPP_REALTIME_LONGPOLL_TIMEOUT": str(TIMEOUT),
            "TESTAPP_REALTIME_LONGPOLL_EXPIRY": str(EXPIRY),
        },
    )
    channel = "presence-exp2." + uuid.uuid4().hex[:8]
    with ws_connect(started.ws_url + "?user=6") as observer:
        observer.subscribe(channel)
        poller = Poller(started, user="5")
        poller.subscribe(channel)
        observer.wait_event("presence.join", channel)
        poller.poll()
        time.sleep(EXPIRY * 4)
        _assert_json_error(poller.get(), 404)
        assert observer.wait_event("presence.leave", channel, timeout=1)["data"] == {
            "user_id": "5"
        }


# -- parked polls: what the answer looks like on the wire ---------------------------


class RawResponse(t.NamedTuple):
    version: str
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> t.Any:
        return json.loads(self.body)


class RawHTTP:
    """HTTP/1.x spoken by hand: exactly what the server sends, and whether it
    keeps the connection. After an answer that says ``Connection: close``
    the next request goes on a new connection, as a browser's would."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", self.server.port), timeout=TIMEOUT + 10
        )
        self.port = self.sock.getsockname()[1]
        self.buf = b""
        #: The last answer said ``Connection: close``.
        self.closing = False

    def send(
        self,
        target: str,
        method: str = "GET",
        version: str = "HTTP/1.1",
        headers: t.Sequence[str] = (),
    ) -> None:
        if self.closing:
            self.sock.close()
            self._connect()
        lines = [f"{method} {target} {version}", "Host: 127.0.0.1", *headers]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"connection closed; unparsed: {self.buf!r}")
        self.buf += data

    def response(self, head_only: bool = False) -> RawResponse:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, reason = status_line.split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines:
            name, value = line.split(":", 1)
            assert name.lower() not in headers, f"header {name} twice: {head!r}"
            headers[name.lower()] = value.strip()
        self.closing = headers.get("connection", "").lower() == "close"
        body = b""
        if not head_only:
            length = int(headers["content-length"])
            while len(self.buf) < length:
                self._fill()
            body, self.buf = self.buf[:length], self.buf[length:]
        return RawResponse(version, int(status), reason, headers, body)

    def closed_by_server(self, within: float = PROMPT) -> bool:
        """True when the server ends the connection within ``within`` s."""
        self.sock.settimeout(within)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(TIMEOUT + 10)
        assert not data, f"unexpected bytes: {data!r}"
        return True

    def close(self) -> None:
        self.sock.close()


def _poll_target(poller: Poller, cursor: int | None = None) -> str:
    query = {
        "connection_id": poller.connection_id,
        "token": poller.token,
        "cursor": str(poller.cursor if cursor is None else cursor),
    }
    return f"{POLL_PATH}?{urllib.parse.urlencode(query)}"


# Where a waiting poll is parked (the others keep it in its request).
PARKING_SERVERS = ("geventwebsocket", "gevent", "cli", "realtime-worker")


def _parked_connection(server: Server) -> str | None:
    """The ``Connection`` header of a parked poll's answer on this server:
    "keep-alive" where pywsgi keeps reading the connection (gevent-websocket's
    worker, ``flask realtime serve``), "close" under gunicorn's gevent worker,
    None where polls wait in a thread (``flask run``) or may be forwarded to
    the worker that holds the connection (cluster)."""
    if server.workers > 1:
        return None
    return {
        "geventwebsocket": "keep-alive",
        "cli": "keep-alive",
        "realtime-worker": "keep-alive",
        "gevent": "close",
    }.get(server.kind)


def _origin_headers(origin: str | None) -> list[str]:
    return [f"Origin: {origin}"] if origin else []


def _assert_same_meaning(waited: RawResponse, at_once: RawResponse) -> None:
    """Two answers that differ only in how they were written."""
    assert (waited.status, waited.reason) == (at_once.status, at_once.reason)
    for name in ("content-type", "access-control-allow-origin", "vary"):
        assert waited.headers.get(name) == at_once.headers.get(name), name
    assert waited.headers.get(
        "access-control-allow-credentials"
    ) == at_once.headers.get("access-control-allow-credentials")
    assert "date" in waited.headers
    assert int(waited.headers["content-length"]) == len(waited.body)
    assert list(waited.json()) == list(at_once.json()), (waited.body, at_once.body)


@pytest.mark.parametrize("origin", [None, ALLOWED_ORIGIN], ids=["same-site", "cors"])
def test_a_poll_that_waited_is_answered_like_one_that_did_not(
    server: Server, origin: str | None
) -> None:
    poller = Poller(server)
    channel = _unique("alike")
    poller.subscribe(channel)
    headers = _origin_headers(origin)
    # Answered at once by Flask: the message waits before the poll.
    _broadcast(server, channel, "m", {"n": 1})
    http = RawHTTP(server)
    http.send(_poll_target(poller), headers=headers)
    at_once = http.response()
    first = at_once.json()
    assert [m["data"] for m in first["messages"]] == [{"n": 1}]
    # Parked (under gevent), then answered by the broadcast.
    http.send(_poll_target(poller, first["cursor"]), headers=headers)
    time.sleep(0.2)
    _broadcast(server, channel, "m", {"n": 2})
    waited = http.response()
    _assert_same_meaning(waited, at_once)
    assert waited.json() == {
        "messages": [
            {"type": "event", "channel": channel, "event": "m", "data": {"n": 2}}
        ],
        "cursor": first["cursor"] + 1,
    }
    if origin:
        assert waited.headers["access-control-allow-origin"] == origin
        assert waited.headers["access-control-allow-credentials"] == "true"
        assert waited.headers["vary"] == "Origin"
    else:
        assert "access-control-allow-origin" not in waited.headers
    expected = _parked_connection(server)
    if expected is not None:
        assert waited.headers.get("connection") == expected, waited.headers
        assert "connection" not in at_once.headers or server.kind == "gevent"
    http.close()


def test_a_parked_poll_keeps_or_closes_its_http_connection(server: Server) -> None:
    """pywsgi goes on serving the connection a parked answer went out on;
    under gunicorn's gevent worker the answer closes it."""
    poller = Poller(server)
    channel = _unique("kept")
    poller.subscribe(channel)
    http = RawHTTP(server)
    for n in range(3):
        http.send(_poll_target(poller))
        time.sleep(0.2)
        _broadcast(server, channel, "m", n)
        answer = http.response()
        assert answer.status == 200
        body = answer.json()
        assert [m["data"] for m in body["messages"]] == [n]
        poller.cursor = body["cursor"]
        expected = _parked_connection(server)
        if expected is not None:
            assert answer.headers["connection"] == expected
        if http.closing:
            assert expected in ("close", None)
            assert http.closed_by_server()
        elif expected == "keep-alive":
            assert not http.closed_by_server(within=0.1)
    http.close()


def test_a_parked_poll_times_out_empty(server: Server) -> None:
    poller = Poller(server)
    http = RawHTTP(server)
    started = time.monotonic()
    http.send(_poll_target(poller), headers=_origin_headers(ALLOWED_ORIGIN))
    answer = http.response()
    took = time.monotonic() - started
    assert TIMEOUT - 0.1 <= took <= TIMEOUT + PROMPT, f"answered after {took:.2f} s"
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert answer.json() == {"messages": [], "cursor": poller.cursor}
    if _parked_connection(server) is not None:
        assert answer.headers["connection"] == _parked_connection(server)
    http.close()
    # Waiting out the timeout was the client being there: not expired.
    assert poller.get().status_code == 200


def test_a_newer_poll_answers_a_parked_one_superseded(server: Server) -> None:
    poller = Poller(server)
    channel = _unique("newer")
    poller.subscribe(channel)
    old, new = RawHTTP(server), RawHTTP(server)
    old.send(_poll_target(poller), headers=_origin_headers(ALLOWED_ORIGIN))
    time.sleep(0.2)
    started = time.monotonic()
    new.send(_poll_target(poller))
    superseded = old.response()
    assert time.monotonic() - started < PROMPT
    assert superseded.status == 200
    assert superseded.json() == {
        "messages": [],
        "cursor": poller.cursor,
        "superseded": True,
    }
    assert superseded.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert int(superseded.headers["content-length"]) == len(superseded.body)
    if _parked_connection(server) is not None:
        assert superseded.headers["connection"] == _parked_connection(server)
    time.sleep(0.1)
    _broadcast(server, channel, "for.new", 1)
    answer = new.response().json()
    assert [m["event"] for m in answer["messages"]] == ["for.new"]
    assert "superseded" not in answer
    if _parked_connection(server) == "keep-alive":
        # The superseded poll's connection serves the next poll.
        old.send(_poll_target(poller, answer["cursor"]))
        time.sleep(0.2)
        _broadcast(server, channel, "again", 2)
        assert [m["data"] for m in old.response().json()["messages"]] == [2]
    old.close()
    new.close()


def test_closing_the_connection_answers_a_parked_poll_404(server: Server) -> None:
    poller = Poller(server)
    http = RawHTTP(server)
    http.send(_poll_target(poller), headers=_origin_headers(ALLOWED_ORIGIN))
    time.sleep(0.2)
    closed = requests.post(
        server.url + "/realtime/close",
        json={"connection_id": poller.connection_id, "token": poller.token},
        timeout=5,
    )
    assert closed.status_code == 204, closed.text
    answer = http.response()
    assert answer.status == 404
    assert answer.reason.upper() == "NOT FOUND"
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    error = answer.json()["error"]
    assert error["code"] == 404 and isinstance(error["message"], str)
    if _parked_connection(server) is not None:
        assert answer.headers["connection"] == _parked_connection(server)
    http.close()
    _assert_json_error(poller.get(), 404)


def _server_side_states(server_port: int, client_port: int) -> list[str]:
    """TCP states (``/proc/net/tcp`` codes) of the server's end of one
    loopback connection; "08" is CLOSE_WAIT: the client left, the server
    has not closed its socket yet."""
    states = []
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if int(local.rsplit(":", 1)[1], 16) != server_port:
                continue
            if int(remote.rsplit(":", 1)[1], 16) == client_port:
                states.append(state)
    return states


@pytest.mark.servers(*PARKING_SERVERS)
def test_a_client_gone_from_a_parked_poll_frees_its_socket_at_once(
    server: Server,
) -> None:
    """Before parking, the socket of a client that left stayed open until the
    poll timed out; now the server closes it as soon as the client has."""
    expected = _parked_connection(server)
    assert expected is not None
    poller = Poller(server)
    http = RawHTTP(server)
    sent = time.monotonic()
    http.send(_poll_target(poller))
    time.sleep(0.2)
    http.close()
    # Looked at well before the poll's timeout, which would close it anyway.
    while time.monotonic() - sent < TIMEOUT - 0.3:
        if "08" not in _server_side_states(server.port, http.port):
            break
        time.sleep(0.02)
    else:
        raise AssertionError("the server kept the socket of a client that left")


def test_messages_for_a_client_gone_from_a_parked_poll_wait_for_it(
    server: Server,
) -> None:
    poller = Poller(server)
    channel = _unique("gone")
    poller.subscribe(channel)
    http = RawHTTP(server)
    http.send(_poll_target(poller))
    time.sleep(0.2)
    http.close()
    time.sleep(0.2)
    _broadcast(server, channel, "kept", 1)
    # The client comes back with the cursor it had: nothing was lost.
    assert poller.wait_event("kept", channel)["data"] == 1


def test_a_client_gone_from_a_parked_poll_expires_no_sooner(server: Server) -> None:
    """The poll of a client that left still ends at its timeout, as it did in
    a greenlet: expiry counts from there, not from when the client left."""
    poller = Poller(server)
    http = RawHTTP(server)
    sent = time.monotonic()
    http.send(_poll_target(poller))
    time.sleep(0.1)
    http.close()
    # The poll ends at sent + TIMEOUT; the connection expires EXPIRY later.
    time.sleep(max(0.0, sent + TIMEOUT + EXPIRY * 0.4 - time.monotonic()))
    response = poller.get(cursor=poller.cursor)
    assert response.status_code == 200, response.text


def test_a_head_poll_gets_no_body(server: Server) -> None:
    """A HEAD is never parked: its answer has no body to write by hand."""
    poller = Poller(server)
    http = RawHTTP(server)
    http.send(_poll_target(poller), method="HEAD")
    answer = http.response(head_only=True)
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    # Nothing follows the head: the connection is quiet, or ends.
    assert http.buf == b""
    assert http.closed_by_server(within=0.3) is http.closing
    http.close()


@pytest.mark.servers(*PARKING_SERVERS)
@pytest.mark.parametrize(
    "connection, kept", [(None, False), ("keep-alive", True)], ids=["close", "keep"]
)
def test_an_http10_poll_parked(
    server: Server, connection: str | None, kept: bool
) -> None:
    """HTTP/1.0 closes after each answer unless the client asked otherwise;
    a parked answer says which, as pywsgi would have."""
    expected = _parked_connection(server)
    assert expected is not None
    poller = Poller(server)
    channel = _unique("ten")
    poller.subscribe(channel)
    http = RawHTTP(server)
    headers = [f"Connection: {connection}"] if connection else []
    http.send(_poll_target(poller), version="HTTP/1.0", headers=headers)
    time.sleep(0.2)
    _broadcast(server, channel, "m", 10)
    answer = http.response()
    assert [m["data"] for m in answer.json()["messages"]] == [10]
    keeps = kept and expected == "keep-alive"
    assert answer.headers["connection"] == ("keep-alive" if keeps else "close")
    assert http.closed_by_server(within=0.3 if keeps else PROMPT) is not keeps
    http.close()
