"""Laravel Echo (npm ``laravel-echo``, ``broadcaster: "pusher"``) on
pusher-js's browser build, in headless Chromium, against a real server.

The pages sign in with the app's own session (``/login`` sets the Flask
session cookie), so ``POST /pusher/auth`` decides every private and presence
subscription with the app's ``@realtime.authenticate`` and authorizers, as a
Laravel app's ``/broadcasting/auth`` would. A native client shares the
channels: a ``broadcast()`` from a Flask view reaches Echo, Echo's whispers
reach the native client and the native client's reach Echo, presence
``here``/``joining``/``leaving`` follow the pages, and a private channel
the authorizer denies is refused without harming the connection.

The last test runs the pages against two nodes sharing Redis, one page per
node, with native clients on both: broadcasts, whispers and presence cross
the nodes, and pusher-js's user sign-in (``userAuthentication``,
``signin()``, ``user.bind``) receives a ``send_to_user`` from a view on the
other node.

The bundles come from ``tests/node/node_modules`` (``npm ci`` from its lock
file), added to the page by Playwright; the configuration is the one
docs/pusher.md shows.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import typing as t

import pusher
import pytest
import requests

from tests import servers
from tests.browser.conftest import APP, KIND, Pages
from tests.cluster.test_pusher_js import NODE_DIR, native_event
from tests.servers import Server
from tests.wsclient import connect

if t.TYPE_CHECKING:
    from playwright.sync_api import Page

    from tests.brokerservers import BrokerServer
    from tests.conftest import LiveServerFactory

pytestmark = pytest.mark.browser

TIMEOUT = 10_000  # ms
KEY = "app-key"
ENV = {
    "TESTAPP_REALTIME_PUSHER": json.dumps(
        {"app_id": "1", "key": KEY, "secret": "app-secret"}
    ),
}
BUNDLES = (
    NODE_DIR / "node_modules" / "pusher-js" / "dist" / "web" / "pusher.min.js",
    NODE_DIR / "node_modules" / "laravel-echo" / "dist" / "echo.iife.js",
)

# docs/pusher.md's configuration (an excerpt of these lines), with the test
# server's port; window.Echo becomes the instance, as in Laravel's docs. Every
# Echo callback given note(name) pushes what it got into window.got.
START_ECHO = """(port) => {
  const Echo = window.Echo.default;  // the IIFE build's export
  window.got = [];
  window.note = (name) => (value) =>
    window.got.push({ name, value: JSON.parse(JSON.stringify(value ?? null)) });
  window.Echo = new Echo({
    broadcaster: "pusher",
    key: "app-key",
    wsHost: location.hostname,
    wsPort: port,
    forceTLS: false,
    enabledTransports: ["ws"],
    disableStats: true,
    cluster: "",
    authEndpoint: "/pusher/auth",
    userAuthentication: { endpoint: "/pusher/user-auth" },
  });
}"""


def install_bundles() -> None:
    """``tests/node``'s packages from its lock file, once; again when a
    checkout installed before laravel-echo was added lacks it."""
    if all(bundle.is_file() for bundle in BUNDLES):
        return
    npm = shutil.which("npm")
    assert npm, "npm is needed for this test (.ci/run installs it with nodejs)"
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_DIR,
        check=True,
        timeout=300,
    )


@pytest.fixture
def server(live_server: LiveServerFactory) -> Server:
    install_bundles()
    return live_server(KIND, app=APP, env=ENV)


@pytest.fixture(scope="module")
def nodes(
    broker_servers: t.Callable[[str], BrokerServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> t.Iterator[tuple[Server, Server]]:
    """Two servers (one node each) on the session's Redis, for the module."""
    install_bundles()
    env = {**broker_servers("redis").app_env, **ENV}
    started: list[Server] = []
    try:
        for name in ("a", "b"):
            directory = tmp_path_factory.mktemp(f"echo-{name}")
            started.append(servers.start(KIND, directory, app=APP, env=env))
        yield started[0], started[1]
    finally:
        for node in started:
            node.discard()


def echo_page(pages: Pages, server: Server, user: str, name: str) -> Page:
    """A page signed in as ``user`` with Echo started on it."""
    page = pages.open(f"{server.url}/login?user={user}&name={name}")
    page.goto(f"{server.url}/page")
    for bundle in BUNDLES:
        page.add_script_tag(path=str(bundle))
    page.evaluate(START_ECHO, server.port)
    return page


