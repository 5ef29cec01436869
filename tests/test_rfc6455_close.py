"""No message lost at a close, from either side."""

from __future__ import annotations

import json
import struct
import time

import pytest

from tests import servers
from tests.conftest import LiveServerFactory
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
