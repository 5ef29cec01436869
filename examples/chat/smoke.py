"""Two browsers talk in the chat example: a smoke check with Playwright.

    python examples/chat/smoke.py                      # starts the server itself
    python examples/chat/smoke.py --transport sse      # websocket, sse or longpolling
    python examples/chat/smoke.py --url http://127.0.0.1:6002 --screenshots docs/images

Checks sign-in, presence (join and leave), typing, room messages, history,
a mention notification, a direct message and its notification. Needs the
``playwright`` package and a Chromium (``CHROMIUM``, /usr/bin/chromium by default).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, expect, sync_playwright

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def chat_server(url: str | None):
    if url:
        yield url.rstrip("/")
        return
    port = free_port()
    flask = Path(sys.executable).with_name("flask")
    process = subprocess.Popen(
        [
            str(flask),
            "--app",
            str(HERE / "app.py"),
            "realtime",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(base + "/realtime/health", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the chat server did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(10)


def sign_in(browser: Browser, base: str, name: str, query: str) -> Page:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.on(
        "pageerror", lambda exc: print(f"[{name}] page error: {exc}", file=sys.stderr)
    )
    page.goto(f"{base}/login")
    page.fill("#name", name)
    page.click("button[type=submit]")
    # The page adds the room to the address (/#general) once it runs.
    page.wait_for_url(lambda url: not url.endswith("/login"))
    if query:
        page.goto(f"{base}/{query}")
    expect(page.locator("#status")).to_have_attribute("data-state", "connected")
    return page


def say(page: Page, text: str, field: str = "#message-input") -> None:
    page.fill(field, text)
    page.press(field, "Enter")


def run(base: str, transport: str | None, shots: Path | None) -> None:
    query = f"?transport={transport}" if transport else ""
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
            args=CHROMIUM_ARGS,
        )
        ann = sign_in(browser, base, "Ann", query)
        bob = sign_in(browser, base, "Bob", query)
        if transport:
            for page in (ann, bob):
                expect(page.locator("#status")).to_have_attribute(
                    "data-transport", transport
                )
        print("signed in:", ann.locator("#status-text").inner_text())

        # Presence: each sees the other in #general.
        expect(ann.locator("#members [data-user=bob]")).to_be_visible()
        expect(bob.locator("#members [data-user=ann]")).to_be_visible()
        expect(ann.locator("#member-count")).to_have_text("2")
        print("presence: both listed")

        # Typing: relayed by the server's client- rule on presence-room.1.
        ann.locator("#message-input").press_sequentially("Hi Bob", delay=20)
        expect(bob.locator("#typing")).to_have_text("Ann is typing…")
        print("typing: shown")
        say(ann, "Hi @bob, welcome to the chat!")
        expect(bob.locator("#messages .msg").last).to_contain_text(
            "welcome to the chat"
        )
        expect(bob.locator("#typing")).to_have_text("")  # a message ends the typing
        expect(bob.locator(".toast.mention")).to_contain_text("Ann mentioned you")
        print("room message (client event) and mention notification: delivered")

        # The HTTP path: POST /rooms/1/messages with a session cookie, as curl would.
        bot = p.request.new_context(base_url=base)
        bot.post("/login", form={"name": "Deploy Bot"})
        reply = bot.post(
            "/rooms/1/messages", data={"text": "Build 142 passed, deployed to staging."}
        )
        assert reply.status == 201, reply.text()
        for page in (ann, bob):
            expect(page.locator("#messages .msg").last).to_contain_text(
                "Build 142 passed"
            )
        assert bot.post("/rooms/1/messages", data={"text": "  "}).status == 400
        assert bot.post("/rooms/9/messages", data={"text": "x"}).status == 404
        bot.dispose()
        print("room message over HTTP: delivered")

        say(bob, "Thanks! Glad to be here.")
        say(ann, "The members list on the right updates live as people come and go.")
        say(ann, "Click a name there to message someone privately.")
        for page in (ann, bob):
            expect(page.locator("#messages .msg").last).to_contain_text("privately")
            expect(page.locator("#messages .msg").nth(-3)).to_contain_text(
                "Glad to be here"
            )

        # Unread badge for a room one is not looking at.
        ann.click("#rooms [data-room='2']")
        bob.click("#rooms [data-room='2']")
        say(bob, "Anyone here?")
        expect(ann.locator("#messages .msg").last).to_contain_text("Anyone here?")
        ann.click("#rooms [data-room='1']")
        say(bob, "Over here in #random: coffee machine is fixed.")
        expect(ann.locator("#rooms [data-room='2'] .badge")).to_have_text("1")
        bob.click("#rooms [data-room='1']")
        expect(ann.locator("#members [data-user=bob]")).to_be_visible()
        print("room switch, presence leave/join and unread badge: ok")

        say(bob, "Nice, and I can see when you are typing.")
        expect(ann.locator("#messages .msg").last).to_contain_text(
            "when you are typing"
        )
        ann.wait_for_timeout(300)
        bob.locator(".toast").evaluate_all(
            "(nodes) => nodes.forEach((n) => n.remove())"
        )
        bob.locator("#message-input").press_sequentially("Sure, let me", delay=20)
        expect(ann.locator("#typing")).to_have_text("Bob is typing…")
        if shots:
            ann.screenshot(path=str(shots / "chat-room.png"))
        bob.locator("#message-input").press_sequentially(
            " check the calendar.", delay=10
        )
        bob.press("#message-input", "Enter")
        expect(ann.locator("#typing")).to_have_text("")

        # Direct message: Bob opens a DM from the member list; Ann gets a toast.
        bob.click("#members [data-user=ann]")
        expect(bob.locator("#dm-panel")).to_be_visible()
        say(bob, "Psst, lunch at noon?", "#dm-input")
        expect(bob.locator("#dm-messages .msg").last).to_contain_text("lunch at noon")
        toast = ann.locator(".toast.dm")
        expect(toast).to_contain_text("New message from Bob")
        expect(ann.locator("#conversations [data-user=bob] .badge")).to_have_text("1")
        print("DM notification (send_to_user): shown")
        toast.click()
        expect(ann.locator("#dm-panel")).to_be_visible()
        expect(ann.locator("#dm-messages .msg").last).to_contain_text(
            "lunch"
        )  # history
        ann.locator("#dm-input").press_sequentially("Sounds good", delay=20)
        expect(bob.locator("#dm-typing")).to_have_text("Ann is typing…")
        ann.press("#dm-input", "Enter")
        expect(bob.locator("#dm-messages .msg").last).to_contain_text("Sounds good")
        say(bob, "Great, see you at the usual place.", "#dm-input")
        expect(ann.locator("#dm-messages .msg").last).to_contain_text("usual place")
        print("DM both ways, with typing: ok")

        # A newcomer sees the history, and DMs Ann too.
        cid = sign_in(browser, base, "Cid", query)
        expect(cid.locator("#messages .msg").last).to_contain_text("check the calendar")
        assert cid.locator("#messages .msg").count() >= 6
        expect(ann.locator("#member-count")).to_have_text("3")
        print("history for a newcomer: ok")
        cid.click("#members [data-user=ann]")
        say(cid, "Hey Ann, do you have a minute for the release notes?", "#dm-input")
        expect(ann.locator(".toast.dm")).to_contain_text("New message from Cid")
        expect(ann.locator("#conversations [data-user=cid] .badge")).to_have_text("1")
        expect(ann.locator("#dm-name")).to_have_text("Bob")  # Bob's panel stays open
        if shots:
            ann.wait_for_timeout(400)
            ann.screenshot(path=str(shots / "chat-dm.png"))

        # A third party cannot join the private conversation of two others.
        denied = cid.evaluate(
            """() => new Promise((resolve) => {
                const channel = window.chatClient.subscribe("private-chat.ann-bob");
                channel.on("subscribed", () => resolve("subscribed"));
                channel.on("error", (error) => resolve(error.code));
            })"""
        )
        assert denied == 403, denied
        print("private channel of others: refused (403)")

        # User text is text: markup arrives as characters, not elements.
        say(bob, "<b>not bold</b> & <img src=x onerror=alert(1)>")
        expect(ann.locator("#messages .msg").last).to_contain_text("<b>not bold</b>")
        assert ann.locator("#messages b, #messages img").count() == 0
        print("escaping: ok")

        if shots:
            small = browser.new_context(viewport={"width": 390, "height": 780})
            phone = small.new_page()
            phone.goto(f"{base}/login")
            phone.fill("#name", "Dee")
            phone.click("button[type=submit]")
            phone.wait_for_url(lambda url: not url.endswith("/login"))
            expect(phone.locator("#status")).to_have_attribute(
                "data-state", "connected"
            )
            phone.wait_for_timeout(300)
            phone.screenshot(path=str(shots / "chat-phone.png"))
            small.close()
            fresh = browser.new_context(viewport={"width": 1280, "height": 800})
            login = fresh.new_page()
            login.goto(f"{base}/login")
            login.screenshot(path=str(shots / "chat-login.png"))
            fresh.close()

        # Seen at once on every transport: the WebSocket or SSE connection
        # closes, and a long-polling client sends its close beacon.
        started = time.monotonic()
        bob.context.close()
        wait = 5000
        expect(ann.locator("#members [data-user=bob]")).to_have_count(0, timeout=wait)
        expect(ann.locator("#messages .system").last).to_have_text("Bob left")
        elapsed = time.monotonic() - started
        print(f"presence leave on disconnect: ok, after {elapsed:.1f} s")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running chat server (default: start one)")
    parser.add_argument("--transport", choices=["websocket", "sse", "longpolling"])
    parser.add_argument("--screenshots", type=Path, help="write chat-*.png here")
    args = parser.parse_args()
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    with chat_server(args.url) as base:
        run(base, args.transport, args.screenshots)
    print("smoke check passed", f"({args.transport or 'default transports'})")


if __name__ == "__main__":
    main()
