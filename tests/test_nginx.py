"""docs/deployment.md's nginx config, run for real in front of the app.

The config block is read from the page, so this test fails when the page
drifts. It is made runnable by changing only what a deployment would: the
upstream servers become one gunicorn gevent-websocket worker serving
``tests.apps.basic:app``, and ``listen 443 ssl`` (with its certificate
lines) becomes a plain listener on a free port that is not 80, where a
``Host`` without its port would break the origin check. Around the block go
the few main-context lines nginx needs (events, temp paths and logs under the
test's directory). Through that nginx, with the ``Origin`` a browser on the
nginx address sends, WebSocket, SSE and long-polling must each deliver a
broadcast.

nginx comes from Debian (``/usr/sbin/nginx``, package ``nginx``; .ci/run
installs it). Under ``CI=true`` a missing nginx fails the test; elsewhere
it skips, as a missing broker server does.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import time
import typing as t
import uuid
from pathlib import Path

import pytest
import requests
import websocket

from tests import brokerservers, servers
from tests.docsamples import blocks_of
from tests.servers import Server, free_port
from tests.wsclient import connect as ws_connect

NGINX = Path("/usr/sbin/nginx")
DEPLOYMENT = servers.ROOT / "docs" / "deployment.md"
START_TIMEOUT = 10.0
WAIT = 5.0


def require_nginx() -> None:
    """Fail (CI) or skip (a developer's machine) when nginx is missing."""
    brokerservers.require_program(str(NGINX), package="nginx")


def documented_config() -> str:
    [block] = [b for b in blocks_of(DEPLOYMENT) if b.lang == "nginx"]
    return block.text


def _replace(pattern: str, new: str, text: str, count: int | None = None) -> str:
    """``re.subn`` that fails when the page no longer has what it replaces."""
    result, found = re.subn(pattern, new, text, flags=re.M)
    assert found and (count is None or found == count), (
        f"docs/deployment.md's nginx config changed: {pattern!r} matched"
        f" {found} times; update tests/test_nginx.py"
    )
    return result


def runnable_config(documented: str, port: int, upstream: int, prefix: Path) -> str:
    """The documented config, pointed at ``upstream`` and listening on ``port``."""
    config = _replace(
        r"^\s*listen\s+443\s+ssl;", f"    listen 127.0.0.1:{port};", documented, 1
    )
    config = _replace(r"^\s*ssl_certificate(_key)?\s+\S+;\n", "", config, 2)
    config = _replace(
        r"^(\s*)server\s+[\d.]+:\d+;", rf"\g<1>server 127.0.0.1:{upstream};", config
    )
    # As root the workers would otherwise run as nobody, who cannot enter the
    # test's private directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp_paths = "".join(
        f"    {kind}_temp_path {prefix / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"    access_log {prefix / 'access.log'};\n"
        f"{temp_paths}"
        f"{config}"
        "}\n"
    )


