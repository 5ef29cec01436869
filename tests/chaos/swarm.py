"""The chaos test's clients and publishers, in one gevent process.

``python -m tests.chaos.swarm PLAN.json OUT.json``. Each client follows a
few channels on one transport (WebSocket, SSE or long-poll), is cut at
random every few seconds (its socket closed without a close frame, its poll
abandoned) and reconnects to a random node, resubscribing with ``since``.
It records everything raw, duplicates included: the server is under test,
not a client's dedupe. Publishers send numbered events through each node's
``/broadcast`` view. When the plan's time is up, cutting stops and every
client waits until it has each channel's final offset. ``check.py`` judges.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import contextlib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import typing as t  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import requests  # noqa: E402
import websocket  # noqa: E402

SEND = "/realtime/send"


class Cut(Exception):
    """This client's connection was cut on purpose."""


@contextlib.contextmanager
def _abandoning(greenlet: t.Any) -> t.Iterator[None]:
    """Kill ``greenlet`` (subscribes in flight) when the session ends."""
    try:
        yield
    finally:
        greenlet.kill()


def _fail(session: t.Any, failed: t.Any) -> None:
    """Raise ``failed``'s exception in the greenlet ``session``."""
    session.kill(failed.exception, block=False)


class Follower:
    """One client: a transport, its channels, and its record of each."""

    def __init__(self, number: int, transport: str, plan: dict[str, t.Any]) -> None:
        self.number = number
        self.transport = transport
        self.plan = plan
        self.channels: list[str] = plan["follows"][number]
        self.random = random.Random(plan["seed"] * 1000 + number)
        self.last: dict[str, tuple[int, str] | None] = dict.fromkeys(self.channels)
        # per channel: ["c", node] at each connection, ["s", since,
        # recovered, offset, epoch] for each subscribe reply, [offset,
        # publisher, n] for each event.
        self.log: dict[str, list[list[t.Any]]] = {c: [] for c in self.channels}
        self.errors: list[str] = []
        self.sessions = 0
        self.cutting = True
        self.finals: dict[str, int] = {}
        self.session_max: dict[str, int] = {}

    # -- the loop ---------------------------------------------------------------

    def run(self) -> None:
        while not self._caught_up():
            node = self.random.choice(self.plan["nodes"])
            cut_at = time.monotonic() + self.random.uniform(*self.plan["cut_every"])
            reader = gevent.spawn(self._session, node)
            while not reader.ready():
                reader.join(timeout=0.25)
                if self._caught_up() or (self.cutting and time.monotonic() > cut_at):
                    break
            if not reader.ready():
                reader.kill(Cut)  # a cut: whatever it was doing stops here
            elif reader.exception is not None:
                self.errors.append(f"{node}: {reader.exception!r}"[:300])
                gevent.sleep(0.2)

    def _caught_up(self) -> bool:
        return bool(self.finals) and all(
            (self.last[c] or (0, ""))[0] >= self.finals[c] for c in self.channels
        )

    def _session(self, node: str) -> None:
        self.sessions += 1
        self.session_max = dict.fromkeys(self.channels, 0)
        for channel in self.channels:
            self.log[channel].append(["c", self.plan["nodes"].index(node)])
        getattr(self, "_" + self.transport)(node)

    # -- what every transport does alike ---------------------------------------

    def _subscribe_message(self, channel: str, id: int) -> dict[str, t.Any]:
        message: dict[str, t.Any] = {"type": "subscribe", "channel": channel, "id": id}
        last = self.last[channel]
        if last is not None:
            message["since"] = {"offset": last[0], "epoch": last[1]}
        return message

    def _reply(self, reply: dict[str, t.Any], since: t.Any) -> bool:
        """Record a subscribe reply; False: not subscribed (retry later)."""
        channel = reply.get("channel")
        if reply.get("type") != "subscribed" or channel not in self.log:
            self.errors.append(f"subscribe: {reply!r}"[:300])
            return False
        data = reply.get("data") or {}
        position = data["position"]
        recovered = data.get("recovered")
        self.log[channel].append(
            ["s", since, recovered, position["offset"], position["epoch"]]
        )
        if not recovered:
            # On SSE and long-poll, events may come before the POST's answer.
            offset = max(position["offset"], self.session_max[channel])
            self.last[channel] = (offset, position["epoch"])
        return True

    def _event(self, message: dict[str, t.Any]) -> None:
        channel = message.get("channel")
        if message.get("type") != "event" or channel not in self.log:
            return
        data = message.get("data") or {}
        offset = message.get("offset")
        self.log[channel].append([offset, data.get("p"), data.get("n")])
        if isinstance(offset, int):
            self.session_max[channel] = max(self.session_max[channel], offset)
        last = self.last[channel]
        if last is not None and isinstance(offset, int):
            self.last[channel] = (max(offset, last[0]), last[1])

    # -- WebSocket ------------------------------------------------------------

    def _websocket(self, node: str) -> None:
        ws = websocket.create_connection(node.replace("http", "ws") + "/realtime/ws")
        try:
            assert json.loads(ws.recv())["type"] == "connected"
            pending: dict[int, tuple[str, t.Any]] = {}
            for id, channel in enumerate(self.channels, 1):
                message = self._subscribe_message(channel, id)
                pending[id] = (channel, message.get("since"))
                ws.send(json.dumps(message))
            while True:
                message = json.loads(ws.recv())
                if message.get("type") == "event":
                    self._event(message)
                elif message.get("id") in pending:
                    channel, since = pending.pop(message["id"])
                    if not self._reply(message, since):
                        raise RuntimeError("resubscribe")
                if self._caught_up():
                    return
        finally:
            # Cut, not closed: no close frame, the socket just goes.
            try:
                ws.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            ws.sock.close()

    # -- SSE and long-poll --------------------------------------------------------

    def _post_subscribes(self, node: str, welcome: dict[str, t.Any]) -> None:
        for id, channel in enumerate(self.channels, 1):
            message = self._subscribe_message(channel, id)
            answer = requests.post(
                node + SEND,
                json={
                    "connection_id": welcome["connection_id"],
                    "token": welcome["token"],
                    "message": message,
                },
                timeout=10,
            )
            replies = answer.json() if answer.status_code == 200 else [answer.text]
            if not replies or not isinstance(replies[0], dict):
                raise RuntimeError(f"subscribe answered {answer.status_code}")
            if not self._reply(replies[0], message.get("since")):
                raise RuntimeError("resubscribe")

    def _sse(self, node: str) -> None:
        response = requests.get(
            node + "/realtime/sse",
            headers={"Accept": "text/event-stream"},
            stream=True,
            timeout=(5, 60),
        )
        try:
            lines = response.iter_lines(decode_unicode=True)
            welcome: dict[str, t.Any] | None = None
            subscriber: t.Any = None
            for line in lines:
                if not line or not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if welcome is None:
                    welcome = message["data"]
                    # Subscribing in parallel: events may arrive before the
                    # POST's answer, as they may in a browser.
                    subscriber = gevent.spawn(self._post_subscribes, node, welcome)
                    # A failed subscribe (503 while the broker restarts) ends
                    # the session at once, as a real client subscribes again:
                    # the stream of a connection without its channels brings
                    # no data line to notice it by, only keepalive comments.
                    subscriber.link_exception(
                        functools.partial(_fail, gevent.getcurrent())
                    )
                    continue
                self._event(message)
                if subscriber.dead and subscriber.exception is not None:
                    raise subscriber.exception
                if self._caught_up():
                    return
        finally:
            # A cut client's subscribes in flight are abandoned with it.
            if subscriber is not None:
                subscriber.kill()
            response.close()

    def _poll(self, node: str) -> None:
        opened = requests.get(node + "/realtime/poll", timeout=10).json()
        welcome = opened["messages"][0]["data"]
        cursor = opened["cursor"]
        subscriber = gevent.spawn(self._post_subscribes, node, welcome)
        with requests.Session() as session, _abandoning(subscriber):
            while True:
                answer = session.get(
                    node + "/realtime/poll",
                    params={
                        "connection_id": welcome["connection_id"],
                        "token": welcome["token"],
                        "cursor": cursor,
                    },
                    timeout=60,
                )
                if answer.status_code != 200:
                    raise RuntimeError(f"poll answered {answer.status_code}")
                body = answer.json()
                for message in body["messages"]:
                    self._event(message)
                cursor = body["cursor"]
                if subscriber.dead and subscriber.exception is not None:
                    raise subscriber.exception
                if self._caught_up():
                    return

    def report(self) -> dict[str, t.Any]:
        return {
            "number": self.number,
            "transport": self.transport,
            "sessions": self.sessions,
            "errors": self.errors[-20:],
            "log": self.log,
        }


