"""SSE read by clients nobody here wrote, on every server kind.

Each client must have ``connected`` and then a broadcast within
:data:`DEADLINE` seconds. A stream with neither a length nor chunked
encoding kept ``requests``-based clients (sseclient-py reads 128-byte
blocks, urllib3 fills 64 KiB) waiting about 37 s for ``connected``. On
HTTP/1.1 the body is chunked, and a stream the server ends (here: the
client's ``POST /realtime/close``) ends with the last chunk, so clients see
a clean end rather than a truncated body. HTTP/1.0 clients keep a body that
ends with the connection.

The Python clients are in the ``test`` extra; Node's ``eventsource`` is
installed by ``npm ci`` into ``tests/node/node_modules`` the first time
(Node.js and npm come from .ci/run).
"""

from __future__ import annotations

import json
import queue
import shutil
import socket
import subprocess
import threading
import time
import typing as t
from pathlib import Path

import httpx
import httpx_sse
import pytest
import requests
import sseclient

from tests import servers
from tests.conftest import module_server
from tests.http_helpers import app_env, unique
from tests.http_helpers import broadcast as _broadcast
from tests.servers import Server
from tests.test_nginx import Nginx, documented_config, require_nginx, start_nginx

SSE_PATH = "/realtime/sse"
DEADLINE = 5.0  # the old stream took 37 s to show `connected` to requests
NODE_DIR = Path(__file__).resolve().parent / "node"
# Keepalive comments every second: no read waits long on a quiet stream.
ENV = app_env(REALTIME_HEARTBEAT=2)


server = module_server(env=ENV)


# -- what every client is held to ----------------------------------------------


class Received:
    """The envelopes a client reader thread or process hands over, in order."""

    def __init__(self) -> None:
        self.messages: queue.Queue[t.Any] = queue.Queue()
        self.ended = threading.Event()
        self.error: BaseException | None = None

    def put(self, data: str) -> None:
        """One event's data (a block without data, such as ``retry:``, is
        no message)."""
        if data.strip():
            self.messages.put(json.loads(data))

    def next_of(self, kind: str, deadline: float) -> dict[str, t.Any]:
        """The next envelope of type ``kind`` before ``deadline`` (monotonic)."""
        while True:
            remaining = deadline - time.monotonic()
            try:
                message = self.messages.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(
                    f"no {kind!r} within {DEADLINE} s (reader error: {self.error!r})"
                ) from None
            if message.get("type") == kind:
                return message


def expect_stream(
    server: Server | Nginx, channel: str, received: Received
) -> dict[str, t.Any]:
    """``connected``, then a broadcast on ``channel``, each within the deadline.

    Returns the ``connected`` data (connection id and token)."""
    connected = received.next_of("connected", time.monotonic() + DEADLINE)
    received.next_of("subscribed", time.monotonic() + DEADLINE)
    _broadcast(server, channel, "headline", {"n": 1})
    event = received.next_of("event", time.monotonic() + DEADLINE)
    assert (event["channel"], event["event"], event["data"]) == (
        channel,
        "headline",
        {"n": 1},
    )
    return connected["data"]


def close_connection(server: Server | Nginx, connected: dict[str, t.Any]) -> None:
    """The client's goodbye: the server ends the stream."""
    response = requests.post(
        server.url + "/realtime/close",
        json={"connection_id": connected["connection_id"], "token": connected["token"]},
        timeout=DEADLINE,
    )
    assert response.status_code == 204, response.text


def in_thread(read: t.Callable[[Received], None]) -> Received:
    """Run a client's reading loop in a thread; its errors are kept."""
    received = Received()

    def run() -> None:
        try:
            read(received)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            received.error = exc
        finally:
            received.ended.set()

    threading.Thread(target=run, daemon=True).start()
    return received


def assert_ended_cleanly(received: Received) -> None:
    assert received.ended.wait(DEADLINE), "the stream did not end after /close"
    assert received.error is None, f"the stream ended badly: {received.error!r}"


def stream_url(server: Server | Nginx, channel: str) -> str:
    return f"{server.url}{SSE_PATH}?channels={channel}"


# -- Python clients ---------------------------------------------------------------


def read_with_sseclient_py(server: Server | Nginx, channel: str) -> None:
    """``connected`` and a broadcast through sseclient-py, then a clean end."""

    def read(received: Received) -> None:
        with requests.get(
            stream_url(server, channel), stream=True, timeout=(DEADLINE, 30)
        ) as response:
            response.raise_for_status()
            for event in sseclient.SSEClient(response).events():
                received.put(event.data)

    received = in_thread(read)
    connected = expect_stream(server, channel, received)
    close_connection(server, connected)
    assert_ended_cleanly(received)


def test_requests_with_sseclient_py(server: Server) -> None:
    read_with_sseclient_py(server, unique("news"))


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Nginx]:
    """docs/deployment.md's nginx config in front of the gevent-websocket worker."""
    require_nginx()
    app = servers.start(
        "geventwebsocket", tmp_path_factory.mktemp("behind-nginx"), env=ENV
    )
    try:
        proxy = start_nginx(
            documented_config(), app.port, tmp_path_factory.mktemp("nginx")
        )
        yield proxy
        proxy.stop()
    finally:
        app.discard()


