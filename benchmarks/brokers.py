"""Cross-node figures per broker (issue 4): latency and sustained rate.

For each broker (redis, rabbitmq, nats) this starts the broker server on a
private port (as the test suite does), then two nodes:

* node B: ``gunicorn -w 1`` with the gevent-websocket worker serving
  ``benchmarks/apps/cluster_app.py``, holding one WebSocket subscriber of
  channel ``bench`` (this process, reading raw frames in a thread);
* node A: a publish-only process (``brokers.py publish``: the app under
  gevent, serving nothing, as a Celery worker would) that broadcasts.

Two measurements per broker:

* ``latency``: 1,000 broadcasts/s for D seconds; each carries its publish
  time, and the subscriber subtracts it from its receive time: p50/p99 of
  publish-to-receive across the two nodes and the broker.
* ``max``: N broadcasts as fast as one publisher process goes (G greenlets
  publishing at once, so the broker clients can batch); the sustained
  figure is N over the time from the first publish to the last delivery,
  reported only when all N arrived. The publisher also counts the batches
  its broker sent: messages per batch near 1 means group commit did not
  engage, and the figure is a round trip per message.

Usage::

    /tmp/venv/bin/python benchmarks/brokers.py [--brokers redis,rabbitmq,nats]
        [--duration 10] [--count 50000] [--greenlets 50] [--json FILE]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

KINDS = ("redis", "rabbitmq", "nats")
# What is often quoted per broker: latency, messages/s.
SEED = {
    "redis": ("~0.1 ms", "100k"),
    "rabbitmq": ("~1 ms", "50k"),
    "nats": ("-", "1M"),
}


def environment(kind: str, url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(REALTIME_BROKER=kind, REALTIME_BROKER_URL=url)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE / "apps")])
    return env


# -- node B and its subscriber -------------------------------------------------


def start_node(kind: str, url: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    from tests.servers import free_port

    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn",
        "-w", "1",
        "-k", "geventwebsocket.gunicorn.workers.GeventWebSocketWorker",
        "--worker-connections", "20000",
        "--no-control-socket",
        "--graceful-timeout", "2",
        "-b", f"127.0.0.1:{port}",
        "cluster_app:app",
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            env=environment(kind, url),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /bench/stats HTTP/1.0\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"node B did not start: {log.read_text()[-2000:]}")


def masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


class Subscriber:
    """One raw WebSocket client on node B, counting ``m`` events."""

    def __init__(self, port: int, channel: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                "GET /realtime/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(65536)
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.frames: list[bytes] = []
        self._read_until(lambda: bool(self.frames))  # connected
        self.frames.clear()
        message = {"type": "subscribe", "channel": channel, "id": 1}
        self.sock.sendall(masked_text(json.dumps(message).encode()))
        self._read_until(lambda: bool(self.frames))
        assert b'"subscribed"' in self.frames[0], self.frames
        self.frames.clear()
        self.count = 0
        self.latencies: list[float] = []
        self.last_at = 0.0
        self.keep_latency = True
        self._stop = False
        self.sock.settimeout(0.5)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _parse(self) -> None:
        buf = self.buffer
        pos = 0
        while len(buf) - pos >= 2:
            length = buf[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if len(buf) - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if len(buf) - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            if len(buf) - start < length:
                break
            self.frames.append(buf[start : start + length])
            pos = start + length
        self.buffer = buf[pos:]

    def _read_until(self, done: t.Callable[[], bool]) -> None:
        while not done():
            self._parse()
            if done():
                return
            self.buffer += self.sock.recv(65536)

    def _run(self) -> None:
        while not self._stop:
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            now = time.time()
            self.buffer += chunk
            self._parse()
            frames, self.frames = self.frames, []
            for frame in frames:
                if b'"event":"m"' not in frame:
                    continue
                self.count += 1
                if self.keep_latency:
                    sent = json.loads(frame)["data"]["t"]
                    self.latencies.append((now - sent) * 1000)
            if frames:
                self.last_at = now

    def reset(self) -> None:
        self.count = 0
        self.latencies = []

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


# -- node A: the publishing process --------------------------------------------


def publish_main(argv: list[str]) -> None:
    """Node A: ``brokers.py publish --rate R --duration D`` or
    ``--count N --greenlets G``; prints one JSON line."""
    from gevent import monkey

    monkey.patch_all()
    import gevent

    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=0)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--greenlets", type=int, default=1)
    args = parser.parse_args(argv)

    from cluster_app import app, realtime

    from flask_realtime import broadcast

    with app.app_context():
        broadcast("warmup", "m", {})  # connects
        batches = count_batches(realtime.node.broker)
        cpu_started = own_cpu()
        started = time.time()
        published = 0
        if args.rate:
            total = int(args.rate * args.duration)
            for n in range(total):
                delay = started + n / args.rate - time.time()
                if delay > 0:
                    gevent.sleep(delay)
                broadcast("bench", "m", {"t": time.time(), "seq": n})
                published += 1
        else:
            per = args.count // args.greenlets

            def publisher(first: int) -> None:
                for n in range(first, first + per):
                    broadcast("bench", "m", {"t": 0, "seq": n})

            jobs = [gevent.spawn(publisher, g * per) for g in range(args.greenlets)]
            gevent.joinall(jobs, raise_error=True)
            published = per * args.greenlets
        elapsed = time.time() - started
        cpu = own_cpu() - cpu_started
    result = {"started": started, "published": published, "seconds": elapsed}
    result["cpu"] = cpu
    result["batches"] = len(batches)
    print(json.dumps(result))


def count_batches(broker: t.Any) -> list[int]:
    """The size of each batch ``broker`` sends from now on (BrokerBase's)."""
    sizes: list[int] = []
    send_batch = broker._send_batch

    def counting(messages: list[t.Any]) -> t.Any:
        sizes.append(len(messages))
        return send_batch(messages)

    broker._send_batch = counting
    return sizes


def run_publisher(kind: str, url: str, *args: str) -> dict[str, t.Any]:
    result = subprocess.run(
        [sys.executable, __file__, "publish", *args],
        env=environment(kind, url),
        capture_output=True,
        timeout=600,
    )
    if result.returncode:
        raise RuntimeError(result.stderr.decode()[-3000:])
    return t.cast(dict, json.loads(result.stdout.decode().splitlines()[-1]))


# -- one broker ---------------------------------------------------------------


def group_cpu(group: int) -> float:
    """CPU seconds used so far by the processes of one process group (Linux)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == group:  # pgrp; utime and stime follow at 11, 12
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(kind: str, args: argparse.Namespace, work: Path) -> dict[str, t.Any]:
    from tests.brokerservers import BrokerServer

    broker = BrokerServer(kind, work / kind).start()
    node, port = start_node(kind, broker.url, work / f"{kind}-node.log")
    subscriber = Subscriber(port, "bench")
    try:
        # Latency at 1,000 broadcasts/s.
        paced = run_publisher(
            kind, broker.url, "--rate", "1000", "--duration", str(args.duration)
        )
        deadline = time.time() + 10
        while subscriber.count < paced["published"] and time.time() < deadline:
            time.sleep(0.05)
        latencies = subscriber.latencies
        result: dict[str, t.Any] = {
            "broker": kind,
            "paced_published": paced["published"],
            "paced_delivered": subscriber.count,
            "p50_ms": percentile(latencies, 0.5) if latencies else None,
            "p99_ms": percentile(latencies, 0.99) if latencies else None,
        }
        # The most one publisher process sustains, all delivered.
        subscriber.reset()
        subscriber.keep_latency = False
        assert broker.process is not None
        cpu_before = (group_cpu(node.pid), group_cpu(broker.process.pid), own_cpu())
        burst = run_publisher(
            kind,
            broker.url,
            "--count",
            str(args.count),
            "--greenlets",
            str(args.greenlets),
        )
        expected = burst["published"]
        quiet_until = time.time() + 10
        last = -1
        while subscriber.count < expected and time.time() < quiet_until:
            if subscriber.count != last:
                last = subscriber.count
                quiet_until = time.time() + 10
            time.sleep(0.05)
        span = subscriber.last_at - burst["started"]
        cpu_after = (group_cpu(node.pid), group_cpu(broker.process.pid), own_cpu())
        node_cpu, broker_cpu, subscriber_cpu = (
            (after - before) * 1e6 / expected
            for before, after in zip(cpu_before, cpu_after, strict=True)
        )
        result.update(
            cpu_us=dict(  # CPU time per message, in microseconds
                publisher=burst["cpu"] * 1e6 / expected,
                node_b=node_cpu,
                broker=broker_cpu,
                subscriber=subscriber_cpu,
            ),
        )
        result.update(
            max_published=expected,
            max_delivered=subscriber.count,
            publish_rate=expected / burst["seconds"],
            per_batch=expected / burst["batches"] if burst["batches"] else None,
            sustained_rate=expected / span if subscriber.count == expected else None,
        )
        return result
    finally:
        subscriber.close()
        node.terminate()
        try:
            node.wait(10)
        except subprocess.TimeoutExpired:
            node.kill()
        broker.stop()


def versions() -> dict[str, str]:
    """What the figures depend on, printed beside them."""
    import platform
    from importlib import metadata

    found = {"python": platform.python_version()}
    found["cpus"] = str(os.cpu_count())
    found["load average"] = f"{os.getloadavg()[0]:.2f}"
    for name in ("gevent", "greenlet", "redis", "hiredis", "pika", "nats-py"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "-"
    return found


def report(results: list[dict[str, t.Any]]) -> None:
    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    print()
    print(", ".join(f"{name} {version}" for name, version in versions().items()))
    print(
        "| broker | p50 ms | p99 ms | delivered at 1,000/s | publish rate/s"
        " | messages per batch | sustained, all delivered/s"
        " | CPU us/message: publisher, node B, broker, subscriber | often quoted |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for r in results:
        seed_latency, seed_rate = SEED[r["broker"]]
        print(
            f"| {r['broker']} | {number(r['p50_ms'], '.2f')}"
            f" | {number(r['p99_ms'], '.2f')}"
            f" | {r['paced_delivered']:,}/{r['paced_published']:,}"
            f" | {number(r['publish_rate'], ',.0f')}"
            f" | {number(r['per_batch'], '.1f')}"
            f" | {number(r['sustained_rate'], ',.0f')}"
            f" ({r['max_delivered']:,}/{r['max_published']:,})"
            f" | {', '.join(format(v, '.1f') for v in r['cpu_us'].values())}"
            f" | {seed_latency}, {seed_rate} msg/s |"
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["publish"]:
        publish_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default=",".join(KINDS))
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--greenlets", type=int, default=50)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    import tempfile

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-brokers-") as work:
        for kind in args.brokers.split(","):
            result = measure(kind, args, Path(work))
            print(json.dumps(result), flush=True)
            results.append(result)
    report(results)
    if args.json:
        document = {"versions": versions(), "results": results}
        Path(args.json).write_text(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
