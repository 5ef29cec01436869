"""A real Celery worker publishes to the clients of a cluster, for every broker.

The web side is the Celery example (``examples/celery``) under gunicorn with
two gevent-websocket workers; the other side is a real ``celery worker``
(prefork, one child) running the example's task, which serves nothing and
publishes through the realtime broker (DESIGN.md 5: ``send_to_user`` and
broadcasts from any process, a Celery worker included). Celery's own queue
is a database of the session's Redis server.

Only the task produces ``job.progress``, ``job.result`` and
``job.finished``, and it signs them with the name of the worker that ran
it: without that worker publishing to the realtime broker, every wait
below times out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest
import requests

from tests import servers
from tests.brokerservers import KINDS, BrokerServer
from tests.servers import Server
from tests.wsclient import Client, connect

APP = "examples.celery.app:create_app()"
CELERY_APP = "examples.celery.worker"
# Celery's queue for each realtime broker: its own Redis database, so that
# nothing one worker left behind reaches the next.
CELERY_DB = {"redis": 11, "rabbitmq": 12, "nats": 13}
LIMIT = 20_000
PRIMES_BELOW_LIMIT = 2262
PERCENTS = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
WORKER_START_TIMEOUT = 30.0
# The first task of a worker connects its child process to the broker.
EVENT_TIMEOUT = 20.0
WEB_WORKERS = 2
_CLEARED_PREFIXES = ("REALTIME_", "REDIS_", "RABBITMQ_", "CELERY_")
_CLEARED_NAMES = ("NATS_URL", "SECRET_KEY")


class CeleryWorker:
    """``celery worker`` in a process group of its own, logging to a file."""

    def __init__(self, name: str, env: dict[str, str | None], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            CELERY_APP,
            "worker",
            "--pool=prefork",
            "-c",
            "1",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            # Tasks an earlier, failed run left in the queue are not this run's.
            "--purge",
            "-l",
            "info",
            "-n",
            name,
        ]
        with open(log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                self.argv,
                cwd=servers.ROOT,
                env=servers.child_environment(env),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = WORKER_START_TIMEOUT) -> None:
        """Until the worker logs ``<name> ready.``: it consumes from then on."""
        deadline = time.monotonic() + timeout
        marker = f"{self.name} ready."
        while marker not in self.log_tail(1000):
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the celery worker exited with {self.process.returncode}"
                    f" before it was ready:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the celery worker was not ready after {timeout:g} s:"
                    f"\n{self.log_tail()}"
                )
            try:
                self.process.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass

    def stop(self) -> None:
        """A warm shutdown if it comes quickly, then SIGKILL for the whole group."""
        for signum, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        # The pool's children too, whatever became of the main process.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@dataclasses.dataclass
class Stack:
    kind: str
    web: Server
    worker: CeleryWorker

    @contextlib.contextmanager
    def diagnostics(self) -> t.Iterator[None]:
        """A failed expectation also shows what the worker and the web logged."""
        try:
            yield
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n\n--- celery worker ({self.kind}) ---\n"
                f"{self.worker.log_tail()}\n\n--- gunicorn ---\n{self.web.log_tail()}"
            ) from exc


@pytest.fixture(scope="module", params=KINDS)
def stack(
    request: pytest.FixtureRequest,
    broker_servers: t.Callable[[str], BrokerServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> t.Iterator[Stack]:
    """The example's web app and a Celery worker, sharing one realtime broker.

    Started once per broker kind and shared by the tests of that kind.
    """
    kind = request.param
    broker = broker_servers(kind)
    celery_broker = broker_servers("redis")
    env: dict[str, str | None] = {
        name: None
        for name in os.environ
        if name.startswith(_CLEARED_PREFIXES) or name in _CLEARED_NAMES
    }
    env.update(
        REALTIME_BROKER=kind,
        REALTIME_BROKER_URL=broker.url,
        CELERY_BROKER_URL=f"{celery_broker.url}/{CELERY_DB[kind]}",
    )
    log_dir = tmp_path_factory.mktemp(f"celery-{kind}")
    worker = CeleryWorker(
        f"{kind}-{os.getpid()}@flask-realtime-test", env, log_dir / "worker.log"
    )
    try:
        web = servers.start(
            "geventwebsocket",
            log_dir,
            app=APP,
            env=env,
            workers=WEB_WORKERS,
            name="web",
        )
        try:
            worker.wait_ready()
            yield Stack(kind, web, worker)
        finally:
            web.discard()
    finally:
        worker.stop()


@pytest.fixture
def clients() -> t.Iterator[list[Client]]:
    """Connections the test opens; closed when it ends (the servers stay)."""
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()


class Visitor:
    """A browser: the page's session cookie, its connections, its jobs."""

    def __init__(self, server: Server, clients: list[Client]) -> None:
        self.server = server
        self.clients = clients
        self.http = requests.Session()
        response = self.http.get(server.url + "/", timeout=10)
        assert response.status_code == 200, response.text

    def connect(self) -> Client:
        cookie = "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())
        client = connect(self.server.ws_url, headers={"Cookie": cookie})
        self.clients.append(client)
        return client

    def start_job(self, limit: int = LIMIT) -> str:
        response = self.http.post(
            self.server.url + "/jobs", json={"limit": limit}, timeout=10
        )
        assert response.status_code == 202, response.text
        return t.cast(str, response.json()["job"])


