"""The chat example (``examples/chat``) in headless Chromium, page against page.

Two users chat on each transport forced in turn (``?transport=...``), see each
other come and go in the presence list and see each other typing; a page
survives a server restart; and a page with no ``?transport`` falls back to
SSE, then long-polling, when the server has WebSocket (and SSE) disabled.

The server is gunicorn with the gevent-websocket worker serving
``examples.chat.app:app``. One server is shared by the module's tests (each
test signs in users with names of its own, so the server's memory of earlier
tests does not matter); the restart and fallback tests start their own.
Chromium is the browser tests' shared one (``tests/browser/conftest.py``).
"""

from __future__ import annotations

import os
import time
import typing as t
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests import brokerservers, servers
from tests.browser.chat_support import (
    CHAT_APP,
    KIND,
    TRANSPORTS,
    ChatPages,
    client_state,
    say,
    start_on_port,
    unique,
    user_id,
    wait_ready,
)
from tests.servers import Server

if t.TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

    from tests.conftest import LiveServerFactory

pytestmark = pytest.mark.browser


# A closed page leaves its presence channels at once on every transport: its
# WebSocket or event stream closes, and the server sees that; a long-polling
# client posts a beacon to POST /realtime/close on pagehide (without it, the
# connection would stay until its last poll timed out and then expired: about
# 90 s with the chat app's defaults, so this deadline checks the beacon).
LEAVE_DEADLINE = 5_000  # ms
# The page drops a typing indicator after four quiet seconds (chat.js).
TYPING_QUIET = 4_000  # ms
# Reconnect backoff: 1 s, then doubling (with jitter) while the server is down.
RECONNECT_DEADLINE = 30_000  # ms

# Records every connection attempt of the page into window.attempts: which
# transports the client tried, in which order.
RECORD_ATTEMPTS = """
window.attempts = [];
{
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(...args) {
      window.attempts.push("websocket");
      super(...args);
    }
  };
  const NativeEventSource = window.EventSource;
  window.EventSource = class extends NativeEventSource {
    constructor(...args) {
      window.attempts.push("sse");
      super(...args);
    }
  };
  const nativeFetch = window.fetch;
  window.fetch = (input, init) => {
    const url = String(input);
    if (url.includes("/realtime/poll") && !url.includes("connection_id=")) {
      window.attempts.push("longpolling");
    }
    return nativeFetch(input, init);
  };
}
"""


def child_env(**extra: str) -> dict[str, str | None]:
    """The server's environment: none of the library's configuration
    fallbacks from ours (as ``tests/conftest.py`` does for each test), plus
    ``extra``."""
    prefixes = ("REALTIME_", "REDIS_", "RABBITMQ_")
    env: dict[str, str | None] = {
        key: None for key in os.environ if key.startswith(prefixes)
    }
    env["NATS_URL"] = None
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Server]:
    """The chat app with its defaults, shared by the module's tests."""
    server = servers.start(
        KIND,
        tmp_path_factory.mktemp("chat-server"),
        app=CHAT_APP,
        env=child_env(),
        name="chat",
    )
    yield server
    server.discard()


@pytest.fixture
def chat(browser: Browser) -> t.Iterator[ChatPages]:
    opened = ChatPages(browser)
    yield opened
    opened.close_all()


class Restartable:
    """The chat app on a port of its own, to stop and start again there."""

    def __init__(self, log_dir: Path, **env: str) -> None:
        self.log_dir = log_dir
        self.env = env  # on top of child_env()
        self.port = servers.free_port()
        self.starts = 0
        self.server = self._start()

    def _start(self) -> Server:
        self.starts += 1
        return start_on_port(
            self.port,
            self.log_dir,
            env=child_env(**self.env),
            name=f"chat-{self.starts}",
        )

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server = self._start()


@pytest.fixture
def restartable(tmp_path: Path) -> t.Iterator[Restartable]:
    chat_app = Restartable(tmp_path)
    yield chat_app
    chat_app.server.discard()


def expect_live(page: Page, transport: str) -> None:
    """The status under the user's name says connected over ``transport``,
    and so does the client."""
    status = page.locator("#status")
    expect(status).to_have_attribute("data-state", "connected")
    expect(status).to_have_attribute("data-transport", transport)
    expect(page.locator("#status-text")).to_have_text(f"live · {transport}")
    assert client_state(page)["transport"] == transport