def publish(
    plan: dict[str, t.Any], node: str, publisher: int, rate: float
) -> dict[str, t.Any]:
    """Numbered events to the plan's channels at ``rate``, through ``node``."""
    sent: dict[str, list[int]] = {c: [] for c in plan["channels"]}
    accepted_at: list[
        float
    ] = []  # wall clock: the driver's timeline is another process's
    failed = 0
    interval = 1.0 / rate
    session = requests.Session()
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < plan["duration"]:
        channel = plan["channels"][n % len(plan["channels"])]
        try:
            answer = session.get(
                node + "/broadcast",
                params={
                    "channel": channel,
                    "event": "numbered",
                    "data": json.dumps({"p": publisher, "n": n}),
                },
                timeout=5,
            )
            if answer.status_code == 200:
                sent[channel].append(n)
                accepted_at.append(time.time())
            else:
                failed += 1
        except requests.RequestException:
            failed += 1
            session = requests.Session()
        n += 1
        gevent.sleep(max(0.0, started + n * interval - time.monotonic()))
    return {
        "publisher": publisher,
        "node": node,
        "sent": sent,
        "failed": failed,
        "accepted_at": accepted_at,
    }


def main(plan_path: str, out_path: str) -> None:
    with open(plan_path) as plan_file:
        plan = json.load(plan_file)
    followers = [
        Follower(n, plan["transports"][n % len(plan["transports"])], plan)
        for n in plan["clients"]
    ]
    following = [gevent.spawn(f.run) for f in followers]
    # Publishing starts once every client has subscribed everything (so each
    # client's first position is 0 and every event must reach it).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(
        None not in f.last.values() for f in followers
    ):
        gevent.sleep(0.1)
    lanes = plan.get("lanes", 1)
    publishers = [
        gevent.spawn(publish, plan, node, n, plan["rate"] / lanes)
        for n, node in enumerate(
            # A node's rate, shared by a few publishers: each waits for its
            # answer before the next, which alone would not keep up.
            node
            for node in plan["publish_to"]
            for _ in range(lanes)
        )
    ]
    gevent.joinall(publishers)
    # One process publishes; the others wait for it to be done (its mark).
    done = Path(plan["done_path"])
    if publishers:
        accepted = {
            c: sum(len(p.value["sent"][c]) for p in publishers)
            for c in plan["channels"]
        }
        partial = done.with_suffix(".partial")
        partial.write_text(json.dumps(accepted))
        partial.rename(done)  # whole or absent for the others
    deadline = time.monotonic() + plan["duration"] + 120
    while not done.exists() and time.monotonic() < deadline:
        gevent.sleep(0.2)
    accepted = json.loads(done.read_text()) if done.exists() else {}
    for follower in followers:
        follower.cutting = False
    # The final offsets, read once every publisher is done and the broker
    # had time to deliver the last of them.
    finals = _finals(plan, accepted)
    for follower in followers:
        follower.finals = finals
    gevent.joinall(following, timeout=plan["settle"])
    with open(out_path, "w") as out:
        json.dump(
            {
                "finals": finals,
                "publishers": [p.value for p in publishers],
                "followers": [f.report() for f in followers],
                "unfinished": [
                    f.number
                    for f, g in zip(followers, following, strict=True)
                    if not g.ready()
                ],
            },
            out,
        )
    gevent.killall(following)


def _finals(plan: dict[str, t.Any], accepted: dict[str, int]) -> dict[str, int]:
    """The channels' final offsets, once they count every accepted publish.

    A broadcast accepted while the broker was down waits in its process's
    outage buffer and has no offset until that process has reconnected and
    flushed it; so a position read right after the broker's restart may
    come before events that were accepted earlier (a position is exact for
    what reached the broker). Each channel's offsets are contiguous from 1
    in one epoch, so it ends at least at the count of accepted publishes:
    wait for that (a publish that timed out may have gone too)."""
    deadline = time.monotonic() + 30
    finals: dict[str, int] | None = None
    while True:
        try:
            answer = requests.get(
                plan["nodes"][0] + "/position",
                params={"channels": ",".join(plan["channels"])},
                timeout=5,
            )
            if answer.status_code == 200:
                finals = {c: p["offset"] for c, p in answer.json().items()}
                if all(finals[c] >= n for c, n in accepted.items()):
                    return finals
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            if finals is None:
                raise RuntimeError("no final position")
            return finals  # short of the accepted: the judge reports the loss
        gevent.sleep(0.5)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
