"""Shutdown on real servers: what is queued goes out before the 4200 close,
and the process waits for it, bounded (issue 9)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.parse

import pytest
import requests

from tests import servers
from tests.conftest import LiveServerFactory
from tests.http_helpers import SEND_PATH, open_poll
from tests.http_helpers import app_env as _env
from tests.servers import Server
from tests.wsclient import Client, connect

#: What the process logs when the bound passed with bytes still unwritten.
TIMED_OUT = "still had bytes to write when the shutdown timeout passed"
# Queues far larger than the burst: no client is closed for being slow (4100).
BIG_QUEUES = {
    "REALTIME_MAX_QUEUE_BYTES": 64 << 20,
    "REALTIME_MAX_QUEUE_MESSAGES": 10**6,
}


def _start(
    live_server: LiveServerFactory, kind: str, bound: float, **config: object
) -> Server:
    """``kind`` with a shutdown bound of ``bound`` seconds: under gunicorn a
    ``--graceful-timeout`` one second longer, elsewhere
    ``REALTIME_SHUTDOWN_TIMEOUT``."""
    if kind in ("cli", "flask-run"):
        return live_server(kind, env=_env(REALTIME_SHUTDOWN_TIMEOUT=bound, **config))
    return live_server(
        kind,
        env=_env(**config),
        gunicorn_options=["--graceful-timeout", f"{bound + 1:g}"],
    )


def _all_in_order_then_exited(server: Server, seqs: list[int], count: int) -> None:
    """Every one of ``count`` messages arrived in order, and the process
    exited without waiting for its bound: everything was written."""
    assert seqs == list(range(count))
    server.process.wait(timeout=8)
    assert TIMED_OUT not in server.log()


def _queue_burst(server: Server, count: int) -> Client:
    """A client subscribed to ``news`` that reads nothing while ``count``
    broadcasts of 2 KB fill its socket (the kernel takes about 4 MB here,
    the rest waits in its queue)."""
    client = connect(
        server.ws_url, sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]
    )
    assert client.subscribe("news")["type"] == "subscribed"
    published = requests.get(
        f"{server.url}/flood",
        params={"channel": "news", "count": count, "size": 2000},
        timeout=60,
    )
    assert published.json() == {"published": count}
    return client


@pytest.mark.parametrize("kind", servers.PROTOCOL_KINDS)
def test_what_is_queued_goes_out_before_the_shutdown_close(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = _start(live_server, kind, 9, **BIG_QUEUES)
    count = 3000
    client = _queue_burst(server, count)
    server.signal(signal.SIGTERM)
    try:
        assert client.expect_close(timeout=30) == 4200
    finally:
        client.close()
    seqs = [m["data"]["seq"] for m in client.skipped if m.get("event") == "flood"]
    _all_in_order_then_exited(server, seqs, count)


@pytest.mark.parametrize("kind", servers.PROTOCOL_KINDS)
def test_a_process_with_no_connections_exits_fast_after_sigterm(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = _start(live_server, kind, 20)
    with connect(server.ws_url) as client:  # (the node has started)
        assert client.ping()["type"] == "pong"
    deadline = time.monotonic() + 5
    while requests.get(f"{server.url}/debug/state", timeout=5).json()[
        "hub.connections"
    ]:
        assert time.monotonic() < deadline, "the closed client is still counted"
        time.sleep(0.05)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    server.process.wait(timeout=10)
    # gunicorn's worker notices its stop flag once a second.
    assert time.monotonic() - started < 3.5


@pytest.mark.parametrize("kind", servers.PROTOCOL_KINDS)
def test_a_client_that_never_reads_does_not_hold_the_shutdown_past_the_bound(
    live_server: LiveServerFactory, kind: str
) -> None:
    bound = 3.0
    server = _start(live_server, kind, bound, **BIG_QUEUES)
    client = _queue_burst(server, 3000)
    try:
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        server.process.wait(timeout=bound + 10)
        elapsed = time.monotonic() - started
    finally:
        client.close()
    # It waited for the client, and gave up at its own bound (gunicorn's
    # arbiter would kill the worker a second later, without this line).
    assert TIMED_OUT in server.log()
    assert bound - 0.5 < elapsed < bound + 2.5


def _worker_pid(server: Server) -> int:
    """The process that holds the connections: gunicorn's one worker, or
    the server itself."""
    if server.kind in ("cli", "flask-run"):
        return server.process.pid
    pid = server.process.pid
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        (worker,) = children.read().split()
    return int(worker)


def _wait_until_refused(server: Server) -> None:
    deadline = time.monotonic() + 5
    while server.health(timeout=1) is not None:
        assert time.monotonic() < deadline, "still listening"
        time.sleep(0.05)


SECOND_SIGNALS = [(kind, signal.SIGTERM) for kind in servers.PROTOCOL_KINDS]
SECOND_SIGNALS.append(("cli", signal.SIGINT))


@pytest.mark.parametrize(("kind", "signum"), SECOND_SIGNALS)
def test_a_second_signal_during_the_wait_exits_at_once(
    live_server: LiveServerFactory, kind: str, signum: int
) -> None:
    server = _start(live_server, kind, 20, **BIG_QUEUES)
    worker = _worker_pid(server)
    with connect(server.ws_url) as reader:
        stuck = _queue_burst(server, 3000)  # would hold the shutdown 20 s
        try:
            server.signal(signum)
            assert reader.expect_close(timeout=10) == 4200
            if kind != "flask-run":  # (which keeps listening while it waits)
                _wait_until_refused(server)  # the wait began
            started = time.monotonic()
            os.kill(worker, signum)
            server.process.wait(timeout=10)
            elapsed = time.monotonic() - started
        finally:
            stuck.close()
    assert elapsed < 3


# -- SSE streams and long polls: raw sockets, so that the test reads nothing
# until the signal is sent.


def _raw_get(server: Server, target: str) -> socket.socket:
    """A GET on a socket with a small receive buffer; the server closes the
    connection after its answer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    head = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    sock.sendall(head.encode() + b"\r\n")
    sock.settimeout(30)
    return sock


