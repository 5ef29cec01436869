"""Limits and failure on real servers: each test starts the servers it needs."""

from __future__ import annotations

import select
import signal
import socket
import threading
import time

import pytest
import requests
import websocket

from tests import servers
from tests.conftest import LiveServerFactory
from tests.http_helpers import app_env as _env
from tests.rfc6455_cases import OP_CLOSE, OP_PING, frame
from tests.wsclient import Client, ConnectionClosed, connect


@pytest.mark.parametrize("kind", servers.KINDS)
def test_rate_limit_answers_429_then_closes_abuse_with_4129(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(
        kind,
        env=_env(
            REALTIME_RATE_LIMIT={
                "enabled": True,
                "messages_per_minute": 5,
                "close_after": 3,
            }
        ),
    )
    with connect(server.ws_url) as bystander, connect(server.ws_url) as client:
        for n in range(5):
            assert client.ping(id=n)["type"] == "pong"
        refused = client.ping(id="six")
        assert refused["type"] == "error"
        assert refused["data"]["code"] == 429
        assert 0 < refused["data"]["retry_after"] <= 12
        client.send_json({"type": "ping", "id": "seven"})
        client.send_json({"type": "ping", "id": "eight"})
        assert client.expect_close() == 4129
        # Counted per connection: the other one on the same address is fine.
        assert bystander.ping()["type"] == "pong"


@pytest.mark.parametrize("kind", servers.KINDS)
def test_silent_connection_is_closed_after_two_heartbeats(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(kind, env=_env(REALTIME_HEARTBEAT=0.5))
    with connect(server.ws_url) as silent, connect(server.ws_url) as lively:
        assert silent.welcome["data"]["heartbeat"] == 0.5
        # Not reading means never answering the server's ping frames.
        silent.ws.sock.settimeout(None)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            # websocket-client answers ping frames while it reads.
            assert lively.ping()["type"] == "pong"
            time.sleep(0.1)  # pacing the pings, not synchronisation
        assert silent.expect_close(timeout=5) == 4101
        assert lively.ping()["type"] == "pong"


@pytest.mark.parametrize("kind", servers.KINDS)
def test_max_subscriptions(live_server: LiveServerFactory, kind: str) -> None:
    server = live_server(kind, env=_env(REALTIME_MAX_SUBSCRIPTIONS=2))
    with connect(server.ws_url) as client:
        assert client.subscribe("a")["type"] == "subscribed"
        assert client.subscribe("b")["type"] == "subscribed"
        refused = client.subscribe("c")
        assert refused["type"] == "error" and refused["data"]["code"] == 403
        assert client.unsubscribe("a")["type"] == "unsubscribed"
        assert client.subscribe("c")["type"] == "subscribed"


@pytest.mark.parametrize("kind", servers.KINDS)
def test_allowed_origins(live_server: LiveServerFactory, kind: str) -> None:
    server = live_server(
        kind, env=_env(REALTIME_ALLOWED_ORIGINS=["https://app.example"])
    )
    with connect(server.ws_url, origin="https://app.example") as client:
        assert client.ping()["type"] == "pong"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(server.ws_url, origin="https://other.example")
    assert refused.value.status_code == 403


@pytest.mark.parametrize("kind", servers.KINDS)
def test_disabled_websocket_transport_answers_404(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(kind, env=_env(REALTIME_TRANSPORTS=["sse"]))
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(server.ws_url)
    assert refused.value.status_code == 404


@pytest.mark.parametrize("kind", servers.KINDS)
def test_client_that_stops_reading_is_closed_with_4100_and_harms_nobody(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(
        kind,
        # Bounds of some 100 of the flood's messages: a reader on a loaded
        # host may fall 0.4 s behind and still keep up (at 256 KiB, 26
        # messages, a stalled test thread got the reader closed in CI).
        env=_env(REALTIME_MAX_QUEUE_MESSAGES=100, REALTIME_MAX_QUEUE_BYTES=1024 * 1024),
    )
    # A modest receive buffer, so the kernel holds little on its behalf and the
    # server's queue for it fills while it does not read.
    stuck = connect(
        server.ws_url, sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)]
    )
    stuck.subscribe("firehose")
    count = 1000
    with connect(server.ws_url) as reader:
        reader.subscribe("firehose")
        seqs: list[int] = []

        def read_all() -> None:
            for _ in range(count):
                seqs.append(
                    reader.wait_event("flood", "firehose", timeout=30)["data"]["seq"]
                )

        reading = threading.Thread(target=read_all)
        reading.start()
        started = time.monotonic()
        response = requests.get(
            f"{server.url}/flood",
            # Paced so that a client that reads keeps up; the stuck one cannot:
            # 10 MB in all, twice what its queue and the kernel's buffers hold.
            params={
                "channel": "firehose",
                "count": count,
                "size": 10_000,
                "pause": 0.004,
            },
            timeout=60,
        )
        assert response.json() == {"published": count}
        publish_seconds = time.monotonic() - started
        reading.join(60)
        assert seqs == list(range(count))
    # The publisher never waited for the stuck client: a blocking send to it
    # would never have finished.
    assert publish_seconds < 20
    # Reading again, it gets what was already on its way, then the close.
    assert stuck.expect_close(timeout=30) == 4100
    received = [m["data"]["seq"] for m in stuck.skipped if m.get("event") == "flood"]
    assert received == list(range(len(received)))  # in order, no gaps
    assert len(received) < count
    stuck.close()


@pytest.mark.parametrize("kind", servers.KINDS)
def test_pongs_count_against_the_queue_bound(
    live_server: LiveServerFactory, kind: str
) -> None:
    # Every frame queued for a connection counts, pongs included: a client
    # that pings without ever reading cannot make the server queue pongs
    # without end. (Under gevent, frames the server made itself used to
    # skip the bound.)
    server = live_server(kind, env=_env(REALTIME_MAX_QUEUE_MESSAGES=100))
    flooder = connect(
        server.ws_url, sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)]
    )
    with connect(server.ws_url) as bystander:
        # Far more pongs than the kernel's buffers on both sides can hold.
        ping = frame(OP_PING, b"p" * 125)  # the largest control frame
        assert _flood_then_close_code(flooder.ws.sock, ping * 80_000) == 4100
        assert bystander.ping()["type"] == "pong"
    flooder.close()