def expect_message(page: Page, text: str, author: str, *, mine: bool) -> None:
    """``text`` is in the room on screen, once, from ``author``."""
    message = page.locator("#messages .msg", has_text=text)
    expect(message).to_have_count(1)
    expect(message).to_have_attribute("data-user", user_id(author))
    expect(message.locator(".bubble")).to_have_text(text)
    expect(message.locator(".name")).to_have_text("You" if mine else author)
    if mine:
        expect(message).to_contain_class("mine")
        # The server acknowledged the send (the promise of channel.send()).
        expect(message).to_have_attribute("data-status", "sent")
    else:
        expect(message).not_to_contain_class("mine")


def exchange_messages(ann: Page, ann_name: str, bob: Page, bob_name: str) -> None:
    """Ann writes, both see it; Bob answers, both see that."""
    hello = f"Hi {bob_name}, this is {unique('message ')}."
    say(ann, hello)
    expect_message(bob, hello, ann_name, mine=False)
    expect_message(ann, hello, ann_name, mine=True)
    answer = f"Hello {ann_name}! Here is {unique('message ')}."
    say(bob, answer)
    expect_message(ann, answer, bob_name, mine=False)
    expect_message(bob, answer, bob_name, mine=True)


def members(page: Page) -> list[str]:
    """The user ids in the page's member list, in its order."""
    return page.locator("#members button").evaluate_all(
        "(buttons) => buttons.map((button) => button.dataset.user)"
    )


# -- chatting on each transport ----------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_two_pages_chat_both_ways(
    chat_server: Server, chat: ChatPages, transport: str
) -> None:
    ann_name, bob_name = unique("Ann"), unique("Bob")
    ann = chat.open(chat_server.url, ann_name, transport)
    bob = chat.open(chat_server.url, bob_name, transport)
    for page in (ann, bob):
        expect_live(page, transport)

    exchange_messages(ann, ann_name, bob, bob_name)

    # Each message is drawn once, in the order sent, on both pages.
    for page in (ann, bob):
        texts = page.locator("#messages .msg .bubble").all_inner_texts()
        assert texts[-2].startswith(f"Hi {bob_name},")
        assert texts[-1].startswith(f"Hello {ann_name}!")


def test_a_message_shows_sending_until_acknowledged_or_not_sent(
    chat_server: Server, chat: ChatPages
) -> None:
    """Over long-polling, where the test can hold the page's ``POST /send``."""
    name = unique("Ann")
    ann = chat.open(chat_server.url, name, "longpolling")
    held: list[Route] = []
    refuse = False

    def hold(route: Route) -> None:
        if "message.send" not in (route.request.post_data or ""):
            route.continue_()  # typing indicators go through
        elif refuse:
            route.fulfill(status=503, json={"error": {"code": 503, "message": "busy"}})
        else:
            held.append(route)

    ann.route("**/realtime/send", hold)
    try:
        text = f"Held back: {unique('message ')}."
        say(ann, text)
        draft = ann.locator("#messages .msg", has_text=text)
        expect(draft).to_have_attribute("data-status", "sending")
        expect(draft.locator(".delivery")).to_have_text("Sending…")
        deadline = time.monotonic() + 5
        while not held:  # the page's POST reaches the route handler
            assert time.monotonic() < deadline, "the message's POST /send never came"
            ann.evaluate("0")  # lets Playwright dispatch the route event
        route = held.pop()
        # The server takes the message and broadcasts it; its answer (the
        # ack) is held back, so the broadcast reaches the page first: it
        # takes the draft's place, shown once, as sent.
        reply = route.fetch()
        assert reply.status == 200
        expect_message(ann, text, name, mine=True)
        expect(draft.locator(".delivery")).to_have_text("Sent")
        route.fulfill(response=reply)  # the ack, late: nothing changes
        ann.evaluate("new Promise((resolve) => setTimeout(resolve, 0))")
        expect_message(ann, text, name, mine=True)

        refuse = True
        failing = f"Refused: {unique('message ')}."
        say(ann, failing)
        refused = ann.locator("#messages .msg", has_text=failing)
        expect(refused).to_have_attribute("data-status", "failed")
        expect(refused.locator(".delivery")).to_have_text("Not sent")
        expect(ann.locator(".toast.error").last).to_contain_text("busy")
    finally:
        # Without routes again, as the other tests' pages: with one, the goodbye
        # beacon of a closing page does not get out (Ann would stay in #general).
        ann.unroute("**/realtime/send", hold)


# -- presence -----------------------------------------------------------------


