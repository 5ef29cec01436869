"""Deployments that cannot work say so at once: in the log, in the health
check, and with a JSON 503 from every realtime endpoint that would otherwise
half-work. And the health check is a readiness check: 503 while the broker
is unreachable, 200 once it is back; ``/health/live`` never asks the broker.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest
import requests

from tests import servers
from tests.brokerservers import BrokerServer
from tests.conftest import LiveServerFactory
from tests.hostile.measure import wait_until
from tests.http_helpers import assert_json_error

HEALTH = "/realtime/health"
UPGRADE_HEADERS = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def _start_unready(
    tmp_path: Path, argv_for: t.Callable[[int], list[str]], env: dict[str, str]
) -> servers.Server:
    """A server that is expected to be unready: up once it answers at all."""
    port = servers.free_port()
    argv = argv_for(port)
    log_path = tmp_path / f"server-{port}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            argv,
            cwd=servers.ROOT,
            env=servers.child_environment(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = servers.Server("unready", port, process, log_path, argv)
    try:
        wait_until(lambda: server.health() is not None, 20, "the server to answer")
    except BaseException:
        server.stop()
        raise
    return server


def _gunicorn(worker: str | None, workers: int) -> t.Callable[[int], list[str]]:
    def argv(port: int) -> list[str]:
        kind = ["-k", worker] if worker else []  # none: gunicorn's sync worker
        return [
            sys.executable,
            "-m",
            "gunicorn",
            *kind,
            "-w",
            str(workers),
            "--no-control-socket",
            "--graceful-timeout",
            "2",
            "--timeout",
            "30",
            "-b",
            f"127.0.0.1:{port}",
            servers.DEFAULT_APP,
        ]

    return argv


def _upgrade_answer(server: servers.Server, timeout: float = 5.0) -> tuple[int, bytes]:
    """A raw WebSocket upgrade: the status and body the server answers."""
    head = "".join(f"{k}: {v}\r\n" for k, v in UPGRADE_HEADERS.items())
    request = (
        f"GET /realtime/ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{head}\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0 and b"content-length:" in data[:head_end].lower():
                length = int(
                    data[:head_end]
                    .lower()
                    .split(b"content-length:")[1]
                    .split(b"\r\n")[0]
                )
                if len(data) >= head_end + 4 + length:
                    break
    status = int(data.split(b" ", 2)[1])
    return status, data[data.find(b"\r\n\r\n") + 4 :]


def _assert_every_endpoint_refuses(server: servers.Server, words: str) -> None:
    status, body = _upgrade_answer(server)
    assert status == 503, body
    assert words in body.decode(), body
    for path in ("/realtime/sse", "/realtime/poll"):
        response = requests.get(server.url + path, timeout=5)
        assert_json_error(response, 503)
        assert words in response.json()["error"]["message"]
    health = requests.get(server.url + HEALTH, timeout=5)
    assert health.status_code == 503, health.text
    assert words in health.json()["error"]
    live = requests.get(server.url + HEALTH + "/live", timeout=5)
    assert live.status_code == 200, live.text


def test_several_workers_on_the_null_broker_fail_loudly(tmp_path: Path) -> None:
    server = _start_unready(
        tmp_path,
        _gunicorn("geventwebsocket.gunicorn.workers.GeventWebSocketWorker", 2),
        {},
    )
    try:
        # Logged by each worker as it starts, before any realtime request.
        wait_until(
            lambda: server.log().count("REALTIME_BROKER") >= 2,
            20,
            "each worker to log the null broker error at start",
        )
        assert "flask_realtime: several worker processes" in server.log()
        _assert_every_endpoint_refuses(server, "REALTIME_BROKER")
    finally:
        server.discard()


def test_gunicorn_sync_worker_refuses_long_lived_requests_at_once(
    tmp_path: Path,
) -> None:
    server = _start_unready(tmp_path, _gunicorn(None, 1), {})
    try:
        wait_until(
            lambda: "flask_realtime.gunicorn.Worker" in server.log(),
            20,
            "the worker to log the sync worker error at start",
        )
        started = time.monotonic()
        _assert_every_endpoint_refuses(server, "flask_realtime.gunicorn.Worker")
        # Answered at once, and the only worker is free for the next request.
        assert time.monotonic() - started < 5
        assert requests.get(server.url + "/broadcast?channel=a&event=b", timeout=5).ok
    finally:
        server.discard()


def test_one_worker_on_the_null_broker_is_ready(
    live_server: LiveServerFactory,
) -> None:
    server = live_server("geventwebsocket")
    health = requests.get(server.url + HEALTH, timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert "flask_realtime: several worker processes" not in server.log()


@pytest.mark.parametrize("broker_kind", ["redis", "nats", "rabbitmq"])
def test_health_is_a_readiness_check_on_the_broker(
    live_server: LiveServerFactory,
    own_broker_server: t.Callable[[str], BrokerServer],
    broker_kind: str,
) -> None:
    broker = own_broker_server(broker_kind)
    server = live_server("geventwebsocket", env=broker.app_env)
    url = server.url + HEALTH
    assert requests.get(url, timeout=5).status_code == 200

    broker.stop()

    def unready() -> bool:
        return requests.get(url, timeout=5).status_code == 503

    wait_until(unready, 30, "health to answer 503 with the broker down")
    answer = requests.get(url, timeout=5).json()
    assert answer["status"] == "unavailable"
    state = answer["broker"]
    assert state["kind"] == broker_kind
    assert state["connected"] is False
    assert f"127.0.0.1:{broker.port}" in state["url"]
    # What the broker's reader last hit.
    assert state["reason"].startswith(("lost the connection", "cannot connect")), state
    live = requests.get(url + "/live", timeout=5)
    assert live.status_code == 200 and live.json()["status"] == "ok"

    broker.start()
    wait_until(
        lambda: requests.get(url, timeout=5).status_code == 200,
        60,
        "health to answer 200 with the broker back",
    )
