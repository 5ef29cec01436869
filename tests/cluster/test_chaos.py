"""No message lost across a reconnect, under chaos (issue 10), in short.

Two gunicorn instances of two gevent-websocket workers on a real broker
that keeps its data; a publisher per instance sends numbered events to four
channels with history; 60 clients on WebSocket, SSE and long-poll are cut
at random every one to four seconds and come back on a random instance with
``since``; the second instance is SIGKILLed and restarted at 30% of the
run, the broker restarted at 60%. Every client must end with every event of
every channel it follows exactly once, in order, each resubscribe
recovered (the broker kept its data, so no ``recovered: false`` is
unavoidable). ``benchmarks/chaos.py`` runs the full-size version.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest

from tests import brokerservers
from tests.brokerservers import KINDS, BrokerServer
from tests.chaos import driver
from tests.test_history_store import HISTORY_KINDS


@pytest.fixture
def kept_broker(tmp_path: Path) -> t.Iterator[t.Callable[[str], BrokerServer]]:
    """A broker server of its own that keeps its data across a restart."""
    started: list[BrokerServer] = []

    def start(kind: str) -> BrokerServer:
        brokerservers.require(kind)
        server = brokerservers.BrokerServer(kind, tmp_path / kind, persistent=True)
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


# Each broker joins once it keeps history (tests/test_history_store.py) and
# passes. On RabbitMQ the final positions are read once they count every
# accepted publish (tests/chaos/swarm.py, _finals): events accepted during
# the broker's outage get their offsets only when their process flushes
# them; docs/benchmarks.md, "RabbitMQ history".
CHAOS_KINDS = [k for k in KINDS if k in HISTORY_KINDS]


@pytest.mark.parametrize("kind", CHAOS_KINDS)
def test_every_event_reaches_every_client_once_in_order_through_chaos(
    kind: str,
    kept_broker: t.Callable[[str], BrokerServer],
    start_cluster: t.Any,
    tmp_path: Path,
) -> None:
    plan = driver.Plan()
    broker = kept_broker(kind)
    cluster = start_cluster(broker, env=driver.history_env(plan))
    instances = list(cluster.instances)
    try:
        verdict, figures = driver.run(
            plan, broker, instances, tmp_path, restart_broker=broker.restart
        )
    finally:
        if instances[1] is not cluster.instances[1]:
            instances[1].discard()  # the restarted one; the fixture ends the rest
    print(figures, verdict.summary(), sep="\n")
    assert verdict.ok, verdict.summary()
    # Events flowed through every cut and restart: both nodes, the restarted
    # one too, had publishes accepted from the broker's restart on. (How
    # many is the swarm's CPU: it shares two cores with both nodes and the
    # broker, and the number of all the publishes says nothing more.)
    after = figures["published from the broker restart on"]
    assert len(after) == 2 and min(after.values()) >= 20, after
    assert verdict.counts["sessions"] > plan.clients * 3  # the cuts happened
    assert verdict.counts["subscribed.recovered=True"] > plan.clients
