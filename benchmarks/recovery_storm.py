"""A recovery storm (issue 10): many clients that missed events come back at once.

One gunicorn worker (gevent-websocket) serves the test app with history on
``storm.*``. N WebSocket clients (default 1,000, over 10 channels) subscribe
and note their channel's position; all are cut; M events (default 50) are
broadcast to every channel; then every client reconnects at the same moment
and resubscribes with ``since``. Reported: the time from the reconnect until
the last client has all M events (each exactly once, in order, after a
``recovered: true``), the worker's CPU time over that interval, and the same
for a reconnect that asks for nothing (a plain subscribe), for comparison.

Usage::

    .venv/bin/python benchmarks/recovery_storm.py [--clients 1000]
        [--channels 10] [--missed 50] [--broker null|redis|nats|rabbitmq]
        [--processes 2] [--json FILE]

The clients run as greenlets (websocket-client under gevent) spread over
``--processes`` processes of their own, so that one Python process parsing
51,000 frames is not what the figure measures; the server runs in its own
process. On a 2-core machine they still share the cores with it. The time
runs from the order to reconnect until the last process reports its last
client done (CLOCK_MONOTONIC is one clock for every process).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import typing as t  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import requests  # noqa: E402
import websocket  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.loadgen import core_times, read_cpu_s, self_cpu_s  # noqa: E402
from tests import brokerservers, servers  # noqa: E402


class Frames:
    """The server's frames on a socket, read in large pieces and cut here:
    websocket-client takes some 35 µs of Python a frame, more than the
    server spends sending it, and the storm measures the server."""

    def __init__(self, ws: websocket.WebSocket) -> None:
        self.ws = ws
        self.buffer = b""

    def next(self) -> bytes:
        """The next text frame's payload (the server sends them whole, unmasked)."""
        while True:
            header = 2
            if len(self.buffer) >= 2:
                size = self.buffer[1] & 0x7F
                if size == 126:
                    header = 4
                    size = int.from_bytes(self.buffer[2:4], "big")
                elif size == 127:
                    header = 10
                    size = int.from_bytes(self.buffer[2:10], "big")
                if len(self.buffer) >= header + size:
                    opcode = self.buffer[0] & 0x0F
                    payload = self.buffer[header : header + size]
                    self.buffer = self.buffer[header + size :]
                    if opcode == 1:
                        return payload
                    continue  # a ping, say: not for the storm
            chunk = self.ws.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk


def connect(url: str) -> Frames:
    ws = websocket.create_connection(url, timeout=60, enable_multithread=False)
    assert json.loads(ws.recv())["type"] == "connected"
    return Frames(ws)


def subscribe(frames: Frames, channel: str, since: t.Any = None) -> t.Any:
    message: dict[str, t.Any] = {"type": "subscribe", "channel": channel, "id": 1}
    if since is not None:
        message["since"] = since
    frames.ws.send(json.dumps(message))
    while True:
        reply = json.loads(frames.next())
        if reply.get("id") == 1:
            assert reply["type"] == "subscribed", reply
            return reply["data"]


def clients(url: str, channels: list[str], missed: int, recover: bool) -> None:
    """A client process: connect its share, then follow the parent's orders
    on stdin ("cut", "go"), answering on stdout ("ready", "cut", then one
    JSON line: when its last client was done, by the shared monotonic clock,
    and what went wrong)."""
    first_client, count = (int(x) for x in sys.stdin.readline().split())
    numbers = range(first_client, first_client + count)
    positions: dict[int, t.Any] = {}
    sockets: dict[int, t.Any] = {}

    def first(n: int) -> None:
        sockets[n] = connect(url)
        positions[n] = subscribe(sockets[n], channels[n % len(channels)])["position"]

    gevent.joinall([gevent.spawn(first, n) for n in numbers], raise_error=True)
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "cut"
    for frames in sockets.values():
        frames.ws.sock.close()  # cut: no close frame
    print("cut", flush=True)
    problems: list[str] = []
    go = gevent.event.Event()

    def back(n: int) -> None:
        go.wait()
        channel = channels[n % len(channels)]
        frames = connect(url)
        since = positions[n] if recover else None
        reply = subscribe(frames, channel, since)
        if not recover:
            frames.ws.close()
            return
        if reply.get("recovered") is not True:
            problems.append(f"client {n}: {reply}")
        got = []
        while len(got) < missed:
            message = json.loads(frames.next())
            if message.get("type") == "event":
                got.append(message["offset"])
        expected = list(
            range(positions[n]["offset"] + 1, positions[n]["offset"] + missed + 1)
        )
        if got != expected:
            problems.append(
                f"client {n}: offsets {got[:5]}..., expected {expected[:5]}..."
            )
        frames.ws.close()

    greenlets = [gevent.spawn(back, n) for n in numbers]
    gevent.sleep(0)  # every greenlet waits on `go`
    assert sys.stdin.readline().strip() == "go"  # blocks the hub: all wait anyway
    cpu_before = self_cpu_s()
    go.set()
    gevent.joinall(greenlets, raise_error=True)
    done, cpu = time.monotonic(), self_cpu_s() - cpu_before
    print(json.dumps({"done": done, "cpu": cpu, "problems": problems}), flush=True)


