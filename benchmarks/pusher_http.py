"""Pusher HTTP API ``POST /apps/<id>/events`` requests/s on one worker,
side by side with the native alternative, a Flask view that broadcasts.

For each broker (null, redis), one fresh ``gunicorn -w 1 -k
GeventWebSocketWorker`` serving ``benchmarks/apps/pusher_app.py``, pinned to
core 0 (``run.Server``); this process is pinned to core 1 and runs the
clients: ``--clients`` threads, each with its own official ``pusher``
library client (``Pusher.trigger``, one event to one channel, its own
keep-alive session) or its own ``requests.Session`` POSTing the same event as
JSON to ``/bench/broadcast``. One WebSocket subscriber on the channel counts
deliveries, so both paths publish to someone. Each round measures both, in
alternating order, for ``--duration`` seconds after a short warm-up; the
report gives every round, then the range and median.

Usage::

    /tmp/venv/bin/python benchmarks/pusher_http.py [--brokers null,redis]
        [--clients 8] [--rounds 3] [--duration 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import typing as t
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

import pusher  # noqa: E402
import requests  # noqa: E402
import run  # noqa: E402  (benchmarks/ is not a package)
import websocket  # noqa: E402

APP = {"app_id": "1", "key": "bench-key", "secret": "bench-secret"}
CHANNEL = "bench"
DATA = {"text": "x" * 100}
WARMUP = 1.0
LOAD_CORE = 1


class Subscriber:
    """One native WebSocket client on the channel, counting what arrives."""

    def __init__(self, port: int) -> None:
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/realtime/ws", timeout=10
        )
        json.loads(self.ws.recv())  # connected
        self.ws.send(json.dumps({"type": "subscribe", "channel": CHANNEL, "id": 1}))
        assert json.loads(self.ws.recv())["type"] == "subscribed"
        self.count = 0
        self.ws.settimeout(None)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                self.ws.recv()
                self.count += 1
        except Exception:  # noqa: BLE001 - closed at the end
            return

    def close(self) -> None:
        self.ws.close()


def pusher_sender(port: int) -> t.Callable[[], None]:
    client = pusher.Pusher(
        app_id=APP["app_id"],
        key=APP["key"],
        secret=APP["secret"],
        host="127.0.0.1",
        port=port,
        ssl=False,
        timeout=10,
    )
    return lambda: client.trigger(CHANNEL, "msg", DATA)


def native_sender(port: int) -> t.Callable[[], None]:
    session = requests.Session()
    url = f"http://127.0.0.1:{port}/bench/broadcast"
    body = json.dumps({"channel": CHANNEL, "event": "msg", "data": DATA})
    headers = {"Content-Type": "application/json"}

    def send() -> None:
        response = session.post(url, data=body, headers=headers, timeout=10)
        if response.status_code != 204:
            raise RuntimeError(f"broadcast view answered {response.status_code}")

    return send


def worker_cpu(pid: int) -> float:
    """CPU seconds the server's worker has used (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phase(
    make: t.Callable[[int], t.Callable[[], None]],
    port: int,
    pid: int,
    clients: int,
    duration: float,
    subscriber: Subscriber,
) -> dict[str, t.Any]:
    """``clients`` threads sending as fast as answered: requests/s after warm-up."""
    start = time.monotonic() + WARMUP
    stop = start + duration
    counts = [0] * clients
    sent_all = [0] * clients  # warm-up included, to compare with deliveries
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []

    def loop(index: int) -> None:
        send = make(port)
        try:
            while True:
                began = time.monotonic()
                if began >= stop:
                    return
                send()
                sent_all[index] += 1
                if began >= start:
                    counts[index] += 1
                    latencies[index].append(time.monotonic() - began)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    cpu_before = own_cpu()
    server_before = worker_cpu(pid)
    delivered_before = subscriber.count
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]}")
    cpu = own_cpu() - cpu_before
    server_cpu = worker_cpu(pid) - server_before
    everything = sorted(x for per in latencies for x in per)
    sent = sum(counts)
    return {
        "requests_per_s": sent / duration,
        "p50_ms": everything[len(everything) // 2] * 1000,
        "p99_ms": everything[int(len(everything) * 0.99)] * 1000,
        "client_cpu": cpu / (duration + WARMUP),
        # Server CPU per request, warm-up included: less noisy than req/s.
        "server_us": server_cpu / max(sum(sent_all), 1) * 1e6,
        "sent": sum(sent_all),
        "delivered": subscriber.count - delivered_before,
    }


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(broker: str, args: argparse.Namespace, work: Path) -> dict[str, t.Any]:
    server_broker = None
    if broker != "null":
        from tests.brokerservers import BrokerServer

        server_broker = BrokerServer(broker, work / broker).start()
        os.environ.update(REALTIME_BROKER=broker, REALTIME_BROKER_URL=server_broker.url)
    else:
        os.environ.pop("REALTIME_BROKER", None)
        os.environ.pop("REALTIME_BROKER_URL", None)
    server = run.Server("pusher_app:app")
    rounds: list[dict[str, t.Any]] = []
    try:
        pid = server.wait_ready()["pid"]
        subscriber = Subscriber(server.port)
        for number in range(args.rounds):
            order = ("pusher", "native") if number % 2 == 0 else ("native", "pusher")
            result: dict[str, t.Any] = {}
            for name in order:
                make = pusher_sender if name == "pusher" else native_sender
                result[name] = phase(
                    make, server.port, pid, args.clients, args.duration, subscriber
                )
                print(f"  {broker} round {number + 1} {name}: {summary(result[name])}")
            rounds.append(result)
        subscriber.close()
    finally:
        server.stop()
        if server_broker is not None:
            server_broker.stop()
    return {"broker": broker, "rounds": rounds}


def summary(res: dict[str, t.Any]) -> str:
    return (
        f"{res['requests_per_s']:7.0f} req/s  p50 {res['p50_ms']:5.1f} ms"
        f"  p99 {res['p99_ms']:5.1f} ms  server {res['server_us']:4.0f} us/req"
        f"  client CPU {res['client_cpu']:.2f}"
        f"  sent {res['sent']} delivered {res['delivered']}"
    )


def report(results: list[dict[str, t.Any]], args: argparse.Namespace) -> None:
    print(
        f"\nOne worker, {args.clients} clients,"
        f" {args.rounds} rounds of {args.duration:g} s (range, median):"
    )
    print(f"{'broker':8} {'':18} {'Pusher /apps/1/events':>22} {'native view':>22}")
    rows = (("requests_per_s", "requests/s"), ("server_us", "server CPU us/req"))
    for result in results:
        for key, label in rows:
            cells = []
            for name in ("pusher", "native"):
                values = [r[name][key] for r in result["rounds"]]
                low, high = min(values), max(values)
                middle = statistics.median(values)
                cells.append(f"{low:.0f}-{high:.0f} ({middle:.0f})")
            print(f"{result['broker']:8} {label:18} {cells[0]:>22} {cells[1]:>22}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default="null,redis")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {LOAD_CORE})
    version = importlib.metadata.version("pusher")
    print(f"pusher {version}; load on core {LOAD_CORE}, server on core 0")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-pusher-") as work:
        for broker in args.brokers.split(","):
            results.append(measure(broker, args, Path(work)))
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
