"""``/realtime/metrics`` against gunicorn with two workers sharing Redis.

Clients on every transport land on either worker; a scrape (on whichever
worker takes it) must count all of them: prometheus_client's multiprocess
mode, with the hooks of ``-c python:flask_realtime.gunicorn``. Counts are
read as the totals over processes that a Prometheus server would see.
"""

from __future__ import annotations

import json
import os
import signal
import time
import typing as t
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests import servers, wsclient
from tests.http_helpers import app_env, assert_json_error, broadcast, unique
from tests.servers import Server
from tests.test_longpoll import Poller
from tests.test_sse import SSEClient

TOKEN = "metrics-token-0123456789"
PER_MINUTE = 20  # the rate limit's burst: one client's 21st message is refused
DASHBOARD = (
    Path(__file__).resolve().parent.parent / "examples/grafana/flask_realtime.json"
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    broker_servers: t.Callable[[str], t.Any],
) -> t.Iterator[Server]:
    env = {
        **broker_servers("redis").app_env,
        **app_env(
            REALTIME_METRICS={"enabled": True, "token": TOKEN},
            # The timer samples the gauges each second (a quarter of it).
            REALTIME_HEARTBEAT=4,
            REALTIME_RATE_LIMIT={"enabled": True, "messages_per_minute": PER_MINUTE},
        ),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("prometheus")),
    }
    started = servers.start(
        servers.REALTIME_WORKER,
        tmp_path_factory.mktemp("metrics"),
        env=env,
        workers=2,
        gunicorn_options=["-c", "python:flask_realtime.gunicorn"],
    )
    yield started
    started.discard()


