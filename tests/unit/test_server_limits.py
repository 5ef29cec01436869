"""The server limits: defaults, gunicorn's settings, the environment."""

from __future__ import annotations

import types

import pytest

from flask_realtime import ConfigError
from flask_realtime.server.limits import Limits, from_environment, from_gunicorn


def test_the_environment_sets_each_limit() -> None:
    limits = from_environment(
        environ={
            "REALTIME_HEAD_TIMEOUT": "2.5",
            "REALTIME_BODY_TIMEOUT": "7",
            "REALTIME_KEEPALIVE_TIMEOUT": "1",
            "REALTIME_MAX_REQUEST_LINE": "1000",
            "REALTIME_MAX_HEADER_FIELDS": "20",
            "REALTIME_MAX_HEADER_FIELD_SIZE": "512",
            "REALTIME_MAX_HEAD_SIZE": "4096",
        }
    )
    assert limits == Limits(2.5, 7.0, 1.0, 1000, 20, 512, 4096)


def test_an_empty_environment_keeps_the_defaults() -> None:
    assert from_environment(environ={"REALTIME_HEAD_TIMEOUT": " "}) == Limits()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REALTIME_HEAD_TIMEOUT", "soon"),
        ("REALTIME_BODY_TIMEOUT", "0"),
        ("REALTIME_MAX_HEADER_FIELDS", "2.5"),
        ("REALTIME_MAX_HEAD_SIZE", "-1"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        from_environment(environ={name: value})


def test_gunicorn_settings_then_the_environment() -> None:
    cfg = types.SimpleNamespace(
        keepalive=3,
        limit_request_line=4094,
        limit_request_fields=0,  # gunicorn's "unlimited": ours stays
        limit_request_field_size=1000,
    )
    limits = from_gunicorn(cfg, environ={"REALTIME_KEEPALIVE_TIMEOUT": "9"})
    assert limits.keepalive_timeout == 9
    assert limits.max_request_line == 4094
    assert limits.max_header_fields == Limits().max_header_fields
    assert limits.max_header_field_size == 1000