class Nginx:
    """nginx in the foreground, its files under ``prefix``."""

    def __init__(self, config: str, port: int, prefix: Path) -> None:
        self.port = port
        self.prefix = prefix
        prefix.mkdir(parents=True, exist_ok=True)
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(config)
        self.log_path = prefix / "nginx.log"
        directives = (
            f"daemon off; pid {prefix / 'nginx.pid'};"
            f" error_log {prefix / 'error.log'} info;"
        )
        argv = [str(NGINX), "-p", str(prefix), "-c", str(self.conf), "-g", directives]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        texts = [
            p.read_text(errors="replace")
            for p in (self.log_path, self.prefix / "error.log")
            if p.exists()
        ]
        return "\n".join(texts)[-4000:]

    def wait_ready(self) -> None:
        """Until the app's health check answers 200 through nginx."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"nginx exited ({self.process.returncode}):\n{self.log()}"
                )
            try:
                if (
                    requests.get(self.url + "/realtime/health", timeout=1).status_code
                    == 200
                ):
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"nginx not ready after {START_TIMEOUT} s:\n{self.log()}"
                )
            try:
                self.process.wait(timeout=0.05)  # the poll interval, and an exit check
            except subprocess.TimeoutExpired:
                pass

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_nginx(documented: str, upstream: int, prefix: Path) -> Nginx:
    """nginx on a free port; retried on a new port if another process took it."""
    for attempt in range(3):
        port = free_port()
        directory = prefix / f"nginx-{port}"
        nginx = Nginx(
            runnable_config(documented, port, upstream, directory), port, directory
        )
        try:
            nginx.wait_ready()
        except AssertionError:
            nginx.stop()
            if attempt < 2 and "Address already in use" in nginx.log():
                continue
            raise
        return nginx
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Server]:
    require_nginx()
    server = servers.start("geventwebsocket", tmp_path_factory.mktemp("gunicorn"))
    yield server
    server.discard()


@pytest.fixture(scope="module")
def nginx(
    app_server: Server, tmp_path_factory: pytest.TempPathFactory
) -> t.Iterator[Nginx]:
    started = start_nginx(
        documented_config(), app_server.port, tmp_path_factory.mktemp("nginx")
    )
    yield started
    started.stop()


def browser_session(nginx: Nginx) -> requests.Session:
    """HTTP requests as a page served by nginx sends them: with its Origin."""
    session = requests.Session()
    session.headers["Origin"] = nginx.url
    return session


def broadcast(nginx: Nginx, channel: str, event: str, data: t.Any) -> None:
    response = requests.get(
        nginx.url + "/broadcast",
        params={"channel": channel, "event": event, "data": json.dumps(data)},
        timeout=WAIT,
    )
    assert response.status_code == 200, response.text


def unique(name: str) -> str:
    return f"{name}.{uuid.uuid4().hex[:8]}"


def test_websocket_through_nginx(nginx: Nginx) -> None:
    channel = unique("news")
    ws_url = f"ws://127.0.0.1:{nginx.port}/realtime/ws"
    with ws_connect(ws_url, origin=nginx.url) as client:
        assert client.subscribe(channel)["type"] == "subscribed"
        broadcast(nginx, channel, "headline", {"n": 1})
        message = client.wait_event("headline", channel, timeout=WAIT)
        assert message["data"] == {"n": 1}


def test_websocket_from_another_origin_is_refused_through_nginx(nginx: Nginx) -> None:
    """The origin check is alive behind nginx, so the test above means something."""
    ws_url = f"ws://127.0.0.1:{nginx.port}/realtime/ws"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        ws_connect(ws_url, origin="http://127.0.0.1:1")
    assert refused.value.status_code == 403


def sse_messages(response: requests.Response) -> t.Iterator[dict[str, t.Any]]:
    """The JSON envelopes of an SSE stream, as they arrive."""
    pending = b""
    for chunk in response.iter_content(chunk_size=None):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                yield json.loads(line[5:])


def test_sse_through_nginx(nginx: Nginx) -> None:
    channel = unique("news")
    session = browser_session(nginx)
    with session.get(
        nginx.url + "/realtime/sse",
        params={"channels": channel},
        headers={"Accept": "text/event-stream"},
        stream=True,
        timeout=(WAIT, WAIT),
    ) as response:
        assert response.status_code == 200, response.text
        messages = sse_messages(response)
        assert next(messages)["type"] == "connected"
        assert next(messages)["type"] == "subscribed"
        broadcast(nginx, channel, "headline", {"n": 2})
        event = next(m for m in messages if m.get("type") == "event")
        assert (event["channel"], event["event"], event["data"]) == (
            channel,
            "headline",
            {"n": 2},
        )


def test_long_polling_through_nginx(nginx: Nginx) -> None:
    channel = unique("news")
    session = browser_session(nginx)
    opened = session.get(nginx.url + "/realtime/poll", timeout=WAIT)
    assert opened.status_code == 200, opened.text
    welcome = opened.json()["messages"][0]
    assert welcome["type"] == "connected", welcome
    connection = {
        "connection_id": welcome["data"]["connection_id"],
        "token": welcome["data"]["token"],
    }
    sent = session.post(
        nginx.url + "/realtime/send",
        json={
            **connection,
            "message": {"type": "subscribe", "channel": channel, "id": 1},
        },
        timeout=WAIT,
    )
    assert sent.status_code == 200, sent.text
    assert sent.json()[0]["type"] == "subscribed", sent.text

    def poll() -> requests.Response:
        query = {**connection, "cursor": str(opened.json()["cursor"])}
        return browser_session(nginx).get(
            nginx.url + "/realtime/poll", params=query, timeout=40
        )

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(poll)  # a long poll, answered by the broadcast
        broadcast(nginx, channel, "headline", {"n": 3})
        answer = waiting.result(timeout=WAIT)
    assert answer.status_code == 200, answer.text
    events = [m for m in answer.json()["messages"] if m.get("type") == "event"]
    assert [(m["event"], m["data"]) for m in events] == [("headline", {"n": 3})]


def test_a_host_without_its_port_would_refuse_the_page(
    app_server: Server, tmp_path: Path
) -> None:
    """Why the page says ``$http_host``: ``$host`` gets the page a 403."""
    documented = documented_config()
    assert "proxy_set_header Host $http_host;" in documented
    with_host = documented.replace("Host $http_host;", "Host $host;")
    nginx = start_nginx(with_host, app_server.port, tmp_path)
    try:
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            ws_connect(f"ws://127.0.0.1:{nginx.port}/realtime/ws", origin=nginx.url)
        assert refused.value.status_code == 403
    finally:
        nginx.stop()