def wait_got(page: Page, name: str, count: int = 1) -> list[t.Any]:
    """The values of the first ``count`` callbacks named ``name``."""
    page.wait_for_function(
        "([name, count]) => got.filter((g) => g.name === name).length >= count",
        arg=[name, count],
        timeout=TIMEOUT,
    )
    values = page.evaluate(
        "(name) => got.filter((g) => g.name === name).map((g) => g.value)", name
    )
    return values[:count]


def test_echo_public_private_and_whispers_with_a_native_client(
    server: Server, pages: Pages
) -> None:
    native = connect(f"{server.ws_url}?user=5&name=Nat")
    try:
        for channel in ("orders", "private-room.5"):
            assert native.subscribe(channel)["type"] == "subscribed"
        page = echo_page(pages, server, "5", "Ann")
        page.evaluate(
            """() => {
              Echo.channel("orders")
                .subscribed(note("orders subscribed"))
                .listen(".OrderShipped", note("shipped"));
              Echo.private("room.5")
                .subscribed(note("room subscribed"))
                .listenForWhisper("native", note("native whisper"));
            }"""
        )
        wait_got(page, "orders subscribed")
        wait_got(page, "room subscribed")

        # A broadcast() from a Flask view reaches Echo as the object sent.
        params = {"channel": "orders", "event": "OrderShipped", "data": '{"id": 7}'}
        response = requests.get(f"{server.url}/broadcast", params=params, timeout=5)
        assert response.status_code == 200
        assert wait_got(page, "shipped") == [{"id": 7}]
        assert native_event(native, "orders", "OrderShipped")["data"] == {"id": 7}

        # Echo's whisper is a client- event the native client receives...
        page.evaluate("""() => Echo.private("room.5").whisper("typing", {n: 1})""")
        typing = native_event(native, "private-room.5", "client-typing")
        assert typing["data"] == {"n": 1}
        # ...and the native client's client event is Echo's listenForWhisper.
        native.send_json(
            {
                "type": "event",
                "channel": "private-room.5",
                "event": "client-native",
                "data": {"from": "Nat"},
            }
        )
        assert wait_got(page, "native whisper") == [{"from": "Nat"}]
        assert page.evaluate("Echo.connectionStatus()") == "connected"
    finally:
        native.close()


def test_echo_presence_and_a_denied_private_channel(
    server: Server, pages: Pages
) -> None:
    native = connect(f"{server.ws_url}?user=9&name=Nat")
    try:
        assert native.subscribe("presence-room.1")["type"] == "subscribed"
        ann = echo_page(pages, server, "5", "Ann")
        join = """() => Echo.join("room.1")
          .here(note("here"))
          .joining(note("joining"))
          .leaving(note("leaving"))"""
        ann.evaluate(join)
        here = wait_got(ann, "here")[0]
        assert sorted(member["name"] for member in here) == ["Ann", "Nat"]

        bob = echo_page(pages, server, "6", "Bob")
        bob.evaluate(join)
        here = wait_got(bob, "here")[0]
        assert sorted(member["name"] for member in here) == ["Ann", "Bob", "Nat"]
        assert wait_got(ann, "joining") == [{"name": "Bob"}]
        joined = native_event(native, "presence-room.1", "presence.join")
        assert joined["data"]["user_id"] == "5"

        # private-room.6 is user 6's: the authorizer refuses Ann, Echo's
        # error callback gets the 403, and her other channels carry on.
        ann.evaluate(
            """() => Echo.private("room.6")
              .subscribed(note("room.6 subscribed"))
              .error(note("room.6 error"))"""
        )
        assert wait_got(ann, "room.6 error")[0]["status"] == 403
        assert ann.evaluate("got.some((g) => g.name === 'room.6 subscribed')") is False

        bob.context.close()
        assert wait_got(ann, "leaving") == [{"name": "Bob"}]
        assert ann.evaluate("Echo.connectionStatus()") == "connected"
    finally:
        native.close()


