"""Helpers the transport suites share: channel names, broadcasts, JSON errors."""

from __future__ import annotations

import json
import typing as t
import uuid

import requests

from tests.servers import Server


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
