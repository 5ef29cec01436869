"""Fragmented messages are bounded in fragments and in time, not only bytes.

Endless empty continuation frames kept a core busy and memory growing;
1-byte fragments pinned megabytes per connection under the byte limit; a
message begun and never finished held its buffer for ever. Each attack runs
while a bystander's broadcasts are timed and the server's memory is measured.
"""

from __future__ import annotations

import select
import struct
import time

import pytest

from tests import servers
from tests.conftest import LiveServerFactory
from tests.hostile.measure import Bystander, server_rss
from tests.http_helpers import app_env as _env
from tests.rfc6455_cases import OP_CLOSE, OP_CONT, OP_PING, OP_TEXT, frame
from tests.test_rfc6455 import RawWebSocket

MB = 1024 * 1024


class Fragmenter:
    """An attacker that opens a text message and never ends it."""

    def __init__(self, server: servers.Server) -> None:
        self.ws = RawWebSocket(server.ws_url)
        assert self.ws.read_frame(time.monotonic() + 5)[0] == OP_TEXT  # connected
        self.ws.sock.sendall(frame(OP_TEXT, b"{", fin=False))
        self.close_code: int | None = None

    def send(self, data: bytes) -> bool:
        """Send ``data`` unless the server closed; whether it is still open."""
        if self.closed():
            return False
        try:
            self.ws.sock.sendall(data)
        except OSError:
            self.closed(wait=5)
            return False
        return True

    def closed(self, wait: float = 0.0) -> bool:
        """Whether the server sent its close frame (read what arrived)."""
        deadline = time.monotonic() + wait
        while self.close_code is None:
            timeout = max(0.0, deadline - time.monotonic())
            if not select.select([self.ws.sock], [], [], timeout)[0]:
                return False
            got = self.ws.read_frame(time.monotonic() + 1)
            if got is None:
                self.close_code = 1006
            elif got[0] == OP_CLOSE:
                self.close_code = struct.unpack("!H", got[1][:2])[0]
        return True

    def close(self) -> None:
        self.ws.close()


@pytest.mark.parametrize("kind", servers.KINDS)
def test_endless_empty_continuations_are_closed_with_1009(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(kind)
    batch = frame(OP_CONT, b"", fin=False) * 10_000
    with Bystander(server) as bystander:
        before = server_rss(server)
        attacker = Fragmenter(server)
        try:
            sent = 0
            deadline = time.monotonic() + 20
            # 2 M empty frames at most (main's code took them all).
            while sent < 200 and time.monotonic() < deadline:
                if not attacker.send(batch):
                    break
                sent += 1
                if sent % 20 == 0:
                    assert bystander.delay() < 0.5
            assert attacker.closed(wait=5), f"{sent * 10_000} empty frames taken"
            assert attacker.close_code == 1009
            # (What was sent counts the kernel's buffers too: not a measure.)
            assert bystander.worst_delay(3) < 0.5
            assert server_rss(server) - before < 20 * MB
        finally:
            attacker.close()


@pytest.mark.parametrize("kind", ["gevent", "flask-run"])
def test_one_byte_fragments_cannot_pin_memory(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(kind)
    # 60,000 fragments stay under the 64 KiB byte limit.
    batch = frame(OP_CONT, b"x", fin=False) * 6_000
    with Bystander(server) as bystander:
        before = server_rss(server)
        attackers = [Fragmenter(server) for _ in range(20)]
        try:
            for _ in range(10):
                for attacker in attackers:
                    attacker.send(batch)
            for attacker in attackers:
                assert attacker.closed(wait=5), "60,000 fragments held"
                assert attacker.close_code == 1009
            assert server_rss(server) - before < 20 * MB
            assert bystander.worst_delay(3) < 0.5
        finally:
            for attacker in attackers:
                attacker.close()


@pytest.mark.parametrize("kind", servers.KINDS)
def test_a_message_never_finished_is_closed_at_its_deadline(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(kind, env=_env(REALTIME_FRAGMENT_TIMEOUT=1))
    trickler = Fragmenter(server)  # a fragment now and then, within the count
    idler = Fragmenter(server)  # nothing but pings after the first fragment
    try:
        started = time.monotonic()
        while not (trickler.closed() and idler.closed()):
            assert time.monotonic() - started < 5, "message assembly never ended"
            trickler.send(frame(OP_CONT, b" ", fin=False))
            idler.send(frame(OP_PING, b"alive"))
            time.sleep(0.1)  # the attack's own pace, not a wait for the server
        assert trickler.close_code == 1008
        assert idler.close_code == 1008
    finally:
        trickler.close()
        idler.close()


def test_fragment_settings_are_checked() -> None:
    from flask import Flask

    from flask_realtime import Realtime
    from flask_realtime.config import ConfigError

    for key, value in (
        ("REALTIME_MAX_MESSAGE_FRAGMENTS", 0),
        ("REALTIME_FRAGMENT_TIMEOUT", "10"),
    ):
        app = Flask(__name__)
        app.config[key] = value
        with pytest.raises(ConfigError, match=key):
            Realtime(app)
