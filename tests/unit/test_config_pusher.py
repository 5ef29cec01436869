"""REALTIME_PUSHER and REALTIME_PUSHER_PATHS: validated, errors naming the key."""

from __future__ import annotations

import typing as t

import pytest
from flask import Flask

from flask_realtime import Realtime
from flask_realtime.config.pusher import DEFAULT_PATHS, pusher_settings
from flask_realtime.config.settings import ConfigError

APP = {"app_id": "1", "key": "app-key", "secret": "app-secret"}


def test_off_unless_set() -> None:
    assert pusher_settings({}) is None
    assert pusher_settings({"REALTIME_PUSHER": None}) is None
    assert pusher_settings({"REALTIME_PUSHER": []}) is None


def test_one_app_at_the_default_paths() -> None:
    settings = pusher_settings({"REALTIME_PUSHER": dict(APP, app_id=7)})
    assert settings is not None
    (app,) = settings.apps
    assert (app.app_id, app.key, app.secret) == ("7", "app-key", "app-secret")
    assert (app.activity_timeout, app.client_event_rate) == (120, 10)
    assert settings.paths == DEFAULT_PATHS
    assert settings.by_key("app-key") is app and settings.by_id("7") is app
    assert settings.by_key("other") is None


def test_several_apps_and_moved_paths() -> None:
    second = {"app_id": "2", "key": "k2", "secret": "s2", "client_event_rate": 50}
    settings = pusher_settings(
        {
            "REALTIME_PUSHER": [APP, second],
            "REALTIME_PUSHER_PATHS": {"auth": "/broadcasting/auth"},
        }
    )
    assert settings is not None
    assert [a.key for a in settings.apps] == ["app-key", "k2"]
    assert settings.by_id("2").client_event_rate == 50  # type: ignore[union-attr]
    assert settings.paths["auth"] == "/broadcasting/auth"
    assert settings.paths["websocket"] == "/app"


def test_an_encryption_master_key_is_32_bytes_of_base64() -> None:
    key = "A" * 43 + "="  # 32 zero bytes
    settings = pusher_settings(
        {"REALTIME_PUSHER": dict(APP, encryption_master_key_base64=key)}
    )
    assert settings is not None
    assert settings.apps[0].encryption_master_key == bytes(32)
    assert key not in repr(settings) and "encryption_master_key=" not in repr(settings)
    for bad in ("short", "B" * 44, 32, "C" * 42 + "!="):
        config = {"REALTIME_PUSHER": dict(APP, encryption_master_key_base64=bad)}
        with pytest.raises(ConfigError) as caught:
            pusher_settings(config)
        message = str(caught.value)
        assert 'REALTIME_PUSHER["encryption_master_key_base64"] must be 32' in message
        assert not isinstance(bad, str) or bad not in message


def test_the_secret_stays_out_of_reprs() -> None:
    settings = pusher_settings({"REALTIME_PUSHER": APP})
    assert "app-secret" not in repr(settings)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"REALTIME_PUSHER": "app-key"}, "REALTIME_PUSHER must be a dict"),
        ({"REALTIME_PUSHER": dict(APP, key="a:b")}, 'REALTIME_PUSHER["key"]'),
        ({"REALTIME_PUSHER": dict(APP, app_id="")}, 'REALTIME_PUSHER["app_id"]'),
        ({"REALTIME_PUSHER": dict(APP, secret="")}, 'REALTIME_PUSHER["secret"]'),
        ({"REALTIME_PUSHER": dict(APP, cluster="eu")}, "unknown option(s) ['cluster']"),
        (
            {"REALTIME_PUSHER": dict(APP, client_event_rate=0)},
            'REALTIME_PUSHER["client_event_rate"] must be an integer >= 1',
        ),
        ({"REALTIME_PUSHER": [APP, dict(APP, key="k2")]}, "share the app_id '1'"),
        ({"REALTIME_PUSHER": [APP, 3]}, "REALTIME_PUSHER[1] must be a dict"),
        (
            {"REALTIME_PUSHER": APP, "REALTIME_PUSHER_PATHS": {"auth": "auth"}},
            'REALTIME_PUSHER_PATHS["auth"] must be a path',
        ),
        (
            {"REALTIME_PUSHER": APP, "REALTIME_PUSHER_PATHS": {"events": "/e"}},
            "unknown route 'events'",
        ),
        ({"REALTIME_PUSHER_PATHS": {"auth": "/a"}}, "REALTIME_PUSHER is not"),
    ],
)
def test_bad_values_name_the_key(config: dict[str, t.Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        pusher_settings(config)
    assert message in str(caught.value)
    assert "app-secret" not in str(caught.value)


def test_the_extension_refuses_a_bad_app_at_init() -> None:
    app = Flask(__name__)
    app.config["REALTIME_PUSHER"] = dict(APP, secret=None)
    with pytest.raises(ConfigError, match=r'REALTIME_PUSHER\["secret"\]'):
        Realtime(app)
