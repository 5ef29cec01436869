"""Property 1 of the design: a broadcast is encoded once, whatever the audience."""

from __future__ import annotations

import weakref

import pytest
from flask import Flask

from flask_realtime import Realtime, extension, strict_json


@pytest.fixture(autouse=True)
def _own_apps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extension, "_initialised", weakref.WeakSet())


def test_one_json_encoding_per_broadcast(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Flask(__name__)
    realtime = Realtime(app)
    clients = [realtime.test_client() for _ in range(50)]
    for client in clients:
        client.subscribe("news")

    calls = []
    original = strict_json._compact  # the JSON encoder behind protocol.encode
    monkeypatch.setattr(
        strict_json, "_compact", lambda obj: calls.append(obj) or original(obj)
    )
    with app.app_context():
        realtime.broadcast("news", "headline", {"title": "Once"})

    assert len(calls) == 1
    for client in clients:
        assert client.events("news") == [("headline", {"title": "Once"})]
