"""A cluster per test: a real broker and gunicorn instances sharing it.

``cluster(kind)`` starts two gunicorn instances (gevent-websocket worker, two
workers each: four nodes) on the session's broker server of that kind. Tests
talk to them with real WebSocket and HTTP clients; nothing is sticky, so
which worker a request reaches is up to the kernel.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests import servers
from tests.brokerservers import KINDS, BrokerServer
from tests.servers import Server


class Cluster:
    def __init__(
        self,
        broker: BrokerServer,
        instances: list[Server],
        app_env: t.Mapping[str, str] | None = None,
    ) -> None:
        self.broker = broker
        self.instances = instances
        self.app_env = dict(app_env or {})

    @property
    def env(self) -> dict[str, str]:
        """The instances' app environment: the broker's and the test's own."""
        return {**self.broker.app_env, **self.app_env}

    def publish_only(self, *calls: list[t.Any]) -> list[t.Any]:
        """Run ``calls`` in a new process that serves nothing (like a Celery
        task or a script); returns what each call returned."""
        result = subprocess.run(
            [sys.executable, "-m", "tests.cluster.publisher", json.dumps(calls)],
            env=servers.child_environment(self.env),
            cwd=servers.ROOT,
            capture_output=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise AssertionError(result.stderr.decode(errors="replace")[-3000:])
        return json.loads(result.stdout.decode().strip().splitlines()[-1])


def every_worker_ready(server: Server, timeout: float = servers.START_TIMEOUT) -> None:
    """Until each of ``server``'s workers has answered its readiness probe.

    ``servers.start`` returns once one has; a probe also connects a worker
    to its broker, so that every node of the cluster is up before the test.
    """
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while len(seen) < server.workers:
        assert time.monotonic() < deadline, (
            f"{len(seen)} of {server.workers} workers of {server} ready"
            f" in {timeout:g} s\n{server.log_tail()}"
        )
        try:
            answer = requests.get(server.url + servers.HEALTH_PATH, timeout=2)
        except requests.RequestException:
            answer = None
        if answer is not None and answer.status_code == 200:
            seen.add(answer.json()["node"])
        else:
            time.sleep(0.02)  # the poll's pace, while a worker boots


@pytest.fixture(params=KINDS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def start_cluster(live_server: t.Any, tmp_path: Path) -> t.Callable[..., Cluster]:
    def start(
        broker: BrokerServer,
        instances: int = 2,
        workers: int = 2,
        env: t.Mapping[str, str] | None = None,
    ) -> Cluster:
        def one(_: int) -> Server:
            server = live_server(
                "geventwebsocket",
                env={**broker.app_env, **(env or {})},
                workers=workers,
            )
            every_worker_ready(server)
            return server

        # Side by side: most of a start is waiting (imports, the broker's
        # connection), so two take little longer than one.
        with ThreadPoolExecutor(instances) as pool:
            started = list(pool.map(one, range(instances)))
        return Cluster(broker, started, env)

    return start


@pytest.fixture
def cluster(
    broker_kind: str,
    broker_servers: t.Callable[[str], BrokerServer],
    start_cluster: t.Callable[..., Cluster],
) -> Cluster:
    return start_cluster(broker_servers(broker_kind))
