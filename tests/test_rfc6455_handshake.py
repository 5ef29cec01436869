"""The subprotocol ``realtime.v1``, with clients that enforce the selection.

Browsers, Node's ``ws``, websocket-client and ``websockets`` fail a
connection that offered subprotocols when the server selects none of them.
"""

from __future__ import annotations

import json

import pytest
import websocket
from websockets.sync.client import connect as websockets_connect

from tests import servers
from tests.conftest import LiveServerFactory
from tests.test_rfc6455 import RawWebSocket

SUBPROTOCOL = "realtime.v1"


@pytest.mark.parametrize("kind", servers.KINDS)
def test_realtime_v1_is_selected_when_offered(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(kind)
    # websocket-client raises unless the server selects one it offered.
    ws = websocket.create_connection(
        server.ws_url, timeout=5, subprotocols=["other.v9", SUBPROTOCOL]
    )
    try:
        assert ws.getsubprotocol() == SUBPROTOCOL
        assert json.loads(ws.recv())["type"] == "connected"
        ws.send(json.dumps({"type": "ping", "id": 1}))
        assert json.loads(ws.recv()) == {"type": "pong", "id": 1}
    finally:
        ws.close()
    with websockets_connect(
        server.ws_url, subprotocols=[SUBPROTOCOL], open_timeout=5
    ) as client:
        assert client.subprotocol == SUBPROTOCOL
        assert json.loads(client.recv(timeout=5))["type"] == "connected"


@pytest.mark.parametrize("kind", servers.KINDS)
def test_other_subprotocols_are_ignored(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(kind)
    offered = RawWebSocket(server.ws_url, protocols=["chat", "superchat"])
    try:
        assert "sec-websocket-protocol" not in offered.response.lower()
    finally:
        offered.close()
    plain = RawWebSocket(server.ws_url)
    try:
        assert "sec-websocket-protocol" not in plain.response.lower()
    finally:
        plain.close()
