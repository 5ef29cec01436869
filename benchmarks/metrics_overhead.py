"""CPU cost of a broadcast's fan-out with metrics off and on, in one process.

``python benchmarks/metrics_overhead.py [--subscribers 1000] [--broadcasts 300]
[--rounds 7]``: an app on the null broker, ``--subscribers`` in-process
connections on one channel (a sink that only queues: no socket, so what is
timed is the library's Python work),
and ``--broadcasts`` broadcasts through ``realtime.broadcast``, timed with
``time.process_time`` (CPU seconds of this process, which other jobs on a
shared host disturb much less than wall time). Rounds alternate off and on;
the median of each is printed, and their ratio. With
``PROMETHEUS_MULTIPROC_DIR`` set (to an empty directory), "on" counts in
prometheus_client's multiprocess mode, as under gunicorn.

It isolates what the socket benchmark (``benchmarks/run.py --only burst``)
measures along with the kernel's work: the Python cost per delivery.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import Flask  # noqa: E402

from flask_realtime import Realtime, metrics  # noqa: E402
from flask_realtime.connection import Sink  # noqa: E402


class QueueOnly(Sink):
    """A wire that takes nothing: messages stay queued until a round ends."""

    def write(self, nbytes: int) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        pass

    def tick(self, now: float, heartbeat: float) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--broadcasts", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    app = Flask(__name__)
    app.config["REALTIME_METRICS"] = {"enabled": True, "token": "x" * 16}
    app.config["REALTIME_MAX_QUEUE_MESSAGES"] = 10**9
    app.config["REALTIME_MAX_QUEUE_BYTES"] = 10**12
    realtime = Realtime(app)
    node = realtime.node
    conns = [node.open("websocket", QueueOnly()) for _ in range(args.subscribers)]
    for conn in conns:
        node.receive(conn, b'{"type":"subscribe","channel":"bench"}')
    data = {"t": 0.0, "seq": 0, "pad": "x" * 40}

    def run() -> float:
        for conn in conns:  # empty queues, as a flushed socket leaves them
            conn.queue.clear()
            conn.queued_bytes = 0
        start = time.process_time()
        for seq in range(args.broadcasts):
            data["seq"] = seq
            realtime.broadcast("bench", "msg", data)
        return time.process_time() - start

    times: dict[bool, list[float]] = {False: [], True: []}
    run()  # warm-up
    for _ in range(args.rounds):
        for on in (False, True):
            metrics._on = on
            times[on].append(run())
    deliveries = args.subscribers * args.broadcasts
    off = statistics.median(times[False])
    on = statistics.median(times[True])
    print(
        f"{args.subscribers} subscribers x {args.broadcasts} broadcasts,"
        f" median of {args.rounds} rounds (CPU seconds):"
    )
    print(f"  metrics off: {off:.4f} s = {off / deliveries * 1e9:.0f} ns/delivery")
    print(f"  metrics on:  {on:.4f} s = {on / deliveries * 1e9:.0f} ns/delivery")
    print(f"  on / off: {on / off:.3f}")


if __name__ == "__main__":
    main()
