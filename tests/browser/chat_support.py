"""Helpers for the chat example's browser tests (``test_chat.py``).

The chat app is ``examples/chat/app.py``; ``examples`` and ``examples/chat``
have no ``__init__.py``, but as namespace packages under the repository root
(which ``servers.child_environment`` puts on ``PYTHONPATH``) they import as
``examples.chat.app``, so gunicorn can serve ``examples.chat.app:app``.

Users sign in by posting the login form through their browser context's
request API, which shares the context's cookies: the page then opens straight
on the transport a test wants, without a first connection on the default one.
"""

from __future__ import annotations

import itertools
import re
import typing as t
from pathlib import Path

from tests import servers
from tests.servers import Server

if t.TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

CHAT_APP = "examples.chat.app:app"
KIND = "geventwebsocket"  # gunicorn with the gevent-websocket worker
TRANSPORTS = ("websocket", "sse", "longpolling")
ROOM_CHANNELS = ("chat.room.1", "chat.room.2", "chat.room.3")
PRESENCE_CHANNEL = "presence-room.1"  # #general, the room a page opens on

_numbers = itertools.count(1)


def unique(word: str) -> str:
    """``word`` plus a number no other call in this process got: names and
    texts that the shared server's memory (history, directory) cannot confuse
    with an earlier test's."""
    return f"{word}{next(_numbers)}"


def user_id(name: str) -> str:
    """The chat's user id for a display name (``user_id_for`` in app.py)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def start_on_port(
    port: int,
    log_dir: Path,
    env: t.Mapping[str, str | None] | None = None,
    name: str = "chat",
) -> Server:
    """The chat app on ``port`` (gunicorn, gevent-websocket worker), healthy.

    A restarted server must come back where its pages look for it, so unlike
    ``servers.start`` this takes the port instead of choosing one."""
    return servers.start(KIND, log_dir, app=CHAT_APP, env=env, name=name, port=port)


class ChatPages:
    """Signs users in, each in a browser context of their own (one session
    cookie each), opens their chat pages, and closes every context at the end."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []

    def sign_in(self, base: str, name: str) -> BrowserContext:
        """A new context whose session is ``name``'s."""
        context = self.browser.new_context(base_url=base)
        self.contexts.append(context)
        reply = context.request.post("/login", form={"name": name}, max_redirects=0)
        assert reply.status == 302, f"login as {name!r}: HTTP {reply.status}"
        return context

    def open(
        self,
        base: str,
        name: str,
        transport: str | None = None,
        context: BrowserContext | None = None,
    ) -> Page:
        """``name``'s chat page (``?transport=...`` if given), connected and
        subscribed to the rooms and to #general's presence channel."""
        if context is None:
            context = self.sign_in(base, name)
        page = context.new_page()
        page.goto("/" + (f"?transport={transport}" if transport else ""))
        wait_ready(page)
        return page

    def close_all(self) -> None:
        for context in self.contexts:
            context.close()
        self.contexts.clear()


def wait_ready(page: Page, timeout: float = 15_000) -> None:
    """Wait until the page's client is connected and every channel the page
    opened with (the three rooms, #general's presence) is subscribed."""
    page.wait_for_function(
        """(names) => {
          const client = window.chatClient;
          if (!client || client.state !== "connected") return false;
          const state = (name) => client.channel(name) && client.channel(name).state;
          return names.every((name) => state(name) === "subscribed");
        }""",
        arg=[*ROOM_CHANNELS, PRESENCE_CHANNEL],
        timeout=timeout,
    )


def client_state(page: Page) -> dict[str, t.Any]:
    """What ``window.chatClient`` says: state, transport, connection id."""
    return page.evaluate(
        """() => ({
          state: chatClient.state,
          transport: chatClient.transport,
          connectionId: chatClient.connectionId,
        })"""
    )


def say(page: Page, text: str) -> None:
    """Type ``text`` into the room's composer and send it with Enter."""
    page.fill("#message-input", text)
    page.press("#message-input", "Enter")
