from __future__ import annotations

import os
import typing as t
from pathlib import Path

import pytest

from tests import brokerservers, servers
from tests.brokerservers import BrokerServer
from tests.chromium import browser as browser  # one Chromium for the session
from tests.servers import Server

_CLEARED_PREFIXES = ("REALTIME_", "REDIS_", "RABBITMQ_")
_CLEARED_NAMES = ("NATS_URL",)
_STARTED = pytest.StashKey[list]()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The library reads these as configuration fallbacks: start from none."""
    for key in list(os.environ):
        if key.startswith(_CLEARED_PREFIXES) or key in _CLEARED_NAMES:
            monkeypatch.delenv(key)


class LiveServerFactory(t.Protocol):
    def __call__(
        self,
        kind: str,
        app: str = ...,
        env: t.Mapping[str, str | None] | None = ...,
        workers: int = ...,
        gunicorn_options: t.Sequence[str] = ...,
    ) -> Server: ...


@pytest.fixture
def live_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> t.Iterator[LiveServerFactory]:
    """Start real servers: ``live_server(kind, app=..., env=..., workers=1)``.

    ``kind`` is one of ``servers.KINDS``. Each server gets a free port on
    127.0.0.1, logs to a file in the test's ``tmp_path``, is healthy
    when returned, and is killed when the test ends (``Server.discard``).
    A failing test's report shows the tail of each server's log.
    """
    started: list[Server] = []
    request.node.stash[_STARTED] = started

    def start(
        kind: str,
        app: str = servers.DEFAULT_APP,
        env: t.Mapping[str, str | None] | None = None,
        workers: int = 1,
        gunicorn_options: t.Sequence[str] = (),
    ) -> Server:
        server = servers.start(
            kind,
            tmp_path,
            app=app,
            env=env,
            workers=workers,
            gunicorn_options=gunicorn_options,
            name=f"{kind}-{len(started) + 1}",
        )
        started.append(server)
        return server

    yield start

    errors = []
    for server in reversed(started):
        try:
            server.discard()  # the test is over: no graceful stop to wait for
        except Exception as exc:  # stop the others all the same
            errors.append(exc)
    if errors:
        raise errors[0]


#: ``server`` fixture params of the protocol suites: every server kind, and
#: "cluster", four workers sharing Redis behind one port, so that a
#: connection's requests land on any worker (no stickiness), and the
#: project's own gunicorn worker.
PROTOCOL_SERVERS = (*servers.PROTOCOL_KINDS, "cluster")


def start_protocol_server(
    param: str,
    tmp_path_factory: pytest.TempPathFactory,
    env: t.Mapping[str, str],
    broker_servers: t.Callable[[str], BrokerServer],
) -> Server:
    """The server of one ``PROTOCOL_SERVERS`` param, with the app env ``env``."""
    kind, workers = param, 1
    if param == "cluster":
        env = {**env, **broker_servers("redis").app_env}
        kind, workers = "geventwebsocket", 4
    return servers.start(kind, tmp_path_factory.mktemp(param), env=env, workers=workers)


def module_server(
    params: t.Sequence[str] = servers.KINDS,
    app: str = servers.DEFAULT_APP,
    env: t.Mapping[str, str] | None = None,
) -> t.Any:
    """A module-scoped ``server`` fixture: ``server = module_server(...)``.

    One server of each kind in ``params`` serving ``app`` with ``env``,
    shared by the module's tests, which is what makes a long parametrized
    suite affordable. ``"cluster"`` is ``start_protocol_server``'s (the
    default app).
    """

    @pytest.fixture(scope="module", params=params, name="server")
    def fixture(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> t.Iterator[Server]:
        if request.param == "cluster":
            started = start_protocol_server(
                request.param,
                tmp_path_factory,
                env or {},
                request.getfixturevalue("broker_servers"),
            )
        else:
            directory = tmp_path_factory.mktemp(request.param)
            started = servers.start(request.param, directory, app=app, env=env)
        yield started
        started.discard()

    return fixture


@pytest.fixture(params=servers.KINDS)
def server_kind(request: pytest.FixtureRequest) -> str:
    """Each server kind in turn: geventwebsocket, gevent, cli, flask-run."""
    return request.param


@pytest.fixture
def any_server(live_server: LiveServerFactory, server_kind: str) -> Server:
    """The basic test app on each kind of server in turn."""
    return live_server(server_kind)


@pytest.fixture(scope="session")
def broker_servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> t.Iterator[t.Callable[[str], BrokerServer]]:
    """``broker_servers(kind)``: the session's one server of that kind.

    Started on first use and stopped when the session ends. A test that stops
    or restarts it must leave it running (``restart()`` does).
    """
    started: dict[str, BrokerServer] = {}

    def get(kind: str) -> BrokerServer:
        brokerservers.require(kind)
        server = started.get(kind)
        if server is None or server.process is None:
            server = brokerservers.start(kind, tmp_path_factory.mktemp(kind))
            started[kind] = server
        return server

    yield get
    for server in started.values():
        server.stop()


@pytest.fixture
def own_broker_server(
    tmp_path: Path,
) -> t.Iterator[t.Callable[[str], BrokerServer]]:
    """A broker server for this test alone, for tests that kill or restart it."""
    started: list[BrokerServer] = []

    def start(kind: str) -> BrokerServer:
        brokerservers.require(kind)
        server = brokerservers.start(kind, tmp_path / f"{kind}-{len(started)}")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Leave out the runs of a test on servers it does not apply to.

    ``@pytest.mark.servers("gevent", ...)`` names the ``server`` fixture
    params a test is about; its runs on the others are deselected, not
    skipped: CI allows no skip, and a behaviour a server does not have is
    not a test that could fail there.
    """
    kept, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("servers")
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("server") if callspec is not None else None
        if marker is not None and param is not None and param not in marker.args:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> t.Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for server in item.stash.get(_STARTED, []):
            report.sections.append(
                (f"server log: {server!r} ({server.log_path})", server.log_tail(200))
            )
    return report
