"""One chaos run: a cluster on a broker, the swarm, a node killed and
restarted, the broker restarted, and the judge's verdict.

Shared by the suite's short run (``test_chaos.py``) and the full one
(``benchmarks/chaos.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import typing as t
import uuid
from pathlib import Path

from tests import servers
from tests.brokerservers import BrokerServer
from tests.chaos.check import Verdict, judge

TRANSPORTS = ("websocket", "sse", "poll")


class Plan(t.NamedTuple):
    clients: int = 60
    channels: int = 4
    follows: int = 2  # channels per client
    rate: float = 100.0  # events/s per publisher (one per instance)
    duration: float = 15.0
    cut_every: tuple[float, float] = (1.0, 4.0)
    size: int = 1000
    ttl: int = 600
    processes: int = 1  # swarm processes the clients are spread over
    seed: int = 1


def history_env(plan: Plan) -> dict[str, str]:
    """The test app's config for the chaos channels' history."""
    history = {"chaos.*": {"size": plan.size, "ttl": plan.ttl}}
    return {"TESTAPP_REALTIME_HISTORY": json.dumps(history)}


def run(
    plan: Plan,
    broker: BrokerServer,
    instances: list[servers.Server],
    log_dir: Path,
    restart_broker: t.Callable[[], None],
    epoch_may_change: bool = False,
) -> tuple[Verdict, dict[str, t.Any]]:
    """Run the swarm against ``instances``; kill and restart the second one
    at 30% of the time, call ``restart_broker`` at 60%; judge."""
    tag = uuid.uuid4().hex[:8]
    channels = [f"chaos.{tag}.{n}" for n in range(plan.channels)]
    nodes = [server.url for server in instances]
    follows = [
        [channels[(n + k) % plan.channels] for k in range(plan.follows)]
        for n in range(plan.clients)
    ]
    swarms = []
    for part in range(plan.processes):
        spec = {
            "nodes": nodes,
            "channels": channels,
            "follows": follows,
            "clients": list(range(part, plan.clients, plan.processes)),
            "transports": TRANSPORTS,
            "publish_to": nodes if part == 0 else [],
            "rate": plan.rate,
            "lanes": max(1, round(plan.rate / 50)),
            "duration": plan.duration,
            "cut_every": plan.cut_every,
            "settle": 60,
            "seed": plan.seed + part,
            "done_path": str(log_dir / f"swarm-{tag}.published"),
        }
        spec_path = log_dir / f"swarm-{tag}-{part}.json"
        spec_path.write_text(json.dumps(spec))
        out_path = log_dir / f"swarm-{tag}-{part}.out.json"
        swarms.append(
            (
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tests.chaos.swarm",
                        str(spec_path),
                        str(out_path),
                    ],
                    cwd=servers.ROOT,
                    env=servers.child_environment({}),
                    stdout=open(log_dir / f"swarm-{tag}-{part}.log", "wb"),
                    stderr=subprocess.STDOUT,
                ),
                out_path,
            )
        )
    started = time.monotonic()
    figures: dict[str, t.Any] = {}
    victim = instances[1]
    _at(started + plan.duration * 0.3)
    os.killpg(victim.process.pid, signal.SIGKILL)
    victim.process.wait()
    figures["node killed at"] = round(time.monotonic() - started, 1)
    instances[1] = servers.start(
        victim.kind,
        log_dir,
        env={**broker.app_env, **history_env(plan)},
        workers=victim.workers,
        port=victim.port,
        name="restarted",
    )
    figures["node back at"] = round(time.monotonic() - started, 1)
    _at(started + plan.duration * 0.6)
    broker_restarted = time.time()
    restart_broker()
    figures["broker back at"] = round(time.monotonic() - started, 1)
    results = []
    for process, out_path in swarms:
        process.wait(timeout=plan.duration + 180)
        log = log_dir / out_path.name.replace(".out.json", ".log")
        assert process.returncode == 0, log.read_text(errors="replace")[-3000:]
        results.append(json.loads(out_path.read_text()))
    merged = dict(results[0])
    merged["followers"] = [f for r in results for f in r["followers"]]
    merged["unfinished"] = [n for r in results for n in r["unfinished"]]
    merged["publishers"] = [p for r in results for p in r["publishers"]]
    verdict = judge([merged], plan.size, epoch_may_change)
    # Events flowed through every fault: each node (the restarted one too)
    # accepted publishes from the broker's restart on (RabbitMQ's can outlast
    # the publishing: those go to the outage buffer, flushed once it is back).
    figures["published from the broker restart on"] = after = {
        node: 0 for node in nodes
    }
    for publisher in merged["publishers"]:
        if publisher is not None:
            after[publisher["node"]] += sum(
                1 for moment in publisher["accepted_at"] if moment > broker_restarted
            )
    figures["elapsed"] = round(time.monotonic() - started, 1)
    return verdict, figures


def _at(moment: float) -> None:
    """Wait until ``moment`` (the plan's timeline, not a synchronisation)."""
    time.sleep(max(0.0, moment - time.monotonic()))
