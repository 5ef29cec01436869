"""The full chaos run (issue 10): no message lost across cuts, a node
SIGKILLed, a broker restart.

Two gunicorn instances of two gevent-websocket workers on a broker that
keeps its data (Redis with an fsynced append-only file, NATS JetStream on
disk, RabbitMQ's streams); one publisher per instance sending numbered
events to the channels at ``--rate`` each; ``--clients`` clients on
WebSocket, SSE and long-poll, spread over ``--processes`` swarm
processes, each cut every 1 to 4 s (sockets cut, not closed) and coming
back on a random instance with ``since``; the second instance SIGKILLed
and restarted at 30% of the run, the broker restarted at 60%. The judge
(``tests/chaos/check.py``) then checks that every client has every event
of every channel it follows exactly once, in order, each resubscribe
recovered. The suite's ``tests/cluster/test_chaos.py`` is the short
version of this.

Usage::

    .venv/bin/python benchmarks/chaos.py [--broker redis] [--clients 200]
        [--rate 200] [--duration 60] [--processes 4] [--json FILE]

Exits 1 when the verdict is not clean.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import brokerservers, servers  # noqa: E402
from tests.chaos import driver  # noqa: E402


def run_one(kind: str, plan: driver.Plan, work: Path) -> dict[str, object]:
    broker = brokerservers.BrokerServer(kind, work / kind, persistent=True).start()
    instances: list[servers.Server] = []
    try:
        env = {**broker.app_env, **driver.history_env(plan)}
        instances = [
            servers.start("geventwebsocket", work, env=env, workers=2, name=f"n{i}")
            for i in range(2)
        ]
        started = time.monotonic()
        verdict, figures = driver.run(
            plan, broker, instances, work, restart_broker=broker.restart
        )
        figures["wall"] = round(time.monotonic() - started, 1)
    finally:
        for server in instances:
            server.stop()
        broker.stop()
    return {
        "broker": kind,
        "ok": verdict.ok,
        "counts": dict(verdict.counts),
        "figures": figures,
        "summary": verdict.summary(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--broker", action="append", choices=brokerservers.KINDS, default=None
    )
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    plan = driver.Plan(
        clients=args.clients,
        channels=args.channels,
        rate=args.rate,
        duration=args.duration,
        processes=args.processes,
        size=10_000,
    )
    results = []
    for kind in args.broker or ["redis"]:
        with tempfile.TemporaryDirectory(prefix=f"chaos-{kind}-") as work:
            result = run_one(kind, plan, Path(work))
        results.append(result)
        counts = _counts(result)
        print(f"== {kind}: {'CLEAN' if result['ok'] else 'FAILED'}")
        print(json.dumps(result["figures"]))
        print(counts)
        if not result["ok"]:
            print(result["summary"])
    if args.json:
        args.json.write_text(json.dumps({"plan": plan._asdict(), "runs": results}))
    return 0 if all(r["ok"] for r in results) else 1


def _counts(result: dict[str, object]) -> str:
    counts = result["counts"]
    assert isinstance(counts, dict)
    return ", ".join(f"{key} {value}" for key, value in sorted(counts.items()))


if __name__ == "__main__":
    sys.exit(main())