@pytest.mark.parametrize("closing", ["page", "context"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_presence_list_follows_pages_opening_and_closing(
    chat_server: Server, chat: ChatPages, transport: str, closing: str
) -> None:
    ann_name, bob_name = unique("Ann"), unique("Bob")
    ann_id, bob_id = user_id(ann_name), user_id(bob_name)
    ann = chat.open(chat_server.url, ann_name, transport)
    expect(ann.locator(f"#members [data-user={ann_id}]")).to_contain_text("(you)")

    bob = chat.open(chat_server.url, bob_name, transport)
    expect_live(bob, transport)
    bob_in_ann = ann.locator(f"#members [data-user={bob_id}]")
    expect(bob_in_ann).to_have_count(1)
    expect(bob_in_ann).to_contain_text(bob_name)
    expect(ann.locator("#messages .system").last).to_have_text(f"{bob_name} joined")
    expect(bob.locator(f"#members [data-user={ann_id}]")).to_have_count(1)
    assert members(bob)[0] == bob_id  # oneself first

    if closing == "page":
        bob.close()
    else:
        bob.context.close()

    expect(bob_in_ann).to_have_count(0, timeout=LEAVE_DEADLINE)
    expect(ann.locator("#messages .system").last).to_have_text(f"{bob_name} left")
    expect(ann.locator("#member-count")).to_have_text("1")
    assert members(ann) == [ann_id]
    # The server agrees: Bob is no longer a member of presence-room.1.
    reply = ann.context.request.get("/rooms/1/members")
    assert reply.status == 200
    assert [m["user_id"] for m in reply.json()["members"]] == [ann_id]


# -- typing indicators ----------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_typing_indicator_shows_and_goes_away(
    chat_server: Server, chat: ChatPages, transport: str
) -> None:
    ann_name, bob_name = unique("Ann"), unique("Bob")
    ann = chat.open(chat_server.url, ann_name, transport)
    bob = chat.open(chat_server.url, bob_name, transport)
    expect(bob.locator(f"#members [data-user={user_id(ann_name)}]")).to_have_count(1)
    typing_line = bob.locator("#typing")
    ann_in_bob = bob.locator(f"#members li:has([data-user={user_id(ann_name)}])")
    expect(typing_line).to_have_text("")

    # Ann types: Bob sees it, under the messages and in the member list.
    ann.locator("#message-input").press_sequentially("Just a sec", delay=20)
    text = f"Just a sec, {unique('message ')}."
    expect(typing_line).to_have_text(f"{ann_name} is typing…")
    expect(ann_in_bob).to_contain_class("is-typing")
    expect(ann_in_bob.locator(".who-id")).to_have_text("typing…")
    expect(ann.locator("#typing")).to_have_text("")  # not shown to oneself

    # Ann stops typing: the indicator goes after a few quiet seconds.
    expect(typing_line).to_have_text("", timeout=TYPING_QUIET + 4_000)
    expect(ann_in_bob).not_to_contain_class("is-typing")
    expect(ann_in_bob.locator(".who-id")).to_have_text(f"@{user_id(ann_name)}")

    # Ann types again and sends: the message ends the indicator at once,
    # well before the quiet timeout would.
    ann.locator("#message-input").press_sequentially(text[10:], delay=20)
    expect(typing_line).to_have_text(f"{ann_name} is typing…")
    ann.press("#message-input", "Enter")
    expect_message(bob, text, ann_name, mine=False)
    expect(typing_line).to_have_text("", timeout=TYPING_QUIET // 2)
    expect(ann_in_bob).not_to_contain_class("is-typing")


# -- a server restart -----------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_pages_reconnect_and_resubscribe_after_a_server_restart(
    restartable: Restartable, chat: ChatPages, transport: str
) -> None:
    base = restartable.server.url
    ann_name, bob_name = unique("Ann"), unique("Bob")
    ann = chat.open(base, ann_name, transport)
    bob = chat.open(base, bob_name, transport)
    exchange_messages(ann, ann_name, bob, bob_name)
    before = {name: client_state(page) for name, page in (("ann", ann), ("bob", bob))}

    restartable.stop()
    for page in (ann, bob):
        expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
        expect(page.locator("#status-text")).to_have_text("reconnecting…")

    restartable.start()  # same port, empty memory; the session cookies still hold
    for name, page in (("ann", ann), ("bob", bob)):
        wait_ready(page, timeout=RECONNECT_DEADLINE)
        expect_live(page, transport)
        assert client_state(page)["connectionId"] != before[name]["connectionId"]

    # Presence was resubscribed: each is in the other's member list again.
    expect(ann.locator(f"#members [data-user={user_id(bob_name)}]")).to_have_count(1)
    expect(bob.locator(f"#members [data-user={user_id(ann_name)}]")).to_have_count(1)

    # A broadcast from an ordinary view (POST /rooms/1/messages) reaches both.
    news = f"Back after the restart: {unique('message ')}."
    reply = ann.context.request.post("/rooms/1/messages", data={"text": news})
    assert reply.status == 201, reply.text()
    expect_message(ann, news, ann_name, mine=True)
    expect_message(bob, news, ann_name, mine=False)

    # And the pages' own client events work again, both ways.
    exchange_messages(ann, ann_name, bob, bob_name)


# WebSocket: tests/browser/test_chat_history.py, with a Redis restart too.
@pytest.mark.parametrize("transport", ["longpolling"])
def test_pages_recover_missed_messages_after_a_restart_on_redis(
    tmp_path: Path, chat: ChatPages, transport: str
) -> None:
    """Redis with persistence keeps the rooms' history and its epoch: pages
    that come back to a restarted app resubscribe with ``since``, are told
    ``recovered: true`` and get what was said meanwhile (through another
    instance of the app on the same Redis) replayed, once each, without
    reloading the room."""
    redis = brokerservers.BrokerServer(
        "redis", tmp_path / "redis", persistent=True
    ).start()
    broker = {"REALTIME_BROKER": "redis", "REALTIME_BROKER_URL": redis.url}
    app = Restartable(tmp_path / "app", **broker)
    other = Restartable(tmp_path / "other", **broker)
    try:
        base = app.server.url
        ann_name, bob_name = unique("Ann"), unique("Bob")
        ann = chat.open(base, ann_name, transport)
        bob = chat.open(base, bob_name, transport)
        exchange_messages(ann, ann_name, bob, bob_name)

        app.stop()
        expect(ann.locator("#status")).to_have_attribute("data-state", "reconnecting")
        # Said while the pages are away, through the other instance (the
        # session cookie holds there too: same host, same secret key).
        missed = [
            f"Said while you were away {n}: {unique('message ')}." for n in (1, 2)
        ]
        for text in missed:
            url = f"{other.server.url}/rooms/1/messages"
            assert ann.context.request.post(url, data={"text": text}).status == 201
        app.start()
        for page in (ann, bob):
            wait_ready(page, timeout=RECONNECT_DEADLINE)
            expect_live(page, transport)
        for text in missed:
            expect_message(bob, text, ann_name, mine=False)
            expect_message(ann, text, ann_name, mine=True)
        replies = bob.evaluate("chatRecoveries.filter((r) => r.room === 1)")
        assert [(r["recovered"], r["resubscribed"]) for r in replies] == [
            (False, False),
            (True, True),
        ]
        exchange_messages(ann, ann_name, bob, bob_name)
    finally:
        app.server.discard()
        other.server.discard()
        redis.stop()


# -- falling back when the server disables transports ---------------------------


@pytest.mark.parametrize(
    ("enabled", "expected", "tried"),
    [
        ("sse,longpolling", "sse", ["websocket", "sse"]),
        ("longpolling", "longpolling", ["websocket", "sse", "longpolling"]),
    ],
)
def test_page_falls_back_to_the_transports_the_server_has(
    live_server: LiveServerFactory,
    chat: ChatPages,
    enabled: str,
    expected: str,
    tried: list[str],
) -> None:
    # The chat app does not configure transports, so the library's
    # environment fallback REALTIME_TRANSPORT decides.
    server = live_server(KIND, app=CHAT_APP, env={"REALTIME_TRANSPORT": enabled})
    pages = {}
    for name in (unique("Ann"), unique("Bob")):
        context = chat.sign_in(server.url, name)
        context.add_init_script(RECORD_ATTEMPTS)
        pages[name] = chat.open(server.url, name, context=context)  # no ?transport
    (ann_name, ann), (bob_name, bob) = pages.items()

    for page in (ann, bob):
        expect_live(page, expected)
        # It tried the default order and stopped at the first that works.
        assert page.evaluate("window.attempts") == tried
    exchange_messages(ann, ann_name, bob, bob_name)
    expect(bob.locator(f"#members [data-user={user_id(ann_name)}]")).to_have_count(1)
