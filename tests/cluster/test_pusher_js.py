"""pusher-js (from npm, in Node) against two nodes on a real broker (Redis),
with a native client on the same channels.

``tests/node/pusher_js.mjs`` runs two pusher-js clients, one per node, and
prints a line per step; this side plays Flask and the native client: a
broadcast reaches both kinds of client, client events cross between them,
presence members and their changes are cluster-wide for both, and
``send_to_user`` reaches a signed-in pusher-js client on the other node.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import typing as t
import urllib.request
from pathlib import Path

from tests.brokerservers import BrokerServer
from tests.servers import Server
from tests.wsclient import Client, connect

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
SCRIPT = NODE_DIR / "pusher_js.mjs"
KEY, SECRET = "app-key", "app-secret"
ENV = {
    "TESTAPP_REALTIME_PUSHER": json.dumps(
        {"app_id": "1", "key": KEY, "secret": SECRET}
    ),
}


def install_pusher_js() -> None:
    """``tests/node``'s packages from its lock file, once (pusher-js among them)."""
    npm = shutil.which("npm")
    assert npm, "npm is needed for this test (.ci/run installs it with nodejs)"
    if not (NODE_DIR / "node_modules" / "pusher-js").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            check=True,
            timeout=300,
        )


def get(server: Server, path: str) -> None:
    with urllib.request.urlopen(f"{server.url}{path}", timeout=5) as response:
        assert response.status == 200


def native_event(client: Client, channel: str, event: str) -> dict[str, t.Any]:
    def wanted(message: t.Any) -> bool:
        return (
            message.get("type") == "event"
            and message.get("channel") == channel
            and message.get("event") == event
        )

    wanted.__name__ = f"{event} on {channel}"
    return client.wait_for(wanted)


class Script:
    """The Node process; its step lines, read with a deadline."""

    def __init__(self, *args: str) -> None:
        node = shutil.which("node")
        assert node, "node is needed for this test (.ci/run installs nodejs)"
        self.process = subprocess.Popen(
            [node, str(SCRIPT), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=NODE_DIR,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in t.cast(t.IO[str], self.process.stdout):
            self.lines.put(line)
        self.lines.put("")

    def step(self, name: str) -> None:
        try:
            line = self.lines.get(timeout=15)
        except queue.Empty:
            raise AssertionError(f"no step {name!r} from pusher-js in 15 s") from None
        if not line:
            self.process.wait(5)
            stderr = t.cast(t.IO[str], self.process.stderr).read()
            raise AssertionError(f"pusher-js script ended before {name!r}:\n{stderr}")
        assert json.loads(line)["step"] == name, line

    def tell(self, line: str) -> None:
        stdin = t.cast(t.IO[str], self.process.stdin)
        stdin.write(line + "\n")
        stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def test_pusher_js_and_native_across_two_nodes(
    live_server: t.Any, broker_servers: t.Callable[[str], BrokerServer]
) -> None:
    install_pusher_js()
    broker = broker_servers("redis")
    env = {**broker.app_env, **ENV}
    a, b = (live_server("geventwebsocket", env=env) for _ in range(2))
    native = connect(f"{a.ws_url}?user=u3&name=Nat")
    for channel in ("pjs-news", "private-pjs.u3"):
        assert native.subscribe(channel)["type"] == "subscribed"
    script = Script(str(a.port), str(b.port), KEY, SECRET)
    try:
        script.step("public-subscribed")
        get(a, '/broadcast?channel=pjs-news&event=story&data={"n":1}')
        script.step("public-received")
        assert native_event(native, "pjs-news", "story")["data"] == {"n": 1}

        script.step("private-subscribed")
        ping = native_event(native, "private-pjs.u3", "client-ping")
        assert ping["data"] == {"from": "a"}
        native.send_json(
            {
                "type": "event",
                "channel": "private-pjs.u3",
                "event": "client-native",
                "data": {"from": "u3"},
            }
        )
        script.step("private-received")

        assert native.subscribe("presence-pjs")["type"] == "subscribed"
        script.tell("u3 is in")
        script.step("presence-done")
        joined = [
            native_event(native, "presence-pjs", "presence.join")["data"]["user_id"]
            for _ in range(2)
        ]
        assert joined == ["pa", "pb"]
        wave = native_event(native, "presence-pjs", "client-wave")
        assert wave["user_id"] == "pb" and wave["data"] == 1
        left = native_event(native, "presence-pjs", "presence.leave")
        assert left["data"] == {"user_id": "pb"}

        script.step("signed-in")
        get(b, '/send_to_user?user=pa&event=note&data={"hi":"pa"}')
        script.step("user-received")
        script.step("done")
        assert script.process.wait(5) == 0
    finally:
        script.stop()
        native.close()
