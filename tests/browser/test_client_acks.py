"""``channel.send()``'s promise in headless Chromium, on every transport:
resolved with the handler's value, rejected with a ``SendError`` for a
refusal and a timeout (``tests/test_acks.py`` runs the same client in Node).

One server for the module: ``tests.apps.acks:app`` (the acks handlers and
the browser pages) on gunicorn's gevent-websocket worker.
"""

from __future__ import annotations

import typing as t

import pytest

from tests import servers
from tests.browser.conftest import KIND, Pages
from tests.servers import Server

pytestmark = pytest.mark.browser

SENDS = """async (transport) => {
  const c = new RealtimeClient("", {transports: [transport], params: {user: "b1"}});
  const room = c.subscribe("ack.browser." + transport);
  const results = {queued: await room.send("add", [1, 2])};
  results.transport = c.transport;
  results.none = await room.send("nothing", 1);
  results.kept = room.send("nothing", 2) instanceof Promise;
  try {
    await room.send("refuse", {message: "no room", code: 409});
  } catch (e) {
    const typed = e instanceof RealtimeClient.SendError;
    results.refused = [e.name, e.code, e.message, typed];
  }
  try {
    await room.send("slow", 0.3, {timeout: 50});
  } catch (e) {
    results.timeout = [e.reason, e.code];
  }
  results.after = await room.send("add", [20, 22]);
  c.disconnect();
  return results;
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Server]:
    started = servers.start(
        KIND, tmp_path_factory.mktemp("acks"), app="tests.apps.acks:app"
    )
    yield started
    started.discard()


@pytest.mark.parametrize("transport", ["websocket", "sse", "longpolling"])
def test_send_promises_in_chromium(
    server: Server, pages: Pages, transport: str
) -> None:
    page = pages.open(server.url + "/page")
    assert page.evaluate(SENDS, transport) == {
        "queued": {"sum": 3, "user": "b1"},  # sent while connecting
        "transport": transport,
        "none": None,  # undefined, as JSON
        "kept": True,
        "refused": ["SendError", 409, "no room", True],
        "timeout": ["timeout", 0],
        "after": {"sum": 42, "user": "b1"},
    }


def test_the_module_exports_send_error(server: Server, pages: Pages) -> None:
    page = pages.open(server.url + "/module-page")
    page.wait_for_function("window.imported !== undefined")
    assert page.evaluate(
        """async () => {
          const module = await import("/realtime/client.mjs");
          return module.SendError === module.RealtimeClient.SendError
            && typeof module.SendError === "function";
        }"""
    )