def _flood_then_close_code(sock: socket.socket, flood: bytes) -> int | None:
    """Send ``flood`` without reading, then read to the server's close frame.

    Not websocket-client's blocking sends: a client that never reads fills
    its own receive memory with tiny pongs, and Linux then drops the
    segments that carry the server's acknowledgements too (a loaded host
    showed it: the client's send queue stuck at 2.5 MB, retransmitting,
    with the server reading all it got). When nothing moves for a second,
    the flooder reads a little (64 KiB, far less than it makes the server
    queue) and floods on.
    """
    sock.setblocking(False)
    view, received = memoryview(flood), bytearray()
    deadline = time.monotonic() + 60
    while view:
        assert time.monotonic() < deadline, "the flood did not get through"
        try:
            view = view[sock.send(view) :]
            continue
        except BlockingIOError:
            pass
        except OSError:
            break  # closed by the server: what it sent before is read below
        if not select.select([], [sock], [], 1.0)[1]:
            try:
                received += sock.recv(65536)
            except BlockingIOError:
                pass
            except OSError:
                break
    deadline = time.monotonic() + 30
    while (code := _close_code(received)) is None:
        assert time.monotonic() < deadline, "no close frame"
        if select.select([sock], [], [], 1.0)[0]:
            try:
                chunk = sock.recv(1 << 20)
            except OSError:
                return None
            if not chunk:
                return None
            received += chunk
    return code


def _close_code(data: bytes) -> int | None:
    """The code of the close frame among the server's (unmasked) frames in
    ``data``, or None while it has not come."""
    at = 0
    while at + 2 <= len(data):
        opcode, length = data[at] & 0x0F, data[at + 1] & 0x7F
        head = 2
        if length == 126:
            head, length = 4, int.from_bytes(data[at + 2 : at + 4], "big")
        elif length == 127:
            head, length = 10, int.from_bytes(data[at + 2 : at + 10], "big")
        if at + head + length > len(data):
            return None
        if opcode == OP_CLOSE:
            return int.from_bytes(data[at + head : at + head + 2], "big")
        at += head + length
    return None


@pytest.mark.parametrize("kind", servers.KINDS)
def test_sigterm_closes_connections_with_4200(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(kind)
    clients: list[Client] = [connect(server.ws_url) for _ in range(3)]
    for client in clients:
        client.subscribe("news")
    server.signal(signal.SIGTERM)
    for client in clients:
        assert client.expect_close(timeout=10) == 4200
        client.close()
    server.process.wait(timeout=10)


@pytest.mark.parametrize("kind", ["geventwebsocket", "gevent", "cli"])
def test_newcomers_during_shutdown_are_sent_on_with_4200(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(kind)
    holder = connect(server.ws_url)  # keeps the node busy shutting down
    server.signal(signal.SIGTERM)
    assert holder.expect_close(timeout=10) == 4200
    holder.close()
    # Until the worker stops listening, every newcomer is refused or told to
    # go elsewhere; none is welcomed and then dropped.
    deadline = time.monotonic() + 1.5
    outcomes = set()
    while time.monotonic() < deadline and server.process.poll() is None:
        try:
            client = connect(server.ws_url, timeout=2)
        except ConnectionClosed as closed:
            outcomes.add(closed.code)
            continue
        except (ConnectionRefusedError, websocket.WebSocketException, OSError):
            outcomes.add("refused")
            continue
        code = client.expect_close(timeout=5)
        client.close()
        outcomes.add(f"welcomed, then {code}")
    assert outcomes <= {4200, "refused"}, outcomes
