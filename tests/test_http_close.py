"""``POST /realtime/close``: an SSE or long-poll client leaves at once."""

from __future__ import annotations

import json
import typing as t

import pytest
import requests

from tests.conftest import LiveServerFactory
from tests.wsclient import connect


def _open_poll(url: str, **params: str) -> tuple[str, str, int]:
    body = requests.get(f"{url}/realtime/poll", params=params, timeout=5).json()
    data = body["messages"][0]["data"]
    return data["connection_id"], data["token"], body["cursor"]


def _send(url: str, cid: str, token: str, message: dict[str, t.Any]) -> t.Any:
    return requests.post(
        f"{url}/realtime/send",
        json={"connection_id": cid, "token": token, "message": message},
        timeout=5,
    )


@pytest.mark.parametrize("kind", ["geventwebsocket", "flask-run"])
def test_close_ends_a_long_poll_connection_and_its_presence(
    live_server: LiveServerFactory, kind: str
) -> None:
    server = live_server(kind)
    with connect(f"{server.ws_url}?user=1&name=Ann") as ann:
        ann.subscribe("presence-room")
        cid, token, _ = _open_poll(server.url, user="2", name="Bob")
        reply = _send(
            server.url, cid, token, {"type": "subscribe", "channel": "presence-room"}
        )
        assert reply.json()[0]["type"] == "subscribed"
        ann.wait_event("presence.join", "presence-room")

        # As navigator.sendBeacon sends it: a text/plain body.
        closed = requests.post(
            f"{server.url}/realtime/close",
            data=json.dumps({"connection_id": cid, "token": token}),
            headers={"Content-Type": "text/plain;charset=UTF-8"},
            timeout=5,
        )
        assert closed.status_code == 204
        leave = ann.wait_event("presence.leave", "presence-room", timeout=5)
        assert leave["data"] == {"user_id": "2"}
        gone = requests.get(
            f"{server.url}/realtime/poll",
            params={"connection_id": cid, "token": token, "cursor": 0},
            timeout=5,
        )
        assert gone.status_code == 404


def test_close_needs_the_token(live_server: LiveServerFactory) -> None:
    server = live_server("geventwebsocket")
    cid, token, _ = _open_poll(server.url)
    for body, status in (
        ({"connection_id": cid, "token": "not-it"}, 403),
        ({"connection_id": cid}, 403),
        ({"connection_id": "nobody.nothing", "token": token}, 404),
        ({"token": token}, 400),
    ):
        response = requests.post(f"{server.url}/realtime/close", json=body, timeout=5)
        assert response.status_code == status, body
        assert response.json()["error"]["code"] == status
    bad = requests.post(f"{server.url}/realtime/close", data="{nope", timeout=5)
    assert bad.status_code == 400
    # Still open: the refused closes harmed nothing.
    assert _send(server.url, cid, token, {"type": "ping", "id": 1}).json() == [
        {"type": "pong", "id": 1}
    ]
