"""Many WebSocket clients in one process, reading as fast as they can.

Run as a subprocess by the overload test::

    python -m tests.loadclient ws://127.0.0.1:PORT/realtime/ws CLIENTS CHANNEL

It connects and subscribes every client, prints ``READY``, then reads. Each
client checks that the ``seq`` of the events it receives counts up from 0
with no gap, and sends a protocol ping every few seconds (which also keeps
the server from sending ping frames: the client is never silent). When a
line ``EXPECT N`` arrives on stdin, it waits (up to a deadline) until every
open client has seen N events, then prints one JSON line with the results
and exits.

``LOADCLIENT_READ_SIZE`` (bytes per read) and ``LOADCLIENT_PAUSE`` (seconds
between rounds of reads) make every client a slow reader until ``EXPECT``
arrives, for the test of clients that as a whole cannot keep up.

Plain sockets and a selector, not a WebSocket library: the point is to read
faster than one server worker can write, so that the server is what is
measured.
"""

from __future__ import annotations

import base64
import json
import os
import re
import selectors
import socket
import struct
import sys
import time
import urllib.parse

from tests.rfc6455_cases import OP_TEXT, frame

_SEQ = re.compile(rb'"seq":(\d+)\}\}')
PING_EVERY = 5.0
READ_SIZE = int(os.environ.get("LOADCLIENT_READ_SIZE", "65536"))
PAUSE = float(os.environ.get("LOADCLIENT_PAUSE", "0"))


class Client:
    def __init__(self, index: int, host: str, port: int, path: str) -> None:
        self.index = index
        self.sock = socket.create_connection((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            response += chunk
        head, _, self.buffer = response.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.decode(errors="replace"))
        self.buffer = bytearray(self.buffer)
        self.tail = b""
        self.next_seq = 0
        self.errors: list[str] = []
        self.close_code: int | None = None
        self.pongs = 0
        self.pings_sent = 0
        self.subscribed = False

    def send_text(self, obj: dict) -> None:
        self.sock.sendall(frame(OP_TEXT, json.dumps(obj).encode()))

    def feed(self, data: bytes) -> None:
        """Check the events in ``data`` in bulk.

        Until subscribed, frames are parsed one by one. After that the stream
        is scanned with one regular expression per read: event payloads end in
        ``{"seq":N}}``, frame headers never contain that text, and a match cut
        by the end of a read is completed by the next (the unscanned tail is
        kept). A client that pays Python's price per frame would be slower than
        the server it measures.
        """
        if not self.subscribed:
            self._parse_frames(data)
            return
        text = self.tail + data
        # Scan up to the last complete message: an event ends with "}}", a
        # pong with "}" (and may be the last thing to arrive).
        end = text.rfind(b"}}")
        cut = end + 2 if end >= 0 else 0
        pong = text.rfind(b'"type":"pong"')
        if pong >= cut:
            pong_end = text.find(b"}", pong)
            if pong_end >= 0:
                cut = pong_end + 1
        scanned, self.tail = text[:cut], text[cut:]
        if len(self.tail) > 4096:
            self.tail = self.tail[-4096:]
        seqs = _SEQ.findall(scanned)
        if seqs:
            first, last = int(seqs[0]), int(seqs[-1])
            if first != self.next_seq or last != first + len(seqs) - 1:
                self.errors.append(
                    f"expected seq {self.next_seq}..., got {first}..{last}"
                    f" in {len(seqs)} messages"
                )
            self.next_seq = last + 1
        self.pongs += scanned.count(b'"type":"pong"')

    def _parse_frames(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        end = len(buffer)
        while end - pos >= 2 and not self.subscribed:
            opcode = buffer[pos] & 0x0F
            length = buffer[pos + 1] & 0x7F
            header = 2
            if length == 126:
                if end - pos < 4:
                    break
                (length,) = struct.unpack_from("!H", buffer, pos + 2)
                header = 4
            elif length == 127:
                if end - pos < 10:
                    break
                (length,) = struct.unpack_from("!Q", buffer, pos + 2)
                header = 10
            if end - pos < header + length:
                break
            payload = bytes(buffer[pos + header : pos + header + length])
            pos += header + length
            if opcode == 0x1 and b'"subscribed"' in payload:
                self.subscribed = True
            elif opcode == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0]
        rest = bytes(buffer[pos:])
        buffer.clear()
        if rest:
            self.feed(rest)


def main() -> None:
    url, count, channel = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    clients = [Client(i, host, port, parts.path) for i in range(count)]
    selector = selectors.DefaultSelector()
    for client in clients:
        client.sock.setblocking(False)
        selector.register(client.sock, selectors.EVENT_READ, client)
        client.send_text({"type": "subscribe", "channel": channel, "id": "s"})
    selector.register(sys.stdin, selectors.EVENT_READ, None)

    expected: int | None = None
    deadline = time.monotonic() + 60
    next_ping = time.monotonic() + PING_EVERY
    ready = False
    while True:
        now = time.monotonic()
        if not ready and all(c.subscribed for c in clients):
            ready = True
            print("READY", flush=True)
        if now >= next_ping and expected is None:
            next_ping = now + PING_EVERY
            for client in clients:
                if client.close_code is None:
                    client.pings_sent += 1
                    client.send_text({"type": "ping", "id": client.pings_sent})
        # Done when every open client has every message and every pong (no
        # ping is sent once the count is known).
        if expected is not None and (
            all(
                c.close_code is not None
                or (c.next_seq >= expected and c.pongs >= c.pings_sent)
                for c in clients
            )
            or now > deadline
        ):
            break
        if PAUSE and ready and expected is None:
            time.sleep(PAUSE)  # a slow reader: its pace, not a synchronisation
        for key, _ in selector.select(timeout=0.5):
            client = key.data
            if client is None:
                line = sys.stdin.readline()
                if line.startswith("EXPECT"):
                    expected = int(line.split()[1])
                    deadline = time.monotonic() + 60
                selector.unregister(sys.stdin)
                continue
            try:
                data = client.sock.recv(READ_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                client.errors.append(f"recv: {exc}")
                data = b""
            if not data:
                if client.close_code is None:
                    client.close_code = 1006
                selector.unregister(client.sock)
                continue
            client.feed(data)
    print(
        json.dumps(
            {
                "received": [c.next_seq for c in clients],
                "closed": [c.close_code for c in clients if c.close_code is not None],
                "errors": [e for c in clients for e in c.errors][:20],
                "pongs": sum(c.pongs for c in clients),
                "pings": sum(c.pings_sent for c in clients),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
