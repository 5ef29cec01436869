"""What history costs the publisher, every broker side by side in one run (issue 10).

Starts a private redis-server, rabbitmq-server and nats-server (as the test
suite does) and measures, through ``Realtime.broadcast`` (``_rate.py``), the
broadcasts/s without and with history (size 100, ttl 600) on the channels:
50 greenlets to 1 channel, to 8, and each to a channel of its own (so a
batch holds one event per channel and nothing is packed). Each round runs
every case on every broker, plain then kept, the order of the brokers
turning from round to round; the machine's noise then falls on all of
them. Ends with each case's ratios (with / without history) per broker:
min, median, max over the rounds.

Usage::

    .venv/bin/python benchmarks/history_rate.py [--count 10000]
        [--greenlets 50] [--rounds 3] [--channels 1,8,G]
        [--brokers redis,rabbitmq,nats]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from gevent import monkey

monkey.patch_all()

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from benchmarks._rate import rate  # noqa: E402
from benchmarks.loadgen import self_cpu_s, tree_cpu_s  # noqa: E402
from flask_realtime.brokers.interface import Retention  # noqa: E402
from tests.brokerservers import BrokerServer  # noqa: E402

RULE = Retention(size=100, ttl=600.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--greenlets", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--channels", default="1,8,G", help="channel counts; G: one a greenlet"
    )
    parser.add_argument("--brokers", default="redis,rabbitmq,nats")
    args = parser.parse_args()
    kinds = args.brokers.split(",")
    cases = [
        args.greenlets if case == "G" else int(case)
        for case in args.channels.split(",")
    ]
    servers = {
        kind: BrokerServer(kind, Path(tempfile.mkdtemp(prefix=f"{kind}-rate-")))
        for kind in kinds
    }
    ratios: dict[tuple[str, int], list[float]] = {}
    try:
        for server in servers.values():
            server.start()
        for round_ in range(args.rounds):
            turn = round_ % len(kinds)
            for channels in cases:
                for kind in kinds[turn:] + kinds[:turn]:
                    server = servers[kind]
                    assert server.process is not None
                    rates = []
                    for rule in (None, RULE):
                        cpu = (self_cpu_s(), tree_cpu_s(server.process.pid))
                        per_s, per_batch, p99 = rate(
                            kind,
                            server.url,
                            args.count,
                            args.greenlets,
                            channels,
                            rule,
                        )
                        # Per broadcast: this process (the app and both
                        # brokers' clients) and the broker's server.
                        ours = (self_cpu_s() - cpu[0]) / args.count * 1e6
                        theirs = (tree_cpu_s(server.process.pid) - cpu[1]) / args.count
                        rates.append(per_s)
                        print(
                            f"{kind:8} {'history' if rule else 'plain':7}"
                            f" {channels:2} channel(s): {per_s:7.0f} broadcasts/s,"
                            f" {per_batch:5.1f} per batch, p99 {p99:6.2f} ms;"
                            f" CPU per broadcast: Python {ours:4.0f} µs,"
                            f" {kind}-server {theirs * 1e6:4.0f} µs",
                            flush=True,
                        )
                    ratios.setdefault((kind, channels), []).append(rates[1] / rates[0])
        print(f"\nratio with / without history, {args.rounds} rounds: min, median, max")
        print("| broker | " + " | ".join(f"{c} channel(s)" for c in cases) + " |")
        print("| --- |" + " --- |" * len(cases))
        for kind in kinds:
            cells = []
            for channels in cases:
                found = sorted(ratios.get((kind, channels), [0.0]))
                median = statistics.median(found)
                cells.append(f"{found[0]:.2f}, {median:.2f}, {found[-1]:.2f}")
            print(f"| {kind} | " + " | ".join(cells) + " |")
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
