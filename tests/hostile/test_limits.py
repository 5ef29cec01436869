"""Many connections from one address: refused before the upgrade, at no cost
to anyone else.

The attacker connects from 127.0.0.2 (all of 127/8 is loopback on Linux) and
the bystander from 127.0.0.1, so the per-address limit tells them apart as
it would two machines.
"""

from __future__ import annotations

import socket
import threading
import time

import requests

from tests.conftest import LiveServerFactory
from tests.hostile.measure import Bystander, server_rss, wait_until
from tests.http_helpers import app_env
from tests.servers import Server
from tests.wsclient import WSTimeout, connect

ATTACKER = "127.0.0.2"
LIMIT = 50
HANDSHAKE = (
    "GET /realtime/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)


def _handshake(server: Server) -> tuple[int, socket.socket]:
    """One upgrade from the attacker's address: its status and socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.bind((ATTACKER, 0))
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(HANDSHAKE.format(port=server.port).encode())
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return int(head.split(b" ", 2)[1]), sock


class Attack(threading.Thread):
    """Keeps opening connections from one address until stopped."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.held: list[socket.socket] = []
        self.statuses: dict[int, int] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            status, sock = _handshake(self.server)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 101:
                self.held.append(sock)
            else:
                sock.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(15)
        for sock in self.held:
            sock.close()


def _connections(server: Server) -> int:
    return int(
        requests.get(server.url + "/realtime/health", timeout=5).json()["connections"]
    )


def test_many_connections_from_one_address_are_refused_at_no_cost(
    live_server: LiveServerFactory,
) -> None:
    server = live_server(
        "geventwebsocket", env=app_env(REALTIME_MAX_CONNECTIONS_PER_IP=LIMIT)
    )
    with Bystander(server) as bystander:
        bystander.worst_delay(3)  # warm: first-request caches are not the attack's
        before = server_rss(server)
        attack = Attack(server)
        attack.start()
        try:
            wait_until(
                lambda: attack.statuses.get(429, 0) >= 2000,
                120,
                "2000 refused handshakes",
            )
            worst = bystander.worst_delay(10)
            grown = server_rss(server) - before
            assert attack.statuses.get(101) == LIMIT, attack.statuses
            assert set(attack.statuses) == {101, 429}, attack.statuses
            assert _connections(server) == LIMIT + 1  # the bystander's own
        finally:
            attack.stop()
        # The attacker's connections cost their own bound (about 4 KB each,
        # LIMIT of them); refused ones cost nothing that stays.
        assert grown < 16 * 1024 * 1024, grown
        assert worst < 0.25, worst
        # Everything is given back once the attacker goes.
        wait_until(lambda: _connections(server) == 1, 10, "the slots to be released")
        started = time.monotonic()
        assert _handshake(server)[0] == 101
        assert time.monotonic() - started < 2


def test_many_connections_of_one_user_share_one_rate_limit(
    live_server: LiveServerFactory,
) -> None:
    """Fifty connections of one user, each within its own limit (60 a
    minute), relay what one user may: 120 a minute by default, not 3,000."""
    server = live_server("geventwebsocket")
    channel = "presence-room.flood"
    with Bystander(server) as bystander:
        receiver = connect(server.ws_url + "?user=8")
        assert receiver.subscribe(channel)["type"] == "subscribed"
        senders = [connect(server.ws_url + "?user=7") for _ in range(50)]
        for sender in senders:
            assert sender.subscribe(channel)["type"] == "subscribed"
        started = time.monotonic()
        for sender in senders:
            for n in range(60):
                sender.send_json(
                    {
                        "type": "event",
                        "channel": channel,
                        "event": "client-x",
                        "data": n,
                    }
                )
        worst = bystander.worst_delay(5)
        relayed = 0
        while True:
            try:
                message = receiver.recv_json(timeout=1.0)
            except WSTimeout:
                break
            relayed += message.get("event") == "client-x"
        elapsed = time.monotonic() - started
        # The subscribes took 50 of the user's 120; 2 a second refill.
        assert relayed <= 70 + 2 * elapsed + 2, (relayed, elapsed)
        assert worst < 0.25, worst
        for client in (receiver, *senders):
            client.close()