def scrape(server: Server) -> Samples:
    response = requests.get(
        server.url + "/realtime/metrics",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over series of ``name`` that have ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def wait_for_values(
    server: Server,
    expected: t.Mapping[tuple[str, tuple[tuple[str, str], ...]], float],
    baseline: Samples | None = None,
    timeout: float = 6.0,
) -> Samples:
    """Scrape until each ``(name, labels)`` has its value (counters: more
    than at ``baseline``), or fail with the last values."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(server)
        got = {
            key: value(samples, key[0], **dict(key[1]))
            - (value(baseline, key[0], **dict(key[1])) if baseline else 0.0)
            for key in expected
        }
        if got == dict(expected):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics: expected {dict(expected)}, got {got}")
        time.sleep(0.1)


def m(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def close_http(server: Server, client: t.Any) -> None:
    """``POST /realtime/close``: an SSE or long-poll client says goodbye."""
    response = requests.post(
        server.url + "/realtime/close",
        json={"connection_id": client.connection_id, "token": client.token},
        timeout=5,
    )
    assert response.status_code == 204, response.text


def test_the_endpoint_wants_the_bearer_token(server: Server) -> None:
    url = server.url + "/realtime/metrics"
    assert_json_error(requests.get(url, timeout=5), 401)
    for header in (
        "Bearer wrong-token-0123456789",
        f"Bearer {TOKEN}x",
        f"Basic {TOKEN}",
        TOKEN,
    ):
        response = requests.get(url, headers={"Authorization": header}, timeout=5)
        assert_json_error(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in response.text
    assert TOKEN not in server.log()
    scrape(server)


def test_no_route_while_off(live_server: t.Any) -> None:
    plain = live_server("gevent")
    response = requests.get(
        plain.url + "/realtime/metrics",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    assert_json_error(response, 404)


def test_counts_over_both_workers_and_every_transport(server: Server) -> None:
    before = scrape(server)
    channel = unique("metrics")
    presence = unique("presence-metrics")
    sockets = [
        wsclient.connect(f"{server.ws_url}?user=w{n}&name=W{n}") for n in range(4)
    ]
    streams = [SSEClient(server, channels=[channel]) for _ in range(2)]
    pollers = [Poller(server) for _ in range(2)]
    try:
        for n, sock in enumerate(sockets):
            sock.send_json({"type": "subscribe", "channel": channel, "id": n})
            sock.send_json({"type": "subscribe", "channel": presence, "id": 10 + n})
            for _ in range(2):
                sock.wait_for(lambda msg: msg.get("type") == "subscribed")
        for poller in pollers:
            poller.subscribe(channel)
        # Two workers took these; a scrape on either counts them all.
        wait_for_values(
            server,
            {
                m("flask_realtime_connections", transport="websocket"): 4,
                m("flask_realtime_connections", transport="sse"): 2,
                m("flask_realtime_connections", transport="longpolling"): 2,
                m("flask_realtime_subscriptions"): 4 * 2 + 2 + 2,
                m("flask_realtime_presence_members"): 4,
                m("flask_realtime_broker_connected", broker="redis"): 1,
            },
        )
        wait_for_values(
            server,
            {
                # (the SSE streams' ?channels= are subscribe messages too)
                m("flask_realtime_messages_received_total", kind="subscribe"): 12,
                m("flask_realtime_connections_opened_total", transport="sse"): 2,
            },
            baseline=before,
        )

        # (presence joins went to the presence channel's members already)
        before_ticks = scrape(server)
        for n in range(3):
            broadcast(server, channel, "tick", n)
        for client in [*sockets, *streams, *pollers]:
            for n in range(3):
                client.wait_for(
                    lambda msg, n=n: msg.get("event") == "tick" and msg["data"] == n
                )
        samples = wait_for_values(
            server,
            {
                m("flask_realtime_messages_published_total", kind="channel"): 3,
                m("flask_realtime_messages_sent_total", kind="channel"): 3 * 8,
            },
            baseline=before_ticks,
        )
        # One observation per broadcast per worker with subscribers.
        observed = value(samples, "flask_realtime_broadcast_latency_seconds_count")
        observed -= value(
            before_ticks, "flask_realtime_broadcast_latency_seconds_count"
        )
        assert 3 <= observed <= 6, observed
        assert value(
            samples, "flask_realtime_broadcast_latency_seconds_bucket", le="+Inf"
        ) == value(samples, "flask_realtime_broadcast_latency_seconds_count")

        # One socket goes past its rate limit: it sent 2 subscribes already.
        sock = sockets[0]
        for n in range(PER_MINUTE):
            sock.send_json({"type": "ping", "id": f"p{n}"})
        refused = [
            sock.wait_for(lambda msg: msg.get("type") in ("pong", "error"))
            for _ in range(PER_MINUTE)
        ]
        assert [r["type"] for r in refused].count("error") == 2, refused
        wait_for_values(
            server,
            {
                m("flask_realtime_rate_limited_total"): 2,
                m("flask_realtime_messages_received_total", kind="ping"): PER_MINUTE
                - 2,
            },
            baseline=before,
        )
    finally:
        for sock in sockets:
            sock.close()
        for stream in streams:
            close_http(server, stream)
            stream.close()
        for poller in pollers:
            close_http(server, poller)

    samples = wait_for_values(
        server,
        {
            m("flask_realtime_connections", transport="websocket"): 0,
            m("flask_realtime_connections", transport="sse"): 0,
            m("flask_realtime_connections", transport="longpolling"): 0,
            m("flask_realtime_subscriptions"): 0,
            m("flask_realtime_presence_members"): 0,
        },
    )
    closed = {
        transport: value(
            samples, "flask_realtime_connections_closed_total", transport=transport
        )
        - value(before, "flask_realtime_connections_closed_total", transport=transport)
        for transport in ("websocket", "sse", "longpolling")
    }
    assert closed == {"websocket": 4, "sse": 2, "longpolling": 2}
    # Each closed with 1000: the sockets' close frames, the POSTs /close.
    normal = value(samples, "flask_realtime_closes_total", code="1000")
    assert normal - value(before, "flask_realtime_closes_total", code="1000") == 8


def test_every_metric_the_dashboard_queries_exists(server: Server) -> None:
    samples = scrape(server)
    names = {name for name, _ in samples}
    dashboard = json.loads(DASHBOARD.read_text())
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for word in _words(target["expr"]):
                if word.startswith("flask_realtime_"):
                    queried.add(word)
    assert queried, "the dashboard queries no flask_realtime_ metric"
    assert queried <= names, sorted(queried - names)


def test_killed_workers_gauges_leave_the_sum(server: Server) -> None:
    """gunicorn's child_exit hook forgets killed workers' live gauges: a
    killed worker never counts its connections down itself. (Last in the
    module: the arbiter starts new workers, with nothing of the old ones.)"""
    sockets = [wsclient.connect(server.ws_url) for _ in range(4)]
    try:
        wait_for_values(
            server, {m("flask_realtime_connections", transport="websocket"): 4}
        )
        for pid in worker_pids(server):
            os.kill(pid, signal.SIGKILL)
        for sock in sockets:
            with pytest.raises(wsclient.ConnectionClosed):
                sock.wait_for(lambda msg: False, timeout=5)
        wait_for_values(
            server, {m("flask_realtime_connections", transport="websocket"): 0}
        )
    finally:
        for sock in sockets:
            sock.close()


def worker_pids(server: Server) -> list[int]:
    """gunicorn's workers: the children of its arbiter."""
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert children, "gunicorn has no worker"
    return [int(child) for child in children]


def _words(expr: str) -> list[str]:
    word = []
    words = []
    for char in expr + " ":
        if char.isalnum() or char == "_":
            word.append(char)
        else:
            if word:
                words.append("".join(word))
            word = []
    return words