def _read_until(sock: socket.socket, data: bytes, marker: bytes) -> bytes:
    """What ``sock`` has sent, read until ``marker`` is in it."""
    while marker not in data:
        more = sock.recv(65536)
        assert more, f"closed before {marker!r}: {data[-300:]!r}"
        data += more
    return data


def _read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    while more := sock.recv(1 << 20):
        chunks.append(more)
    return b"".join(chunks)


def _dechunk(data: bytes) -> bytes:
    """A chunked body's bytes, up to where it was cut."""
    body = b""
    while b"\r\n" in data:
        size, _, data = data.partition(b"\r\n")
        if not int(size, 16):
            break
        body += data[: int(size, 16)]
        data = data[int(size, 16) + 2 :]
    return body


def test_an_sse_stream_under_flask_run_gets_its_queue_before_the_process_exits(
    live_server: LiveServerFactory,
) -> None:
    server = _start(live_server, "flask-run", 9, **BIG_QUEUES)
    count = 3000
    with _raw_get(server, "/realtime/sse?channels=news") as sock:
        start = _read_until(sock, b"", b'"subscribed"')
        published = requests.get(
            f"{server.url}/flood",
            params={"channel": "news", "count": count, "size": 2000},
            timeout=60,
        )
        assert published.json() == {"published": count}
        server.signal(signal.SIGTERM)
        answer = start + _read_to_end(sock)
    body = _dechunk(answer.partition(b"\r\n\r\n")[2])
    *blocks, _ = body.split(b"\n\n")  # (the last one is cut, or empty)
    events = [
        json.loads(line[6:])
        for block in blocks
        for line in block.split(b"\n")
        if line.startswith(b"data: ")
    ]
    seqs = [e["data"]["seq"] for e in events if e.get("event") == "flood"]
    assert body.endswith(b": closed 4200\n\n"), body[-100:]
    _all_in_order_then_exited(server, seqs, count)


def _flood_news(server: Server, count: int, size: int) -> None:
    published = requests.get(
        f"{server.url}/flood",
        params={"channel": "news", "count": count, "size": size},
        # (Not kept alive: an idle connection would hold gunicorn's
        # geventwebsocket worker for its graceful timeout.)
        headers={"Connection": "close"},
        timeout=60,
    )
    assert published.json() == {"published": count}


def _long_poll_answer_after_sigterm(
    server: Server, poll_first: bool, count: int, size: int
) -> None:
    """A long-poll client gets ``count`` messages (8 MB in all, more than
    the kernel takes) in one answer that it reads only after SIGTERM; the
    process waits for it."""
    poll = open_poll(server)
    subscribe = {"type": "subscribe", "channel": "news", "id": 1}
    sent = requests.post(
        server.url + SEND_PATH,
        json={"connection_id": poll["connection_id"], "token": poll["token"]}
        | {"message": subscribe},
        headers={"Connection": "close"},
        timeout=5,
    )
    assert sent.json()[0]["type"] == "subscribed", sent.text
    if not poll_first:  # queued between two polls
        _flood_news(server, count, size)
    with _raw_get(server, f"/realtime/poll?{urllib.parse.urlencode(poll)}") as sock:
        if poll_first:
            # (If the flood comes first after all, this is the other case.)
            _flood_news(server, count, size)
        head = _read_until(sock, b"", b"\r\n\r\n")  # the answer is on its way
        server.signal(signal.SIGTERM)
        answer = head + _read_to_end(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].endswith(b" 200 OK"), head
    assert len(body) == int(head.split(b"Content-Length: ")[1].split(b"\r")[0])
    messages = json.loads(body)["messages"]
    seqs = [m["data"]["seq"] for m in messages if m.get("event") == "flood"]
    _all_in_order_then_exited(server, seqs, count)


@pytest.mark.parametrize("kind", servers.PROTOCOL_KINDS)
def test_a_long_poll_answer_is_written_before_the_process_exits(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = _start(live_server, kind, 9, **BIG_QUEUES)
    _long_poll_answer_after_sigterm(server, poll_first=False, count=1000, size=8000)


# Where a poll that finds nothing is parked on its socket (not flask run,
# where it waits in its thread and would answer with the first messages).
PARKING_KINDS = [kind for kind in servers.PROTOCOL_KINDS if kind != "flask-run"]


@pytest.mark.parametrize("kind", PARKING_KINDS)
def test_a_parked_poll_answer_is_written_before_the_process_exits(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = _start(live_server, kind, 9, **BIG_QUEUES)
    # One message: a parked poll is answered once half a megabyte waits.
    _long_poll_answer_after_sigterm(server, poll_first=True, count=1, size=8 << 20)
