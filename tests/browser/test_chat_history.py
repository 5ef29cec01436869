"""The chat example keeps its rooms' history in Redis (issue 10): a page
gets what was said while it was offline, through the protocol's recovery,
after its server restarted; and the rooms' messages outlive the server and
a restart of Redis (with its append-only file).

Two chat servers share one Redis: A serves the page and is restarted, B
takes a message while A is down (as another machine of the deployment
would).
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests import brokerservers, servers
from tests.browser.chat_support import (
    CHAT_APP,
    KIND,
    ChatPages,
    say,
    start_on_port,
    unique,
    wait_ready,
)
from tests.browser.test_chat import RECONNECT_DEADLINE, child_env, expect_message

if t.TYPE_CHECKING:
    from playwright.sync_api import Browser, Request

pytestmark = pytest.mark.browser


@pytest.fixture
def chat(browser: Browser) -> t.Iterator[ChatPages]:
    opened = ChatPages(browser)
    yield opened
    opened.close_all()


def test_a_page_recovers_what_it_missed_while_its_server_restarted(
    chat: ChatPages, tmp_path: Path
) -> None:
    brokerservers.require("redis")
    redis = brokerservers.BrokerServer(
        "redis", tmp_path / "redis", persistent=True
    ).start()
    env = child_env(REALTIME_BROKER="redis", REALTIME_BROKER_URL=redis.url)
    port = servers.free_port()
    a = start_on_port(port, tmp_path, env=env, name="chat-a")
    b = servers.start(KIND, tmp_path, app=CHAT_APP, env=env, name="chat-b")
    try:
        ann_name = unique("Ann")
        ann = chat.open(a.url, ann_name, "websocket")
        before = f"Before the restart: {unique('message ')}."
        say(ann, before)
        expect_message(ann, before, ann_name, mine=True)

        reloads: list[str] = []

        def on_request(request: Request) -> None:
            if request.method == "GET" and "/rooms/" in request.url:
                reloads.append(request.url)

        ann.on("request", on_request)
        a.stop()
        expect(ann.locator("#status")).to_have_attribute("data-state", "reconnecting")
        missed = f"Said while you were away: {unique('message ')}."
        answer = ann.context.request.post(
            f"{b.url}/rooms/1/messages", data={"text": missed}
        )
        assert answer.status == 201, answer.text()

        a = start_on_port(port, tmp_path, env=env, name="chat-a-again")
        wait_ready(ann, timeout=RECONNECT_DEADLINE)
        # Replayed on the resubscribe (recovered: true), not reloaded.
        expect_message(ann, missed, ann_name, mine=True)
        expect_message(ann, before, ann_name, mine=True)
        assert reloads == []

        # The room's messages live in Redis: a restart of it (with its
        # append-only file) and of the servers keeps them for a new page.
        redis.restart()
        carol = chat.open(b.url, unique("Carol"), "websocket")
        expect_message(carol, before, ann_name, mine=False)
        expect_message(carol, missed, ann_name, mine=False)
    finally:
        a.discard()
        b.discard()
        redis.stop()