def test_echo_and_pusher_js_sign_in_across_two_nodes_on_redis(
    nodes: tuple[Server, Server], pages: Pages
) -> None:
    a, b = nodes
    nat = connect(f"{a.ws_url}?user=9&name=Nat")  # node a, beside Ann
    ann_native = connect(f"{b.ws_url}?user=5&name=Ann")  # user 5 on node b
    try:
        assert nat.subscribe("orders")["type"] == "subscribed"
        assert nat.subscribe("presence-room.2")["type"] == "subscribed"
        assert ann_native.subscribe("private-room.5")["type"] == "subscribed"
        ann, bob = echo_page(pages, a, "5", "Ann"), echo_page(pages, b, "6", "Bob")
        ann.evaluate(
            """() => {
              Echo.channel("orders").listen(".OrderShipped", note("shipped"));
              Echo.private("room.5")
                .subscribed(note("room subscribed"))
                .listenForWhisper("native", note("native whisper"));
              Echo.join("room.2")
                .here(note("here"))
                .joining(note("joining"))
                .listenForWhisper("wave", note("wave"));
              const pusher = Echo.connector.pusher;
              pusher.user.bind("note", note("user note"));
              pusher.signin();
            }"""
        )
        here = wait_got(ann, "here")[0]
        assert sorted(member["name"] for member in here) == ["Ann", "Nat"]
        wait_got(ann, "room subscribed")
        # Signed in, and pusher-js subscribed to #server-to-user-5.
        ann.wait_for_function(
            "() => Echo.connector.pusher.user.serverToUserChannel?.subscribed",
            timeout=TIMEOUT,
        )
        assert ann.evaluate("Echo.connector.pusher.user.user_data.id") == "5"

        # A view on node b: send_to_user reaches Ann's signed-in page on a
        # (and user 5's native connection), a broadcast reaches Ann and Nat.
        params = {"user": "5", "event": "note", "data": '{"hi": "Ann"}'}
        response = requests.get(f"{b.url}/send_to_user", params=params, timeout=5)
        assert response.status_code == 200
        assert wait_got(ann, "user note") == [{"hi": "Ann"}]
        assert ann_native.wait_for(lambda m: m.get("event") == "note")["data"] == {
            "hi": "Ann"
        }
        params = {"channel": "orders", "event": "OrderShipped", "data": '{"id": 8}'}
        response = requests.get(f"{b.url}/broadcast", params=params, timeout=5)
        assert response.status_code == 200
        assert wait_got(ann, "shipped") == [{"id": 8}]
        assert native_event(nat, "orders", "OrderShipped")["data"] == {"id": 8}

        # Presence is cluster-wide: Bob on b sees Ann and Nat on a, Ann
        # sees him join, and his whisper reaches Ann and Nat on a.
        bob.evaluate(
            """() => Echo.join("room.2")
              .here(note("here"))
              .listenForWhisper("native", note("native whisper"))"""
        )
        here = wait_got(bob, "here")[0]
        assert sorted(member["name"] for member in here) == ["Ann", "Bob", "Nat"]
        assert wait_got(ann, "joining") == [{"name": "Bob"}]
        bob.evaluate("""() => Echo.join("room.2").whisper("wave", {n: 2})""")
        assert wait_got(ann, "wave") == [{"n": 2}]
        wave = native_event(nat, "presence-room.2", "client-wave")
        assert wave["user_id"] == "6" and wave["data"] == {"n": 2}
        nat.send_json(
            {
                "type": "event",
                "channel": "presence-room.2",
                "event": "client-native",
                "data": {"from": "Nat"},
            }
        )
        assert wait_got(bob, "native whisper") == [{"from": "Nat"}]

        # A private channel across nodes: Ann's whisper on a reaches her
        # native connection on b, and its client event reaches her page.
        ann.evaluate("""() => Echo.private("room.5").whisper("typing", {n: 3})""")
        typing = native_event(ann_native, "private-room.5", "client-typing")
        assert typing["data"] == {"n": 3}
        ann_native.send_json(
            {
                "type": "event",
                "channel": "private-room.5",
                "event": "client-native",
                "data": {"from": "b"},
            }
        )
        assert wait_got(ann, "native whisper") == [{"from": "b"}]
        for page in (ann, bob):
            assert page.evaluate("Echo.connectionStatus()") == "connected"

        # terminate_user_connections through node b: pusher-js on a gets
        # pusher:error 4009 and, refused (4000-4099), stays disconnected.
        ann.evaluate(
            """() => Echo.connector.pusher.connection.bind("error", note("error"))"""
        )
        library = pusher.Pusher(
            "1", KEY, "app-secret", host="127.0.0.1", port=b.port, ssl=False
        )
        assert library.terminate_user_connections("5") == {}
        ann.wait_for_function(
            "() => Echo.connectionStatus() === 'disconnected'", timeout=TIMEOUT
        )
        errors = wait_got(ann, "error")
        assert errors[0]["type"] == "PusherError"
        assert errors[0]["data"]["code"] == 4009
        assert bob.evaluate("Echo.connectionStatus()") == "connected"
    finally:
        nat.close()
        ann_native.close()