def events_of(client: Client, job: str, until: str, deadline: float) -> list[t.Any]:
    """The events about ``job`` up to and including the first ``until``."""

    def about_job(m: t.Any) -> bool:
        return (
            m.get("type") == "event"
            and isinstance(m.get("data"), dict)
            and m["data"].get("job") == job
        )

    about_job.__name__ = f"an event about job {job} (until {until!r})"
    events = []
    while True:
        remaining = max(0.0, deadline - time.monotonic())
        events.append(client.wait_for(about_job, timeout=remaining))
        if events[-1]["event"] == until:
            return events


def on_every_worker(open_one: t.Callable[[], Client], least: int) -> list[Client]:
    """At least ``least`` connections, and more until every gunicorn worker
    holds one: the kernel, not the test, decides where each lands (and a
    worker still booting takes none)."""
    opened: list[Client] = []
    deadline = time.monotonic() + 10
    nodes: set[str] = set()
    while len(opened) < least or len(nodes) < WEB_WORKERS:
        assert time.monotonic() < deadline, f"{len(opened)} connections on {nodes}"
        opened.append(open_one())
        nodes.add(node_of(opened[-1]))
    return opened


def node_of(client: Client) -> str:
    assert client.connection_id is not None
    return client.connection_id.partition(".")[0]


def test_a_task_broadcasts_its_progress_to_every_subscriber(
    stack: Stack, clients: list[Client]
) -> None:

    def watcher() -> Client:
        # Anonymous: the job's result, sent to its user, is not theirs.
        client = connect(stack.web.ws_url)
        clients.append(client)
        return client

    watchers = on_every_worker(watcher, least=4)
    for client in watchers:
        assert client.subscribe("jobs")["type"] == "subscribed"
    job = Visitor(stack.web, clients).start_job()
    deadline = time.monotonic() + EVENT_TIMEOUT
    with stack.diagnostics():
        for client in watchers:
            events = events_of(client, job, "job.finished", deadline)
            assert all(m.get("channel") == "jobs" for m in events)
            progress = [m["data"] for m in events if m["event"] == "job.progress"]
            assert [p["percent"] for p in progress] == PERCENTS
            assert {p["worker"] for p in progress} == {stack.worker.name}


def test_send_to_user_from_a_task_reaches_each_connection_of_the_user(
    stack: Stack, clients: list[Client]
) -> None:
    ann = Visitor(stack.web, clients)
    bob = Visitor(stack.web, clients)
    anns = on_every_worker(ann.connect, least=3)
    bobs = bob.connect()
    assert bobs.subscribe("jobs")["type"] == "subscribed"
    job = ann.start_job()
    deadline = time.monotonic() + EVENT_TIMEOUT
    with stack.diagnostics():
        for client in anns:
            result = client.wait_event(
                "job.result", timeout=max(0.0, deadline - time.monotonic())
            )
            assert result["data"] == {
                "job": job,
                "limit": LIMIT,
                "primes": PRIMES_BELOW_LIMIT,
            }
            assert result.get("channel") is None
        # Bob watches the job on the public channel to its end, but its result
        # is Ann's alone.
        events = events_of(bobs, job, "job.finished", deadline)
        assert bobs.ping()["type"] == "pong"
        assert all(m.get("channel") == "jobs" for m in events + bobs.skipped)
