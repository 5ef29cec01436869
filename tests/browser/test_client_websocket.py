"""The JavaScript client in headless Chromium: over WebSocket, and (tests
parametrized by ``transport``) over SSE and long-polling too, with the
fallback from one transport to the next.

Each test serves ``tests.apps.browser:app`` with gunicorn's gevent-websocket
worker, opens its pages, and drives ``RealtimeClient`` with
``page.evaluate``. The pages record every client and channel event they are
told to into ``window.events`` (see ``tests/apps/browser.py``); the tests wait
for those with deadlines.
"""

from __future__ import annotations

import json
import time
import typing as t
from pathlib import Path

import pytest
import requests

import flask_realtime
from tests.browser.conftest import APP, KIND, Pages, RestartFactory
from tests.servers import Server

if t.TYPE_CHECKING:
    from playwright.sync_api import Page

    from tests.conftest import LiveServerFactory

pytestmark = pytest.mark.browser

TIMEOUT = 10_000  # ms, for anything that should take a moment
TRANSPORTS = ("websocket", "sse", "longpolling")
# Short heartbeats and polls, so that a page that went away leaves its presence
# channels within seconds on every transport: SSE notices at its next keepalive
# write, long-polling once its last poll has timed out and the expiry passed.
ENV = {
    "TESTAPP_REALTIME_HEARTBEAT": "2",
    "TESTAPP_REALTIME_LONGPOLL_TIMEOUT": "3",
    "TESTAPP_REALTIME_LONGPOLL_EXPIRY": "2",
}

# Replaces WebSocket, EventSource and fetch with versions that note every
# connection attempt in window.attempts, before the client is created.
COUNT_ATTEMPTS = """() => {
  window.attempts = [];
  const NativeWebSocket = WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      attempts.push("websocket " + url);
    }
  };
  const NativeEventSource = EventSource;
  window.EventSource = class extends NativeEventSource {
    constructor(url, init) {
      super(url, init);
      attempts.push("sse " + url);
    }
  };
  const nativeFetch = fetch;
  window.fetch = (url, init) => {
    attempts.push("fetch " + url);
    return nativeFetch(url, init);
  };
}"""


@pytest.fixture
def server(live_server: LiveServerFactory) -> Server:
    return live_server(KIND, app=APP, env=ENV)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """The one transport the test's clients may use."""
    return request.param


def open_page(pages: Pages, server: Server, path: str = "/page") -> Page:
    return pages.open(server.url + path)


def new_client(page: Page, label: str = "c", url: str = "", **options: t.Any) -> None:
    """``window[label] = new RealtimeClient(url, options)``, recording its events."""
    page.evaluate(
        """([label, url, options]) => {
          window[label] = new RealtimeClient(url, options);
          record(label, window[label], "connected", "disconnected", "error", "state");
        }""",
        [label, url, options],
    )


def subscribe(
    page: Page, label: str, channel: str, *events: str, client: str = "c"
) -> None:
    """``window[label] = window[client].subscribe(channel)``, recording ``events``."""
    page.evaluate(
        """([label, client, channel, events]) => {
          window[label] = window[client].subscribe(channel);
          record(label, window[label], "subscribed", "error", ...events);
        }""",
        [label, client, channel, list(events)],
    )


def wait_seen(page: Page, label: str, name: str, count: int = 1) -> list[list[t.Any]]:
    """Wait until ``label`` has emitted ``name`` ``count`` times; all their args."""
    wait_for(
        page,
        "([label, name, count]) => seen(label, name).length >= count",
        [label, name, count],
    )
    return seen(page, label, name)


def wait_for(page: Page, expression: str, arg: t.Any = None) -> None:
    """``page.wait_for_function`` that, on timeout, shows what the page saw."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(expression, arg=arg, timeout=TIMEOUT)
    except PlaywrightTimeout:
        events = "\n".join(
            json.dumps(event) for event in page.evaluate("window.events || []")
        )
        pytest.fail(f"timed out waiting for {expression} ({arg!r}); events:\n{events}")


def poll_until(check: t.Callable[[], bool], timeout: float = TIMEOUT / 1000) -> None:
    """Call ``check`` every 50 ms until it is true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"still false after {timeout} s: {check}"
        time.sleep(0.05)


