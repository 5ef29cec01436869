"""No message lost at a close, from either side."""

from __future__ import annotations

import json
import signal
import socket
import struct
import time

import pytest
import requests

from tests import servers
from tests.conftest import LiveServerFactory
from tests.http_helpers import app_env as _env
from tests.rfc6455_cases import OP_CLOSE, OP_TEXT, frame
from tests.test_rfc6455 import RawWebSocket
from tests.wsclient import connect


@pytest.mark.parametrize("kind", servers.KINDS)
def test_a_message_sent_just_before_a_close_is_handled(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(kind)
    with connect(server.ws_url) as bystander:
        assert bystander.subscribe("chat.1")["type"] == "subscribed"
        sender = RawWebSocket(server.ws_url)
        try:
            deadline = time.monotonic() + 5
            assert sender.read_frame(deadline)[0] == OP_TEXT  # connected
            subscribe = {"type": "subscribe", "channel": "chat.1", "id": 1}
            sender.sock.sendall(frame(OP_TEXT, json.dumps(subscribe).encode()))
            assert json.loads(sender.read_frame(deadline)[1])["type"] == "subscribed"
            event = {"type": "event", "channel": "chat.1", "event": "echo", "data": 7}
            # ws.send(msg); ws.close(): one write, so one read on the server.
            sender.sock.sendall(
                frame(OP_TEXT, json.dumps(event).encode())
                + frame(OP_CLOSE, struct.pack("!H", 1000))
            )
            echoed = bystander.wait_event("echo", "chat.1")
            assert echoed["data"]["data"] == 7
            while (got := sender.read_frame(deadline)) and got[0] != OP_CLOSE:
                pass
            assert got is not None and struct.unpack("!H", got[1][:2])[0] == 1000
        finally:
            sender.close()


# Only where the process outlives a multi-megabyte flush: the other kinds
# exit (gunicorn's gevent worker, the CLI server, flask run) before the client
# has read it all (see the report of issue 9).
@pytest.mark.parametrize("kind", ["geventwebsocket"])
def test_what_is_queued_goes_out_before_the_shutdown_close(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(
        kind,
        env=_env(REALTIME_MAX_QUEUE_BYTES=64 << 20, REALTIME_MAX_QUEUE_MESSAGES=10**6),
    )
    # A client that reads nothing while broadcasts fill its socket (the
    # kernel takes about 3 MB here) and then its queue: main's code dropped
    # what was queued when the socket was full.
    client = connect(
        server.ws_url, sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]
    )
    assert client.subscribe("news")["type"] == "subscribed"
    count = 3000
    published = requests.get(
        f"{server.url}/flood",
        params={"channel": "news", "count": count, "size": 2000},
        timeout=30,
    )
    assert published.json() == {"published": count}
    server.signal(signal.SIGTERM)
    seqs = []
    code = None
    deadline = time.monotonic() + 20
    while code is None and time.monotonic() < deadline:
        try:
            message = client.recv_json(timeout=deadline - time.monotonic())
        except AssertionError:
            code = client.close_code
            break
        if message.get("event") == "flood":
            seqs.append(message["data"]["seq"])
    assert code == 4200
    assert seqs == list(range(count))
    client.close()
