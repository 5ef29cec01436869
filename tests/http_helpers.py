"""Helpers the transport suites share: channel names, broadcasts, JSON errors,
and what the SSE and long-poll clients do alike."""

from __future__ import annotations

import itertools
import json
import typing as t
import uuid

import requests

from tests.servers import Server

SEND_PATH = "/realtime/send"
_ids = itertools.count(1)


def app_env(**config: t.Any) -> dict[str, str]:
    """Config for the test apps (``tests/apps``), through ``TESTAPP_*``."""
    return {f"TESTAPP_{key}": json.dumps(value) for key, value in config.items()}


def unique(prefix: str) -> str:
    """A channel name no other test uses on the shared server."""
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


def broadcast(server: Server, channel: str, event: str, data: t.Any) -> None:
    """Broadcast through the test app's ``/broadcast`` view."""
    response = requests.get(
        f"{server.url}/broadcast",
        params={"channel": channel, "event": event, "data": json.dumps(data)},
        timeout=5,
    )
    assert response.status_code == 200, response.text


def open_poll(server: t.Any, timeout: float = 5, **params: str) -> dict[str, t.Any]:
    """Open a long-poll connection on ``server`` (``params`` in the query):
    the ``connection_id``, ``token`` and ``cursor`` of its next poll."""
    opened = requests.get(
        server.url + "/realtime/poll", params=params, timeout=timeout
    ).json()
    welcome = opened["messages"][0]["data"]
    return {
        "connection_id": welcome["connection_id"],
        "token": welcome["token"],
        "cursor": opened["cursor"],
    }


def assert_json_error(response: requests.Response, status: int) -> None:
    """``response`` is the JSON error every endpoint answers with ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json"), (
        response.headers["Content-Type"],
        response.text[:200],
    )
    error = response.json()["error"]
    assert error["code"] == status
    assert isinstance(error["message"], str) and error["message"]


class HttpClientMessages:
    """Client messages by ``POST /realtime/send`` and ``wait_event``: what the
    SSE and long-poll test clients do alike.

    The client sets ``server``, ``connection_id`` and ``token``, has a
    ``wait_for(predicate, timeout)``, and may set ``session`` (a
    ``requests.Session``; the ``requests`` module otherwise).
    """

    server: Server
    connection_id: str | None
    token: str | None
    session: t.Any = requests

    def wait_for(
        self, predicate: t.Callable[[t.Any], bool], timeout: float = 5
    ) -> t.Any:
        raise NotImplementedError

    def wait_event(
        self, event: str, channel: str | None = None, timeout: float = 5
    ) -> dict[str, t.Any]:
        def matches(msg: t.Any) -> bool:
            return (
                msg.get("type") == "event"
                and msg.get("event") == event
                and (channel is None or msg.get("channel") == channel)
            )

        matches.__name__ = f"event {event!r} on {channel!r}"
        return self.wait_for(matches, timeout)

    def post(self, message: t.Any, **overrides: t.Any) -> requests.Response:
        body = {
            "connection_id": self.connection_id,
            "token": self.token,
            "message": message,
        }
        body.update(overrides)
        return self.session.post(self.server.url + SEND_PATH, json=body, timeout=5)

    def request(self, message: dict[str, t.Any]) -> list[dict[str, t.Any]]:
        """POST one client message and return the reply envelopes."""
        response = self.post(message)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("application/json")
        replies = response.json()
        assert isinstance(replies, list), replies
        return replies

    def subscribe(self, channel: str, id: t.Any = None) -> dict[str, t.Any]:
        if id is None:
            id = next(_ids)
        [reply] = self.request({"type": "subscribe", "channel": channel, "id": id})
        assert reply.get("id") == id, reply
        return reply
