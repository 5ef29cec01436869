"""``flask realtime serve``: the CLI server."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import requests
import websocket

from tests.conftest import LiveServerFactory
from tests.servers import ROOT, child_environment, free_port
from tests.wsclient import connect


def test_serve_patches_before_the_app_is_imported(
    live_server: LiveServerFactory,
) -> None:
    server = live_server("cli", app="tests.apps.with_ssl:app")
    with connect(server.ws_url) as client:
        assert client.ping()["type"] == "pong"
    log = server.log()
    assert "flask_realtime serving" in log
    assert "MonkeyPatchWarning" not in log


@contextlib.contextmanager
def _serving(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ca: Path | None = None,
) -> t.Iterator[tuple[int, Path]]:
    """``flask realtime serve`` with ``args`` on a free port, until healthy
    (over TLS, trusting ``ca``, when given)."""
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "tests.apps.basic:app"]
            + ["realtime", "serve", "--host", "127.0.0.1", "--port", str(port)]
            + list(args),
            cwd=ROOT,
            env=child_environment(env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    scheme = "https" if ca else "http"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(
                    f"{scheme}://127.0.0.1:{port}/realtime/health",
                    timeout=1,
                    verify=str(ca) if ca else True,
                )
                break
            except requests.ConnectionError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)  # polling for the server to listen
        yield port, log
    finally:
        process.terminate()
        process.wait(10)


def test_serve_with_one_transport(tmp_path: Path) -> None:
    with _serving(tmp_path, "--transport", "websocket") as (port, log):
        health = requests.get(f"http://127.0.0.1:{port}/realtime/health", timeout=5)
        assert health.json()["transports"] == ["websocket"]
        assert "transports: websocket;" in log.read_text()


def _failing_flask(
    *args: str,
    app: str = "tests.apps.basic:app",
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``flask --app APP realtime ARGS``, which must fail; what it said."""
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", app, "realtime", *args],
        cwd=cwd,
        env=child_environment() if env is None else env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    return result


def test_serve_refuses_an_unknown_transport() -> None:
    result = _failing_flask("serve", "--transport", "carrier-pigeon")
    assert "carrier-pigeon" in result.stderr


def test_serve_without_realtime_says_so(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text(
        "from flask import Flask\napp = Flask(__name__)\n"
    )
    env = child_environment()
    env["PYTHONPATH"] = f"{tmp_path}:{env.get('PYTHONPATH', '')}"
    result = _failing_flask("serve", app="plain:app", cwd=tmp_path, env=env)
    assert "Realtime(app)" in result.stderr


def test_serve_speaks_tls_with_realtime_ssl(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    config = {"certfile": str(cert), "keyfile": str(key)}
    env = {"TESTAPP_REALTIME_SSL": json.dumps(config)}
    with _serving(tmp_path, env=env, ca=cert) as (port, log):
        health = requests.get(
            f"https://127.0.0.1:{port}/realtime/health", timeout=5, verify=str(cert)
        )  # the server presents the certificate it was given
        assert health.json()["status"] == "ok"
        assert f"on https://127.0.0.1:{port}" in log.read_text()
        ws = websocket.create_connection(
            f"wss://127.0.0.1:{port}/realtime/ws",
            sslopt={"ca_certs": str(cert)},
            timeout=5,
        )
        try:
            assert json.loads(ws.recv())["type"] == "connected"
            ws.send(json.dumps({"type": "ping", "id": 1}))
            assert json.loads(ws.recv()) == {"type": "pong", "id": 1}
        finally:
            ws.close()


def test_serve_on_a_busy_port_says_so_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _failing_flask("serve", "--host", "127.0.0.1", "--port", str(port))
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ], result.stderr


def _request_pair_seconds(port: int) -> float:
    """The slowest second request of a kept-alive pair, over a few pairs."""
    request = b"GET /realtime/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    worst = 0.0
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        for n in range(6):
            started = time.monotonic()
            sock.sendall(request)
            assert reader.readline().startswith(b"HTTP/1.1 200")
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            reader.read(length)
            if n:  # the first has the connection's quick ACKs
                worst = max(worst, time.monotonic() - started)
    return worst


def test_serve_answers_kept_alive_requests_without_the_delayed_ack(
    tmp_path: Path,
) -> None:
    # pywsgi writes a response's head and body in two sends; without
    # TCP_NODELAY the body waits for the client's delayed ACK, about 40 ms.
    with _serving(tmp_path) as (port, _log):
        assert _request_pair_seconds(port) < 0.025


def test_the_examples_listen_on_loopback_by_default(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "clock.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "examples/clock/app.py"]
            + ["realtime", "serve", "--port", str(port)],
            cwd=ROOT,
            env=child_environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while "serving" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)  # polling for the server's first line
        assert f"on http://127.0.0.1:{port} " in log.read_text()
    finally:
        process.terminate()
        process.wait(10)