def seen(page: Page, label: str, name: str) -> list[list[t.Any]]:
    return page.evaluate(
        "([label, name]) => seen(label, name).map((e) => e.args)", [label, name]
    )


def get(server: Server, path: str, **params: t.Any) -> t.Any:
    response = requests.get(server.url + path, params=params, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def broadcast(server: Server, channel: str, event: str, data: t.Any) -> None:
    get(server, "/broadcast", channel=channel, event=event, data=json.dumps(data))


def assert_no_attempt_after(page: Page, count: int, window_ms: int = 1500) -> None:
    """Nothing past the first ``count`` connection attempts within ``window_ms``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with pytest.raises(PlaywrightTimeout):
        page.wait_for_function(
            "(count) => attempts.length > count", arg=count, timeout=window_ms
        )
    assert len(page.evaluate("attempts")) == count


def test_script_tag_defines_the_global_and_connects(
    server: Server, pages: Pages
) -> None:
    page = open_page(pages, server)
    assert page.evaluate("typeof RealtimeClient") == "function"
    new_client(page)  # no url: the page's origin
    [[connection_id]] = wait_seen(page, "c", "connected")
    assert page.evaluate("c.connectionId") == connection_id
    assert page.evaluate("c.transport") == "websocket"
    assert page.evaluate("c.state") == "connected"
    states = [args[0] for args in seen(page, "c", "state")]
    assert states == ["connecting", "connected"]

    # The server's address in each accepted form.
    port = server.port
    new_client(page, "ws", f"ws://127.0.0.1:{port}")
    new_client(page, "http", f"http://127.0.0.1:{port}", prefix="/realtime/")
    ids = {wait_seen(page, label, "connected")[0][0] for label in ("ws", "http")}
    assert len(ids | {connection_id}) == 3

    page.evaluate("c.disconnect()")
    assert wait_seen(page, "c", "disconnected") == [[1000, "client disconnected"]]
    assert page.evaluate("[c.state, c.connectionId]") == ["disconnected", None]


def test_es_module_import(server: Server, pages: Pages) -> None:
    page = open_page(pages, server, "/module-page")
    wait_for(page, "() => window.imported")
    assert page.evaluate(
        "typeof imported.default === 'function' && imported.default === imported.named"
    )
    page.evaluate(
        """() => {
          window.c = new imported.default();
          record("c", c, "connected");
        }"""
    )
    [[connection_id]] = wait_seen(page, "c", "connected")
    assert connection_id


def test_subscribe_receive_broadcast_and_direct_messages(
    server: Server, pages: Pages, transport: str
) -> None:
    page = open_page(pages, server)
    new_client(page, params={"user": "7"}, transports=[transport])
    subscribe(page, "news", "news", "headline")
    subscribe(page, "sport", "sport", "score")
    wait_seen(page, "news", "subscribed")
    wait_seen(page, "sport", "subscribed")
    assert page.evaluate("[c.transport, news.state, news.members]") == [
        transport,
        "subscribed",
        None,
    ]

    broadcast(server, "news", "headline", {"title": "Hi"})
    [[data, message]] = wait_seen(page, "news", "headline")
    assert data == {"title": "Hi"}
    assert message == {
        "type": "event",
        "channel": "news",
        "event": "headline",
        "data": {"title": "Hi"},
    }

    # Direct messages reach client.on(event), by connection and by user.
    page.evaluate("record('c', c, 'notification.new')")
    connection_id = page.evaluate("c.connectionId")
    get(
        server, "/send", connection_id=connection_id, event="notification.new", data="1"
    )
    get(server, "/send_to_user", user="7", event="notification.new", data="2")
    assert [args[0] for args in wait_seen(page, "c", "notification.new", 2)] == [1, 2]

    # After unsubscribe, news is not delivered: sport, published after it, is.
    page.evaluate("news.unsubscribe()")
    assert page.evaluate("[news.state, c.channel('news')]") == ["unsubscribed", None]
    poll_until(
        lambda: get(server, "/presence", channel="news")["subscriber_count"] == 0
    )
    broadcast(server, "news", "headline", {"title": "late"})
    broadcast(server, "sport", "score", {"home": 1})
    assert wait_seen(page, "sport", "score")[0][0] == {"home": 1}
    assert len(seen(page, "news", "headline")) == 1


def test_refused_subscription_surfaces_on_channel_and_client(
    server: Server, pages: Pages, transport: str
) -> None:
    page = open_page(pages, server)
    new_client(page, params={"user": "1"}, transports=[transport])
    subscribe(page, "mine", "private-room.1")
    subscribe(page, "theirs", "private-room.2")
    wait_seen(page, "mine", "subscribed")
    [[error]] = wait_seen(page, "theirs", "error")
    assert error["code"] == 403
    assert error["channel"] == "private-room.2"
    assert isinstance(error["id"], int)
    client_errors = [args[0] for args in wait_seen(page, "c", "error")]
    assert client_errors == [error]
    assert page.evaluate("[theirs.state, c.channel('private-room.2')]") == [
        "failed",
        None,
    ]
    assert page.evaluate("mine.state") == "subscribed"


def test_client_event_on_presence_channel_reaches_the_other_page(
    server: Server, pages: Pages, transport: str
) -> None:
    ann = open_page(pages, server)
    bob = open_page(pages, server)
    new_client(ann, params={"user": "1", "name": "Ann"}, transports=[transport])
    new_client(bob, params={"user": "2", "name": "Bob"})  # over WebSocket
    subscribe(ann, "room", "presence-room.1", "client-typing")
    subscribe(bob, "room", "presence-room.1", "client-typing")
    wait_seen(ann, "room", "subscribed")
    wait_seen(bob, "room", "subscribed")

    ann.evaluate("room.send('client-typing', {typing: true})")
    [[data, message]] = wait_seen(bob, "room", "client-typing")
    assert data == {"typing": True}
    assert message["channel"] == "presence-room.1"
    assert message["user_id"] == "1"  # the sender, as the server knows it
    bob.evaluate("room.send('client-typing', {typing: false})")
    assert wait_seen(ann, "room", "client-typing")[0][0] == {"typing": False}


def test_presence_members_follow_joins_and_leaves(
    server: Server, pages: Pages, transport: str
) -> None:
    ann = open_page(pages, server)
    new_client(ann, params={"user": "1", "name": "Ann"})
    subscribe(ann, "room", "presence-room.5", "presence.join", "presence.leave")
    wait_seen(ann, "room", "subscribed")
    members = ann.evaluate("room.members")
    assert [(m["user_id"], m["user_info"]) for m in members] == [("1", {"name": "Ann"})]

    bob = open_page(pages, server)
    new_client(bob, params={"user": "2", "name": "Bob"}, transports=[transport])
    subscribe(bob, "room", "presence-room.5")
    wait_seen(bob, "room", "subscribed")
    assert sorted(m["user_id"] for m in bob.evaluate("room.members")) == ["1", "2"]

    [[joined, _]] = wait_seen(ann, "room", "presence.join")
    assert joined["user_id"] == "2"
    assert joined["user_info"] == {"name": "Bob"}
    assert sorted(m["user_id"] for m in ann.evaluate("room.members")) == ["1", "2"]

    bob.context.close()  # no goodbye: the server must notice
    [[left, _]] = wait_seen(ann, "room", "presence.leave")
    assert left["user_id"] == "2"
    assert [m["user_id"] for m in ann.evaluate("room.members")] == ["1"]


def test_sends_before_connecting_are_queued_and_delivered(
    server: Server, pages: Pages, transport: str
) -> None:
    bob = open_page(pages, server)
    new_client(bob, params={"user": "2"})
    subscribe(bob, "room", "presence-room.q", "client-hello")
    wait_seen(bob, "room", "subscribed")

    ann = open_page(pages, server)
    state = ann.evaluate(
        """(transport) => {
          const options = {params: {user: "1"}, transports: [transport]};
          window.c = new RealtimeClient("", options);
          const room = c.subscribe("presence-room.q");
          for (const n of [1, 2, 3]) room.send("client-hello", {n});
          return [c.state, c.connectionId, room.state];
        }""",
        transport,
    )
    assert state == ["disconnected", None, "pending"]  # nothing is connected yet
    hellos = wait_seen(bob, "room", "client-hello", 3)
    assert [args[0] for args in hellos] == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_reconnects_after_a_restart_and_resubscribes(
    live_server: LiveServerFactory,
    restart_server: RestartFactory,
    pages: Pages,
    transport: str,
) -> None:
    first = live_server(KIND, app=APP, env=ENV)
    page = open_page(pages, first)
    new_client(page, minDelay=100, maxDelay=500, transports=[transport])
    subscribe(page, "news", "news", "headline")
    wait_seen(page, "news", "subscribed")
    old_id = page.evaluate("c.connectionId")

    second = restart_server(first, env=ENV)
    # The client is subscribed on the new server (the old one has exited).
    presence = {"channel": "news"}
    poll_until(lambda: get(second, "/presence", **presence)["subscriber_count"] == 1)
    wait_for(page, "() => c.state === 'connected' && news.state === 'subscribed'")
    assert page.evaluate("[c.state, c.transport, news.state]") == [
        "connected",
        transport,
        "subscribed",
    ]
    assert page.evaluate("c.connectionId") != old_id
    code, _reason = seen(page, "c", "disconnected")[0]
    # WebSocket hears that the server is restarting; the others, a lost connection.
    assert code == (4200 if transport == "websocket" else 1006)
    states = [args[0] for args in seen(page, "c", "state")]
    assert states[:3] == ["connecting", "connected", "reconnecting"]

    broadcast(second, "news", "headline", {"after": "restart"})
    assert wait_seen(page, "news", "headline")[0][0] == {"after": "restart"}


@pytest.mark.parametrize("transport", ["websocket", "longpolling"])
def test_refused_authentication_does_not_reconnect(
    server: Server, pages: Pages, transport: str
) -> None:
    page = open_page(pages, server)
    page.evaluate(COUNT_ATTEMPTS)
    transports = TRANSPORTS[TRANSPORTS.index(transport) :]
    new_client(
        page, params={"deny": "1"}, minDelay=10, maxDelay=50, transports=transports
    )
    [[code, _reason]] = wait_seen(page, "c", "disconnected")
    assert code == 4001
    assert page.evaluate("c.state") == "disconnected"
    assert seen(page, "c", "connected") == []
    # No second attempt, and no fallback to the transports after this one.
    attempts = page.evaluate("attempts")
    prefix = "websocket " if transport == "websocket" else "fetch "
    assert len(attempts) == 1 and attempts[0].startswith(prefix)
    assert "deny=1" in attempts[0]
    assert_no_attempt_after(page, 1)


@pytest.mark.parametrize(
    ("enabled", "expected"),
    [(["sse", "longpolling"], "sse"), (["longpolling"], "longpolling")],
)
def test_falls_back_when_a_transport_is_disabled(
    live_server: LiveServerFactory, pages: Pages, enabled: list[str], expected: str
) -> None:
    env = {**ENV, "TESTAPP_REALTIME_TRANSPORTS": json.dumps(enabled)}
    server = live_server(KIND, app=APP, env=env)
    page = open_page(pages, server)
    new_client(page)  # every transport, WebSocket first
    subscribe(page, "news", "news", "headline")
    wait_seen(page, "news", "subscribed")
    assert page.evaluate("c.transport") == expected
    assert seen(page, "c", "error") == []  # a fallback is not an error
    broadcast(server, "news", "headline", {"via": expected})
    assert wait_seen(page, "news", "headline")[0][0] == {"via": expected}


def test_falls_back_when_websocket_is_blocked(server: Server, pages: Pages) -> None:
    page = open_page(pages, server)
    # A proxy that refuses the upgrade: the page's socket closes at once.
    page.route_web_socket("**/realtime/ws*", lambda ws: ws.close())
    new_client(page)
    wait_seen(page, "c", "connected")
    assert page.evaluate("c.transport") == "sse"


def test_silent_connection_is_detected_by_pings(
    live_server: LiveServerFactory, pages: Pages
) -> None:
    server = live_server(KIND, app=APP, env={"TESTAPP_REALTIME_HEARTBEAT": "1"})
    page = pages.open(server.url + "/page")
    dropped: list[str] = []

    def drop_pongs(ws: t.Any) -> None:
        """Relay both ways, but lose every pong: a half-dead connection."""
        upstream = ws.connect_to_server()
        ws.on_message(upstream.send)

        def downstream(message: str | bytes) -> None:
            if '"pong"' in str(message):
                dropped.append(str(message))
            else:
                ws.send(message)

        upstream.on_message(downstream)

    page.route_web_socket("**/realtime/ws*", drop_pongs)
    new_client(page, pongTimeout=300, minDelay=100, maxDelay=200)
    wait_seen(page, "c", "connected")
    [[code, reason]] = wait_seen(page, "c", "disconnected")
    assert code == 1006
    assert "pong" in reason
    assert dropped
    wait_seen(page, "c", "connected", 2)  # and it came back


@pytest.mark.parametrize("name", ["client.js", "client.mjs"])
def test_the_extension_serves_the_client(server: Server, name: str) -> None:
    response = requests.get(f"{server.url}/realtime/{name}", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(
        ("application/javascript", "text/javascript")
    )
    source = (Path(flask_realtime.__file__).parent / "static" / name).read_text()
    assert response.text == source


def test_the_flask_session_cookie_identifies_the_user(
    server: Server, pages: Pages, transport: str
) -> None:
    page = open_page(pages, server, "/login?user=9&name=Zed")
    page.goto(server.url + "/page")
    new_client(page, transports=[transport])
    subscribe(page, "room", "presence-room.cookie")
    wait_seen(page, "room", "subscribed")
    members = page.evaluate("room.members")
    assert [(m["user_id"], m["user_info"]) for m in members] == [("9", {"name": "Zed"})]


def test_headers_and_params_go_with_the_http_requests(
    server: Server, pages: Pages
) -> None:
    page = open_page(pages, server)
    requests_seen: list[tuple[str, str, dict[str, str]]] = []
    page.on(
        "request",
        lambda r: requests_seen.append((r.method, r.url, r.headers)),
    )
    page.evaluate(
        """() => {
          let n = 0;
          window.c = new RealtimeClient("", {
            transports: ["longpolling"],
            headers: {"X-Token": "secret"},
            params: () => ({user: "3", n: ++n}),  // a function: fresh per request
          });
          record("c", c, "connected");
          window.room = c.subscribe("presence-room.h");
          record("room", room, "subscribed");
        }"""
    )
    wait_seen(page, "room", "subscribed")
    assert page.evaluate("room.members")[0]["user_id"] == "3"
    polls = [(u, h) for m, u, h in requests_seen if "/realtime/poll" in u]
    sends = [(u, h) for m, u, h in requests_seen if m == "POST" and "/send" in u]
    assert polls and sends
    for _url, headers in polls + sends:
        assert headers.get("x-token") == "secret"
    assert "user=3" in polls[0][0] and "n=1" in polls[0][0]
    assert "user=" not in sends[0][0]  # POST /send is bound by its token


@pytest.mark.parametrize("transport", ["sse", "longpolling"])
@pytest.mark.parametrize("leave", ["disconnect", "close the page"])
def test_http_clients_leave_presence_at_once(
    live_server: LiveServerFactory, pages: Pages, transport: str, leave: str
) -> None:
    # Default heartbeat and poll timeouts: only the client's goodbye
    # (POST /realtime/close) can make the server notice within the deadline.
    server = live_server(KIND, app=APP)
    ann = open_page(pages, server)
    new_client(ann, params={"user": "1", "name": "Ann"})
    subscribe(ann, "room", "presence-room.bye", "presence.join", "presence.leave")
    wait_seen(ann, "room", "subscribed")
    bob = open_page(pages, server)
    new_client(bob, params={"user": "2", "name": "Bob"}, transports=[transport])
    subscribe(bob, "room", "presence-room.bye")
    wait_seen(ann, "room", "presence.join")

    if leave == "disconnect":
        bob.evaluate("c.disconnect()")
    else:
        bob.close()
    [[left, _]] = wait_seen(ann, "room", "presence.leave")
    assert left["user_id"] == "2"
    assert [m["user_id"] for m in ann.evaluate("room.members")] == ["1"]