def test_sseclient_py_through_nginx(nginx: Nginx) -> None:
    read_with_sseclient_py(nginx, unique("news"))


def test_requests_iter_lines(server: Server) -> None:
    channel = unique("news")

    def read(received: Received) -> None:
        with requests.get(
            stream_url(server, channel), stream=True, timeout=(DEADLINE, 30)
        ) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith(b"data:"):
                    received.put(line[5:].decode())

    received = in_thread(read)
    connected = expect_stream(server, channel, received)
    close_connection(server, connected)
    assert_ended_cleanly(received)


def test_httpx_sse(server: Server) -> None:
    channel = unique("news")

    def read(received: Received) -> None:
        with httpx.Client(timeout=httpx.Timeout(30, connect=DEADLINE)) as client:
            with httpx_sse.connect_sse(
                client, "GET", stream_url(server, channel)
            ) as source:
                for event in source.iter_sse():
                    received.put(event.data)

    received = in_thread(read)
    connected = expect_stream(server, channel, received)
    close_connection(server, connected)
    assert_ended_cleanly(received)


# -- command-line and Node clients ---------------------------------------------------


def lines_of(process: subprocess.Popen[str], prefix: str) -> Received:
    """What a client process prints, from its output lines that start with
    ``prefix`` (the rest of the line is the envelope)."""

    def read(received: Received) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(prefix):
                received.put(line[len(prefix) :])

    return in_thread(read)


def test_curl(server: Server) -> None:
    curl = shutil.which("curl")
    assert curl, "curl is needed for this test (Debian's curl package)"
    channel = unique("news")
    process = subprocess.Popen(
        [curl, "--silent", "--show-error", "--no-buffer", stream_url(server, channel)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        received = lines_of(process, "data:")
        connected = expect_stream(server, channel, received)
        close_connection(server, connected)
        # curl exits 18 on a chunked body cut short, 0 on a proper end.
        assert process.wait(timeout=DEADLINE) == 0, process.stderr.read()
    finally:
        process.kill()
        process.wait()


def install_node_clients() -> None:
    """``tests/node``'s packages, installed by npm from its lock file once."""
    npm = shutil.which("npm")
    assert npm, "npm is needed for this test (.ci/run installs it with nodejs)"
    if not (NODE_DIR / "node_modules" / "eventsource").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            check=True,
            timeout=300,
        )


def test_node_eventsource(server: Server) -> None:
    node = shutil.which("node")
    assert node, "node is needed for this test (.ci/run installs nodejs)"
    install_node_clients()
    channel = unique("news")
    process = subprocess.Popen(
        [node, str(NODE_DIR / "sse_client.mjs"), stream_url(server, channel)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        received = lines_of(process, "")
        expect_stream(server, channel, received)
    finally:
        process.kill()
        process.wait()


# -- the wire itself ----------------------------------------------------------------


def raw_request(server: Server, version: str) -> tuple[socket.socket, bytes, bytes]:
    """``GET /realtime/sse`` in HTTP/``version``: the socket, the head and
    what came after it in the same reads."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
    host = f"127.0.0.1:{server.port}"
    sock.sendall(f"GET {SSE_PATH} HTTP/{version}\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        assert more, f"the server closed before the head: {data!r}"
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    return sock, head.lower(), rest


def test_http11_body_is_chunked_and_ends_with_the_last_chunk(server: Server) -> None:
    sock, head, pending = raw_request(server, "1.1")
    with sock:
        assert b"\r\ntransfer-encoding: chunked" in head, head

        def read_chunk() -> bytes:
            nonlocal pending
            while b"\r\n" not in pending:
                more = sock.recv(65536)
                assert more, "the connection ended before the last chunk"
                pending += more
            size_line, _, pending = pending.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(pending) < size + 2:
                more = sock.recv(65536)
                assert more, "the connection ended inside a chunk"
                pending += more
            data, trailer, pending = (
                pending[:size],
                pending[size : size + 2],
                pending[size + 2 :],
            )
            assert trailer == b"\r\n", (size, data, trailer)
            return data

        body = b""
        connected = None
        while connected is None:
            body += read_chunk()
            for line in body.split(b"\n"):
                if line.startswith(b"data:"):
                    connected = json.loads(line[5:])["data"]
        close_connection(server, connected)
        while chunk := read_chunk():
            body += chunk
        assert b": closed" in body, body


def test_http10_body_ends_with_the_connection(server: Server) -> None:
    sock, head, body = raw_request(server, "1.0")
    with sock:
        if server.kind == "flask-run":
            # Werkzeug's development server writes this response, not us, and
            # it chunks every body without a length whatever the request's
            # version: held here so that a change there is noticed.
            assert b"\r\ntransfer-encoding: chunked" in head, head
            return
        assert b"transfer-encoding" not in head, head
        while b"\n\n" not in body.partition(b"data:")[2]:
            more = sock.recv(65536)
            assert more, body
            body += more
        # The body is the event stream itself, with no chunk sizes.
        assert body.startswith((b"retry:", b":", b"id:", b"data:")), body
        assert b'"type":"connected"' in body, body
