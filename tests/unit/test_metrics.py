"""metrics.py and REALTIME_METRICS, in the process: the config's errors, the
route's absence when off, the token check, and the latency stamp.

The counts themselves are tested on gunicorn with two workers
(tests/test_metrics.py).
"""

from __future__ import annotations

import typing as t

import pytest
from flask import Flask
from prometheus_client import REGISTRY  # (before a test sets the variable)

from flask_realtime import ConfigError, Realtime, metrics
from flask_realtime import config as rt_config

TOKEN = "a-token-for-the-unit-tests"


@pytest.fixture(autouse=True)
def _metrics_off_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """An app enabling metrics turns counting on for the process: undo it."""
    monkeypatch.setattr(metrics, "_on", metrics._on)
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)


def load(**overrides: t.Any) -> rt_config.Settings:
    return rt_config.load({**rt_config.DEFAULTS, **overrides})


def test_off_by_default() -> None:
    assert load().metrics_token is None
    assert load(REALTIME_METRICS={"enabled": False}).metrics_token is None
    assert load(REALTIME_METRICS={"enabled": True, "token": TOKEN}).metrics_token == (
        TOKEN
    )


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (True, "must be a dict"),
        ({"enabled": "yes", "token": TOKEN}, "['enabled'] must be True or False"),
        ({"enabled": True}, "['token'] must be a string of at least 16"),
        ({"enabled": True, "token": "short-secret"}, "at least 16"),
        ({"enabled": True, "token": "with a space in the token"}, "whitespace"),
        ({"enabled": True, "token": TOKEN, "path": "/m"}, "unknown option(s) ['path']"),
    ],
)
def test_bad_values_name_the_key_and_never_show_the_token(
    value: t.Any, words: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load(REALTIME_METRICS=value)
    message = str(raised.value)
    assert message.startswith("REALTIME_METRICS"), message
    assert words in message
    if isinstance(value, dict) and isinstance(value.get("token"), str):
        assert value["token"] not in message


def test_a_missing_multiprocess_directory_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: t.Any
) -> None:
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path / "missing"))
    app = Flask(__name__)
    app.config["REALTIME_METRICS"] = {"enabled": True, "token": TOKEN}
    with pytest.raises(ConfigError, match="PROMETHEUS_MULTIPROC_DIR"):
        Realtime(app)


def test_no_route_while_off() -> None:
    app = Flask(__name__)
    Realtime(app)
    assert app.test_client().get("/realtime/metrics").status_code == 404


def test_the_route_wants_the_token_and_counts() -> None:
    app = Flask(__name__)
    app.config["REALTIME_METRICS"] = {"enabled": True, "token": TOKEN}
    realtime = Realtime(app)
    http = app.test_client()
    response = http.get("/realtime/metrics")
    assert response.status_code == 401
    assert response.json["error"]["code"] == 401
    wrong = http.get("/realtime/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401

    def scrape() -> str:
        response = http.get(
            "/realtime/metrics", headers={"Authorization": f"bearer {TOKEN}"}
        )
        assert response.status_code == 200
        return response.get_data(as_text=True)

    def sample(text: str, line: str) -> float:
        [found] = [s for s in text.splitlines() if s.startswith(line + " ")]
        return float(found.rpartition(" ")[2])

    memory = 'flask_realtime_connections{transport="memory"}'
    before = sample(scrape(), memory)
    client = realtime.test_client(user_id=1)
    assert sample(scrape(), memory) == before + 1
    client.disconnect()
    assert sample(scrape(), memory) == before


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (f"Bearer {TOKEN} ", True),
        (None, False),
        ("", False),
        (TOKEN, False),
        (f"Basic {TOKEN}", False),
        (f"Bearer {TOKEN[:-1]}", False),
        (f"Bearer {TOKEN}x", False),
        ("Bearer ", False),
    ],
)
def test_authorized(header: str | None, ok: bool) -> None:
    assert metrics.authorized(header, TOKEN) is ok


def test_the_publish_time_rides_in_the_header_and_comes_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "_on", False)
    assert metrics.stamp(b"n1.abc") == b"n1.abc"
    monkeypatch.setattr(metrics, "_on", True)
    for header in (b"", b"n1.abc"):
        stamped = metrics.stamp(header)
        assert stamped != header
        back, sent_at = metrics.unstamp(stamped)
        assert back == header
        assert sent_at is not None and sent_at > 1e9
    assert metrics.unstamp(b"n1.abc") == (b"n1.abc", None)
    assert metrics.unstamp(b"n1.abc junk") == (b"n1.abc", None)


def test_close_codes_are_bounded_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Flask(__name__)
    app.config["REALTIME_METRICS"] = {"enabled": True, "token": TOKEN}
    Realtime(app)

    def count(code: str) -> float:
        value = REGISTRY.get_sample_value("flask_realtime_closes_total", {"code": code})
        return value or 0.0

    before = {code: count(code) for code in ("4100", "1000", "other")}
    metrics.closed(4100)
    metrics.closed(1000)
    metrics.closed(4999)
    metrics.closed(3000)
    assert {code: count(code) - before[code] for code in before} == {
        "4100": 1,
        "1000": 1,
        "other": 2,
    }


def test_a_stamped_relay_still_skips_its_sender() -> None:
    """The publish time shares the header with the excluded connection's id."""
    app = Flask(__name__)
    app.config["REALTIME_METRICS"] = {"enabled": True, "token": TOKEN}
    app.config["REALTIME_AUTHORIZERS"] = {"private-*": lambda conn, channel: True}
    realtime = Realtime(app)
    sender, other = realtime.test_client(user_id=1), realtime.test_client(user_id=2)
    for client in (sender, other):
        client.subscribe("private-room")

    def count() -> float:
        name = "flask_realtime_broadcast_latency_seconds_count"
        return REGISTRY.get_sample_value(name) or 0.0

    before = count()
    assert sender.emit("private-room", "client-typing", {"on": True}) is None
    assert other.events("private-room") == [("client-typing", {"on": True})]
    assert sender.events("private-room") == []
    assert count() == before + 1
