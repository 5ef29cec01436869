"""RFC 6455 conformance: the Autobahn testsuite's cases 1-7 on every server kind.

The cases are data (:mod:`tests.rfc6455_cases`, :mod:`tests.rfc6455_utf8`);
each runs on a raw socket of its own, so that the bytes on the wire, and how
they are split into writes, are exactly the case's. All cases of a server
kind run in one test against one server, and the test reports every case
that violated the RFC, not only the first.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
import typing as t
from urllib.parse import urlparse

import pytest

from tests import rfc6455_cases, rfc6455_utf8, servers
from tests.conftest import LiveServerFactory
from tests.rfc6455_cases import OP_CLOSE, OP_PONG, OP_TEXT, Case, frame

CASES = (*rfc6455_cases.CASES, *rfc6455_utf8.utf8_cases())

TIMEOUT = 5.0
PROBE = json.dumps({"type": "ping", "id": "probe"}).encode()


class RawWebSocket:
    """A WebSocket on a plain socket: our own writes, every frame read back."""

    def __init__(self, url: str, protocols: t.Sequence[str] = ()) -> None:
        parsed = urlparse(url)
        self.sock = socket.create_connection((parsed.hostname, parsed.port), TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        head = (
            f"GET {parsed.path} HTTP/1.1\r\nHost: {parsed.netloc}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        )
        if protocols:
            head += f"Sec-WebSocket-Protocol: {', '.join(protocols)}\r\n"
        self.sock.sendall((head + "\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self._fill(time.monotonic() + TIMEOUT)
        response, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        self.response = response.decode("latin-1")
        assert self.response.startswith("HTTP/1.1 101"), self.response

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("nothing arrived in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        self.buffer += data
        return bool(data)

    def read_frame(self, deadline: float) -> tuple[int, bytes] | None:
        """The next server frame, or None once the server closed the socket."""
        while True:
            if len(self.buffer) >= 2:
                first, second = self.buffer[0], self.buffer[1]
                assert not second & 0x80, "server frames must not be masked"
                assert first & 0x80, "our server never fragments"
                length, head = second & 0x7F, 2
                if length == 126:
                    length, head = struct.unpack_from("!H", self.buffer, 2)[0], 4
                elif length == 127:
                    length, head = struct.unpack_from("!Q", self.buffer, 2)[0], 10
                if len(self.buffer) >= head + length:
                    payload = self.buffer[head : head + length]
                    self.buffer = self.buffer[head + length :]
                    return first & 0x0F, payload
            if not self._fill(deadline):
                return None

    def close(self) -> None:
        self.sock.close()


def run_case(url: str, case: Case) -> list[str]:
    """What the server did against the RFC in ``case`` (empty: nothing)."""
    ws = RawWebSocket(url)
    problems: list[str] = []
    try:
        opcode, welcome = ws.read_frame(time.monotonic() + TIMEOUT) or (None, b"")
        assert opcode == OP_TEXT and b'"connected"' in welcome, welcome
        for write in case.writes:
            ws.sock.sendall(write)
        if case.close is None:
            ws.sock.sendall(frame(OP_TEXT, PROBE))
        pongs: list[bytes] = []
        handled: list[str] = []
        close_code: int | None = None
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                got = ws.read_frame(deadline)
            except TimeoutError:
                problems.append("timed out: neither closed nor answered the probe")
                break
            if got is None:
                problems.append("socket closed without a close frame")
                break
            opcode, payload = got
            if opcode == OP_PONG:
                pongs.append(payload)
            elif opcode == OP_TEXT:
                message = json.loads(payload)
                if message.get("type") == "pong":
                    if message.get("id") == "probe":
                        break
                    handled.append(message.get("id"))
            elif opcode == OP_CLOSE:
                close_code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                break
        if case.close is None and close_code is not None:
            problems.append(f"closed with {close_code}; the connection should live")
        if case.close is not None and close_code not in case.close:
            problems.append(f"close code {close_code}, expected {sorted(case.close)}")
        if close_code in (1005, 1006, 1015):
            problems.append(f"sent the reserved close code {close_code}")
        if pongs != list(case.pongs):
            problems.append(f"pongs {pongs!r}, expected {list(case.pongs)!r}")
        if handled != list(case.handled):
            problems.append(f"handled {handled!r}, expected {list(case.handled)!r}")
    except (OSError, AssertionError, ValueError) as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        ws.close()
    return problems


def violations(url: str) -> dict[str, list[str]]:
    found = {}
    for case in CASES:
        problems = run_case(url, case)
        if problems:
            found[f"{case.id} ({case.what})"] = problems
    return found


@pytest.mark.parametrize("kind", servers.KINDS)
def test_autobahn_cases_1_to_7(live_server: LiveServerFactory, kind: str) -> None:
    # The rate limit counts text messages; the cases send a few per connection.
    server = live_server(kind)
    found = violations(server.ws_url)
    report = "\n".join(f"{case}: {'; '.join(p)}" for case, p in found.items())
    assert not found, f"{len(found)} of {len(CASES)} cases violate RFC 6455:\n{report}"
