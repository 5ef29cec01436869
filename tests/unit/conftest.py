"""Fixtures of the node's tests: a Realtime on a fresh app, a frozen clock."""

from __future__ import annotations

import types
import typing as t
import weakref

import pytest
from flask import Flask

from flask_realtime import Realtime, extension, ratelimit

Factory = t.Callable[..., Realtime]


@pytest.fixture
def own_initialised_apps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the test's apps out of the process-wide set the accessors read."""
    monkeypatch.setattr(extension, "_initialised", weakref.WeakSet())


@pytest.fixture
def make() -> Factory:
    """``make(**config)``: a Realtime on a fresh app with the memory transport.

    The apps are kept until the test ends: the extension only holds them weakly.
    """
    apps: list[Flask] = []

    def factory(**config: t.Any) -> Realtime:
        app = Flask(__name__)
        app.config["REALTIME_TRANSPORTS"] = ["memory"]
        app.config.update(config)
        apps.append(app)
        return Realtime(app)

    return factory


@pytest.fixture
def realtime(make: Factory) -> Realtime:
    return make()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Freeze the rate limiter's clock; tests move it by hand."""
    now = [1000.0]
    monkeypatch.setattr(
        ratelimit, "time", types.SimpleNamespace(monotonic=lambda: now[0])
    )
    return now