def storm(
    url: str,
    channels: list[str],
    missed: int,
    recover: bool,
    count: int,
    processes: int,
    cpu: t.Callable[[], float],
) -> tuple[float, tuple[float, float, float], list[str]]:
    """``count`` clients over ``processes`` processes: connect, cut, publish,
    reconnect all at once."""
    arguments = [url, json.dumps(channels), str(missed), str(recover)]
    command = [sys.executable, __file__, "--client", *arguments]
    children = [
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]

    def order(line: str, answer: str | None) -> list[str]:
        for child in children:
            assert child.stdin is not None
            child.stdin.write(line + "\n")
            child.stdin.flush()
        answers = []
        for child in children:
            assert child.stdout is not None
            answers.append(child.stdout.readline().strip())
            assert answer is None or answers[-1] == answer, answers[-1]
        return answers

    try:
        share = [count // processes + (k < count % processes) for k in range(processes)]
        first_of = [sum(share[:k]) for k in range(processes)]
        for child, first_client, size in zip(children, first_of, share, strict=True):
            assert child.stdin is not None
            child.stdin.write(f"{first_client} {size}\n")
            child.stdin.flush()
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        order("cut", "cut")
        base = url.replace("ws://", "http://").split("/realtime")[0]
        with requests.Session() as session:
            for channel in channels:
                for k in range(missed):
                    session.get(
                        base + "/broadcast",
                        params={
                            "channel": channel,
                            "event": "e",
                            "data": json.dumps(k),
                        },
                        timeout=10,
                    ).raise_for_status()
        time.sleep(0.5)  # every client waits for "go"
        host_before = sum(busy for busy, _ in core_times().values())
        started, cpu_before = time.monotonic(), cpu()
        reports = [json.loads(line) for line in order("go", None)]
        cpu_used = cpu() - cpu_before
        host_cpu = sum(busy for busy, _ in core_times().values()) - host_before
    finally:
        for child in children:
            child.kill()
            child.wait()
    problems = [p for report in reports for p in report["problems"]]
    done = max(report["done"] for report in reports)
    clients_cpu = sum(report["cpu"] for report in reports)
    return done - started, (cpu_used, clients_cpu, host_cpu), problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--missed", type=int, default=50)
    parser.add_argument(
        "--broker", choices=("null", "redis", "nats", "rabbitmq"), default="null"
    )
    parser.add_argument(
        "--processes", type=int, default=2, help="client processes (default 2)"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        url, names, missed, recover = args.client
        clients(url, json.loads(names), int(missed), recover == "True")
        return 0
    work = Path(tempfile.mkdtemp(prefix="storm-"))
    env = {
        "TESTAPP_REALTIME_HISTORY": json.dumps({"storm.*": {"size": 100, "ttl": 600}}),
        "TESTAPP_REALTIME_MAX_CONNECTIONS_PER_IP": "null",
        "TESTAPP_REALTIME_ALLOWED_ORIGINS": '["*"]',
    }
    broker = None
    if args.broker != "null":
        broker = brokerservers.start(args.broker, work / args.broker)
        env.update(broker.app_env)
    server = servers.start("geventwebsocket", work, env=env, workers=1)
    arbiter = server.process.pid
    children = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
    pid = int(children[0])  # the one worker
    url = server.ws_url
    results = {}
    try:
        for recover in (False, True):
            channels = [f"storm.{recover}.{n}" for n in range(args.channels)]
            seconds, cpu, problems = storm(
                url,
                channels,
                args.missed,
                recover,
                args.clients,
                args.processes,
                lambda: read_cpu_s(pid),
            )
            label = "recovering" if recover else "plain subscribe"
            results[label] = {
                "seconds": round(seconds, 3),
                "worker_cpu_s": round(cpu[0], 3),
                "clients_cpu_s": round(cpu[1], 3),
                "host_busy_cpu_s": round(cpu[2], 3),
                "problems": problems[:5],
                "problem_count": len(problems),
            }
            # As it comes: a later phase may fail (RabbitMQ, 1,000 channels).
            print(label, json.dumps(results[label]), file=sys.stderr, flush=True)
    finally:
        server.stop()
        if broker is not None:
            broker.stop()
    print(
        f"{args.clients} clients, {args.channels} channels, {args.missed} missed each,"
    )
    print(
        f"one gevent-websocket worker, {args.broker} broker,"
        f" the clients in {args.processes} processes"
    )
    print(
        "| reconnect | all done in (s) | worker CPU (s) | clients' CPU (s)"
        " | host busy, all cores (s) |"
    )
    print("|---|---|---|---|---|")
    for label, figures in results.items():
        print(
            f"| {label} | {figures['seconds']} | {figures['worker_cpu_s']}"
            f" | {figures['clients_cpu_s']} | {figures['host_busy_cpu_s']} |"
        )
        if figures["problem_count"]:
            print(f"PROBLEMS ({figures['problem_count']}): {figures['problems']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(not f["problem_count"] for f in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
